"""Memory cbn allocates: where new outputs are placed, the memory of large outputs kept for
reuse (_output_cache), and the kernels' kept work memory.

NumPy places a large array at whatever offset its allocator returns (any multiple of 16 bytes
within a cache line, and within a page at a fixed offset that repeats from one array to the
next). Two placements slow a streaming kernel down, so new outputs avoid both:

* an output that does not start on a 64-byte line makes every vector store that crosses a line
  cost two, and its first and last lines of each streamed block partial;
* an output whose address modulo 4 KiB sits just after an input's makes loads of the input
  wait behind unrelated stores to the output with the same low 12 address bits (4K aliasing).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
from numpy.typing import DTypeLike, NDArray

from . import _core, _output_cache

# Outputs at least this large get a placement of their own (smaller ones live in cache, where
# neither effect is worth an extra allocation).
APART_MIN_BYTES = 1 << 18
PAGE = 4096
_LINE = 64


def _farthest_line(offsets: Iterable[int]) -> int:
    """The line-aligned offset within a page farthest (circularly) from every given offset."""
    points = sorted(o % PAGE for o in offsets)
    best, best_gap = 0, -1
    for i, start in enumerate(points):
        end = points[i + 1] if i + 1 < len(points) else points[0] + PAGE
        if end - start > best_gap:
            best, best_gap = start + (end - start) // 2, end - start
    return best // _LINE * _LINE % PAGE


def at_page_offset(raw: NDArray[np.uint8], page_offset: int,
                   nbytes: int) -> NDArray[np.uint8]:
    """The `nbytes` bytes of `raw` (a uint8 array of at least nbytes + PAGE) that start
    `page_offset` bytes into a 4 KiB page."""
    start = (page_offset - _core.address(raw)) % PAGE
    return raw[start:start + nbytes]


def empty_output(shape: tuple[int, ...], dtype: DTypeLike) -> NDArray[Any]:
    """A new C-contiguous output with no placement to keep (per-channel results such as
    save_mean): from APART_MIN_BYTES on, on memory kept for reuse like empty_apart's."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < APART_MIN_BYTES:
        return np.empty(shape, dtype)
    return _output_cache.empty_bytes(nbytes).view(dtype).reshape(shape)


def empty_apart(shape: tuple[int, ...], dtype: DTypeLike,
                *inputs: NDArray[Any] | None) -> NDArray[Any]:
    """A new C-contiguous array on a 64-byte boundary, its address modulo 4 KiB as far as
    possible from each of `inputs` (arrays or None); from APART_MIN_BYTES on, on memory that
    is kept for the next output of its size when the array goes (_output_cache)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    addresses = [_core.address(a) for a in inputs if a is not None]
    if not addresses or nbytes < APART_MIN_BYTES:
        return empty_output(shape, dtype)
    buf = _output_cache.empty_bytes(nbytes + PAGE)
    return at_page_offset(buf, _farthest_line(addresses), nbytes).view(dtype).reshape(shape)


def release_memory() -> None:
    """Free the memory cbn keeps between calls: the kernels' work memory and the memory of large
    outputs that are gone (see set_output_cache).

    Each call's scratch (partial sums and per-channel coefficients, up to ~80 bytes per channel)
    is kept for the next call, so that calls with many channels do not fault fresh pages in every
    time. This returns it to the system; a later call allocates again.
    """
    _core.release_memory()
    _output_cache.clear()


def set_output_cache(max_bytes: int) -> int:
    """Set how much memory of gone outputs cbn keeps for reuse; returns the previous limit.

    A call without `out=` returns new arrays. Those of at least 256 KiB are placed on memory
    that, once every array over it is gone, cbn keeps (up to 8 blocks and `max_bytes` in all,
    oldest dropped first; default 256 MiB) and hands to the next output of exactly that size.
    In a loop such as `for ...: y = f(x)` each output replaces the previous one, whose memory
    the next call then reuses instead of faulting in and zeroing fresh pages (on a 51 MB tensor
    those doubled the call's time). What is kept stays in the process's memory until reused,
    dropped for a newer block, or freed: 0 keeps none; `release_memory()` frees what is kept.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
        raise TypeError(f"set_output_cache: max_bytes must be an int, got "
                        f"{type(max_bytes).__name__}")
    if not 0 <= max_bytes < 2 ** 63:
        raise ValueError(f"set_output_cache: max_bytes must be in [0, 2**63), got {max_bytes}")
    return int(_output_cache.set_limit(int(max_bytes)))
