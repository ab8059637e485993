/* kernel_list.h - the one list of the entry points that the dispatched build (dispatch.c)
 * forwards to the kernels of the CPU level in use: each with the parameter list it has in
 * include/cbn.h (or plan.h) and the argument list that passes them on. dispatch.c builds the
 * table of kernel pointers, the public forwarding functions and the list of names that the
 * tests compare with cbn.h from this file alone.
 *
 * A new element type whose kernels take (T storage, P per-channel values) is one line in
 * CBN_KERNEL_TYPES (CBN_STORAGE_TYPES for a storage-only type such as float16, which has no
 * parameter-only kernels of its own); a new kernel is one entry in CBN_TENSOR_KERNELS or
 * CBN_PARAM_KERNELS (or, for a kernel of one type only, one entry in CBN_KERNELS_OTHER). A
 * kernel missing here fails the dispatched build at link time (its public name is then never
 * defined) and tests/test_cpu_dispatch.py.
 */
#ifndef CBN_KERNEL_LIST_H
#define CBN_KERNEL_LIST_H

#include "cbn.h"
#include "plan.h"

#define CBN_KL_CAT_(a, b) a##_##b
#define CBN_KL_CAT(a, b) CBN_KL_CAT_(a, b)

/* X(K, V, suffix, T, P) for each instantiation file cbn_<suffix>.c: T is the type of the
 * N*C*S arrays, P that of the per-channel arrays (weight, bias, statistics). */
#define CBN_KERNEL_TYPES(X, K, V)                                                              \
    X(K, V, f32, float, float)                                                                 \
    X(K, V, f64, double, double)

/* The same kernels for the 16-bit storage types: tensors of T = cbn_float16 or cbn_bfloat16
 * (computed in float), parameters and statistics of P = float. */
#define CBN_STORAGE_TYPES(X, K, V)                                                             \
    X(K, V, f16, cbn_float16, float)                                                           \
    X(K, V, bf16, cbn_bfloat16, float)

/* K(name, (parameters), (arguments)) for each function returning int, V(...) for each returning
 * void, of the element type with suffix S: those with N*C*S arrays (every type), */
#define CBN_TENSOR_KERNELS(K, V, S, T, P)                                                      \
    K(CBN_KL_CAT(cbn_train_forward, S),                                                        \
      (const T *x, T *y, int64_t N, int64_t C, int64_t S_, cbn_layout layout, const P *weight, \
       const P *bias, P *running_mean, P *running_var, double momentum, double eps,            \
       int unbiased_running_var, P *save_mean, P *save_invstd, cbn_activation activation,      \
       int n_threads),                                                                         \
      (x, y, N, C, S_, layout, weight, bias, running_mean, running_var, momentum, eps,         \
       unbiased_running_var, save_mean, save_invstd, activation, n_threads))                   \
    K(CBN_KL_CAT(cbn_train_forward_residual, S),                                               \
      (const T *x, const T *residual, T *y, int64_t N, int64_t C, int64_t S_,                  \
       cbn_layout layout, const P *weight, const P *bias, P *running_mean, P *running_var,     \
       double momentum, double eps, int unbiased_running_var, P *save_mean, P *save_invstd,    \
       cbn_activation activation, int n_threads),                                              \
      (x, residual, y, N, C, S_, layout, weight, bias, running_mean, running_var, momentum,    \
       eps, unbiased_running_var, save_mean, save_invstd, activation, n_threads))              \
    K(CBN_KL_CAT(cbn_backward, S),                                                             \
      (const T *dy, const T *x, const P *save_mean, const P *save_invstd, const P *weight,     \
       const T *y, cbn_activation activation, T *dx, P *dweight, P *dbias, int64_t N,          \
       int64_t C, int64_t S_, cbn_layout layout, int n_threads),                               \
      (dy, x, save_mean, save_invstd, weight, y, activation, dx, dweight, dbias, N, C, S_,     \
       layout, n_threads))                                                                     \
    K(CBN_KL_CAT(cbn_backward_residual, S),                                                    \
      (const T *dy, const T *x, const P *save_mean, const P *save_invstd, const P *weight,     \
       const T *y, cbn_activation activation, T *dx, T *d_residual, P *dweight, P *dbias,      \
       int64_t N, int64_t C, int64_t S_, cbn_layout layout, int n_threads),                    \
      (dy, x, save_mean, save_invstd, weight, y, activation, dx, d_residual, dweight, dbias,   \
       N, C, S_, layout, n_threads))                                                           \
    K(CBN_KL_CAT(cbn_infer, S),                                                                \
      (const T *x, T *y, int64_t N, int64_t C, int64_t S_, cbn_layout layout,                  \
       const P *running_mean, const P *running_var, const P *weight, const P *bias,            \
       double eps, cbn_activation activation, int n_threads),                                  \
      (x, y, N, C, S_, layout, running_mean, running_var, weight, bias, eps, activation,       \
       n_threads))                                                                             \
    K(CBN_KL_CAT(cbn_infer_residual, S),                                                       \
      (const T *x, const T *residual, T *y, int64_t N, int64_t C, int64_t S_,                  \
       cbn_layout layout, const P *running_mean, const P *running_var, const P *weight,        \
       const P *bias, double eps, cbn_activation activation, int n_threads),                   \
      (x, residual, y, N, C, S_, layout, running_mean, running_var, weight, bias, eps,         \
       activation, n_threads))                                                                 \
    K(CBN_KL_CAT(cbn_infer_backward, S),                                                       \
      (const T *dy, const T *x, const P *running_mean, const P *running_var, const P *weight,  \
       double eps, const T *y, cbn_activation activation, T *dx, T *d_residual, P *dweight,    \
       P *dbias, int64_t N, int64_t C, int64_t S_, cbn_layout layout, int n_threads),          \
      (dy, x, running_mean, running_var, weight, eps, y, activation, dx, d_residual, dweight,  \
       dbias, N, C, S_, layout, n_threads))                                                    \
    K(CBN_KL_CAT(cbn_batch_stats, S),                                                          \
      (const T *x, int64_t N, int64_t C, int64_t S_, cbn_layout layout, double *mean,          \
       double *m2, int n_threads),                                                             \
      (x, N, C, S_, layout, mean, m2, n_threads))                                              \
    K(CBN_KL_CAT(cbn_normalize, S),                                                            \
      (const T *x, T *y, int64_t N, int64_t C, int64_t S_, cbn_layout layout,                  \
       const double *mean, const double *invstd, const P *weight, const P *bias,               \
       cbn_activation activation, int n_threads),                                              \
      (x, y, N, C, S_, layout, mean, invstd, weight, bias, activation, n_threads))             \
    K(CBN_KL_CAT(cbn_backward_reduce, S),                                                      \
      (const T *dy, const T *x, const P *mean, const T *y, cbn_activation activation,          \
       int64_t N, int64_t C, int64_t S_, cbn_layout layout, double *sum_dy,                    \
       double *sum_dy_xmu, double *sum_xmu, int n_threads),                                    \
      (dy, x, mean, y, activation, N, C, S_, layout, sum_dy, sum_dy_xmu, sum_xmu, n_threads))  \
    K(CBN_KL_CAT(cbn_backward_dx, S),                                                          \
      (const T *dy, const T *x, const P *mean, const P *invstd, const P *weight, const T *y,   \
       cbn_activation activation, const double *sum_dy, const double *sum_dy_xmu,              \
       const double *sum_xmu, double count, T *dx, int64_t N, int64_t C, int64_t S_,           \
       cbn_layout layout, int n_threads),                                                      \
      (dy, x, mean, invstd, weight, y, activation, sum_dy, sum_dy_xmu, sum_xmu, count, dx, N,  \
       C, S_, layout, n_threads))

/* and those of per-channel values only (f32 and f64: the 16-bit types use float32's). */
#define CBN_PARAM_KERNELS(K, V, S, T, P)                                                       \
    K(CBN_KL_CAT(cbn_fold_scale_shift, S),                                                     \
      (int64_t C, const P *running_mean, const P *running_var, const P *weight, const P *bias, \
       double eps, P *scale, P *shift),                                                        \
      (C, running_mean, running_var, weight, bias, eps, scale, shift))                         \
    V(CBN_KL_CAT(cbn_plan_path, S),                                                            \
      (cbn_path *path, int64_t N, int64_t C, int64_t S_, cbn_layout layout, int n_threads,     \
       cbn_path_op op),                                                                        \
      (path, N, C, S_, layout, n_threads, op))

#define CBN_KERNELS_OF_TYPE(K, V, S, T, P)                                                     \
    CBN_TENSOR_KERNELS(K, V, S, T, P) CBN_PARAM_KERNELS(K, V, S, T, P)

/* Entry points of one element type only (none yet): K(name, (parameters), (arguments)). */
#define CBN_KERNELS_OTHER(K, V)

/* Every dispatched entry point, in one fixed order. */
#define CBN_KERNELS(K, V)                                                                      \
    CBN_KERNEL_TYPES(CBN_KERNELS_OF_TYPE, K, V)                                                \
    CBN_STORAGE_TYPES(CBN_TENSOR_KERNELS, K, V) CBN_KERNELS_OTHER(K, V)

#endif
