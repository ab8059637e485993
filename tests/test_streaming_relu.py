"""The fused ReLU on outputs past the streaming-store threshold (16 MB).

Streaming outputs go through their own apply loops (computed in L1, then streamed out), one per
layout, and the clamp must survive there too: a streaming apply that dropped `relu` would give
negative outputs here. Checked against cbn.reference followed by a clamp, and for the y > 0 mask
in backward."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from cbn import split
from conftest import assert_close, case_id, f64, make_params, make_running, make_x, n_channels

STREAM_BYTES = 16 * 1024 * 1024

# just over 16 MB in each dtype: channels-first long runs, channels-first column mode (runs of
# 49), channels-last
CASES = [
    (np.float32, ("NCHW", (4, 3, 600, 700))),
    (np.float64, ("NCHW", (2, 3, 600, 700))),
    (np.float32, ("NCHW", (96, 900, 7, 7))),
    (np.float32, ("NHWC", (16, 1024, 260))),
    (np.float64, ("NHWC", (8, 1024, 260))),
]
IDS = [f"{np.dtype(d).name}-{case_id(c)}" for d, c in CASES]


def _data(rng, dtype, layout, shape):
    x = make_x(rng, shape, dtype, layout)
    assert x.nbytes >= STREAM_BYTES       # the streaming path, or this test proves nothing
    w, b = make_params(rng, n_channels(shape, layout), dtype)
    return x, w, b


def _assert_relu_of(y, expected_before_relu):
    assert y.min() >= 0, f"the fused ReLU was not applied (min {y.min()})"
    assert (y == 0).mean() > 0.2          # a real share was clamped (bias is ~N(0, 1))
    assert_close(y, np.maximum(expected_before_relu, 0.0))


@pytest.mark.parametrize("dtype, case", CASES, ids=IDS)
def test_train_relu_streamed(rng, dtype, case):
    layout, shape = case
    x, w, b = _data(rng, dtype, layout, shape)
    y, mean, invstd = cbn.batch_norm_train(x, w, b, layout=layout, activation="relu")
    ey, _, _, _, _ = ref.batch_norm_train(f64(x), f64(w), f64(b), layout=layout)
    _assert_relu_of(y, ey)
    # in place too (out=x)
    xi = x.copy()
    cbn.batch_norm_train(xi, w, b, layout=layout, activation="relu", out=xi)
    np.testing.assert_array_equal(xi, y)

    # backward masks dy where y == 0: same as the plain backward fed with the masked dy
    dy = make_x(rng, shape, dtype, layout)
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, w, layout=layout, y=y,
                                         activation="relu")
    g = np.where(y > 0, f64(dy), 0.0)
    edx, edw, edb = ref.batch_norm_backward(g, f64(x), f64(mean), f64(invstd), f64(w),
                                            layout=layout)
    assert_close(dx, edx)
    assert_close(dw, edw)
    assert_close(db, edb)


@pytest.mark.parametrize("dtype, case", CASES, ids=IDS)
def test_infer_relu_streamed(rng, dtype, case):
    layout, shape = case
    x, w, b = _data(rng, dtype, layout, shape)
    rm, rv = make_running(rng, n_channels(shape, layout), dtype)
    y = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout, activation="relu")
    ey = ref.batch_norm_infer(f64(x), f64(rm), f64(rv), f64(w), f64(b), layout=layout)
    _assert_relu_of(y, ey)


@pytest.mark.parametrize("dtype, case", CASES[:1] + CASES[3:4], ids=IDS[:1] + IDS[3:4])
def test_split_normalize_relu_streamed(rng, dtype, case):
    """The apply-only kernel (cbn.split) streams too."""
    layout, shape = case
    x, w, b = _data(rng, dtype, layout, shape)
    count, mean, m2 = split.batch_stats(x, layout=layout)
    invstd = 1.0 / np.sqrt(m2 / count + 1e-5)
    y = split.batch_norm_normalize(x, mean, invstd, w, b, layout=layout, activation="relu")
    ey, _, _, _, _ = ref.batch_norm_train(f64(x), f64(w), f64(b), layout=layout)
    _assert_relu_of(y, ey)
