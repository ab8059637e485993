/*
 * cbn.h - public C99 API of the cbn batch-normalization kernels.
 *
 * No Python headers: this file and the sources in src/cbn/csrc/ build with any C99 compiler
 * (add -fopenmp for threads) and can be embedded in other frameworks. From the repository root:
 *
 *   cc -O3 -std=c99 -ffp-contract=off -fopenmp -Iinclude my_app.c <every .c file of src/cbn/csrc>
 *      -lm -o my_app
 *
 * (the kernel sources find their private headers next to themselves; only -Iinclude is needed;
 * examples/embed.c and examples/Makefile show the exact command).
 * The Python build uses the same sources with -O3 -std=c99 -ffp-contract=off -fno-math-errno
 * -fno-trapping-math -fopenmp, the kernel files once per x86-64 level (-march=x86-64-v2, -v3,
 * -v4; one chosen at run time, see README "CPU levels"): with those flags and the same compiler,
 * an embedded build returns the bits the Python package returns at that level (v3, v4 and
 * -march=native give the same bits). Never use -ffast-math (it reorders the fixed-order sums).
 * Without -fopenmp the library is serial and otherwise identical (cbn_openmp_enabled() == 0).
 * An installed Python package ships this header in the directory cbn.get_include() returns, the
 * kernel sources in cbn/csrc/, and a Cython declaration file: `from cbn.cbn cimport ...`.
 *
 * Example (training forward, then backward, of x in NCHW layout: N images, C channels, H*W
 * pixels each):
 *
 *   #include "cbn.h"
 *   int64_t N = 8, C = 3, S = 32 * 32;            (S = H*W; M = N*S values per channel)
 *   float *x = ..., *y = ..., *dy = ..., *dx = ...;         (N*C*S floats each)
 *   float gamma[3] = {1, 1, 1}, beta[3] = {0, 0, 0}, rmean[3] = {0, 0, 0}, rvar[3] = {1, 1, 1};
 *   float mean[3], invstd[3], dgamma[3], dbeta[3];
 *   int rc = cbn_train_forward_f32(x, y, N, C, S, CBN_CHANNELS_FIRST, gamma, beta, rmean, rvar,
 *                                  0.1, 1e-5, 1, mean, invstd, CBN_ACTIVATION_NONE,
 *                                  cbn_max_threads());
 *   if (rc == CBN_OK)
 *       rc = cbn_backward_f32(dy, x, mean, invstd, gamma, NULL, CBN_ACTIVATION_NONE, dx,
 *                             dgamma, dbeta, N, C, S, CBN_CHANNELS_FIRST, cbn_max_threads());
 *   if (rc != CBN_OK) fprintf(stderr, "cbn: %s\n", cbn_error_string(rc));
 *
 * examples/embed.c is a complete program (both element types, both layouts, inference too).
 *
 * Shapes. Every kernel sees x as one of two canonical views, given by (N, C, S, layout):
 *   CBN_CHANNELS_FIRST: x[n][c][s], n < N, c < C, s < S   (NCHW with S = H*W; (N,C) has S = 1)
 *   CBN_CHANNELS_LAST:  x[r][c],    r < N*S, c < C        (NHWC with S = H*W)
 * For channels-last only the product N*S matters. Sizes are element counts (not bytes).
 *
 * Memory. Arrays are dense and C-contiguous in the view above (no strides: copy strided data
 * first). Per-channel arrays hold C values. Pointers need only the natural alignment of their
 * element type (4 bytes for float, 8 for double); no SIMD alignment is required. A pointer may
 * be NULL where each function says so (optional arrays; the N*C*S arrays when N*C*S == 0);
 * a required pointer that is NULL gives CBN_ERR_ARGUMENT. Input arrays are const and are only
 * written through an in-place output. A call's scratch (a few values per channel and per chunk
 * of work) comes from malloc; the last block released is kept for the next call, so that calls
 * with many channels do not fault fresh pages in every time (cbn_release_memory() frees it).
 * Outputs may sit at any element offset: streaming stores are issued only for whole, aligned
 * 64-byte lines, so no placement falls off a cliff.
 *
 * Numerics. Statistics run over the M = N*S values of each channel and are carried in double
 * whatever the element type: double values are summed one by one in double; float values (and
 * 16-bit ones, computed as float) in float blocks of at most 8 values per lane, each block then
 * added in double (mean within 1e-6 x std, M2 within 1e-6 relative; README, Guarantees). The
 * elementwise pass runs in the element type. Outputs are stored in the element type.
 *
 * Threads. n_threads >= 1 is the most threads a call may use (fewer on small inputs: about one
 * per 16384 values), clamped to the CPUs the process may run on (omp_get_num_procs(), which
 * follows the affinity mask; or omp_get_max_threads(), i.e. OMP_NUM_THREADS, when that is
 * larger: the one way to oversubscribe on purpose) and to omp_get_thread_limit()
 * (OMP_THREAD_LIMIT). So n_threads = INT_MAX means "all", and never starts hundreds of threads
 * on a small machine. Results are bit-identical for every n_threads: work is cut into chunks
 * whose bounds depend only on the shape, partial sums keep a fixed number of lanes, and chunk
 * results are combined in a fixed order. (A build for a CPU with FMA instructions, such as
 * -march=x86-64-v3 or -march=native on a recent x86-64, rounds each product of the sums of
 * squares once instead of twice, so its last bits may differ from a build without FMA.)
 * Thread safety: calls are reentrant and may run concurrently from several threads as long as
 * no call writes an array another call reads or writes (the library's global state, such as
 * the fork flag below, is set once or exchanged atomically). A call on several threads opens
 * its own OpenMP parallel region (a call that will use one thread, small inputs or
 * n_threads = 1, opens none); called from inside a parallel region it follows the OpenMP
 * runtime's nesting settings (usually one thread per call) and never waits at the enclosing
 * team's barriers, so any subset of its threads may call cbn.
 * Fork: GCC's OpenMP runtime (libgomp) keeps a pool of worker threads that fork() does not copy,
 * so the first parallel region of a forked child waits forever for them. The first call that
 * asks for more than one thread (or cbn_max_threads()) registers a pthread_atfork handler; in
 * every process forked after that (and in their children), every call runs on one thread and
 * opens no parallel region, and cbn_max_threads() returns 1: the same bits as before, never a
 * hang. The caller has nothing to do. What cbn cannot see: a process that ran OpenMP code of
 * its own (same runtime, same thread) but no multi-threaded cbn call before forking; its child
 * should pass n_threads = 1 (any OpenMP region of the child hangs there, not only cbn's).
 * Starting threads: libgomp ends the process (exit status 1, "libgomp: Thread creation
 * failed") when it cannot create a worker, for example when an address-space limit (RLIMIT_AS)
 * leaves no room for a thread stack (RLIMIT_STACK or OMP_STACKSIZE, 8 MiB by default); cbn
 * cannot turn this into an error code. Workers persist between calls, so only a call that needs
 * more threads than any before it creates some; with the clamp above that is at most one per
 * CPU. Under a tight limit, pass n_threads = 1.
 *
 * Errors. Kernels return CBN_OK (0) or a negative code and write nothing when they fail: every
 * argument is checked, and scratch allocated, before the first output is written.
 * In-place use is allowed where documented (y == x, y == residual, dx == dy: the very same
 * pointer); other overlaps between arrays (partial overlap, an output aliasing a per-channel
 * array, the running statistics aliasing x or each other) are not, and are not detected: the
 * results are then undefined. (The Python package checks every overlap before calling.)
 *
 * Empty sizes. C == 0: once the other arguments pass their checks, a kernel returns CBN_OK
 * without reading or writing any array (training still requires N*S >= 2). N == 0 or S == 0
 * (M == 0): training fails with CBN_ERR_TOO_FEW_VALUES, backward writes zero dweight/dbias,
 * inference writes nothing.
 */
#ifndef CBN_H
#define CBN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Where the channel axis is; see Shapes above. */
typedef enum { CBN_CHANNELS_FIRST = 0, CBN_CHANNELS_LAST = 1 } cbn_layout;

/* Activation fused into the normalize pass (and its gradient into backward). */
typedef enum { CBN_ACTIVATION_NONE = 0, CBN_ACTIVATION_RELU = 1 } cbn_activation;

/* Status codes returned by every kernel (int). */
enum {
    CBN_OK = 0,
    CBN_ERR_ARGUMENT = -1,     /* negative size, NULL required pointer, bad layout/eps/momentum,
                                  unknown activation, n_threads < 1 */
    CBN_ERR_TOO_FEW_VALUES = -2, /* training with M <= 1 values per channel */
    CBN_ERR_NO_MEMORY = -3     /* a scratch allocation failed */
};

/* Short English text for an error code (static storage, never NULL; "unknown error" for a code
 * not listed above). */
const char *cbn_error_string(int code);

/* 1 when the library was built with OpenMP, else 0 (then every call runs on one thread). */
int cbn_openmp_enabled(void);

/* omp_get_max_threads() of the calling thread (honours OMP_NUM_THREADS, omp_set_num_threads and
 * threadpoolctl), clamped as n_threads is (see Threads); 1 without OpenMP and in a forked
 * child (see Fork). A good n_threads for the kernels. */
int cbn_max_threads(void);

/* The kernels keep the last per-call work block they used (it grows with C: up to ~80 bytes per
 * channel) so that the next call does not fault its pages in again. This frees it. Safe to call
 * at any time from any thread; a later call allocates again. */
void cbn_release_memory(void);

/*
 * Training forward: normalize x with its own batch statistics.
 *   IN  x                 N*C*S values in `layout` (NULL allowed only when N*C*S == 0)
 *   OUT y                 same shape; y == x (in place) is allowed (NULL only when N*C*S == 0)
 *   IN  N, C, S, layout   the canonical view (see Shapes); sizes >= 0, M = N*S >= 2
 *   IN  weight, bias      C values or NULL (NULL weight = 1, NULL bias = 0), independently
 *   IN/OUT running_mean, running_var  C values or both NULL; updated in place:
 *        running_mean = (1-momentum)*running_mean + momentum*mean
 *        running_var  = (1-momentum)*running_var  + momentum*var*(M/(M-1) if unbiased_running_var)
 *   IN  momentum          in [0, 1], the weight of the new batch (PyTorch's convention; Keras and
 *                         ONNX weigh the old value: pass 1 - theirs); checked even when the
 *                         running statistics are NULL
 *   IN  eps               >= 0, added to the biased variance
 *   IN  unbiased_running_var  nonzero: running_var gets the unbiased var*M/(M-1) (PyTorch);
 *                         0: the biased var (Keras/ONNX)
 *   OUT save_mean, save_invstd  C values: batch mean and 1/sqrt(biased var + eps); each may be
 *                         NULL; they are what cbn_backward_* takes
 *   IN  activation        CBN_ACTIVATION_RELU: y = max(y, 0) in the same pass (NaN stays NaN)
 *   IN  n_threads         >= 1, the most threads to use
 * y = (x - mean) * invstd * weight + bias, var = sum((x - mean)^2) / M (biased).
 * Requires M = N*S >= 2, eps >= 0, 0 <= momentum <= 1.
 * Returns CBN_OK; CBN_ERR_ARGUMENT (negative size, n_threads < 1, unknown layout or activation,
 * eps < 0 or NaN, momentum outside [0, 1] or NaN, NULL x or y while N*C*S > 0, only one of the
 * running statistics NULL); CBN_ERR_TOO_FEW_VALUES when M <= 1 (also when C == 0);
 * CBN_ERR_NO_MEMORY. With C == 0 (and M >= 2) nothing is read or written.
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
 *   IN  dy                N*C*S values in `layout`: the loss's gradient with respect to y
 *                         (non-NULL when C > 0)
 *   IN  x                 the forward's input, N*C*S values (NULL only when N*C*S == 0)
 *   IN  save_mean, save_invstd  C values from cbn_train_forward_* (non-NULL when C > 0)
 *   IN  weight            C values or NULL (= 1): the forward's weight (bias does not enter)
 *   IN  y, activation     CBN_ACTIVATION_RELU: y is the forward output (after the ReLU), N*C*S
 *                         values, and the gradient is taken as dy where y > 0, else 0;
 *                         CBN_ACTIVATION_NONE: y is not read (pass NULL)
 *   OUT dx                same shape; dx == dy (in place) is allowed (NULL only when
 *                         N*C*S == 0)
 *   OUT dweight, dbias    C values or NULL (each): sum(dy * xhat), sum(dy) per channel
 *   IN  N, C, S, layout, n_threads  as for the forward
 * dx = weight*invstd * (dy - dbias/M - xhat*dweight/M), xhat = (x - mean)*invstd, with dy
 * masked as above under CBN_ACTIVATION_RELU. mean is the batch's mean, not save_mean as rounded
 * to the element type: backward also sums x - save_mean and corrects for that rounding, so
 * data far from zero (float32 at 1e6) keep the precision of the forward's statistics.
 * Returns CBN_OK; CBN_ERR_ARGUMENT (negative size, n_threads < 1, unknown layout or activation,
 * a NULL required pointer); CBN_ERR_NO_MEMORY. C == 0: nothing is read or written. M == 0:
 * dweight and dbias are set to 0 (dx is empty).
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
 * Fused residual add (the end of a ResNet block): y = act(bn(x) + residual) in the same pass
 * that normalizes, residual read once. Same arguments and results as cbn_train_forward_*, plus
 *   IN  residual          N*C*S values in `layout`, or NULL (none: cbn_train_forward_*);
 *                         y == residual (in place) is allowed
 * The sum is rounded in the element type: y equals act(y_bn + residual) evaluated in that type,
 * y_bn being what cbn_train_forward_* writes.
 */
int cbn_train_forward_residual_f32(const float *x, const float *residual, float *y, int64_t N,
                                   int64_t C, int64_t S, cbn_layout layout, const float *weight,
                                   const float *bias, float *running_mean, float *running_var,
                                   double momentum, double eps, int unbiased_running_var,
                                   float *save_mean, float *save_invstd,
                                   cbn_activation activation, int n_threads);
int cbn_train_forward_residual_f64(const double *x, const double *residual, double *y,
                                   int64_t N, int64_t C, int64_t S, cbn_layout layout,
                                   const double *weight, const double *bias,
                                   double *running_mean, double *running_var, double momentum,
                                   double eps, int unbiased_running_var, double *save_mean,
                                   double *save_invstd, cbn_activation activation,
                                   int n_threads);

/*
 * Backward of cbn_train_forward_residual_*: cbn_backward_* plus the residual's gradient, written
 * in the pass that writes dx.
 *   OUT d_residual        N*C*S values, or NULL (none: cbn_backward_*): g, the gradient that
 *                         reaches batch norm (dy, masked by y > 0 under CBN_ACTIVATION_RELU);
 *                         it may be dy (in place), not dx
 * Other arguments, results and errors as for cbn_backward_*.
 */
int cbn_backward_residual_f32(const float *dy, const float *x, const float *save_mean,
                              const float *save_invstd, const float *weight, const float *y,
                              cbn_activation activation, float *dx, float *d_residual,
                              float *dweight, float *dbias, int64_t N, int64_t C, int64_t S,
                              cbn_layout layout, int n_threads);
int cbn_backward_residual_f64(const double *dy, const double *x, const double *save_mean,
                              const double *save_invstd, const double *weight, const double *y,
                              cbn_activation activation, double *dx, double *d_residual,
                              double *dweight, double *dbias, int64_t N, int64_t C, int64_t S,
                              cbn_layout layout, int n_threads);

/*
 * Frozen inference: y = x*scale + shift per channel, scale and shift from cbn_fold_scale_shift
 * (computed once per call, in double, then rounded to the element type; the multiply-add runs in
 * the element type, so y equals x*scale + shift evaluated in that type with those values).
 *   IN  x                 N*C*S values in `layout` (NULL only when N*C*S == 0)
 *   IN  running_mean, running_var  C values (non-NULL when C > 0), only read
 *   IN  weight, bias      C values or NULL (NULL weight = 1, NULL bias = 0)
 *   IN  eps               >= 0
 *   IN  activation        CBN_ACTIVATION_RELU: y = max(y, 0) in the same pass
 *   OUT y                 same shape as x; y == x (in place) is allowed
 *   IN  N, C, S, layout, n_threads  as for the forward; any M (M == 1 is fine)
 * Returns CBN_OK; CBN_ERR_ARGUMENT (negative size, n_threads < 1, unknown layout or activation,
 * eps < 0 or NaN, a NULL required pointer); CBN_ERR_NO_MEMORY. N*C*S == 0: nothing is written.
 */
int cbn_infer_f32(const float *x, float *y, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                  const float *running_mean, const float *running_var, const float *weight,
                  const float *bias, double eps, cbn_activation activation, int n_threads);
int cbn_infer_f64(const double *x, double *y, int64_t N, int64_t C, int64_t S,
                  cbn_layout layout, const double *running_mean, const double *running_var,
                  const double *weight, const double *bias, double eps, cbn_activation activation,
                  int n_threads);

/*
 * Frozen inference with a fused residual add: y = act(x*scale + shift + residual), one pass.
 * Same arguments as cbn_infer_*, plus
 *   IN  residual          N*C*S values in `layout`, or NULL (none: cbn_infer_*); y == residual
 *                         (in place) is allowed
 * The sum is rounded in the element type (y equals act(y_infer + residual) in that type).
 */
int cbn_infer_residual_f32(const float *x, const float *residual, float *y, int64_t N, int64_t C,
                           int64_t S, cbn_layout layout, const float *running_mean,
                           const float *running_var, const float *weight, const float *bias,
                           double eps, cbn_activation activation, int n_threads);
int cbn_infer_residual_f64(const double *x, const double *residual, double *y, int64_t N,
                           int64_t C, int64_t S, cbn_layout layout, const double *running_mean,
                           const double *running_var, const double *weight, const double *bias,
                           double eps, cbn_activation activation, int n_threads);

/*
 * Backward of frozen inference (fine-tuning with frozen statistics): the running statistics are
 * constants, weight and bias still learn. With root = sqrt(running_var + eps) in double and g
 * the gradient reaching batch norm (dy, masked by y > 0 under CBN_ACTIVATION_RELU):
 *   dx = g * scale          scale = weight/root rounded to the element type (the scale that
 *                           cbn_infer_* and cbn_fold_scale_shift_* use; one multiply per value)
 *   dweight = sum(g * (x - running_mean)) / root,   dbias = sum(g)   (sums in double)
 *   IN  dy, x             N*C*S values each in `layout` (dy non-NULL when C > 0; x NULL only
 *                         when N*C*S == 0): the gradient with respect to y, the forward's input
 *   IN  running_mean, running_var  C values (non-NULL when C > 0): those the forward used
 *   IN  weight            C values or NULL (= 1); bias does not enter
 *   IN  eps               >= 0, the forward's
 *   IN  y, activation     as for cbn_backward_*: y is the forward output (after the ReLU)
 *   OUT dx                same shape; dx == dy (in place) is allowed
 *   OUT d_residual        N*C*S values or NULL: g, for a forward with a residual (as for
 *                         cbn_backward_residual_*)
 *   OUT dweight, dbias    C values or NULL (each)
 *   IN  N, C, S, layout, n_threads  as for the forward; any M
 * x and dy are read once per channel (dx = g*scale does not depend on the sums, but is written
 * in backward's elementwise pass, after the channel's sums).
 * Returns CBN_OK; CBN_ERR_ARGUMENT (negative size, n_threads < 1, unknown layout or activation,
 * eps < 0 or NaN, a NULL required pointer); CBN_ERR_NO_MEMORY. C == 0: nothing is read or
 * written. M == 0: dweight and dbias are set to 0.
 */
int cbn_infer_backward_f32(const float *dy, const float *x, const float *running_mean,
                           const float *running_var, const float *weight, double eps,
                           const float *y, cbn_activation activation, float *dx,
                           float *d_residual, float *dweight, float *dbias, int64_t N, int64_t C,
                           int64_t S, cbn_layout layout, int n_threads);
int cbn_infer_backward_f64(const double *dy, const double *x, const double *running_mean,
                           const double *running_var, const double *weight, double eps,
                           const double *y, cbn_activation activation, double *dx,
                           double *d_residual, double *dweight, double *dbias, int64_t N,
                           int64_t C, int64_t S, cbn_layout layout, int n_threads);

/*
 * Fold running statistics and affine parameters into one multiply-add, in double:
 *   scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale
 *   IN  C                 >= 0
 *   IN  running_mean, running_var (C values), weight, bias (C values or NULL = 1 and 0)
 *   IN  eps               >= 0
 *   OUT scale, shift (C values; must not overlap the inputs)
 * Single-threaded, allocates nothing. Returns CBN_OK; CBN_ERR_ARGUMENT (C < 0, eps < 0 or NaN,
 * NULL running_mean, running_var, scale or shift while C > 0).
 */
int cbn_fold_scale_shift_f32(int64_t C, const float *running_mean, const float *running_var,
                             const float *weight, const float *bias, double eps, float *scale,
                             float *shift);
int cbn_fold_scale_shift_f64(int64_t C, const double *running_mean, const double *running_var,
                             const double *weight, const double *bias, double eps, double *scale,
                             double *shift);

/*
 * Split kernels: the phases of training forward and backward, for data-parallel training where
 * several processes each hold part of the batch (cbn.split wraps them; cbn.distributed does this
 * over MPI).
 *
 *   1. cbn_batch_stats on each process: per-channel mean and M2 = sum((x - mean)^2) of its
 *      N*S values (0 and 0 when it has none), in double.
 *   2. cbn_combine_stats on the gathered (count, mean, M2) of every process, in rank order:
 *      exact for uneven batch sizes (Chan et al.'s pairwise formula).
 *   3. cbn_normalize with the global mean and invstd = 1/sqrt(M2/count + eps).
 * Backward:
 *   1. cbn_backward_reduce: per-channel sum(g), sum(g*(x - mean)) and sum(x - mean), g = dy
 *      (or dy masked by y > 0 with a fused ReLU), mean = save_mean, in double; the caller
 *      all-reduces the three (a sum).
 *   2. cbn_backward_dx with the global sums and the global count.
 * save_mean is the batch mean rounded to the element type; the third sum corrects for that
 * rounding (the batch mean is save_mean + delta, delta = sum_xmu/count), so float32 data far
 * from zero keep their gradients' precision:
 *   dbias = sum_dy, dweight = (sum_dy_xmu - delta*sum_dy) * invstd, from the global sums.
 * Shapes, layouts, threads, in-place rules and error codes are those of the fused kernels above
 * (N, C, S, layout describe this process's part); the per-channel statistics exchanged between
 * the phases are always double, whatever the element type. None of these kernels has a minimum
 * M: a process may hold no values at all.
 */

/*
 * Per-channel statistics of this process's part.
 *   IN  x                 N*C*S values in `layout` (NULL only when N*C*S == 0)
 *   OUT mean, m2          C doubles each (non-NULL when C > 0): the mean and M2 =
 *                         sum((x - mean)^2) of the channel's M = N*S values; 0 and 0 when M == 0
 *                         (the count, M, is the caller's to send along)
 * Returns CBN_OK; CBN_ERR_ARGUMENT (negative size, n_threads < 1, unknown layout, a NULL
 * required pointer); CBN_ERR_NO_MEMORY.
 */
int cbn_batch_stats_f32(const float *x, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                        double *mean, double *m2, int n_threads);
int cbn_batch_stats_f64(const double *x, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                        double *mean, double *m2, int n_threads);

/*
 * Combine the statistics of P parts (processes) into those of all of them, parts merged in the
 * order 0..P-1, so every process combining the same gathered arrays gets the same bits.
 *   IN  P, C              >= 0
 *   IN  count             P doubles: values per channel in each part (N*S of that process);
 *                         parts with count 0 are skipped
 *   IN  mean, m2          P*C doubles each, row-major: row p holds part p's C values (as
 *                         cbn_batch_stats wrote them)
 *   OUT count_out         1 double: the sum of count, or NULL when not wanted
 *   OUT mean_out, m2_out  C doubles each: the combined mean and M2 (0 and 0 if every count is 0)
 * Single-threaded, allocates nothing; the outputs must not overlap the inputs.
 * Returns CBN_OK; CBN_ERR_ARGUMENT (P < 0, C < 0, a NULL pointer while C > 0).
 */
int cbn_combine_stats(int64_t P, int64_t C, const double *count, const double *mean,
                      const double *m2, double *count_out, double *mean_out, double *m2_out);

/*
 * The normalize pass of the training forward with given statistics:
 * y = (x - mean)*invstd*weight + bias (then the activation), computed as cbn_train_forward_*
 * computes it, so the batch's own mean and invstd (in double) give the same bits.
 *   IN  x                 N*C*S values in `layout` (NULL only when N*C*S == 0)
 *   OUT y                 same shape; y == x (in place) is allowed
 *   IN  mean, invstd      C doubles each (non-NULL when C > 0): the global statistics
 *   IN  weight, bias      C values or NULL (NULL weight = 1, NULL bias = 0)
 *   IN  activation        CBN_ACTIVATION_RELU: y = max(y, 0) in the same pass (NaN stays NaN)
 * Returns CBN_OK; CBN_ERR_ARGUMENT (negative size, n_threads < 1, unknown layout or activation,
 * a NULL required pointer); CBN_ERR_NO_MEMORY. N*C*S == 0: nothing is written.
 */
int cbn_normalize_f32(const float *x, float *y, int64_t N, int64_t C, int64_t S,
                      cbn_layout layout, const double *mean, const double *invstd,
                      const float *weight, const float *bias, cbn_activation activation,
                      int n_threads);
int cbn_normalize_f64(const double *x, double *y, int64_t N, int64_t C, int64_t S,
                      cbn_layout layout, const double *mean, const double *invstd,
                      const double *weight, const double *bias, cbn_activation activation,
                      int n_threads);

/*
 * The reduce phase of backward on this process's part.
 *   IN  dy, x             N*C*S values each in `layout` (NULL only when N*C*S == 0)
 *   IN  mean              C values of the element type (non-NULL when C > 0): the forward's
 *                         mean as the element type (save_mean)
 *   IN  y, activation     as for cbn_backward_*: with CBN_ACTIVATION_RELU, dy counts only where
 *                         the forward output y > 0; otherwise y is not read (pass NULL)
 *   OUT sum_dy, sum_dy_xmu, sum_xmu  C doubles each (non-NULL when C > 0): sum(g),
 *                         sum(g*(x - mean)) and sum(x - mean) over this part, each x - mean
 *                         taken in double; 0 when M == 0
 * Returns CBN_OK; CBN_ERR_ARGUMENT (negative size, n_threads < 1, unknown layout or activation,
 * a NULL required pointer); CBN_ERR_NO_MEMORY.
 */
int cbn_backward_reduce_f32(const float *dy, const float *x, const float *mean, const float *y,
                            cbn_activation activation, int64_t N, int64_t C, int64_t S,
                            cbn_layout layout, double *sum_dy, double *sum_dy_xmu,
                            double *sum_xmu, int n_threads);
int cbn_backward_reduce_f64(const double *dy, const double *x, const double *mean,
                            const double *y, cbn_activation activation, int64_t N, int64_t C,
                            int64_t S, cbn_layout layout, double *sum_dy, double *sum_dy_xmu,
                            double *sum_xmu, int n_threads);

/*
 * The dx phase of backward: dx from the global sums over `count` values per channel.
 *   IN  dy, x             N*C*S values each in `layout` (dy non-NULL when C > 0; x NULL only
 *                         when N*C*S == 0)
 *   IN  mean, invstd      C values of the element type (non-NULL when C > 0): the forward's
 *                         save_mean and save_invstd
 *   IN  weight            C values or NULL (= 1)
 *   IN  y, activation     as for cbn_backward_reduce_*
 *   IN  sum_dy, sum_dy_xmu, sum_xmu  C doubles each (non-NULL when C > 0): the sums of
 *                         cbn_backward_reduce_* over all processes
 *   IN  count             > 0: values per channel over all processes (count_out of
 *                         cbn_combine_stats)
 *   OUT dx                same shape as x; dx == dy (in place) is allowed
 * dx = weight*invstd * (g - sum_dy/count - (x - mu)*invstd^2*sum_c/count), where
 * mu = mean + delta is the batch mean, delta = sum_xmu/count, and
 * sum_c = sum_dy_xmu - delta*sum_dy is sum(g*(x - mu)).
 * Returns CBN_OK; CBN_ERR_ARGUMENT (negative size, n_threads < 1, unknown layout or activation,
 * a NULL required pointer, count <= 0 or NaN); CBN_ERR_NO_MEMORY. N*C*S == 0: nothing is
 * written.
 */
int cbn_backward_dx_f32(const float *dy, const float *x, const float *mean, const float *invstd,
                        const float *weight, const float *y, cbn_activation activation,
                        const double *sum_dy, const double *sum_dy_xmu, const double *sum_xmu,
                        double count, float *dx, int64_t N, int64_t C, int64_t S,
                        cbn_layout layout, int n_threads);
int cbn_backward_dx_f64(const double *dy, const double *x, const double *mean,
                        const double *invstd, const double *weight, const double *y,
                        cbn_activation activation, const double *sum_dy,
                        const double *sum_dy_xmu, const double *sum_xmu, double count,
                        double *dx, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                        int n_threads);


/*
 * 16-bit storage: float16 (IEEE binary16) and bfloat16 (the upper 16 bits of a float32), each
 * value held as its bits in a uint16_t. The N*C*S arrays (x, y, dy, dx, residual, d_residual)
 * are 16-bit; weight, bias, running statistics, save_mean/save_invstd, dweight and dbias are
 * float (float32), statistics are accumulated in double as for the other types. Each kernel
 * below is its _f32 namesake with the same arguments and contract, computed in float on the
 * widened (exact) inputs with float32's plan: every output value is bit for bit the _f32
 * kernel's result on the widened inputs, rounded once to the storage type (to nearest even;
 * overflow gives infinity, NaN a quiet NaN). The per-channel outputs equal the _f32 call's.
 * Inference parameters fold with cbn_fold_scale_shift_f32.
 */
typedef uint16_t cbn_float16;
typedef uint16_t cbn_bfloat16;

int cbn_train_forward_f16(const cbn_float16 *x, cbn_float16 *y, int64_t N, int64_t C, int64_t S,
                          cbn_layout layout, const float *weight, const float *bias,
                          float *running_mean, float *running_var, double momentum, double eps,
                          int unbiased_running_var, float *save_mean, float *save_invstd,
                          cbn_activation activation, int n_threads);
int cbn_train_forward_residual_f16(const cbn_float16 *x, const cbn_float16 *residual,
                                   cbn_float16 *y, int64_t N, int64_t C, int64_t S,
                                   cbn_layout layout, const float *weight, const float *bias,
                                   float *running_mean, float *running_var, double momentum,
                                   double eps, int unbiased_running_var, float *save_mean,
                                   float *save_invstd, cbn_activation activation, int n_threads);
int cbn_backward_f16(const cbn_float16 *dy, const cbn_float16 *x, const float *save_mean,
                     const float *save_invstd, const float *weight, const cbn_float16 *y,
                     cbn_activation activation, cbn_float16 *dx, float *dweight, float *dbias,
                     int64_t N, int64_t C, int64_t S, cbn_layout layout, int n_threads);
int cbn_backward_residual_f16(const cbn_float16 *dy, const cbn_float16 *x, const float *save_mean,
                              const float *save_invstd, const float *weight, const cbn_float16 *y,
                              cbn_activation activation, cbn_float16 *dx, cbn_float16 *d_residual,
                              float *dweight, float *dbias, int64_t N, int64_t C, int64_t S,
                              cbn_layout layout, int n_threads);
int cbn_infer_f16(const cbn_float16 *x, cbn_float16 *y, int64_t N, int64_t C, int64_t S,
                  cbn_layout layout, const float *running_mean, const float *running_var,
                  const float *weight, const float *bias, double eps, cbn_activation activation,
                  int n_threads);
int cbn_infer_residual_f16(const cbn_float16 *x, const cbn_float16 *residual, cbn_float16 *y,
                           int64_t N, int64_t C, int64_t S, cbn_layout layout,
                           const float *running_mean, const float *running_var, const float *weight,
                           const float *bias, double eps, cbn_activation activation, int n_threads);
int cbn_infer_backward_f16(const cbn_float16 *dy, const cbn_float16 *x, const float *running_mean,
                           const float *running_var, const float *weight, double eps,
                           const cbn_float16 *y, cbn_activation activation, cbn_float16 *dx,
                           cbn_float16 *d_residual, float *dweight, float *dbias, int64_t N,
                           int64_t C, int64_t S, cbn_layout layout, int n_threads);
int cbn_batch_stats_f16(const cbn_float16 *x, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                        double *mean, double *m2, int n_threads);
int cbn_normalize_f16(const cbn_float16 *x, cbn_float16 *y, int64_t N, int64_t C, int64_t S,
                      cbn_layout layout, const double *mean, const double *invstd,
                      const float *weight, const float *bias, cbn_activation activation,
                      int n_threads);
int cbn_backward_reduce_f16(const cbn_float16 *dy, const cbn_float16 *x, const float *mean,
                            const cbn_float16 *y, cbn_activation activation, int64_t N, int64_t C,
                            int64_t S, cbn_layout layout, double *sum_dy, double *sum_dy_xmu,
                            double *sum_xmu, int n_threads);
int cbn_backward_dx_f16(const cbn_float16 *dy, const cbn_float16 *x, const float *mean,
                        const float *invstd, const float *weight, const cbn_float16 *y,
                        cbn_activation activation, const double *sum_dy, const double *sum_dy_xmu,
                        const double *sum_xmu, double count, cbn_float16 *dx, int64_t N, int64_t C,
                        int64_t S, cbn_layout layout, int n_threads);

int cbn_train_forward_bf16(const cbn_bfloat16 *x, cbn_bfloat16 *y, int64_t N, int64_t C, int64_t S,
                           cbn_layout layout, const float *weight, const float *bias,
                           float *running_mean, float *running_var, double momentum, double eps,
                           int unbiased_running_var, float *save_mean, float *save_invstd,
                           cbn_activation activation, int n_threads);
int cbn_train_forward_residual_bf16(const cbn_bfloat16 *x, const cbn_bfloat16 *residual,
                                    cbn_bfloat16 *y, int64_t N, int64_t C, int64_t S,
                                    cbn_layout layout, const float *weight, const float *bias,
                                    float *running_mean, float *running_var, double momentum,
                                    double eps, int unbiased_running_var, float *save_mean,
                                    float *save_invstd, cbn_activation activation, int n_threads);
int cbn_backward_bf16(const cbn_bfloat16 *dy, const cbn_bfloat16 *x, const float *save_mean,
                      const float *save_invstd, const float *weight, const cbn_bfloat16 *y,
                      cbn_activation activation, cbn_bfloat16 *dx, float *dweight, float *dbias,
                      int64_t N, int64_t C, int64_t S, cbn_layout layout, int n_threads);
int cbn_backward_residual_bf16(const cbn_bfloat16 *dy, const cbn_bfloat16 *x,
                               const float *save_mean, const float *save_invstd,
                               const float *weight, const cbn_bfloat16 *y,
                               cbn_activation activation, cbn_bfloat16 *dx,
                               cbn_bfloat16 *d_residual, float *dweight, float *dbias, int64_t N,
                               int64_t C, int64_t S, cbn_layout layout, int n_threads);
int cbn_infer_bf16(const cbn_bfloat16 *x, cbn_bfloat16 *y, int64_t N, int64_t C, int64_t S,
                   cbn_layout layout, const float *running_mean, const float *running_var,
                   const float *weight, const float *bias, double eps, cbn_activation activation,
                   int n_threads);
int cbn_infer_residual_bf16(const cbn_bfloat16 *x, const cbn_bfloat16 *residual, cbn_bfloat16 *y,
                            int64_t N, int64_t C, int64_t S, cbn_layout layout,
                            const float *running_mean, const float *running_var,
                            const float *weight, const float *bias, double eps,
                            cbn_activation activation, int n_threads);
int cbn_infer_backward_bf16(const cbn_bfloat16 *dy, const cbn_bfloat16 *x,
                            const float *running_mean, const float *running_var,
                            const float *weight, double eps, const cbn_bfloat16 *y,
                            cbn_activation activation, cbn_bfloat16 *dx, cbn_bfloat16 *d_residual,
                            float *dweight, float *dbias, int64_t N, int64_t C, int64_t S,
                            cbn_layout layout, int n_threads);
int cbn_batch_stats_bf16(const cbn_bfloat16 *x, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                         double *mean, double *m2, int n_threads);
int cbn_normalize_bf16(const cbn_bfloat16 *x, cbn_bfloat16 *y, int64_t N, int64_t C, int64_t S,
                       cbn_layout layout, const double *mean, const double *invstd,
                       const float *weight, const float *bias, cbn_activation activation,
                       int n_threads);
int cbn_backward_reduce_bf16(const cbn_bfloat16 *dy, const cbn_bfloat16 *x, const float *mean,
                             const cbn_bfloat16 *y, cbn_activation activation, int64_t N, int64_t C,
                             int64_t S, cbn_layout layout, double *sum_dy, double *sum_dy_xmu,
                             double *sum_xmu, int n_threads);
int cbn_backward_dx_bf16(const cbn_bfloat16 *dy, const cbn_bfloat16 *x, const float *mean,
                         const float *invstd, const float *weight, const cbn_bfloat16 *y,
                         cbn_activation activation, const double *sum_dy, const double *sum_dy_xmu,
                         const double *sum_xmu, double count, cbn_bfloat16 *dx, int64_t N,
                         int64_t C, int64_t S, cbn_layout layout, int n_threads);

#ifdef __cplusplus
}
#endif
#endif /* CBN_H */
