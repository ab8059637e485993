# cython: language_level=3
"""Memory for cbn's large new outputs, kept for reuse when the last array using it goes.

Why: a default call (`y = cbn.batch_norm_infer(x, ...)`, no out=) returns a new array. glibc
serves a large one with fresh pages (mmap above its threshold, or after trimming its heap),
which the kernel must fault in and zero at the first write: on a 51 MB tensor that doubled the
call (AMD EPYC Zen 4, 2 threads). In a loop such as `for ...: y = f(x)`, each call's output
replaces the one before, which is then gone: two blocks alternate, one of them held here
between calls. (Outputs that stay alive, such as a network's activations kept for backward,
are not reused until they go.)

Policy: at most SLOTS blocks and `limit` bytes (cbn.set_output_cache), oldest dropped first; a
block is reused only for a request of exactly its size (outputs of one shape repeat; a bigger
block would waste its excess); cbn.release_memory() frees them all. Blocks are held only after
every array over them is gone, so a held block is never visible to Python.

All of it runs under the GIL (allocation in cbn's Python API, release in the deallocation of
the last array), which serializes it: no lock of its own.
"""
cimport numpy as cnp
from libc.stdlib cimport free

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #include <stdlib.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    /* malloc, and like NumPy's own allocator: transparent huge pages asked for from 4 MiB on
     * (where the kernel has them), so that a block faults in as NumPy's arrays do. */
    static void *cbn_output_block_alloc(size_t n)
    {
        void *p = malloc(n);
    #if defined(MADV_HUGEPAGE)
        if (p && n >= ((size_t)1 << 22)) {
            const uintptr_t page = 4096;
            const uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1);
            const uintptr_t e = ((uintptr_t)p + n) & ~(page - 1);
            if (e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
        }
    #endif
        return p;
    }
    """
    void *cbn_output_block_alloc(size_t n) nogil

cdef enum:
    SLOTS = 8

DEFAULT_LIMIT = 256 * 2 ** 20

# the held blocks, oldest first
cdef void *_ptr[SLOTS]
cdef size_t _size[SLOTS]
cdef int _count = 0
cdef size_t _held = 0
cdef size_t _limit = DEFAULT_LIMIT


# These three are C only (nogil makes Cython refuse any Python operation in them): they run in
# __dealloc__, where an exception could not be raised, and must not leave the slots half moved.
cdef void _drop_oldest() noexcept nogil:
    global _count, _held
    cdef int i
    free(_ptr[0])
    _held -= _size[0]
    _count -= 1
    for i in range(_count):
        _ptr[i] = _ptr[i + 1]
        _size[i] = _size[i + 1]


cdef void _hold(void *p, size_t n) noexcept nogil:
    """Keep block p of n bytes (or free it, when it cannot fit the limit)."""
    global _count, _held
    if n > _limit:
        free(p)
        return
    while _count > 0 and (_count == SLOTS or _held + n > _limit):
        _drop_oldest()
    _ptr[_count] = p
    _size[_count] = n
    _count += 1
    _held += n


cdef void *_take(size_t n) noexcept nogil:
    """A held block of exactly n bytes (the newest), no longer held; or NULL."""
    global _count, _held
    cdef int i, j
    cdef void *p
    for i in range(_count - 1, -1, -1):
        if _size[i] == n:
            p = _ptr[i]
            _held -= n
            _count -= 1
            for j in range(i, _count):
                _ptr[j] = _ptr[j + 1]
                _size[j] = _size[j + 1]
            return p
    return NULL


cdef class _Block:
    """Owner of one block: the base object of the array over it; held for reuse when it goes."""
    cdef void *ptr
    cdef size_t size

    def __dealloc__(self):
        if self.ptr != NULL:
            _hold(self.ptr, self.size)


def empty_bytes(size_t n):
    """A new writeable uint8 array of n > 0 bytes, on a held block of that size if there is one."""
    if n == 0:
        raise ValueError("empty_bytes: n must be > 0")
    cdef _Block block = _Block.__new__(_Block)
    block.ptr = _take(n)
    if block.ptr == NULL:
        block.ptr = cbn_output_block_alloc(n)
    if block.ptr == NULL and _count:
        clear()                     # what is held, of other sizes, before giving up
        block.ptr = cbn_output_block_alloc(n)
    if block.ptr == NULL:
        raise MemoryError(f"cbn: cannot allocate an output of {n} bytes")
    block.size = n
    cdef cnp.npy_intp dims = <cnp.npy_intp>n
    arr = cnp.PyArray_SimpleNewFromData(1, &dims, cnp.NPY_UINT8, block.ptr)
    cnp.set_array_base(arr, block)
    return arr


def set_limit(size_t max_bytes):
    """Hold at most max_bytes (0: none); returns the previous limit."""
    global _limit
    previous = _limit
    _limit = max_bytes
    while _held > _limit:
        _drop_oldest()
    return previous


def clear():
    """Free every held block."""
    while _count:
        _drop_oldest()


def state():
    """(blocks held, bytes held, limit)."""
    return _count, _held, _limit
