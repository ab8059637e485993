"""Edge values: magnitudes near float32 overflow, all-constant channels, eps = 0, a huge first
value (cbn's second, mean-centred pass), denormals.

Expected statistics here are exact: per-channel sums with math.fsum (float64 two-pass over the
same values), not NumPy's sums, whose rounding is at the level these tests check.
"""
import math
import warnings
import zlib

import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import (DTYPES, LAYOUTS, assert_identical, case_id, channel_axis, channel_take,
                      f64, n_channels)

U = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float64): 2.0 ** -53}
dtype_ids = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
layouts = pytest.mark.parametrize("layout", LAYOUTS)
quiet = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _shape(layout, n, c, s):
    """(n, c, s) channels-first or (n, s, c) channels-last."""
    return (n, c, s) if layout == "NCHW" else (n, s, c)


def _idx(layout, ndim, c, rest=0):
    """Index of value `rest` (along the last non-channel axis) of channel c in batch item 0:
    with rest=0, the channel's first value."""
    cax = channel_axis(layout, ndim)
    idx = [0] * ndim
    idx[cax] = c
    idx[[i for i in range(ndim) if i != cax][-1]] = rest
    return tuple(idx)


def exact_stats(x, layout):
    """Per-channel mean and biased variance of x's values, to the last bit (math.fsum; the
    squares are scaled so that they cannot overflow where the variance itself does not)."""
    C = n_channels(x.shape, layout)
    mean, var = np.empty(C), np.empty(C)
    for c in range(C):
        v = channel_take(x, c, layout)
        try:
            mean[c] = math.fsum(v) / v.size
        except OverflowError:
            mean[c] = math.fsum(v / v.size)
        d = v - mean[c]
        sc = float(np.abs(d).max()) or 1.0
        var[c] = math.fsum((d / sc) ** 2) / v.size * sc * sc
    return mean, var


def _bcast(a, layout, ndim):
    shape = [1] * ndim
    shape[channel_axis(layout, ndim)] = a.size
    return np.asarray(a, np.float64).reshape(shape)


def check_train_exact(x, y, m, s, layout, eps, w=None, b=None, k=4.0, stat_rtol=None):
    """Statistics and output of training forward against the exact two-pass values.

    mean: to the rounding of the dtype (and stat_rtol of the spread); invstd: stat_rtol;
    y: k roundings of the terms |w * xhat| and |b|, plus the statistics' tolerance."""
    dt = np.dtype(x.dtype)
    u = U[dt]
    stat_rtol = stat_rtol if stat_rtol is not None else (2e-7 if dt == np.float32 else 1e-13)
    mean, var = exact_stats(x, layout)
    invstd = 1.0 / np.sqrt(var + eps)
    # the spread, as the largest deviation (var underflows for subnormal data)
    dev = np.array([np.abs(channel_take(x, c, layout) - mean[c]).max()
                    for c in range(mean.size)])
    err_m = np.abs(f64(m) - mean)
    tiny = float(np.finfo(dt).smallest_subnormal)       # rounding of a subnormal mean
    assert np.all(err_m <= u * np.abs(mean) + stat_rtol * dev + tiny), (f64(m), mean)
    np.testing.assert_allclose(f64(s), invstd, rtol=stat_rtol + u)
    nd = x.ndim
    wf = np.ones(mean.size) if w is None else f64(w)
    bf = np.zeros(mean.size) if b is None else f64(b)
    xhat = (f64(x) - _bcast(mean, layout, nd)) * _bcast(invstd, layout, nd)
    ey = xhat * _bcast(wf, layout, nd) + _bcast(bf, layout, nd)
    aw = np.abs(_bcast(wf, layout, nd))
    bound = k * u * (aw * (np.abs(xhat) + 1) + np.abs(_bcast(bf, layout, nd))) + \
        stat_rtol * aw * (np.abs(xhat) + 1)
    err = np.abs(f64(y) - ey)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"y off at {worst}: got {y[worst]!r}, want {ey[worst]!r}, "
                                  f"bound {bound[worst]!r}")
    return mean, var


# -- magnitudes near float32 overflow --------------------------------------------------------------

@quiet
@layouts
@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("M", [4, 6, 200002])
def test_float32_near_overflow_variance_stays_finite(layout, n_threads, M):
    """Values +-3e38 (and +-FLT_MAX) around a mean of exactly 0: the variance, ~9e76, is far
    beyond float32 but is accumulated in float64, so invstd (~3.3e-39, a float32 subnormal) and
    y (+-1) are finite and right. running_var gets the float32 rounding of the unbiased
    variance, which is +inf: the exact value is not representable in float32."""
    C = 3
    x = np.empty(_shape(layout, 2, C, M // 2), np.float32)
    rng = np.random.default_rng(M)
    cax = channel_axis(layout, 3)
    for c, v in enumerate([3e38, float(np.finfo(np.float32).max), 1e38]):
        signs = np.repeat(np.float32([v, -v]), M // 2)      # exactly zero mean
        rng.shuffle(signs)
        sl = [slice(None)] * 3
        sl[cax] = c
        x[tuple(sl)] = signs.reshape(x[tuple(sl)].shape)
    w = np.array([1.0, -2.0, 0.5], np.float32)
    b = np.array([0.25, 0.0, -1.0], np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y, m, s = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, layout=layout,
                                   n_threads=n_threads)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(s)) and np.all(s > 0)
    assert np.all(m == 0)
    # invstd ~3e-39 is a float32 subnormal (21 significant bits): 1e-6 relative
    check_train_exact(x, y, m, s, layout, 1e-5, w, b, stat_rtol=1e-6)
    # y is exactly +-w + b up to rounding
    ey = np.sign(f64(x)) * _bcast(f64(w), layout, 3) + _bcast(f64(b), layout, 3)
    np.testing.assert_allclose(f64(y), ey, rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(rm, 0.0)
    assert np.all(np.isposinf(rv)), rv          # ~1e76 rounds to +inf in float32
    # backward stays finite; dbias and dweight are sums in double and exact (dx, ~1e-39 here,
    # is not: see test_float32_coefficient_range)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    dx, dw, db = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout, n_threads=n_threads)
    _, edw, edb = ref.batch_norm_backward(f64(dy), f64(x), f64(m), f64(s), f64(w),
                                          layout=layout)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dw)) and np.all(np.isfinite(db))
    np.testing.assert_allclose(f64(db), edb, rtol=1e-6, atol=1e-6 * np.abs(edb).max())
    np.testing.assert_allclose(f64(dw), edw, rtol=1e-6, atol=1e-6 * np.abs(edw).max())
    yi = cbn.batch_norm_infer(x, m, 1.0 / f64(s) ** 2 - 1e-5, w, b, layout=layout,
                              n_threads=n_threads)
    assert np.all(np.isfinite(yi))


@quiet
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "float32 data spanning more than FLT_MAX: the elementwise pass computes x - mean in float32, "
    "which overflows to +-inf although the normalized value is representable (-1.414 here)"))
@layouts
def test_float32_wide_range_output_is_finite(layout):
    """[3e38, 3e38, -3e38] in one channel: mean 1e38, x - mean = -4e38 for the last value."""
    v = np.array([3e38, 3e38, -3e38], np.float32)
    x = np.stack([v, np.array([1.0, 2.0, 4.0], np.float32)], axis=1)   # (3, 2): channel 0
    x = x.reshape(3, 2, 1) if layout == "NCHW" else x.reshape(3, 1, 2)
    y, m, s = cbn.batch_norm_train(x, layout=layout)
    ey, em, es, _, _ = ref.batch_norm_train(f64(x), layout=layout)
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(f64(y), ey, rtol=1e-6, atol=1e-6)      # got -inf for ey=-1.414
    dy = np.ones_like(x)
    dy[0] = -2.0
    dx, _, _ = cbn.batch_norm_backward(dy, x, m, s, layout=layout)
    assert np.all(np.isfinite(dx))


@quiet
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "float64 data beyond ~1e152: the sum of squared deviations overflows double before it is "
    "divided by M, so statistics and output are NaN although var (~1e306) is representable"))
def test_float64_huge_magnitudes_finite_statistics():
    x = np.random.default_rng(0).standard_normal((1000, 2)) * 1e153
    y, m, s = cbn.batch_norm_train(x)
    check_train_exact(x, y, m, s, "NCHW", 1e-5)


@dtype_ids
@layouts
def test_float32_and_float64_large_but_safe_magnitudes(dtype, layout):
    """Data at 1e30 (float32) / 1e150 (float64) with spread of the same order: exact."""
    big = 1e30 if dtype == np.float32 else 1e150
    rng = np.random.default_rng(3)
    x = (big * rng.standard_normal(_shape(layout, 8, 3, 50))).astype(dtype)
    y, m, s = cbn.batch_norm_train(x, layout=layout)
    check_train_exact(x, y, m, s, layout, 1e-5)


# -- constant channels ---------------------------------------------------------------------------

CONST_CASES = [("NCHW", (4, 3, 5)), ("NHWC", (4, 5, 3)), ("NCHW", (7, 3)), ("NHWC", (7, 3)),
               ("NCHW", (2, 3, 70000)), ("NHWC", (2, 70000, 3)), ("NHWC", (300, 600)),
               ("NCHW", (2, 3, 17, 9))]
CONST_VALUES = [0.0, 0.1, -2.5, 1e6, -3e38, 1e-40, 7.0]


@dtype_ids
@pytest.mark.parametrize("case", CONST_CASES, ids=case_id)
def test_constant_channel_output_is_bias_exactly(case, dtype):
    """A channel whose values are all equal: mean = the value exactly, var = 0, output = bias
    exactly (no NaN), dweight = 0 exactly; for every thread count and any constant."""
    layout, shape = case
    C = n_channels(shape, layout)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    consts = {}
    first = CONST_CASES.index(case)              # every value shows up across the cases
    for i, c in enumerate(range(0, C, max(1, C // 7))):
        v = dtype(CONST_VALUES[(first + i) % len(CONST_VALUES)])
        idx = [slice(None)] * len(shape)
        idx[channel_axis(layout, len(shape))] = c
        x[tuple(idx)] = v
        consts[c] = v
    w = rng.uniform(0.5, 2.0, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm0, rv0 = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    results = []
    for n in (1, 2, 3):
        rm, rv = rm0.copy(), rv0.copy()
        y, m, s = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, momentum=0.25,
                                       layout=layout, n_threads=n)
        results.append((y, m, s, rm, rv))
        for c, v in consts.items():
            yc = channel_take(y, c, layout)
            assert np.all(yc == f64(b[c])), (c, v, yc[:5], b[c])
            assert m[c] == v
            assert s[c] == dtype(1.0 / math.sqrt(1e-5))
            assert rv[c] == dtype(0.75 * float(rv0[c]))
            np.testing.assert_allclose(f64(rm[c]), 0.75 * float(rm0[c]) + 0.25 * float(v),
                                       rtol=U[np.dtype(dtype)] * 4)
        assert np.all(np.isfinite(y))
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert_identical(a, b_)
    y, m, s = results[0][:3]
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout)
    edx, _, edb = ref.batch_norm_backward(f64(dy), f64(x), f64(m), f64(s), f64(w), layout=layout)
    for c in consts:
        assert dw[c] == 0.0
        # dx = w * invstd * (dy - mean(dy)) exactly as the reference
        np.testing.assert_allclose(f64(channel_take(dx, c, layout)), channel_take(edx, c, layout),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-5 if dtype == np.float32 else 1e-11)
    assert np.all(np.isfinite(dx))


@dtype_ids
@layouts
def test_all_channels_constant(dtype, layout):
    x = np.ones(_shape(layout, 3, 4, 5), dtype) * dtype(3.0)
    y, m, s = cbn.batch_norm_train(x, bias=np.arange(4, dtype=dtype), layout=layout)
    for c in range(4):
        assert np.all(channel_take(y, c, layout) == c)
    y, m, s = cbn.batch_norm_train(x, layout=layout, activation="relu")
    assert np.all(y == 0)


# -- eps = 0 ------------------------------------------------------------------------------------

@quiet
@dtype_ids
@layouts
def test_eps_zero_constant_channel(dtype, layout):
    """eps = 0 and a constant channel: var + eps = 0, so invstd = 1/sqrt(0) = +inf and that
    channel's output is NaN (0 * inf); no crash, the other channels are exact, the running
    statistics are updated with the batch's (finite) mean and zero variance."""
    shape = _shape(layout, 4, 3, 5)
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(dtype)
    cax = channel_axis(layout, 3)
    idx = [slice(None)] * 3
    idx[cax] = 1
    x[tuple(idx)] = dtype(0.1)
    w, b = np.array([1.5, 3.7, 2.0], dtype), np.array([0.3, 7.0, -2.5], dtype)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    y, m, s = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, eps=0.0,
                                   layout=layout)
    assert np.all(np.isnan(channel_take(y, 1, layout)))
    assert m[1] == dtype(0.1) and np.isposinf(s[1])
    assert rv[1] == dtype(1.0 - 0.1) and rm[1] == dtype(0.1 * float(dtype(0.1)))
    keep = [0, 2]
    others = np.take(y, keep, axis=cax)
    assert np.all(np.isfinite(others))
    check_train_exact(np.take(x, keep, axis=cax), others, m[keep], s[keep], layout, 0.0,
                      w[keep], b[keep])
    # backward with invstd = inf: that channel's dx and dweight are NaN, the others exact
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout)
    assert np.all(np.isnan(channel_take(dx, 1, layout))) and np.isnan(dw[1])
    assert np.isfinite(db[1])
    assert np.all(np.isfinite(np.take(dx, keep, axis=cax)))
    # inference with running_var = 0 and eps = 0: scale = inf; x == running_mean gives NaN
    rm_i, rv_i = np.array([0.0, 0.1, 0.0], dtype), np.array([1.0, 0.0, 1.0], dtype)
    yi = cbn.batch_norm_infer(x, rm_i, rv_i, w, b, eps=0.0, layout=layout)
    assert np.all(np.isnan(channel_take(yi, 1, layout)))
    assert np.all(np.isfinite(np.take(yi, keep, axis=cax)))
    sc, sh = cbn.fold_scale_shift(rm_i, rv_i, w, b, eps=0.0)
    assert np.isposinf(sc[1]) and np.isneginf(sh[1]) and np.all(np.isfinite(sc[keep]))


@quiet
def test_eps_zero_constant_channel_pytorch():
    """What PyTorch does with the same input (when importable): F.batch_norm refuses eps = 0 in
    training (ValueError in torch 2.x); its native kernel returns 0 (invstd 0) where cbn returns
    NaN (invstd inf). Documented difference; both are 'no crash'."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    x[:, 1] = 0.1
    t = torch.from_numpy(x.copy())
    try:
        out = torch.nn.functional.batch_norm(t, None, None, training=True, eps=0.0)
    except (ValueError, RuntimeError) as e:
        assert "eps" in str(e)
    else:                                      # older versions computed it
        o = out[:, 1].numpy()
        assert np.all(o == 0) or np.all(np.isnan(o))
    y_t, mean_t, invstd_t = torch.native_batch_norm(t, None, None, None, None, True, 0.1, 0.0)
    o = y_t[:, 1].numpy()
    assert (np.all(o == 0) and invstd_t[1] == 0) or np.all(np.isnan(o))
    y, m, s = cbn.batch_norm_train(x, eps=0.0)
    assert np.all(np.isnan(y[:, 1])) and np.isposinf(s[1])
    # the other channels agree with PyTorch
    np.testing.assert_allclose(y[:, [0, 2]], y_t[:, [0, 2]].numpy(), rtol=1e-5, atol=1e-5)


# -- a huge first value: the second, mean-centred pass ---------------------------------------------

OUTLIER_CASES = [
    ("NCHW", (2, 3, 70000)),       # float32: M = 140000 > 2^16 triggers the second pass;
    ("NHWC", (2, 70000, 3)),       #   channels split across chunks / row blocks and threads
    ("NCHW", (140001, 1)),         # C = 1: one contiguous run
    ("NHWC", (300, 600)),          # two column tiles, three row blocks (float64: second pass)
    ("NHWC", (100, 600)),          # one row block: two whole tiles (float64: second pass)
    ("NCHW", (6, 3, 41)),          # small (float64: second pass; float32: one pass suffices)
    ("NHWC", (9, 3)),
    ("NCHW", (40, 5, 3)),          # channels-first runs of 3 (column mode)
]


@dtype_ids
@pytest.mark.parametrize("case", OUTLIER_CASES, ids=case_id)
def test_huge_first_value(case, dtype):
    """The first value of some channels is 1e7 among N(0,1) values: that value is the pivot of
    cbn's one-pass sums, which then cancel nearly everything, so the channel is summed again
    around its mean. Statistics, output, running statistics and backward must still be exact,
    and bit-identical for 1, 2 and 3 threads."""
    layout, shape = case
    C = n_channels(shape, layout)
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = rng.standard_normal(shape).astype(dtype)
    first = [0] * len(shape)
    outliers = sorted({0, C - 1, C // 2} if C > 1 else {0})
    for c, sign in zip(outliers, [1, -1, 1]):
        first[channel_axis(layout, len(shape))] = c
        x[tuple(first)] = sign * 1e7
    w = rng.uniform(0.5, 2, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm0, rv0 = np.zeros(C, dtype), np.ones(C, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    runs = []
    for n in (1, 2, 3):
        rm, rv = rm0.copy(), rv0.copy()
        y, m, s = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, momentum=1.0,
                                       layout=layout, n_threads=n)
        dx, dw, db = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout, n_threads=n)
        runs.append((y, m, s, rm, rv, dx, dw, db))
    for other in runs[1:]:
        for a, b_ in zip(runs[0], other):
            assert_identical(a, b_)
    y, m, s, rm, rv, dx, dw, db = runs[0]
    mean, var = check_train_exact(x, y, m, s, layout, 1e-5, w, b)
    M = x.size // C
    u = U[np.dtype(dtype)]
    np.testing.assert_allclose(f64(rm), mean, rtol=2 * u, atol=1e-7 * np.sqrt(var).max())
    np.testing.assert_allclose(f64(rv), var * M / (M - 1), rtol=3e-7 if dtype == np.float32
                               else 1e-13)
    # backward, against the reference fed with cbn's saved statistics
    edx, edw, edb = ref.batch_norm_backward(f64(dy), f64(x), f64(m), f64(s), f64(w),
                                            layout=layout)
    tol = 1e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(f64(db), edb, rtol=tol, atol=tol * np.sqrt(M))
    np.testing.assert_allclose(f64(dw), edw, rtol=tol, atol=tol * np.sqrt(M))
    np.testing.assert_allclose(f64(dx), edx, rtol=tol, atol=tol * np.abs(edx).max())


@layouts
def test_huge_first_value_in_place(layout):
    """The second pass reads x again: with out=x it must read the input, not the output."""
    shape = _shape(layout, 2, 3, 70000)
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    x[_idx(layout, 3, 1)] = 1e7
    y_new, m_new, s_new = cbn.batch_norm_train(x, layout=layout, n_threads=2)
    xi = x.copy()
    y, m, s = cbn.batch_norm_train(xi, layout=layout, out=xi, n_threads=2)
    assert y is xi
    assert_identical(xi, y_new)
    assert_identical(m, m_new)
    assert_identical(s, s_new)


# -- denormals ---------------------------------------------------------------------------------

TINY = {np.dtype(np.float32): 1e-40, np.dtype(np.float64): 1e-310}


@dtype_ids
@layouts
@pytest.mark.parametrize("n_threads", [1, 2])
def test_denormal_inputs(dtype, layout, n_threads):
    """Subnormal data (|x| ~ 1e-40 float32, 1e-310 float64): with eps > 0 the variance (~1e-80
    or less) is negligible, invstd = 1/sqrt(eps) and y = w*(x - mean)/sqrt(eps) + b, all
    exact; backward, inference and a channel mixing subnormals and normal values too."""
    tiny = TINY[np.dtype(dtype)]
    shape = _shape(layout, 16, 4, 2500)
    rng = np.random.default_rng(13)
    x = (rng.standard_normal(shape) * tiny).astype(dtype)
    assert np.any((x != 0) & (np.abs(x) < np.finfo(dtype).tiny))
    cax = channel_axis(layout, 3)
    idx = [slice(None)] * 3
    idx[cax] = 3
    x[tuple(idx)] *= np.where(rng.random(x[tuple(idx)].shape) < 0.5, 1.0, 1e30)  # mixed
    w = np.array([1.0, -2.0, tiny * 10, 1.5], dtype)      # a subnormal weight too
    b = np.array([0.0, tiny, 1.0, -1.0], dtype)
    y, m, s = cbn.batch_norm_train(x, w, b, layout=layout, n_threads=n_threads)
    check_train_exact(x, y, m, s, layout, 1e-5, w, b)
    dy = (rng.standard_normal(shape) * np.where(rng.random(shape) < 0.5, tiny, 1.0)).astype(dtype)
    dx, dw, db = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout, n_threads=n_threads)
    edx, edw, edb = ref.batch_norm_backward(f64(dy), f64(x), f64(m), f64(s), f64(w),
                                            layout=layout)
    tol = 1e-5 if dtype == np.float32 else 1e-11
    for got, want in ((dx, edx), (dw, edw), (db, edb)):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(f64(got), want, rtol=tol, atol=tol * np.abs(want).max())
    rm = np.array([tiny, -tiny, 0.0, tiny], dtype)
    rv = np.array([tiny, 1.0, tiny, 2.0], dtype)
    yi = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout, n_threads=n_threads)
    eyi = ref.batch_norm_infer(f64(x), f64(rm), f64(rv), f64(w), f64(b), layout=layout)
    np.testing.assert_allclose(f64(yi), eyi, rtol=tol, atol=tol * np.abs(eyi).max())


@quiet
@dtype_ids
def test_denormal_inputs_eps_zero_no_crash(dtype):
    """eps = 0 with subnormal data: in float64 the variance (~1e-620) underflows to 0, so
    invstd = inf and y is not finite, as in the reference; in float32 invstd (~1e40) is beyond
    float32. No crash, no other channel affected."""
    tiny = TINY[np.dtype(dtype)]
    x = np.random.default_rng(2).standard_normal((6, 2, 5)).astype(dtype)
    x[:, 0] = (x[:, 0] * tiny).astype(dtype)
    y, m, s = cbn.batch_norm_train(x, eps=0.0)
    assert np.all(np.isfinite(y[:, 1]))
    check_train_exact(x[:, 1:], y[:, 1:], m[1:], s[1:], "NCHW", 0.0)
    assert np.isposinf(s[0])
    if dtype == np.float64:
        assert not np.any(np.isfinite(y[:, 0]))


@quiet
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "float32, extreme variances: per-channel coefficients are stored in float32 and leave its "
    "range although the exact y/dx are representable. eps = 0 and tiny std: forward "
    "w*invstd > FLT_MAX for subnormal data (y = +-inf); backward b = w*invstd^3*sum/M "
    "overflows for std below ~1e-19 (dx = inf). Huge std (+-3e38 data): b underflows to 0 and "
    "dx (~1e-39) loses its xhat*dweight term (off by 25x relative)"))
@pytest.mark.parametrize("op", ["forward-subnormal-eps0", "backward-1e-30-eps0",
                                "backward-3e38"])
def test_float32_coefficient_range(op):
    rng = np.random.default_rng(4)
    if op == "backward-3e38":
        x = np.repeat(np.float32([[3e38], [-3e38]]), 3, axis=0).reshape(6, 1, 1)
        x = np.concatenate([x, rng.standard_normal((6, 1, 1)).astype(np.float32)], axis=1)
        eps = 1e-5
    else:
        tiny = 1e-40 if op == "forward-subnormal-eps0" else 1e-30
        x = (rng.standard_normal((6, 2, 5)) * tiny).astype(np.float32)
        eps = 0.0
    y, m, s = cbn.batch_norm_train(x, eps=eps)
    if op.startswith("forward"):
        ey, _, _, _, _ = ref.batch_norm_train(f64(x), eps=eps)
        np.testing.assert_allclose(f64(y), ey, rtol=1e-4, atol=1e-4)
    else:
        dy = rng.standard_normal(x.shape).astype(np.float32)
        dx, _, _ = cbn.batch_norm_backward(dy, x, m, s)
        edx, _, _ = ref.batch_norm_backward(f64(dy), f64(x), f64(m), f64(s))
        for c in range(x.shape[1]):
            np.testing.assert_allclose(f64(dx[:, c]), edx[:, c], rtol=1e-4,
                                       atol=1e-4 * np.abs(edx[:, c]).max())


# -- NaN / Inf across the kernels' paths -------------------------------------------------------

@quiet
@dtype_ids
@pytest.mark.parametrize("case", [("NCHW", (2, 3, 70000)), ("NHWC", (2, 70000, 3)),
                                  ("NHWC", (300, 600)), ("NCHW", (40, 5, 3))], ids=case_id)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nonfinite_first_value_multithread(case, dtype, bad):
    """A non-finite *first* value (the pivot) in a channel split across threads: only that
    channel is NaN, for every thread count (test_precision covers random positions)."""
    layout, shape = case
    C = n_channels(shape, layout)
    x = np.random.default_rng(9).standard_normal(shape).astype(dtype)
    x[_idx(layout, len(shape), C - 1)] = bad
    for n in (1, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y, m, s = cbn.batch_norm_train(x, layout=layout, n_threads=n)
        assert np.all(np.isnan(channel_take(y, C - 1, layout)))
        assert np.all(np.isfinite(np.take(y, range(C - 1), axis=channel_axis(layout, len(shape)))))
