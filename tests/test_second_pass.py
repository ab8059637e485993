"""The second, mean-centred summation pass, on every kernel path where it can be needed.

Training sums x - pivot with the pivot the channel's first value. When that first value is an
outlier D standard deviations out (D^2 >> M), sum((x - pivot)^2) is about M times M2, and the
one-pass M2 = q - s^2/M keeps only ~1e-10 of relative precision on these shapes; the channel
must be summed again around its mean, which recovers ~1e-14. These tests demand 1e-12 on the
statistics, so a kernel that skips the second pass (or triggers it too rarely) fails them:

* float64: save_invstd, running_var and y from batch_norm_train, and M2 from batch_stats;
* float32: M2 and mean from batch_stats (float64 outputs) within STATS_RTOL (1e-6): float32
  sums in float blocks, whose one-pass error from a pivot that far out (the mean of samples
  that include the outlier) is ~1e-2. float32 outputs are checked to the float32 tolerance.

Each path: channels-first long runs (chunks, channels cut between threads), channels-first
column mode (short runs), channels-last, the contiguous C == 1 view and the (N, C) row view.
Channel 1 has no outlier, so channels that need the pass and channels that do not are mixed.
"""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from cbn import split
from conftest import (DTYPES, STATS_RTOL, assert_close, assert_identical, case_id, channel_axis,
                      f64)

OUTLIER = 1e4           # D: D^2 is several hundred times M below, so q is about M times M2
TIGHT = 1e-12           # the one-pass error here is ~1e-10, the two-pass one ~1e-14

CASES = [
    ("NCHW", (4, 3, 160, 160)),     # long runs: 25 chunks per channel, cut between threads
    ("NCHW", (50000, 3, 3)),        # column mode (runs of 3)
    ("NCHW", (2000, 4, 49)),        # column mode, runs of 49
    ("NHWC", (20000, 5, 3)),        # channels-last
    ("NHWC", (200, 500, 3)),        # channels-last, several row blocks
    ("NCHW", (1, 1, 200000)),       # C == 1: one contiguous run
    ("NCHW", (100000, 3)),          # (N, C): the row view
]


def _outlier_data(rng, shape, layout, dtype):
    """Unit normal data around per-channel offsets; the first value of every channel but
    channel 1 (when there is one) is OUTLIER standard deviations out."""
    x = 5.0 + rng.standard_normal(shape)
    first = [0] * len(shape)
    ax = channel_axis(layout, len(shape))
    for c in range(shape[ax]):
        if c == 1:
            continue
        first[ax] = c
        x[tuple(first)] += OUTLIER
    return x.astype(dtype)


def _exact_stats(x, layout):
    """float64 two-pass mean and M2 per channel, and M."""
    C = x.shape[channel_axis(layout, x.ndim)]
    xs = np.moveaxis(f64(x), channel_axis(layout, x.ndim), -1).reshape(-1, C)
    mean = xs.mean(axis=0)
    return mean, ((xs - mean) ** 2).sum(axis=0), xs.shape[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_batch_stats_need_the_second_pass(rng, case, dtype):
    layout, shape = case
    x = _outlier_data(rng, shape, layout, dtype)
    mean, m2, M = _exact_stats(x, layout)
    first = None
    for n_threads in (1, 2, 3):
        count, got_mean, got_m2 = split.batch_stats(x, layout=layout, n_threads=n_threads)
        assert count == M
        tight = max(TIGHT, STATS_RTOL[np.dtype(dtype)])
        np.testing.assert_allclose(got_m2, m2, rtol=tight)
        np.testing.assert_allclose(got_mean, mean, rtol=tight)
        if first is None:
            first = got_mean, got_m2
        assert_identical(got_mean, first[0])
        assert_identical(got_m2, first[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_training_needs_the_second_pass(rng, case, dtype):
    layout, shape = case
    x = _outlier_data(rng, shape, layout, dtype)
    mean, m2, M = _exact_stats(x, layout)
    C = mean.size
    eps = 1e-5
    ey, emean, einvstd, erm, erv = ref.batch_norm_train(
        f64(x), running_mean=np.zeros(C), running_var=np.ones(C), momentum=0.5, eps=eps,
        layout=layout)
    first = None
    for n_threads in (1, 2, 3):
        rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
        y, m, s = cbn.batch_norm_train(x, running_mean=rm, running_var=rv, momentum=0.5,
                                       eps=eps, layout=layout, n_threads=n_threads)
        if dtype == np.float64:
            np.testing.assert_allclose(s, einvstd, rtol=TIGHT)
            np.testing.assert_allclose(rv, erv, rtol=TIGHT)
            np.testing.assert_allclose(m, emean, rtol=TIGHT)
            np.testing.assert_allclose(y, ey, rtol=TIGHT, atol=1e-13)
        else:
            assert_close(s, einvstd)
            assert_close(rv, erv)
            assert_close(y, ey)
        if first is None:
            first = y
        assert_identical(y, first)
