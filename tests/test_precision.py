"""Numerical robustness: data far from zero (offset 1e6, unit spread) and NaN/Inf isolation."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from cbn import split
from conftest import (DTYPES, STATS_RTOL, assert_close, assert_identical, backward_truth,
                      case_arrays, case_id, channel_axis, channel_take, f64, make_running,
                      make_x, n_channels)

OFFSET_CASES = [
    ("NCHW", (16, 4, 7)),
    ("NHWC", (16, 7, 4)),
    ("NCHW", (5, 3)),
    ("NHWC", (5, 3)),
    ("NCHW", (12, 8, 33, 31)),     # several chunks per channel, merged
    ("NCHW", (4, 1, 170, 101)),
    ("NHWC", (8, 20, 18, 24)),     # several row blocks, merged
    ("NHWC", (4, 8, 5, 600)),
    ("NCHW", (70001, 2)),
]


def _bshape(layout, ndim):
    """Shape that broadcasts a per-channel vector against x."""
    b = [1] * ndim
    b[channel_axis(layout, ndim)] = -1
    return b


def _two_pass(x, layout):
    """float64 two-pass mean and biased variance over the given values, per channel."""
    C = n_channels(x.shape, layout)
    xs = np.moveaxis(f64(x), channel_axis(layout, x.ndim), -1).reshape(-1, C)
    mean = xs.mean(axis=0)
    return mean, ((xs - mean) ** 2).mean(axis=0)


@pytest.mark.parametrize("case", OFFSET_CASES, ids=case_id)
def test_float32_offset_statistics(rng, case):
    """Data at 1e6 with unit spread: E[x^2] - E[x]^2 loses everything in float32 (and most in
    float64); the statistics must match a float64 two-pass over the same float32 values."""
    layout, shape = case
    eps = 1e-5
    x = make_x(rng, shape, np.float32, layout, loc=1e6)
    mean, var = _two_pass(x, layout)
    assert np.all(var > 1e-3)
    C = n_channels(shape, layout)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)

    y, save_mean, save_invstd = cbn.batch_norm_train(x, running_mean=rm, running_var=rv,
                                                     momentum=1.0, eps=eps, layout=layout)
    # the mean, to 1e-5 relative and to within the float32 rounding of 1e6
    np.testing.assert_allclose(f64(save_mean), mean, rtol=1e-5)
    assert np.all(np.abs(f64(save_mean) - mean) <= np.spacing(np.float32(1e6)))
    # the variance recovered from save_invstd
    var_back = 1.0 / f64(save_invstd) ** 2 - eps
    np.testing.assert_allclose(var_back, var, rtol=1e-5)
    # running statistics (momentum 1: exactly the batch statistics, unbiased)
    M = x.size // C
    np.testing.assert_allclose(f64(rm), mean, rtol=1e-5)
    np.testing.assert_allclose(f64(rv), var * M / (M - 1), rtol=1e-5)
    # the normalized output: no catastrophic loss either
    ey, _, _, _, _ = ref.batch_norm_train(f64(x), eps=eps, layout=layout)
    assert_close(y, ey, atol=1e-4)


# float32 statistics from float blocks (README, Precision): mean within 1e-6 x std and M2 within
# 1e-6 relative, on every reduction path, at offsets, and with pivots k deviations out: the
# values each pivot is the mean of (channels-first: the first 4 values of 4 runs spread over the
# batch; channels-last: 16 rows spread over the channel) set to loc + k * sd. From k = 2 the sums
# around such a pivot cancel more than float32's STATS_MAX_CANCEL allows (a second pass); at
# k = 30 a kernel that skipped it would be ~1e-4 off.
STATS_CASES = [
    ("NCHW", (4, 16, 3136)),       # long runs, several chunks
    ("NCHW", (16, 16, 196)),       # runs of 196
    ("NCHW", (64, 16, 7)),         # column mode
    ("NHWC", (64, 49, 16)),        # channels-last
    ("NHWC", (8, 7, 300)),         # channels-last, few rows
    ("NHWC", (2, 5, 16)),          # 10 rows: one float block and a double tail
    ("NCHW", (4096, 16)),          # (N, C) row view
    ("NCHW", (1, 1, 100003)),      # one channel
]


@pytest.mark.parametrize("case", STATS_CASES, ids=case_id)
@pytest.mark.parametrize("loc", [0.0, 1.0, 1e4, 1e6])
def test_float32_statistics_within_1e_6(rng, case, loc):
    layout, shape = case
    worst_mean = worst_m2 = 0.0
    for k in (0, 1, 2, 3, 4, 8, 30):
        sd = rng.uniform(0.5, 2.0)
        x = loc + sd * rng.standard_normal(shape)
        if layout == "NCHW" and len(shape) == 3:
            N, S = shape[0], shape[2]
            runs = min(N, 4)
            for j in range(runs):
                x[N * j // runs, :, :4] = loc + k * sd
        else:
            rows = x.reshape(-1, shape[-1])
            M = rows.shape[0]
            n = min(16, max(1, M // 8))
            rows[[M * j // n for j in range(n)]] = loc + k * sd
        x = x.astype(np.float32)
        mean, var = _two_pass(x, layout)
        count, got_mean, got_m2 = split.batch_stats(x, layout=layout)
        std = np.sqrt(var)
        worst_mean = max(worst_mean, float(np.max(np.abs(got_mean - mean) / std)))
        worst_m2 = max(worst_m2, float(np.max(np.abs(got_m2 / count / var - 1.0))))
    assert worst_mean <= STATS_RTOL[np.dtype(np.float32)], worst_mean
    assert worst_m2 <= STATS_RTOL[np.dtype(np.float32)], worst_m2


# Backward at large offsets: every reduction path (channels-first long runs, short runs done as
# columns, channels-last, the (N, C) row view, one channel), with and without a fused ReLU.
BACKWARD_OFFSET_CASES = [
    ("NCHW", (16, 4, 300)),        # long runs, two chunks per channel
    ("NCHW", (12, 8, 33, 31)),     # long runs, several chunks
    ("NCHW", (64, 8, 7)),          # short runs: column mode
    ("NCHW", (400, 2, 100)),       # runs of 100 in cache: lanes carried from run to run
    ("NCHW", (8, 6, 5, 5)),
    ("NHWC", (16, 9, 9, 16)),      # channels-last
    ("NHWC", (4, 8, 5, 600)),      # channels-last, more channels than a column tile
    ("NCHW", (300, 6)),            # (N, C): rows
    ("NCHW", (4, 1, 170, 101)),    # one channel: one contiguous run
]
# (dtype, offset, dweight rtol, dx atol relative to max|dx|): the targets of issue 12 item 4.
# save_mean rounded to float32 at 1e6 is off by up to 0.03 (3% of the spread): centring on it
# alone put dweight 1e-2 off and dx 3e-4 (float64 at 1e12: 1e-5 and 5e-7).
BACKWARD_OFFSETS = [(np.float32, 1e4, 1e-5, 1e-6), (np.float32, 1e6, 1e-5, 1e-6),
                    (np.float64, 1e12, 1e-9, 1e-12)]


@pytest.mark.parametrize("relu", [None, "relu"])
@pytest.mark.parametrize("offset", BACKWARD_OFFSETS,
                         ids=lambda o: f"{np.dtype(o[0]).name}-{o[1]:g}")
@pytest.mark.parametrize("case", BACKWARD_OFFSET_CASES, ids=case_id)
def test_backward_offset_matches_exact_mean(rng, case, offset, relu):
    """Backward reads x: it sums x - save_mean too and corrects for save_mean's rounding, so the
    gradients match the float64 truth around the exact mean (and invstd) of x."""
    dtype, loc, dw_rtol, dx_rtol = offset
    # dy around 0.5: sum(dy) far from 0, so the rounding shows
    layout, shape, C, x, dy, w, b, _, _ = case_arrays(rng, case, dtype, loc=loc, dy_loc=0.5)
    y, m, s = cbn.batch_norm_train(x, w, b, layout=layout, activation=relu)
    kw = {"y": y, "activation": relu} if relu else {}
    dx, dw, db = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout, n_threads=3, **kw)
    edx, edw, edb = backward_truth(dy, x, w, layout, y=y if relu else None)
    # float32 sums in float blocks: also STATS_RTOL of the sum of the terms' magnitudes
    g = np.where(y > 0, f64(dy), 0.0) if relu else f64(dy)
    xhat = np.abs(f64(x) - f64(m).reshape(_bshape(layout, x.ndim))) * \
        f64(s).reshape(_bshape(layout, x.ndim))
    axes = tuple(i for i in range(x.ndim) if i != channel_axis(layout, x.ndim))
    terms = (np.abs(g) * xhat).sum(axis=axes) if dtype == np.float32 else 0.0
    dw_err = np.abs(f64(dw) - edw)
    assert np.all(dw_err <= dw_rtol * np.abs(edw) + STATS_RTOL[np.dtype(dtype)] * terms), \
        np.abs(f64(dw) / edw - 1).max()
    db_rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(f64(db), edb, rtol=db_rtol, atol=db_rtol * np.abs(edb).max())
    assert np.abs(f64(dx) - edx).max() <= dx_rtol * np.abs(edx).max()
    # the same bits with one thread, and from the split kernels on one process
    one = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout, n_threads=1, **kw)
    for a, a1 in zip((dx, dw, db), one):
        assert_identical(a, a1)
    sums = split.batch_norm_backward_reduce(dy, x, m, layout=layout, **kw)
    count = x.size // C
    assert_identical(split.batch_norm_backward_dx(dy, x, m, s, *sums, count, w, layout=layout,
                                                  **kw), dx)
    s_dw, s_db = split.batch_norm_backward_params(*sums, count, s)
    assert_identical(s_dw, dw)
    assert_identical(s_db, db)


@pytest.mark.parametrize("case", OFFSET_CASES[:2] + OFFSET_CASES[4:5] + OFFSET_CASES[6:7],
                         ids=case_id)
def test_float64_offset(rng, case):
    """float64 at 1e6 offset: agreement with the reference to near machine precision."""
    layout, shape = case
    x = make_x(rng, shape, np.float64, layout, loc=1e6)
    y, m, s = cbn.batch_norm_train(x, layout=layout)
    ey, em, es, _, _ = ref.batch_norm_train(x, layout=layout)
    np.testing.assert_allclose(m, em, rtol=1e-14)
    np.testing.assert_allclose(s, es, rtol=1e-9)
    assert_close(y, ey, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_offset_1e4_small_spread(rng, dtype):
    """Offset 1e4 with spread 1e-2: var ~ 1e-4, still recovered to 1e-5 relative."""
    x = (1e4 + 1e-2 * rng.standard_normal((64, 3, 50))).astype(dtype)
    _, m, s = cbn.batch_norm_train(x, eps=0.0)
    mean, var = _two_pass(x, "NCHW")
    np.testing.assert_allclose(1.0 / f64(s) ** 2, var, rtol=1e-5)
    np.testing.assert_allclose(f64(m), mean, rtol=1e-7)


# -- NaN / Inf stay in their channel --------------------------------------------------------------

NAN_CASES = [
    ("NCHW", (4, 5, 6)),
    ("NHWC", (4, 6, 5)),
    ("NCHW", (7, 5)),
    ("NHWC", (7, 5)),
    ("NHWC", (2, 1, 5)),
    ("NCHW", (12, 8, 33, 31)),
    ("NHWC", (8, 20, 18, 24)),
    ("NHWC", (4, 8, 5, 600)),
]
BAD_VALUES = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}
# the NumPy reference warns about inf - inf; cbn does not, and neither should the test output
quiet = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")


def _poison(rng, x, layout, value):
    """Put `value` at one random position of channel 1 (and return that channel)."""
    c = 1
    idx = [int(rng.integers(0, n)) for n in x.shape]
    idx[channel_axis(layout, x.ndim)] = c
    x[tuple(idx)] = value
    return c


def _other_channels(a, c, layout):
    return np.delete(f64(a), c, axis=channel_axis(layout, np.ndim(a)))


@quiet
@pytest.mark.parametrize("bad", list(BAD_VALUES), ids=list(BAD_VALUES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", NAN_CASES, ids=case_id)
def test_nonfinite_train_stays_in_channel(rng, case, dtype, bad):
    layout, shape, C, x, _, w, b, rm, rv = case_arrays(rng, case, dtype)
    c = _poison(rng, x, layout, BAD_VALUES[bad])
    rm0, rv0 = rm.copy(), rv.copy()
    y, m, s = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, layout=layout)

    assert np.all(np.isnan(channel_take(y, c, layout))), "poisoned channel must be all NaN"
    assert np.isnan(s[c])
    assert np.isnan(rv[c])
    assert not np.isfinite(m[c]) and not np.isfinite(rm[c])
    # every other channel is finite and exactly what the reference gives
    ey, em, es, erm, erv = ref.batch_norm_train(f64(x), f64(w), f64(b), running_mean=f64(rm0),
                                                running_var=f64(rv0), layout=layout)
    others = _other_channels(y, c, layout)
    assert np.all(np.isfinite(others))
    assert_close(others, _other_channels(ey, c, layout), dtype=dtype)
    for got, want in [(m, em), (s, es), (rm, erm), (rv, erv)]:
        keep = np.arange(C) != c
        assert np.all(np.isfinite(got[keep]))
        assert_close(got[keep], want[keep], dtype=dtype)


@quiet
@pytest.mark.parametrize("where", ["x", "dy"])
@pytest.mark.parametrize("bad", list(BAD_VALUES), ids=list(BAD_VALUES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", NAN_CASES, ids=case_id)
def test_nonfinite_backward_stays_in_channel(rng, case, dtype, bad, where):
    layout, shape, C, x, dy, w, _, _, _ = case_arrays(rng, case, dtype)
    _, m, s = cbn.batch_norm_train(x, w, layout=layout)
    c = _poison(rng, x if where == "x" else dy, layout, BAD_VALUES[bad])
    dx, dw, db = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout)

    # (+-Inf can give +-Inf rather than NaN here: xhat * dweight with a finite xhat)
    assert not np.any(np.isfinite(channel_take(dx, c, layout))), "poisoned channel must be NaN/Inf"
    assert not np.isfinite(dw[c])
    if where == "dy":
        assert not np.isfinite(db[c])
    edx, edw, edb = ref.batch_norm_backward(f64(dy), f64(x), f64(m), f64(s), f64(w),
                                            layout=layout)
    others = _other_channels(dx, c, layout)
    assert np.all(np.isfinite(others))
    assert_close(others, _other_channels(edx, c, layout), dtype=dtype)
    keep = np.arange(C) != c
    assert_close(dw[keep], edw[keep], dtype=dtype)
    assert_close(db[keep], edb[keep], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", NAN_CASES, ids=case_id)
def test_nonfinite_infer_is_elementwise(rng, case, dtype):
    """Inference is elementwise: a NaN input gives a NaN output at that position only."""
    layout, shape, C, x, _, w, b, rm, rv = case_arrays(rng, case, dtype)
    _poison(rng, x, layout, np.nan)
    y = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
    assert_close(y, ref.batch_norm_infer(f64(x), f64(rm), f64(rv), f64(w), f64(b),
                                         layout=layout))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_nonfinite_running_stats_stay_in_channel(rng, dtype):
    """A NaN running statistic in channel 0 spoils channel 0 of inference only."""
    x = make_x(rng, (4, 3, 5), dtype)
    rm, rv = make_running(rng, 3, dtype)
    rv[0] = np.nan
    y = cbn.batch_norm_infer(x, rm, rv)
    assert np.all(np.isnan(y[:, 0])) and np.all(np.isfinite(y[:, 1:]))
