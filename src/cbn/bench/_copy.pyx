# cython: language_level=3
"""The benchmark's yardstick: a plain copy on n threads (copy_yardstick.c), GIL released."""
cimport numpy as cnp
from libc.stdint cimport int64_t

cnp.import_array()


cdef extern from "copy_yardstick.h" nogil:
    void cbn_yardstick_copy(void *dst, const void *src, int64_t nbytes, int n_threads)


def copy(cnp.ndarray dst, cnp.ndarray src, int n_threads):
    """Copy src into dst (both C-contiguous, same nbytes) on n_threads threads."""
    if not (cnp.PyArray_IS_C_CONTIGUOUS(dst) and cnp.PyArray_IS_C_CONTIGUOUS(src)):
        raise ValueError("copy: dst and src must be C-contiguous")
    if dst.nbytes != src.nbytes:
        raise ValueError(f"copy: dst has {dst.nbytes} bytes, src {src.nbytes}")
    if not cnp.PyArray_ISWRITEABLE(dst):
        raise ValueError("copy: dst is read-only")
    cdef void *pd = cnp.PyArray_DATA(dst)
    cdef const void *ps = cnp.PyArray_DATA(src)
    cdef int64_t nbytes = src.nbytes
    with nogil:
        cbn_yardstick_copy(pd, ps, nbytes, n_threads)
