# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin bridge to the C kernels: arrays in, pointers and sizes out, GIL released, C called.

Callers (cbn._api) have already validated every argument: arrays are C-contiguous, of the
element type named by the function's dtype, and of the right sizes. Optional arrays may be None
(passed as NULL). Each function returns the C status code.
"""
cimport numpy as cnp
from libc.stdint cimport int64_t

cnp.import_array()

# The C API is declared once, in cbn.pxd (which other Cython code cimports too).
from cbn.cbn cimport *


cdef inline void *_ptr(object a):
    """Data pointer of an ndarray, NULL for None."""
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline bint _is_f32(object x):
    return cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT32


def address(a):
    """Data address of an ndarray (for placing new outputs; cheaper than __array_interface__)."""
    return <size_t>cnp.PyArray_DATA(<cnp.ndarray>a)


def array_flags(a):
    """Bits of the ndarray's flags (cheaper than a.flags): 1 C-contiguous, 2 writeable,
    4 aligned for its dtype."""
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return ((1 if cnp.PyArray_IS_C_CONTIGUOUS(arr) else 0)
            | (2 if cnp.PyArray_ISWRITEABLE(arr) else 0)
            | (4 if cnp.PyArray_ISALIGNED(arr) else 0))


def error_string(int code):
    return cbn_error_string(code).decode()


def openmp_enabled():
    return bool(cbn_openmp_enabled())


def max_threads():
    return cbn_max_threads()


def train_forward(x, y, int64_t N, int64_t C, int64_t S, bint channels_last, weight, bias,
                  running_mean, running_var, double momentum, double eps,
                  bint unbiased_running_var, save_mean, save_invstd, bint relu, int n_threads):
    cdef cbn_layout layout = CBN_CHANNELS_LAST if channels_last else CBN_CHANNELS_FIRST
    cdef cbn_activation act = CBN_ACTIVATION_RELU if relu else CBN_ACTIVATION_NONE
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(y)
    cdef void *pw = _ptr(weight)
    cdef void *pb = _ptr(bias)
    cdef void *prm = _ptr(running_mean)
    cdef void *prv = _ptr(running_var)
    cdef void *psm = _ptr(save_mean)
    cdef void *psi = _ptr(save_invstd)
    cdef int rc
    if _is_f32(x):
        with nogil:
            rc = cbn_train_forward_f32(<float *>px, <float *>py, N, C, S, layout,
                                       <float *>pw, <float *>pb, <float *>prm, <float *>prv,
                                       momentum, eps, unbiased_running_var, <float *>psm,
                                       <float *>psi, act, n_threads)
    else:
        with nogil:
            rc = cbn_train_forward_f64(<double *>px, <double *>py, N, C, S, layout,
                                       <double *>pw, <double *>pb, <double *>prm,
                                       <double *>prv, momentum, eps, unbiased_running_var,
                                       <double *>psm, <double *>psi, act, n_threads)
    return rc


def backward(dy, x, save_mean, save_invstd, weight, y, dx, dweight, dbias, int64_t N, int64_t C,
             int64_t S, bint channels_last, int n_threads):
    """y: the output of a fused ReLU (its gradient is applied), or None."""
    cdef cbn_layout layout = CBN_CHANNELS_LAST if channels_last else CBN_CHANNELS_FIRST
    cdef cbn_activation act = CBN_ACTIVATION_NONE if y is None else CBN_ACTIVATION_RELU
    cdef void *py = _ptr(y)
    cdef void *pdy = _ptr(dy)
    cdef void *px = _ptr(x)
    cdef void *psm = _ptr(save_mean)
    cdef void *psi = _ptr(save_invstd)
    cdef void *pw = _ptr(weight)
    cdef void *pdx = _ptr(dx)
    cdef void *pdw = _ptr(dweight)
    cdef void *pdb = _ptr(dbias)
    cdef int rc
    if _is_f32(x):
        with nogil:
            rc = cbn_backward_f32(<float *>pdy, <float *>px, <float *>psm, <float *>psi,
                                  <float *>pw, <float *>py, act, <float *>pdx, <float *>pdw,
                                  <float *>pdb, N, C, S, layout, n_threads)
    else:
        with nogil:
            rc = cbn_backward_f64(<double *>pdy, <double *>px, <double *>psm, <double *>psi,
                                  <double *>pw, <double *>py, act, <double *>pdx,
                                  <double *>pdw, <double *>pdb, N, C, S, layout, n_threads)
    return rc


def infer(x, y, int64_t N, int64_t C, int64_t S, bint channels_last, running_mean,
          running_var, weight, bias, double eps, bint relu, int n_threads):
    cdef cbn_layout layout = CBN_CHANNELS_LAST if channels_last else CBN_CHANNELS_FIRST
    cdef cbn_activation act = CBN_ACTIVATION_RELU if relu else CBN_ACTIVATION_NONE
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(y)
    cdef void *prm = _ptr(running_mean)
    cdef void *prv = _ptr(running_var)
    cdef void *pw = _ptr(weight)
    cdef void *pb = _ptr(bias)
    cdef int rc
    if _is_f32(x):
        with nogil:
            rc = cbn_infer_f32(<float *>px, <float *>py, N, C, S, layout, <float *>prm,
                               <float *>prv, <float *>pw, <float *>pb, eps, act, n_threads)
    else:
        with nogil:
            rc = cbn_infer_f64(<double *>px, <double *>py, N, C, S, layout, <double *>prm,
                               <double *>prv, <double *>pw, <double *>pb, eps, act,
                               n_threads)
    return rc


def fold_scale_shift(int64_t C, running_mean, running_var, weight, bias, double eps, scale,
                     shift):
    cdef void *prm = _ptr(running_mean)
    cdef void *prv = _ptr(running_var)
    cdef void *pw = _ptr(weight)
    cdef void *pb = _ptr(bias)
    cdef void *ps = _ptr(scale)
    cdef void *psh = _ptr(shift)
    if _is_f32(running_mean):
        return cbn_fold_scale_shift_f32(C, <float *>prm, <float *>prv, <float *>pw,
                                        <float *>pb, eps, <float *>ps, <float *>psh)
    return cbn_fold_scale_shift_f64(C, <double *>prm, <double *>prv, <double *>pw,
                                    <double *>pb, eps, <double *>ps, <double *>psh)


# ---- split kernels (cbn.split) ------------------------------------------------------------------

def batch_stats(x, int64_t N, int64_t C, int64_t S, bint channels_last, mean, m2, int n_threads):
    cdef cbn_layout layout = CBN_CHANNELS_LAST if channels_last else CBN_CHANNELS_FIRST
    cdef void *px = _ptr(x)
    cdef double *pm = <double *>_ptr(mean)
    cdef double *pq = <double *>_ptr(m2)
    cdef int rc
    if _is_f32(x):
        with nogil:
            rc = cbn_batch_stats_f32(<float *>px, N, C, S, layout, pm, pq, n_threads)
    else:
        with nogil:
            rc = cbn_batch_stats_f64(<double *>px, N, C, S, layout, pm, pq, n_threads)
    return rc


def combine_stats(int64_t P, int64_t C, count, mean, m2, mean_out, m2_out):
    """Returns (status, total count)."""
    cdef double total = 0.0
    cdef int rc = cbn_combine_stats(P, C, <double *>_ptr(count), <double *>_ptr(mean),
                                    <double *>_ptr(m2), &total, <double *>_ptr(mean_out),
                                    <double *>_ptr(m2_out))
    return rc, total


def normalize(x, y, int64_t N, int64_t C, int64_t S, bint channels_last, mean, invstd, weight,
              bias, bint relu, int n_threads):
    cdef cbn_layout layout = CBN_CHANNELS_LAST if channels_last else CBN_CHANNELS_FIRST
    cdef cbn_activation act = CBN_ACTIVATION_RELU if relu else CBN_ACTIVATION_NONE
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(y)
    cdef double *pm = <double *>_ptr(mean)
    cdef double *pi = <double *>_ptr(invstd)
    cdef void *pw = _ptr(weight)
    cdef void *pb = _ptr(bias)
    cdef int rc
    if _is_f32(x):
        with nogil:
            rc = cbn_normalize_f32(<float *>px, <float *>py, N, C, S, layout, pm, pi,
                                   <float *>pw, <float *>pb, act, n_threads)
    else:
        with nogil:
            rc = cbn_normalize_f64(<double *>px, <double *>py, N, C, S, layout, pm, pi,
                                   <double *>pw, <double *>pb, act, n_threads)
    return rc


def backward_reduce(dy, x, mean, y, int64_t N, int64_t C, int64_t S, bint channels_last,
                    sum_dy, sum_dy_xmu, int n_threads):
    cdef cbn_layout layout = CBN_CHANNELS_LAST if channels_last else CBN_CHANNELS_FIRST
    cdef cbn_activation act = CBN_ACTIVATION_NONE if y is None else CBN_ACTIVATION_RELU
    cdef void *pdy = _ptr(dy)
    cdef void *px = _ptr(x)
    cdef void *pm = _ptr(mean)
    cdef void *py = _ptr(y)
    cdef double *ps = <double *>_ptr(sum_dy)
    cdef double *pq = <double *>_ptr(sum_dy_xmu)
    cdef int rc
    if _is_f32(x):
        with nogil:
            rc = cbn_backward_reduce_f32(<float *>pdy, <float *>px, <float *>pm, <float *>py,
                                         act, N, C, S, layout, ps, pq, n_threads)
    else:
        with nogil:
            rc = cbn_backward_reduce_f64(<double *>pdy, <double *>px, <double *>pm,
                                         <double *>py, act, N, C, S, layout, ps, pq, n_threads)
    return rc


def backward_dx(dy, x, mean, invstd, weight, y, sum_dy, sum_dy_xmu, double count, dx,
                int64_t N, int64_t C, int64_t S, bint channels_last, int n_threads):
    cdef cbn_layout layout = CBN_CHANNELS_LAST if channels_last else CBN_CHANNELS_FIRST
    cdef cbn_activation act = CBN_ACTIVATION_NONE if y is None else CBN_ACTIVATION_RELU
    cdef void *pdy = _ptr(dy)
    cdef void *px = _ptr(x)
    cdef void *pm = _ptr(mean)
    cdef void *pi = _ptr(invstd)
    cdef void *pw = _ptr(weight)
    cdef void *py = _ptr(y)
    cdef double *ps = <double *>_ptr(sum_dy)
    cdef double *pq = <double *>_ptr(sum_dy_xmu)
    cdef void *pdx = _ptr(dx)
    cdef int rc
    if _is_f32(x):
        with nogil:
            rc = cbn_backward_dx_f32(<float *>pdy, <float *>px, <float *>pm, <float *>pi,
                                     <float *>pw, <float *>py, act, ps, pq, count,
                                     <float *>pdx, N, C, S, layout, n_threads)
    else:
        with nogil:
            rc = cbn_backward_dx_f64(<double *>pdy, <double *>px, <double *>pm, <double *>pi,
                                     <double *>pw, <double *>py, act, ps, pq, count,
                                     <double *>pdx, N, C, S, layout, n_threads)
    return rc
