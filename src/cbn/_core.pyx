# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin bridge to the C kernels: arrays in, pointers and sizes out, GIL released, C called.

Callers have already validated every argument: arrays are C-contiguous, of one floating element
type (float32 or float64, that of x; or float16/bfloat16 tensors with float32 parameters), and
of the right sizes; statistics passed as double are
float64. Optional arrays may be None (passed as NULL). Each function returns the C status code.
"""
cimport numpy as cnp
from libc.stdint cimport int64_t

cnp.import_array()

# The C API is declared once, in cbn.pxd (which other Cython code cimports too).
from cbn.cbn cimport *


cdef extern from "thread_limit.h" nogil:
    int cbn_thread_limit(int requested)


cdef extern from "contention.h" nogil:
    void cbn_contention_note(double wall, double cpu, int n_helpers)
    int cbn_contended()
    int cbn_set_contention_fallback(int on)

cdef extern from "dispatch.h" nogil:
    int cbn_cpu_supports_level(const char *level)
    int cbn_cpu_dispatched()
    const char *cbn_cpu_level()
    int cbn_select_cpu_level(const char *level)
    const char *cbn_dispatched_kernel(int i)


cdef extern from "plan.h" nogil:
    ctypedef struct cbn_plan:
        int channels_last
        int columns
        int64_t n_chunks, n_row_blocks, n_col_tiles, n_units
        int n_threads
    ctypedef enum cbn_path_op:
        CBN_PATH_TRAIN, CBN_PATH_BACKWARD, CBN_PATH_INFER
    ctypedef struct cbn_path:
        cbn_plan plan
        int stream, cf_groups, cf_apply_only, cl_whole_tiles
    void cbn_plan_path_f32(cbn_path *path, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                           int n_threads, cbn_path_op op)
    void cbn_plan_path_f64(cbn_path *path, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                           int n_threads, cbn_path_op op)


cdef inline void *_ptr(object a):
    """Data pointer of an ndarray, NULL for None."""
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline bint _is_f32(object x):
    return cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT32


# Element types of the tensors, as CBN_BY_TYPE takes them.
cdef enum:
    KIND_F64, KIND_F32, KIND_F16, KIND_BF16


cdef inline int _kind(object x):
    """The tensors' element type; validation let through only these four, and a 2-byte type
    other than NumPy's float16 is ml_dtypes.bfloat16."""
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if t == cnp.NPY_FLOAT32:
        return KIND_F32
    if t == cnp.NPY_FLOAT64:
        return KIND_F64
    if t == cnp.NPY_FLOAT16:
        return KIND_F16
    return KIND_BF16


# Each kernel is called by name once, whatever the element type: the macros below pick its _f32,
# _f64, _f16 or _bf16 instantiation from the kind (_kind; fold_scale_shift, parameters only,
# from a float32 flag), and the element arrays travel as void * (which C converts to float *,
# double * or cbn_float16 * without a cast). The signatures are those of cbn.h (cbn.pxd) with
# void * for T *.
cdef extern from *:
    """
    #define CBN_BY_TYPE(kind, kernel, ...) \
        ((kind) == 1 ? kernel##_f32(__VA_ARGS__) : (kind) == 2 ? kernel##_f16(__VA_ARGS__) \
         : (kind) == 3 ? kernel##_bf16(__VA_ARGS__) : kernel##_f64(__VA_ARGS__))
    #define cbn_fold_scale_shift_t(f32, ...) \
        ((f32) ? cbn_fold_scale_shift_f32(__VA_ARGS__) : cbn_fold_scale_shift_f64(__VA_ARGS__))
    #define cbn_batch_stats_t(kind, ...) CBN_BY_TYPE(kind, cbn_batch_stats, __VA_ARGS__)
    #define cbn_normalize_t(kind, ...) CBN_BY_TYPE(kind, cbn_normalize, __VA_ARGS__)
    #define cbn_backward_reduce_t(kind, ...) CBN_BY_TYPE(kind, cbn_backward_reduce, __VA_ARGS__)
    #define cbn_backward_dx_t(kind, ...) CBN_BY_TYPE(kind, cbn_backward_dx, __VA_ARGS__)
    #define cbn_train_forward_residual_t(kind, ...) \
        CBN_BY_TYPE(kind, cbn_train_forward_residual, __VA_ARGS__)
    #define cbn_backward_residual_t(kind, ...) CBN_BY_TYPE(kind, cbn_backward_residual, __VA_ARGS__)
    #define cbn_infer_residual_t(kind, ...) CBN_BY_TYPE(kind, cbn_infer_residual, __VA_ARGS__)
    #define cbn_infer_backward_t(kind, ...) CBN_BY_TYPE(kind, cbn_infer_backward, __VA_ARGS__)
    """
    int cbn_fold_scale_shift_t(bint f32, int64_t C, void *running_mean, void *running_var,
                               void *weight, void *bias, double eps, void *scale,
                               void *shift) nogil
    int cbn_batch_stats_t(int kind, void *x, int64_t N, int64_t C, int64_t S,
                          cbn_layout layout, double *mean, double *m2, int n_threads) nogil
    int cbn_normalize_t(int kind, void *x, void *y, int64_t N, int64_t C, int64_t S,
                        cbn_layout layout, double *mean, double *invstd, void *weight,
                        void *bias, cbn_activation activation, int n_threads) nogil
    int cbn_backward_reduce_t(int kind, void *dy, void *x, void *mean, void *y,
                              cbn_activation activation, int64_t N, int64_t C, int64_t S,
                              cbn_layout layout, double *sum_dy, double *sum_dy_xmu,
                              double *sum_xmu, int n_threads) nogil
    int cbn_backward_dx_t(int kind, void *dy, void *x, void *mean, void *invstd, void *weight,
                          void *y, cbn_activation activation, double *sum_dy,
                          double *sum_dy_xmu, double *sum_xmu, double count, void *dx,
                          int64_t N, int64_t C, int64_t S, cbn_layout layout,
                          int n_threads) nogil
    int cbn_train_forward_residual_t(int kind, void *x, void *residual, void *y, int64_t N,
                                     int64_t C, int64_t S, cbn_layout layout, void *weight,
                                     void *bias, void *running_mean, void *running_var,
                                     double momentum, double eps, int unbiased_running_var,
                                     void *save_mean, void *save_invstd,
                                     cbn_activation activation, int n_threads) nogil
    int cbn_backward_residual_t(int kind, void *dy, void *x, void *save_mean, void *save_invstd,
                                void *weight, void *y, cbn_activation activation, void *dx,
                                void *d_residual, void *dweight, void *dbias, int64_t N,
                                int64_t C, int64_t S, cbn_layout layout, int n_threads) nogil
    int cbn_infer_residual_t(int kind, void *x, void *residual, void *y, int64_t N, int64_t C,
                             int64_t S, cbn_layout layout, void *running_mean,
                             void *running_var, void *weight, void *bias, double eps,
                             cbn_activation activation, int n_threads) nogil
    int cbn_infer_backward_t(int kind, void *dy, void *x, void *running_mean, void *running_var,
                             void *weight, double eps, void *y, cbn_activation activation,
                             void *dx, void *d_residual, void *dweight, void *dbias, int64_t N,
                             int64_t C, int64_t S, cbn_layout layout, int n_threads) nogil


cdef inline cbn_layout _layout(bint channels_last):
    return CBN_CHANNELS_LAST if channels_last else CBN_CHANNELS_FIRST


cdef inline cbn_activation _activation(bint relu):
    return CBN_ACTIVATION_RELU if relu else CBN_ACTIVATION_NONE


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


def overlapping_pair(tuple arrays, int n_written, int n_against_first):
    """First (i, j), i < j, i < n_written, whose arrays share memory, or None. The arrays are
    C-contiguous ndarrays (each occupies exactly [data, data + nbytes)) or None; the first one
    is compared only with arrays[1:n_against_first]. One C loop: these checks run on every
    call, so they must cost well under a microsecond."""
    cdef Py_ssize_t n = len(arrays), i, j, end
    cdef size_t lo[16]
    cdef size_t hi[16]
    cdef cnp.ndarray a
    if n > 16:
        raise ValueError("overlapping_pair: at most 16 arrays")
    for i in range(n):
        if arrays[i] is None:
            lo[i] = hi[i] = 0
        else:
            a = <cnp.ndarray>arrays[i]
            lo[i] = <size_t>cnp.PyArray_DATA(a)
            hi[i] = lo[i] + <size_t>cnp.PyArray_NBYTES(a)
    for i in range(min(n_written, n)):
        if lo[i] == hi[i]:
            continue
        end = n_against_first if i == 0 else n
        for j in range(i + 1, min(end, n)):
            if lo[i] < hi[j] and lo[j] < hi[i]:
                return (i, j)
    return None


def error_string(int code):
    return cbn_error_string(code).decode()


def openmp_enabled():
    return bool(cbn_openmp_enabled())


def max_threads():
    return cbn_max_threads()


def release_memory():
    cbn_release_memory()


def cpu_supports_level(str level):
    """Whether this CPU and OS can run level ("v2", "v3", "v4"); False for other names."""
    return cbn_cpu_supports_level(level.encode("ascii", "replace")) != 0


def cpu_dispatched():
    """True in the dispatched build (levels chosen at run time), False in a single-level one."""
    return cbn_cpu_dispatched() != 0


def cpu_level():
    """The level the kernels run at (see src/cbn/csrc/dispatch.h)."""
    return cbn_cpu_level().decode("ascii")


def select_cpu_level(str level):
    """Run the kernels at level from now on ("" = the best the CPU has); the C status code."""
    return cbn_select_cpu_level(level.encode("ascii", "replace"))


def dispatched_kernels():
    """Names of the entry points the dispatched build forwards (csrc/kernel_list.h)."""
    names = []
    cdef const char *name = cbn_dispatched_kernel(0)
    while name != NULL:
        names.append(name.decode("ascii"))
        name = cbn_dispatched_kernel(len(names))
    return names


def thread_limit(int requested):
    """requested clamped as every kernel call clamps it (CPUs offered, OMP_THREAD_LIMIT; 1 in
    a forked child)."""
    return cbn_thread_limit(requested)


def contention_note(double wall, double cpu, int n_helpers=1):
    """The busy-machine rule on a report of a helper thread, one of n_helpers, whose team
    started `wall` seconds ago and which got `cpu` seconds of CPU (contention.c; the kernels
    apply it to their own helper threads)."""
    cbn_contention_note(wall, cpu, n_helpers)


def set_contention_fallback(bint on):
    """Turn the busy-machine fallback on or off (cbn.set_contention_fallback); returns whether
    it was on."""
    return bool(cbn_set_contention_fallback(on))


def contended():
    """Whether calls now run on one thread because a helper thread lost its CPU lately."""
    return bool(cbn_contended())


_PATH_OPS = {"train": CBN_PATH_TRAIN, "backward": CBN_PATH_BACKWARD, "infer": CBN_PATH_INFER}


def plan_path(int64_t N, int64_t C, int64_t S, bint channels_last, bint f32, str op,
              int n_threads):
    """The path a kernel call of `op` ("train", "backward" or "infer", no residual) takes on
    this canonical view, as a dict (for the tests that check each test case reaches its path):
    path ("cf-ranges", "cf-groups", "cf-columns", "cf-apply", "cl-blocks", "cl-whole-tiles"),
    stream (streaming stores), n_threads, and the plan's counts."""
    cdef cbn_path p
    if f32:
        cbn_plan_path_f32(&p, N, C, S, _layout(channels_last), n_threads, _PATH_OPS[op])
    else:
        cbn_plan_path_f64(&p, N, C, S, _layout(channels_last), n_threads, _PATH_OPS[op])
    if p.plan.channels_last:
        path = "cl-whole-tiles" if p.cl_whole_tiles else "cl-blocks"
    elif p.cf_apply_only:
        path = "cf-apply"
    elif p.plan.columns:
        path = "cf-columns"
    else:
        path = "cf-groups" if p.cf_groups else "cf-ranges"
    return {"path": path, "stream": bool(p.stream), "n_threads": p.plan.n_threads,
            "n_chunks": p.plan.n_chunks, "n_row_blocks": p.plan.n_row_blocks,
            "n_col_tiles": p.plan.n_col_tiles, "n_units": p.plan.n_units}


def train_forward(x, y, int64_t N, int64_t C, int64_t S, bint channels_last, weight, bias,
                  running_mean, running_var, double momentum, double eps,
                  bint unbiased_running_var, save_mean, save_invstd, bint relu, int n_threads,
                  residual=None):
    """residual: added before the activation, or None."""
    cdef int kind = _kind(x)
    cdef cbn_layout layout = _layout(channels_last)
    cdef cbn_activation act = _activation(relu)
    cdef void *px = _ptr(x)
    cdef void *pr = _ptr(residual)
    cdef void *py = _ptr(y)
    cdef void *pw = _ptr(weight)
    cdef void *pb = _ptr(bias)
    cdef void *prm = _ptr(running_mean)
    cdef void *prv = _ptr(running_var)
    cdef void *psm = _ptr(save_mean)
    cdef void *psi = _ptr(save_invstd)
    cdef int rc
    with nogil:
        rc = cbn_train_forward_residual_t(kind, px, pr, py, N, C, S, layout, pw, pb, prm, prv,
                                          momentum, eps, unbiased_running_var, psm, psi, act,
                                          n_threads)
    return rc


def backward(dy, x, save_mean, save_invstd, weight, y, dx, dweight, dbias, int64_t N, int64_t C,
             int64_t S, bint channels_last, int n_threads, d_residual=None):
    """y: the output of a fused ReLU (its gradient is applied), or None; d_residual: where to
    write the residual's gradient, or None."""
    cdef int kind = _kind(x)
    cdef cbn_layout layout = _layout(channels_last)
    cdef cbn_activation act = _activation(y is not None)
    cdef void *py = _ptr(y)
    cdef void *pdy = _ptr(dy)
    cdef void *px = _ptr(x)
    cdef void *psm = _ptr(save_mean)
    cdef void *psi = _ptr(save_invstd)
    cdef void *pw = _ptr(weight)
    cdef void *pdx = _ptr(dx)
    cdef void *pdr = _ptr(d_residual)
    cdef void *pdw = _ptr(dweight)
    cdef void *pdb = _ptr(dbias)
    cdef int rc
    with nogil:
        rc = cbn_backward_residual_t(kind, pdy, px, psm, psi, pw, py, act, pdx, pdr, pdw, pdb, N,
                                     C, S, layout, n_threads)
    return rc


def infer_backward(dy, x, running_mean, running_var, weight, double eps, y, dx, d_residual,
                   dweight, dbias, int64_t N, int64_t C, int64_t S, bint channels_last,
                   int n_threads):
    """Backward through frozen statistics; y and d_residual as for backward."""
    cdef int kind = _kind(x)
    cdef cbn_layout layout = _layout(channels_last)
    cdef cbn_activation act = _activation(y is not None)
    cdef void *pdy = _ptr(dy)
    cdef void *px = _ptr(x)
    cdef void *prm = _ptr(running_mean)
    cdef void *prv = _ptr(running_var)
    cdef void *pw = _ptr(weight)
    cdef void *py = _ptr(y)
    cdef void *pdx = _ptr(dx)
    cdef void *pdr = _ptr(d_residual)
    cdef void *pdw = _ptr(dweight)
    cdef void *pdb = _ptr(dbias)
    cdef int rc
    with nogil:
        rc = cbn_infer_backward_t(kind, pdy, px, prm, prv, pw, eps, py, act, pdx, pdr, pdw, pdb,
                                  N, C, S, layout, n_threads)
    return rc


def infer(x, y, int64_t N, int64_t C, int64_t S, bint channels_last, running_mean,
          running_var, weight, bias, double eps, bint relu, int n_threads, residual=None):
    """residual: added before the activation, or None."""
    cdef int kind = _kind(x)
    cdef cbn_layout layout = _layout(channels_last)
    cdef cbn_activation act = _activation(relu)
    cdef void *px = _ptr(x)
    cdef void *pr = _ptr(residual)
    cdef void *py = _ptr(y)
    cdef void *prm = _ptr(running_mean)
    cdef void *prv = _ptr(running_var)
    cdef void *pw = _ptr(weight)
    cdef void *pb = _ptr(bias)
    cdef int rc
    with nogil:
        rc = cbn_infer_residual_t(kind, px, pr, py, N, C, S, layout, prm, prv, pw, pb, eps, act,
                                  n_threads)
    return rc


def fold_scale_shift(int64_t C, running_mean, running_var, weight, bias, double eps, scale,
                     shift):
    return cbn_fold_scale_shift_t(_is_f32(running_mean), C, _ptr(running_mean),
                                  _ptr(running_var), _ptr(weight), _ptr(bias), eps, _ptr(scale),
                                  _ptr(shift))


# ---- split kernels (cbn.split) ------------------------------------------------------------------

def batch_stats(x, int64_t N, int64_t C, int64_t S, bint channels_last, mean, m2, int n_threads):
    cdef int kind = _kind(x)
    cdef cbn_layout layout = _layout(channels_last)
    cdef void *px = _ptr(x)
    cdef double *pm = <double *>_ptr(mean)
    cdef double *pq = <double *>_ptr(m2)
    cdef int rc
    with nogil:
        rc = cbn_batch_stats_t(kind, px, N, C, S, layout, pm, pq, n_threads)
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
    cdef int kind = _kind(x)
    cdef cbn_layout layout = _layout(channels_last)
    cdef cbn_activation act = _activation(relu)
    cdef void *px = _ptr(x)
    cdef void *py = _ptr(y)
    cdef double *pm = <double *>_ptr(mean)
    cdef double *pi = <double *>_ptr(invstd)
    cdef void *pw = _ptr(weight)
    cdef void *pb = _ptr(bias)
    cdef int rc
    with nogil:
        rc = cbn_normalize_t(kind, px, py, N, C, S, layout, pm, pi, pw, pb, act, n_threads)
    return rc


def backward_reduce(dy, x, mean, y, int64_t N, int64_t C, int64_t S, bint channels_last,
                    sum_dy, sum_dy_xmu, sum_xmu, int n_threads):
    cdef int kind = _kind(x)
    cdef cbn_layout layout = _layout(channels_last)
    cdef cbn_activation act = _activation(y is not None)
    cdef void *pdy = _ptr(dy)
    cdef void *px = _ptr(x)
    cdef void *pm = _ptr(mean)
    cdef void *py = _ptr(y)
    cdef double *ps = <double *>_ptr(sum_dy)
    cdef double *pq = <double *>_ptr(sum_dy_xmu)
    cdef double *pd = <double *>_ptr(sum_xmu)
    cdef int rc
    with nogil:
        rc = cbn_backward_reduce_t(kind, pdy, px, pm, py, act, N, C, S, layout, ps, pq, pd,
                                   n_threads)
    return rc


def backward_dx(dy, x, mean, invstd, weight, y, sum_dy, sum_dy_xmu, sum_xmu, double count, dx,
                int64_t N, int64_t C, int64_t S, bint channels_last, int n_threads):
    cdef int kind = _kind(x)
    cdef cbn_layout layout = _layout(channels_last)
    cdef cbn_activation act = _activation(y is not None)
    cdef void *pdy = _ptr(dy)
    cdef void *px = _ptr(x)
    cdef void *pm = _ptr(mean)
    cdef void *pi = _ptr(invstd)
    cdef void *pw = _ptr(weight)
    cdef void *py = _ptr(y)
    cdef double *ps = <double *>_ptr(sum_dy)
    cdef double *pq = <double *>_ptr(sum_dy_xmu)
    cdef double *pd = <double *>_ptr(sum_xmu)
    cdef void *pdx = _ptr(dx)
    cdef int rc
    with nogil:
        rc = cbn_backward_dx_t(kind, pdy, px, pm, pi, pw, py, act, ps, pq, pd, count, pdx, N, C,
                               S, layout, n_threads)
    return rc
