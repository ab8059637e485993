/*
 * cbn.h - public C99 API of the cbn batch-normalization kernels.
 *
 * No Python headers: this file and the sources in src/cbn/csrc/ build with any C99 compiler
 * (add -fopenmp for threads) and can be embedded in other frameworks.
 *
 * Shapes. Every kernel sees x as one of two canonical views, given by (N, C, S, layout):
 *   CBN_CHANNELS_FIRST: x[n][c][s], n < N, c < C, s < S   (NCHW with S = H*W; (N,C) has S = 1)
 *   CBN_CHANNELS_LAST:  x[r][c],    r < N*S, c < C        (NHWC with S = H*W)
 * Arrays are C-contiguous. Per-channel arrays hold C values. Statistics run over the M = N*S
 * values of each channel and are accumulated in double whatever the element type.
 *
 * Threads. n_threads >= 1 is the most threads a call may use (fewer on small inputs). Results are
 * bit-identical for every n_threads: work is cut into chunks whose bounds depend only on the shape,
 * and chunk results are combined in a fixed order.
 *
 * Errors. Kernels return CBN_OK or a negative code and write nothing when they fail.
 * In-place use is allowed where documented (y == x, dx == dy); other overlaps are not.
 */
#ifndef CBN_H
#define CBN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { CBN_CHANNELS_FIRST = 0, CBN_CHANNELS_LAST = 1 } cbn_layout;

/* Activation fused into the normalize pass (and its gradient into backward). */
typedef enum { CBN_ACTIVATION_NONE = 0, CBN_ACTIVATION_RELU = 1 } cbn_activation;

enum {
    CBN_OK = 0,
    CBN_ERR_ARGUMENT = -1,     /* negative size, NULL required pointer, bad layout/eps/momentum */
    CBN_ERR_TOO_FEW_VALUES = -2, /* training with M <= 1 values per channel */
    CBN_ERR_NO_MEMORY = -3     /* a scratch allocation failed */
};

/* Short English text for an error code (static storage). */
const char *cbn_error_string(int code);

/* 1 when the library was built with OpenMP, else 0. */
int cbn_openmp_enabled(void);

/* omp_get_max_threads() of the calling thread (honours OMP_NUM_THREADS, omp_set_num_threads and
 * threadpoolctl); 1 without OpenMP. */
int cbn_max_threads(void);

/*
 * Training forward.
 *   IN  x                 N*C*S values in `layout`
 *   OUT y                 same shape; y == x (in place) is allowed
 *   IN  weight, bias      C values or NULL (NULL weight = 1, NULL bias = 0)
 *   IN/OUT running_mean, running_var  C values or both NULL; updated in place:
 *        running_mean = (1-momentum)*running_mean + momentum*mean
 *        running_var  = (1-momentum)*running_var  + momentum*var*(M/(M-1) if unbiased_running_var)
 *   OUT save_mean, save_invstd  C values: batch mean and 1/sqrt(biased var + eps); may be NULL
 *   IN  activation        CBN_ACTIVATION_RELU: y = max(y, 0) in the same pass (NaN stays NaN)
 * y = (x - mean) * invstd * weight + bias. Requires M = N*S >= 2, eps >= 0, 0 <= momentum <= 1.
 */
int cbn_train_forward_f32(const float *x, float *y, int64_t N, int64_t C, int64_t S,
                          cbn_layout layout, const float *weight, const float *bias,
                          float *running_mean, float *running_var, double momentum, double eps,
                          int unbiased_running_var, float *save_mean, float *save_invstd,
                          cbn_activation activation, int n_threads);
int cbn_train_forward_f64(const double *x, double *y, int64_t N, int64_t C, int64_t S,
                          cbn_layout layout, const double *weight, const double *bias,
                          double *running_mean, double *running_var, double momentum, double eps,
                          int unbiased_running_var, double *save_mean, double *save_invstd,
                          cbn_activation activation, int n_threads);

/*
 * Backward of training forward, given the save_mean/save_invstd it returned.
 *   IN  dy, x             N*C*S values in `layout`
 *   IN  save_mean, save_invstd, weight (C values; weight may be NULL = 1)
 *   IN  y, activation     CBN_ACTIVATION_RELU: y is the forward output (after the ReLU) and the
 *                         gradient is taken as dy where y > 0, else 0; y is NULL otherwise
 *   OUT dx                same shape; dx == dy (in place) is allowed
 *   OUT dweight, dbias    C values or NULL: sum(dy * xhat), sum(dy) per channel
 * dx = weight*invstd * (dy - dbias/M - xhat*dweight/M), xhat = (x - mean)*invstd.
 */
int cbn_backward_f32(const float *dy, const float *x, const float *save_mean,
                     const float *save_invstd, const float *weight, const float *y,
                     cbn_activation activation, float *dx, float *dweight, float *dbias,
                     int64_t N, int64_t C, int64_t S, cbn_layout layout, int n_threads);
int cbn_backward_f64(const double *dy, const double *x, const double *save_mean,
                     const double *save_invstd, const double *weight, const double *y,
                     cbn_activation activation, double *dx, double *dweight, double *dbias,
                     int64_t N, int64_t C, int64_t S, cbn_layout layout, int n_threads);

/*
 * Frozen inference: y = x*scale + shift per channel, scale and shift from cbn_fold_scale_shift.
 *   IN  x, running_mean, running_var (C values), weight, bias (C values or NULL)
 *   IN  activation        CBN_ACTIVATION_RELU: y = max(y, 0) in the same pass
 *   OUT y                 same shape as x; y == x (in place) is allowed
 */
int cbn_infer_f32(const float *x, float *y, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                  const float *running_mean, const float *running_var, const float *weight,
                  const float *bias, double eps, cbn_activation activation, int n_threads);
int cbn_infer_f64(const double *x, double *y, int64_t N, int64_t C, int64_t S,
                  cbn_layout layout, const double *running_mean, const double *running_var,
                  const double *weight, const double *bias, double eps, cbn_activation activation,
                  int n_threads);

/*
 * Fold running statistics and affine parameters into one multiply-add, in double:
 *   scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale
 *   IN  running_mean, running_var (C values), weight, bias (C values or NULL)
 *   OUT scale, shift (C values)
 */
int cbn_fold_scale_shift_f32(int64_t C, const float *running_mean, const float *running_var,
                             const float *weight, const float *bias, double eps, float *scale,
                             float *shift);
int cbn_fold_scale_shift_f64(int64_t C, const double *running_mean, const double *running_var,
                             const double *weight, const double *bias, double eps, double *scale,
                             double *shift);

#ifdef __cplusplus
}
#endif
#endif /* CBN_H */
