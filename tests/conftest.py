"""Shared helpers for the cbn test suite: case generators, data makers, `assert_close`.

Every test compares cbn against `cbn.reference` (float64 NumPy) computed on the *same* values:
for float32 input the reference runs on ``x.astype(np.float64)``, so the tolerance only has to
cover the rounding of cbn's float32 outputs, not the rounding of the input.
"""
import os
import sys
import zlib
from collections import namedtuple

import numpy as np
import pytest

# A busy machine makes calls run on one thread for a while (src/cbn/csrc/contention.c). The
# tests ask for thread counts to check that every count gives the same bits, so they keep the
# counts they ask for; tests/test_contention.py checks the fallback in processes of its own.
os.environ.setdefault("CBN_CONTENTION_FALLBACK", "0")

import cbn  # noqa: E402 (after the environment it reads)

cbn.set_contention_fallback(False)      # also where the environment asked for it
from cbn._layout import channel_axis, is_channels_last  # noqa: F401 (the tests' layout helpers)

# Test modules do `from conftest import ...`; make that work under any pytest import mode.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

DTYPES = (np.float32, np.float64)
LAYOUTS = ("NCHW", "NHWC")

# (rtol, atol) per dtype; atol is scaled by max(1, max|expected|) in assert_close.
# Relative accuracy of the statistics and sums (README, Precision): float32 inputs are summed in
# float blocks of at most 8 values per lane carried in double, so the mean is within
# STATS_RTOL x std, M2 and invstd within STATS_RTOL relative, and backward's sums within
# STATS_RTOL of the sum of their terms' magnitudes (measured: up to ~5e-7); float64 sums every
# value in double.
STATS_RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
TOLERANCES = {np.dtype(np.float32): (1e-4, 1e-4), np.dtype(np.float64): (1e-10, 1e-10)}

# Small generated cases: 2-D to 5-D, N=1 with spatial dims, C=1, odd sizes that are no multiple of
# a SIMD width, large C with tiny spatial size, channels-last with few rows, the layout aliases.
SMALL_CASES = [
    ("NCHW", (5, 3)),
    ("NCHW", (2, 1)),
    ("NCHW", (7, 13)),
    ("NCHW", (1, 3, 7)),
    ("NCHW", (3, 5, 7)),
    ("NCHW", (17, 5, 3)),
    ("NCHW", (4, 1, 5, 3)),
    ("NCHW", (1, 2, 3, 5)),
    ("NCHW", (2, 3, 5, 7)),
    ("NCHW", (2, 17, 13, 1)),
    ("NCHW", (4, 300, 1, 2)),
    ("NCHW", (2, 3, 3, 5, 7)),
    ("NCHW", (1, 2, 1, 1, 3)),
    ("channels_first", (3, 7, 5)),
    ("NHWC", (5, 3)),
    ("NHWC", (2, 1)),
    ("NHWC", (13, 7)),
    ("NHWC", (1, 7, 3)),
    ("NHWC", (3, 7, 5)),
    ("NHWC", (3, 2, 17)),
    ("NHWC", (4, 5, 3, 1)),
    ("NHWC", (1, 3, 5, 2)),
    ("NHWC", (2, 5, 7, 3)),
    ("NHWC", (2, 1, 1, 13)),
    ("NHWC", (4, 1, 2, 300)),
    ("NHWC", (2, 3, 5, 7, 3)),
    ("NHWC", (2, 33)),
    ("NHWC", (1, 2, 1, 1, 600)),
    ("channels_last", (3, 5, 7)),
]

# Kernel paths, as `cbn._core.plan_path` names them for a float32 training forward on
# PATH_THREADS threads (tests/test_kernel_paths.py checks that every tagged case takes its
# path, so that a threshold change cannot silently drop coverage):
#   cf-ranges       channels-first, threads take ranges of chunks (channels cut between them)
#   cf-groups       channels-first, threads take groups of whole channels reduced and applied
#                   while in cache
#   cf-columns      channels-first with short runs (S <= 128; backward S <= 56), done as columns
#   cl-blocks       channels-last, row blocks reduced, then applied
#   cl-whole-tiles  channels-last with one row block: each column tile reduced and applied at once
#   +stream         the output is written with streaming stores (>= 16 MB)
# C == 1 and channels-first S == 1 take the other layout's path (the plan's cheaper view).
PATH_THREADS = 2
CASE_PATHS = {}


def _tagged(rows):
    """The (layout, shape) cases of rows (layout, shape, path), their paths kept in CASE_PATHS."""
    for layout, shape, path in rows:
        assert CASE_PATHS.setdefault((layout, shape), path) == path, (layout, shape)
    return [(layout, shape) for layout, shape, _ in rows]


# Medium cases that reach the multi-chunk / multi-thread paths of the kernels: a channel with more
# than 10000 values, channels-last with more than 1000 rows, channels-last with C over one column
# tile, channels-last with two rows and many channels, C=1 with many values.
MEDIUM_CASES = _tagged([
    ("NCHW", (12, 8, 33, 31), "cf-ranges"),
    ("NCHW", (3, 3, 131, 67), "cf-ranges"),
    ("NCHW", (4, 1, 170, 101), "cf-ranges"),
    ("NCHW", (16, 40, 13, 15), "cf-ranges"),
    ("NHWC", (8, 20, 18, 24), "cl-blocks"),
    ("NHWC", (4, 8, 5, 600), "cl-blocks"),
    ("NHWC", (2, 1, 40003), "cl-whole-tiles"),
    ("NCHW", (70001, 2), "cl-blocks"),
])

ALL_CASES = SMALL_CASES + MEDIUM_CASES

# Shapes big enough that the kernels really use several threads (tens of thousands of values per
# thread), plus small ones, C smaller than the thread count, channels-last with few rows: for the
# bit-identity tests over thread counts (each count cuts the work at other places).
THREAD_CASES = _tagged([
    ("NCHW", (3, 5, 7), "cf-columns"),
    ("NHWC", (3, 7, 5), "cl-whole-tiles"),
    ("NCHW", (12, 8, 33, 31), "cf-ranges"),
    ("NCHW", (16, 1, 101, 67), "cf-ranges"),
    ("NCHW", (4, 2, 129, 131), "cf-ranges"),
    ("NCHW", (4, 300, 9, 11), "cf-columns"),
    ("NCHW", (16, 40, 13, 15), "cf-ranges"),     # runs of 195: too long for columns
    ("NCHW", (120, 3, 13, 11), "cf-ranges"),     # backward's lanes carried over runs of 143, and
                                                 # over chunk bounds that cut runs
    ("NCHW", (8, 96, 32, 32), "cf-groups"),      # 8 groups of 12 channels: ranges from 3 threads
    ("NCHW", (50001, 3), "cl-blocks"),
    ("NCHW", (2, 3, 9, 61, 47), "cf-ranges"),
    ("NHWC", (8, 20, 18, 24), "cl-blocks"),
    ("NHWC", (4, 8, 5, 600), "cl-blocks"),
    ("NHWC", (2, 1, 40003), "cl-whole-tiles"),
    ("NHWC", (3, 1, 1, 33333), "cl-whole-tiles"),
    ("NHWC", (70001, 1), "cf-ranges"),
    ("NHWC", (40000, 3), "cl-blocks"),
    ("NHWC", (2, 5, 9, 61, 47), "cl-blocks"),
])

# float32 outputs just over the 16 MB streaming threshold: channels-first with long runs and in
# column mode (runs of 49), channels-last narrower and wider than a column tile (512).
STREAM_CASES = _tagged([
    ("NCHW", (4, 3, 600, 700), "cf-ranges+stream"),
    ("NCHW", (96, 900, 7, 7), "cf-columns+stream"),
    ("NHWC", (16, 1024, 260), "cl-blocks+stream"),
    ("NHWC", (2, 2000, 1100), "cl-blocks+stream"),
])

# Where outputs sit in memory: the streamed cases and one that stays in cache.
PLACEMENT_CASES = STREAM_CASES + _tagged([
    ("NHWC", (8, 30, 30, 24), "cl-blocks"),
])


def case_id(case):
    layout, shape = case
    return f"{layout}-{'x'.join(map(str, shape))}"


def n_channels(shape, layout):
    return shape[channel_axis(layout, len(shape))]


def values_per_channel(shape, layout):
    C = n_channels(shape, layout)
    return int(np.prod(shape)) // C if C else 0


def channel_take(a, c, layout):
    """All values of channel c of a (any layout) as a flat float64 array."""
    return np.take(np.asarray(a, np.float64), c, axis=channel_axis(layout, np.ndim(a))).ravel()


@pytest.fixture
def many_threads():
    """Lets calls run more threads than the machine has CPUs while the test runs.

    cbn clamps a thread request to the CPUs offered or OpenMP's max threads, whichever is
    larger; raising the latter keeps the bit-identity tests' 3, 5, 7 and 16 threads real on a
    2-CPU machine (each thread count cuts the work at other places)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=16, user_api="openmp"):
        assert not cbn.openmp_enabled() or cbn.get_num_threads() == 16
        yield


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: reproducible, and different for every case."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def make_x(rng, shape, dtype, layout="NCHW", loc=0.0, scale=1.0):
    """Normal data around `loc` with spread about `scale`; every channel gets its own offset
    (+-2*scale) and its own spread (0.5..2 times `scale`), so that mixing channels shows.
    Shapes of fewer than 2 dimensions get plain normal data."""
    if len(shape) < 2:
        return (loc + scale * rng.standard_normal(shape)).astype(dtype)
    axis = channel_axis(layout, len(shape))
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    offset = rng.uniform(-2.0, 2.0, shape[axis]).reshape(bshape)
    spread = rng.uniform(0.5, 2.0, shape[axis]).reshape(bshape)
    return (loc + scale * (offset + spread * rng.standard_normal(shape))).astype(dtype)


def make_params(rng, C, dtype, affine=True):
    """(weight, bias) of x's dtype, or (None, None)."""
    if not affine:
        return None, None
    return (rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C)).astype(dtype), \
        rng.standard_normal(C).astype(dtype)


def make_running(rng, C, dtype):
    """Plausible (running_mean, running_var) of x's dtype, var > 0."""
    return rng.standard_normal(C).astype(dtype), rng.uniform(0.25, 4.0, C).astype(dtype)


CaseArrays = namedtuple("CaseArrays",
                        "layout shape C x dy weight bias running_mean running_var")


def case_arrays(rng, case, dtype, affine=True, loc=0.0, dy_loc=0.0):
    """Everything a test of `case` (layout, shape) needs, always drawn in this order: x (make_x
    around loc), dy (around dy_loc), weight and bias (None, None without affine), plausible
    running_mean and running_var. Unpack it: ``layout, shape, C, x, dy, w, b, rm, rv = ...``."""
    layout, shape = case
    C = n_channels(shape, layout)
    x = make_x(rng, shape, dtype, layout, loc=loc)
    dy = make_x(rng, shape, dtype, layout, loc=dy_loc)
    weight, bias = make_params(rng, C, dtype, affine)
    running_mean, running_var = make_running(rng, C, dtype)
    return CaseArrays(layout, shape, C, x, dy, weight, bias, running_mean, running_var)


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def backward_truth(dy, x, weight=None, layout="NCHW", *, invstd=None, eps=1e-5, y=None):
    """float64 (dx, dweight, dbias) of the training forward on x, around x's exact mean: not a
    save_mean rounded to x's dtype, nor NumPy's float64 mean (off by up to 6e-5 at 1e12). x is
    shifted by its float64 mean first (exact for values near it), then the mean of what is left
    is taken. invstd: the one to use (the forward's save_invstd), or None for the exact one with
    eps. y: the output of a fused ReLU (dy counts where y > 0), or None."""
    from cbn import reference as ref
    xf, g = f64(x), f64(dy)
    if y is not None:
        g = np.where(np.asarray(y) > 0, g, 0.0)
    axes = tuple(i for i in range(xf.ndim) if i != channel_axis(layout, xf.ndim))
    xs = xf - xf.mean(axis=axes, keepdims=True)
    mean = xs.mean(axis=axes)
    if invstd is None:
        b = [1] * xf.ndim
        b[channel_axis(layout, xf.ndim)] = -1
        invstd = 1.0 / np.sqrt(((xs - mean.reshape(b)) ** 2).mean(axis=axes) + eps)
    return ref.batch_norm_backward(g, xs, mean, f64(invstd), f64(weight), layout=layout)


def assert_close(actual, expected, dtype=None, rtol=None, atol=None, err_msg=""):
    """|actual - expected| <= rtol*|expected| + atol*max(1, max|expected|), NaN where NaN.

    Tolerances default by dtype (the dtype of `actual` unless given): float64 1e-10,
    float32 1e-4. The shape must match exactly.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    dtype = np.dtype(dtype if dtype is not None else actual.dtype)
    d_rtol, d_atol = TOLERANCES.get(dtype, TOLERANCES[np.dtype(np.float32)])
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}. {err_msg}"
    finite = expected[np.isfinite(expected)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol, atol=atol * scale,
                               equal_nan=True, err_msg=err_msg)


def assert_meta(a, shape, dtype):
    """a is an ndarray of exactly this shape and dtype."""
    assert isinstance(a, np.ndarray), type(a)
    assert a.shape == tuple(shape), (a.shape, shape)
    assert a.dtype == np.dtype(dtype), (a.dtype, dtype)


def assert_identical(a, b, err_msg=""):
    """Bit-identical arrays (same dtype, shape and bytes; NaN payloads included)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
    if a.tobytes() != b.tobytes():
        diff = np.flatnonzero(a.ravel() != b.ravel())
        raise AssertionError(f"arrays differ at {diff.size} of {a.size} positions "
                             f"(first flat index {diff[:5]}). {err_msg}")
