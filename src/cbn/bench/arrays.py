"""The benchmark's arrays.

`make_inputs` allocates the way NumPy code does (random generator outputs, `np.empty_like`), so
the report measures the addresses users get, good or bad. Only the alignment sweep places arrays
on purpose (`empty_at`, `PlacedBuffer`).
"""
import numpy as np

from .. import reference
from .._alloc import PAGE, at_page_offset
from .cases import EPS, channel_count


def settle_allocator():
    """Allocate and free a block just under 32 MiB, once, before measuring anything.

    glibc's malloc serves big blocks with fresh mmap()s (a page fault per 4 KiB on first touch)
    until the program frees one, after which it raises its threshold to that block's size (up
    to 32 MiB) and serves them from its heap. Every long-running program is in that second
    state; without this, allocating candidates (naive NumPy, PyTorch, cbn without out=) would be
    up to 3x slower at first, and faster once some earlier benchmark freed a big array.
    """
    a = np.empty((32 << 20) - (1 << 16), np.uint8)
    del a


def make_inputs(shape, layout="NCHW", dtype=np.float32, seed=0, need_dy=True):
    """Random inputs for every op, x of the given array shape (already in `layout`), allocated
    by NumPy's generator as user code would.

    Returns a dict: key (shape, layout, dtype name, seed: what a worker process needs to build
    the same arrays), layout, x, dy (when need_dy), weight, bias, running_mean, running_var,
    save_mean and save_invstd (x's statistics from `cbn.reference`, for backward: no cbn call,
    so a peer's worker process never starts cbn's OpenMP threads). The same arguments give the
    same arrays in every process.
    """
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    C = channel_count(shape, layout)
    x = rng.standard_normal(shape, dtype=dtype)
    x *= 2.0
    x += 0.5
    d = {
        "key": (shape, layout, dtype.name, seed),
        "layout": layout,
        "x": x,
        "weight": rng.uniform(0.5, 1.5, C).astype(dtype),
        "bias": rng.standard_normal(C).astype(dtype),
        "running_mean": rng.standard_normal(C).astype(dtype) * 0.1 + 0.5,
        "running_var": rng.uniform(3.0, 5.0, C).astype(dtype),
    }
    if need_dy:
        d["dy"] = rng.standard_normal(shape, dtype=dtype)
    _, mean, invstd, _, _ = reference.batch_norm_train(x, eps=EPS, layout=layout)
    d["save_mean"], d["save_invstd"] = mean.astype(dtype), invstd.astype(dtype)
    return d


def empty_at(shape, dtype, page_offset):
    """An uninitialized C-contiguous array starting `page_offset` bytes into a 4 KiB page (for
    the alignment sweep only; `page_offset` a multiple of the itemsize)."""
    return PlacedBuffer(shape, dtype).at(page_offset)


class PlacedBuffer:
    """One allocation from which arrays of `shape` can be taken at any page offset.

    The sweep times dozens of placements of x, dy and out; each role gets one buffer of the
    array's size plus a page, and every placement is a view into it (views of one role overlap,
    which is fine: a placement uses one view per role). `fill` makes every view random data.
    """

    def __init__(self, shape, dtype, rng=None):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        n = (self.nbytes + 2 * PAGE) // self.dtype.itemsize
        if rng is None:
            self.raw = np.empty(n, self.dtype)
        else:
            self.raw = rng.standard_normal(n, dtype=self.dtype) if self.dtype.kind == "f" else \
                np.empty(n, self.dtype)
        self.bytes = self.raw.view(np.uint8)

    def at(self, page_offset):
        if page_offset % self.dtype.itemsize:
            raise ValueError(f"page offset {page_offset} is not a multiple of the itemsize "
                             f"{self.dtype.itemsize}")
        return at_page_offset(self.bytes, page_offset, self.nbytes).view(self.dtype).reshape(
            self.shape)


def page_offset(a):
    """Where a's data starts within its 4 KiB page."""
    return a.ctypes.data % PAGE
