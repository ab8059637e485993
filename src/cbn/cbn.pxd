# cbn.pxd - Cython declarations of cbn's C API (include/cbn.h), for other Cython code:
#
#     from cbn.cbn cimport cbn_infer_f32, CBN_CHANNELS_FIRST, CBN_ACTIVATION_NONE, CBN_OK
#     ...
#     with nogil:
#         rc = cbn_infer_f32(&x[0], &y[0], N, C, S, CBN_CHANNELS_FIRST, &rm[0], &rv[0],
#                            NULL, NULL, 1e-5, CBN_ACTIVATION_NONE, n_threads)
#
# Every function is declared nogil: the kernels touch no Python object and hold no global state.
# The meaning of every argument (sizes, layout, what may be NULL, error codes) is documented in
# cbn.h.
#
# Building an extension that cimports this file (setup.py of the downstream package):
#
#     import glob, os, cbn
#     csrc = os.path.join(os.path.dirname(cbn.__file__), "csrc")
#     Extension("mymod", ["mymod.pyx"] + sorted(glob.glob(os.path.join(csrc, "*.c"))),
#               include_dirs=[cbn.get_include()],
#               extra_compile_args=["-std=c99", "-ffp-contract=off", "-fopenmp"],
#               extra_link_args=["-fopenmp"])
#
# cbn.get_include() is the directory that holds cbn.h. The kernels themselves are compiled into
# the downstream extension from the C sources that ship in cbn/csrc/ (cbn._core does not export
# them to other extensions); without -fopenmp they build and run on one thread. Cython finds
# this file through sys.path (the installed package), or add the directory above cbn/ to
# cythonize's include_path.

from libc.stdint cimport int64_t, uint16_t

cdef extern from "cbn.h" nogil:
    ctypedef enum cbn_layout:
        CBN_CHANNELS_FIRST
        CBN_CHANNELS_LAST

    ctypedef enum cbn_activation:
        CBN_ACTIVATION_NONE
        CBN_ACTIVATION_RELU

    enum:
        CBN_OK
        CBN_ERR_ARGUMENT
        CBN_ERR_TOO_FEW_VALUES
        CBN_ERR_NO_MEMORY

    const char *cbn_error_string(int code)
    int cbn_openmp_enabled()
    int cbn_max_threads()
    void cbn_release_memory()

    # fused kernels
    int cbn_train_forward_f32(const float *x, float *y, int64_t N, int64_t C, int64_t S,
                              cbn_layout layout, const float *weight, const float *bias,
                              float *running_mean, float *running_var, double momentum,
                              double eps, int unbiased_running_var, float *save_mean,
                              float *save_invstd, cbn_activation activation, int n_threads)
    int cbn_train_forward_f64(const double *x, double *y, int64_t N, int64_t C, int64_t S,
                              cbn_layout layout, const double *weight, const double *bias,
                              double *running_mean, double *running_var, double momentum,
                              double eps, int unbiased_running_var, double *save_mean,
                              double *save_invstd, cbn_activation activation, int n_threads)
    int cbn_backward_f32(const float *dy, const float *x, const float *save_mean,
                         const float *save_invstd, const float *weight, const float *y,
                         cbn_activation activation, float *dx, float *dweight, float *dbias,
                         int64_t N, int64_t C, int64_t S, cbn_layout layout, int n_threads)
    int cbn_backward_f64(const double *dy, const double *x, const double *save_mean,
                         const double *save_invstd, const double *weight, const double *y,
                         cbn_activation activation, double *dx, double *dweight, double *dbias,
                         int64_t N, int64_t C, int64_t S, cbn_layout layout, int n_threads)
    int cbn_infer_f32(const float *x, float *y, int64_t N, int64_t C, int64_t S,
                      cbn_layout layout, const float *running_mean, const float *running_var,
                      const float *weight, const float *bias, double eps,
                      cbn_activation activation, int n_threads)
    int cbn_infer_f64(const double *x, double *y, int64_t N, int64_t C, int64_t S,
                      cbn_layout layout, const double *running_mean, const double *running_var,
                      const double *weight, const double *bias, double eps,
                      cbn_activation activation, int n_threads)
    int cbn_fold_scale_shift_f32(int64_t C, const float *running_mean, const float *running_var,
                                 const float *weight, const float *bias, double eps,
                                 float *scale, float *shift)
    int cbn_fold_scale_shift_f64(int64_t C, const double *running_mean,
                                 const double *running_var, const double *weight,
                                 const double *bias, double eps, double *scale, double *shift)

    # fused residual add, and backward through frozen statistics
    int cbn_train_forward_residual_f32(const float *x, const float *residual, float *y,
                                       int64_t N, int64_t C, int64_t S, cbn_layout layout,
                                       const float *weight, const float *bias,
                                       float *running_mean, float *running_var, double momentum,
                                       double eps, int unbiased_running_var, float *save_mean,
                                       float *save_invstd, cbn_activation activation,
                                       int n_threads)
    int cbn_train_forward_residual_f64(const double *x, const double *residual, double *y,
                                       int64_t N, int64_t C, int64_t S, cbn_layout layout,
                                       const double *weight, const double *bias,
                                       double *running_mean, double *running_var,
                                       double momentum, double eps, int unbiased_running_var,
                                       double *save_mean, double *save_invstd,
                                       cbn_activation activation, int n_threads)
    int cbn_backward_residual_f32(const float *dy, const float *x, const float *save_mean,
                                  const float *save_invstd, const float *weight, const float *y,
                                  cbn_activation activation, float *dx, float *d_residual,
                                  float *dweight, float *dbias, int64_t N, int64_t C, int64_t S,
                                  cbn_layout layout, int n_threads)
    int cbn_backward_residual_f64(const double *dy, const double *x, const double *save_mean,
                                  const double *save_invstd, const double *weight,
                                  const double *y, cbn_activation activation, double *dx,
                                  double *d_residual, double *dweight, double *dbias,
                                  int64_t N, int64_t C, int64_t S, cbn_layout layout,
                                  int n_threads)
    int cbn_infer_residual_f32(const float *x, const float *residual, float *y, int64_t N,
                               int64_t C, int64_t S, cbn_layout layout,
                               const float *running_mean, const float *running_var,
                               const float *weight, const float *bias, double eps,
                               cbn_activation activation, int n_threads)
    int cbn_infer_residual_f64(const double *x, const double *residual, double *y, int64_t N,
                               int64_t C, int64_t S, cbn_layout layout,
                               const double *running_mean, const double *running_var,
                               const double *weight, const double *bias, double eps,
                               cbn_activation activation, int n_threads)
    int cbn_infer_backward_f32(const float *dy, const float *x, const float *running_mean,
                               const float *running_var, const float *weight, double eps,
                               const float *y, cbn_activation activation, float *dx,
                               float *d_residual, float *dweight, float *dbias, int64_t N,
                               int64_t C, int64_t S, cbn_layout layout, int n_threads)
    int cbn_infer_backward_f64(const double *dy, const double *x, const double *running_mean,
                               const double *running_var, const double *weight, double eps,
                               const double *y, cbn_activation activation, double *dx,
                               double *d_residual, double *dweight, double *dbias, int64_t N,
                               int64_t C, int64_t S, cbn_layout layout, int n_threads)

    # split kernels (data-parallel training)
    int cbn_batch_stats_f32(const float *x, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                            double *mean, double *m2, int n_threads)
    int cbn_batch_stats_f64(const double *x, int64_t N, int64_t C, int64_t S,
                            cbn_layout layout, double *mean, double *m2, int n_threads)
    int cbn_combine_stats(int64_t P, int64_t C, const double *count, const double *mean,
                          const double *m2, double *count_out, double *mean_out,
                          double *m2_out)
    int cbn_normalize_f32(const float *x, float *y, int64_t N, int64_t C, int64_t S,
                          cbn_layout layout, const double *mean, const double *invstd,
                          const float *weight, const float *bias, cbn_activation activation,
                          int n_threads)
    int cbn_normalize_f64(const double *x, double *y, int64_t N, int64_t C, int64_t S,
                          cbn_layout layout, const double *mean, const double *invstd,
                          const double *weight, const double *bias, cbn_activation activation,
                          int n_threads)
    int cbn_backward_reduce_f32(const float *dy, const float *x, const float *mean,
                                const float *y, cbn_activation activation, int64_t N,
                                int64_t C, int64_t S, cbn_layout layout, double *sum_dy,
                                double *sum_dy_xmu, double *sum_xmu, int n_threads)
    int cbn_backward_reduce_f64(const double *dy, const double *x, const double *mean,
                                const double *y, cbn_activation activation, int64_t N,
                                int64_t C, int64_t S, cbn_layout layout, double *sum_dy,
                                double *sum_dy_xmu, double *sum_xmu, int n_threads)
    int cbn_backward_dx_f32(const float *dy, const float *x, const float *mean,
                            const float *invstd, const float *weight, const float *y,
                            cbn_activation activation, const double *sum_dy,
                            const double *sum_dy_xmu, const double *sum_xmu, double count,
                            float *dx, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                            int n_threads)
    int cbn_backward_dx_f64(const double *dy, const double *x, const double *mean,
                            const double *invstd, const double *weight, const double *y,
                            cbn_activation activation, const double *sum_dy,
                            const double *sum_dy_xmu, const double *sum_xmu, double count,
                            double *dx, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                            int n_threads)

    # 16-bit storage (float16, bfloat16 as their bits): 16-bit tensors, float parameters
    ctypedef uint16_t cbn_float16
    ctypedef uint16_t cbn_bfloat16

    int cbn_train_forward_f16(const cbn_float16 *x, cbn_float16 *y, int64_t N, int64_t C, int64_t S,
                              cbn_layout layout, const float *weight, const float *bias,
                              float *running_mean, float *running_var, double momentum, double eps,
                              int unbiased_running_var, float *save_mean, float *save_invstd,
                              cbn_activation activation, int n_threads)
    int cbn_train_forward_residual_f16(const cbn_float16 *x, const cbn_float16 *residual,
                                       cbn_float16 *y, int64_t N, int64_t C, int64_t S,
                                       cbn_layout layout, const float *weight, const float *bias,
                                       float *running_mean, float *running_var, double momentum,
                                       double eps, int unbiased_running_var, float *save_mean,
                                       float *save_invstd, cbn_activation activation, int n_threads)
    int cbn_backward_f16(const cbn_float16 *dy, const cbn_float16 *x, const float *save_mean,
                         const float *save_invstd, const float *weight, const cbn_float16 *y,
                         cbn_activation activation, cbn_float16 *dx, float *dweight, float *dbias,
                         int64_t N, int64_t C, int64_t S, cbn_layout layout, int n_threads)
    int cbn_backward_residual_f16(const cbn_float16 *dy, const cbn_float16 *x,
                                  const float *save_mean, const float *save_invstd,
                                  const float *weight, const cbn_float16 *y,
                                  cbn_activation activation, cbn_float16 *dx,
                                  cbn_float16 *d_residual, float *dweight, float *dbias, int64_t N,
                                  int64_t C, int64_t S, cbn_layout layout, int n_threads)
    int cbn_infer_f16(const cbn_float16 *x, cbn_float16 *y, int64_t N, int64_t C, int64_t S,
                      cbn_layout layout, const float *running_mean, const float *running_var,
                      const float *weight, const float *bias, double eps, cbn_activation activation,
                      int n_threads)
    int cbn_infer_residual_f16(const cbn_float16 *x, const cbn_float16 *residual, cbn_float16 *y,
                               int64_t N, int64_t C, int64_t S, cbn_layout layout,
                               const float *running_mean, const float *running_var,
                               const float *weight, const float *bias, double eps,
                               cbn_activation activation, int n_threads)
    int cbn_infer_backward_f16(const cbn_float16 *dy, const cbn_float16 *x,
                               const float *running_mean, const float *running_var,
                               const float *weight, double eps, const cbn_float16 *y,
                               cbn_activation activation, cbn_float16 *dx, cbn_float16 *d_residual,
                               float *dweight, float *dbias, int64_t N, int64_t C, int64_t S,
                               cbn_layout layout, int n_threads)
    int cbn_batch_stats_f16(const cbn_float16 *x, int64_t N, int64_t C, int64_t S,
                            cbn_layout layout, double *mean, double *m2, int n_threads)
    int cbn_normalize_f16(const cbn_float16 *x, cbn_float16 *y, int64_t N, int64_t C, int64_t S,
                          cbn_layout layout, const double *mean, const double *invstd,
                          const float *weight, const float *bias, cbn_activation activation,
                          int n_threads)
    int cbn_backward_reduce_f16(const cbn_float16 *dy, const cbn_float16 *x, const float *mean,
                                const cbn_float16 *y, cbn_activation activation, int64_t N,
                                int64_t C, int64_t S, cbn_layout layout, double *sum_dy,
                                double *sum_dy_xmu, double *sum_xmu, int n_threads)
    int cbn_backward_dx_f16(const cbn_float16 *dy, const cbn_float16 *x, const float *mean,
                            const float *invstd, const float *weight, const cbn_float16 *y,
                            cbn_activation activation, const double *sum_dy,
                            const double *sum_dy_xmu, const double *sum_xmu, double count,
                            cbn_float16 *dx, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                            int n_threads)

    int cbn_train_forward_bf16(const cbn_bfloat16 *x, cbn_bfloat16 *y, int64_t N, int64_t C,
                               int64_t S, cbn_layout layout, const float *weight, const float *bias,
                               float *running_mean, float *running_var, double momentum, double eps,
                               int unbiased_running_var, float *save_mean, float *save_invstd,
                               cbn_activation activation, int n_threads)
    int cbn_train_forward_residual_bf16(const cbn_bfloat16 *x, const cbn_bfloat16 *residual,
                                        cbn_bfloat16 *y, int64_t N, int64_t C, int64_t S,
                                        cbn_layout layout, const float *weight, const float *bias,
                                        float *running_mean, float *running_var, double momentum,
                                        double eps, int unbiased_running_var, float *save_mean,
                                        float *save_invstd, cbn_activation activation,
                                        int n_threads)
    int cbn_backward_bf16(const cbn_bfloat16 *dy, const cbn_bfloat16 *x, const float *save_mean,
                          const float *save_invstd, const float *weight, const cbn_bfloat16 *y,
                          cbn_activation activation, cbn_bfloat16 *dx, float *dweight, float *dbias,
                          int64_t N, int64_t C, int64_t S, cbn_layout layout, int n_threads)
    int cbn_backward_residual_bf16(const cbn_bfloat16 *dy, const cbn_bfloat16 *x,
                                   const float *save_mean, const float *save_invstd,
                                   const float *weight, const cbn_bfloat16 *y,
                                   cbn_activation activation, cbn_bfloat16 *dx,
                                   cbn_bfloat16 *d_residual, float *dweight, float *dbias,
                                   int64_t N, int64_t C, int64_t S, cbn_layout layout,
                                   int n_threads)
    int cbn_infer_bf16(const cbn_bfloat16 *x, cbn_bfloat16 *y, int64_t N, int64_t C, int64_t S,
                       cbn_layout layout, const float *running_mean, const float *running_var,
                       const float *weight, const float *bias, double eps,
                       cbn_activation activation, int n_threads)
    int cbn_infer_residual_bf16(const cbn_bfloat16 *x, const cbn_bfloat16 *residual,
                                cbn_bfloat16 *y, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                                const float *running_mean, const float *running_var,
                                const float *weight, const float *bias, double eps,
                                cbn_activation activation, int n_threads)
    int cbn_infer_backward_bf16(const cbn_bfloat16 *dy, const cbn_bfloat16 *x,
                                const float *running_mean, const float *running_var,
                                const float *weight, double eps, const cbn_bfloat16 *y,
                                cbn_activation activation, cbn_bfloat16 *dx,
                                cbn_bfloat16 *d_residual, float *dweight, float *dbias, int64_t N,
                                int64_t C, int64_t S, cbn_layout layout, int n_threads)
    int cbn_batch_stats_bf16(const cbn_bfloat16 *x, int64_t N, int64_t C, int64_t S,
                             cbn_layout layout, double *mean, double *m2, int n_threads)
    int cbn_normalize_bf16(const cbn_bfloat16 *x, cbn_bfloat16 *y, int64_t N, int64_t C, int64_t S,
                           cbn_layout layout, const double *mean, const double *invstd,
                           const float *weight, const float *bias, cbn_activation activation,
                           int n_threads)
    int cbn_backward_reduce_bf16(const cbn_bfloat16 *dy, const cbn_bfloat16 *x, const float *mean,
                                 const cbn_bfloat16 *y, cbn_activation activation, int64_t N,
                                 int64_t C, int64_t S, cbn_layout layout, double *sum_dy,
                                 double *sum_dy_xmu, double *sum_xmu, int n_threads)
    int cbn_backward_dx_bf16(const cbn_bfloat16 *dy, const cbn_bfloat16 *x, const float *mean,
                             const float *invstd, const float *weight, const cbn_bfloat16 *y,
                             cbn_activation activation, const double *sum_dy,
                             const double *sum_dy_xmu, const double *sum_xmu, double count,
                             cbn_bfloat16 *dx, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                             int n_threads)
