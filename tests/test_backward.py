"""Backward (`cbn.batch_norm_backward`): reference comparison and finite differences."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import (ALL_CASES, DTYPES, assert_close, assert_meta, case_arrays, case_id,
                      channel_axis, f64, make_params, make_x, n_channels)


@pytest.mark.parametrize("affine", [True, False], ids=["weight", "noweight"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_matches_reference(rng, case, dtype, affine):
    layout, shape, C, x, dy, weight, _, _, _ = case_arrays(rng, case, dtype, affine)
    _, save_mean, save_invstd = cbn.batch_norm_train(x, weight, layout=layout)

    dx, dweight, dbias = cbn.batch_norm_backward(dy, x, save_mean, save_invstd, weight,
                                                 layout=layout)
    edx, edw, edb = ref.batch_norm_backward(f64(dy), f64(x), f64(save_mean), f64(save_invstd),
                                            f64(weight), layout=layout)
    assert_meta(dx, shape, dtype)
    assert_meta(dweight, (C,), dtype)
    assert_meta(dbias, (C,), dtype)
    assert_close(dbias, edb)
    assert_close(dweight, edw)
    assert_close(dx, edx)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [("NCHW", (4, 3, 5)), ("NHWC", (3, 5, 4)),
                                  ("NCHW", (12, 8, 33, 31)), ("NHWC", (8, 20, 18, 24))],
                         ids=case_id)
def test_gradient_identities(rng, case, dtype):
    """Per channel, sum(dx) = 0 and, with eps = 0, sum(dx * xhat) = 0 (the gradient is orthogonal
    to a shift and a scaling of the input), whatever dy and weight are."""
    layout, shape, C, x, dy, weight, _, _, _ = case_arrays(rng, case, dtype, dy_loc=0.5)
    _, m, s = cbn.batch_norm_train(x, weight, layout=layout, eps=0.0)
    dx, _, _ = cbn.batch_norm_backward(dy, x, m, s, weight, layout=layout)
    ax = channel_axis(layout, len(shape))
    dxs = np.moveaxis(f64(dx), ax, -1).reshape(-1, C)
    xhat = (np.moveaxis(f64(x), ax, -1).reshape(-1, C) - f64(m)) * f64(s)
    dys = np.moveaxis(f64(dy), ax, -1).reshape(-1, C)
    scale = np.abs(dys).sum(axis=0) * np.abs(f64(weight) * f64(s))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.all(np.abs(dxs.sum(axis=0)) <= tol * scale)
    assert np.all(np.abs((dxs * xhat).sum(axis=0)) <= tol * scale * 4)


def _finite_difference_check(rng, layout, shape, affine, eps=1e-5):
    C = n_channels(shape, layout)
    x = make_x(rng, shape, np.float64, layout)
    g = rng.standard_normal(shape)
    weight, bias = make_params(rng, C, np.float64, affine)

    def loss(x_, w_, b_):
        y, _, _ = cbn.batch_norm_train(x_, w_, b_, layout=layout, eps=eps)
        return float(np.sum(y * g))

    _, m, s = cbn.batch_norm_train(x, weight, bias, layout=layout, eps=eps)
    dx, dweight, dbias = cbn.batch_norm_backward(g, x, m, s, weight, layout=layout)

    h = 1e-6
    num_dx = np.empty_like(x)
    for i in np.ndindex(*shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        num_dx[i] = (loss(xp, weight, bias) - loss(xm, weight, bias)) / (2 * h)
    np.testing.assert_allclose(dx, num_dx, rtol=1e-5, atol=1e-6)

    w = np.ones(C) if weight is None else weight
    b = np.zeros(C) if bias is None else bias
    num_dw, num_db = np.empty(C), np.empty(C)
    for c in range(C):
        e = np.zeros(C)
        e[c] = h
        num_dw[c] = (loss(x, w + e, b) - loss(x, w - e, b)) / (2 * h)
        num_db[c] = (loss(x, w, b + e) - loss(x, w, b - e)) / (2 * h)
    np.testing.assert_allclose(dweight, num_dw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dbias, num_db, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("case", [("NCHW", (3, 4, 5)), ("NHWC", (3, 5, 4)), ("NCHW", (4, 2)),
                                  ("NHWC", (2, 2, 3, 3)), ("NCHW", (1, 3, 2, 2, 2)),
                                  ("channels_last", (2, 3)), ("NCHW", (5, 1, 3))], ids=case_id)
def test_finite_differences(rng, case, affine):
    layout, shape = case
    _finite_difference_check(rng, layout, shape, affine)


def test_finite_differences_large_eps(rng):
    """eps enters invstd; the analytic gradient must use the saved invstd consistently."""
    _finite_difference_check(rng, "NCHW", (3, 2, 4), True, eps=0.3)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_weight_none_is_ones(rng, dtype):
    x = make_x(rng, (4, 3, 7), dtype)
    dy = make_x(rng, (4, 3, 7), dtype)
    _, m, s = cbn.batch_norm_train(x)
    a = cbn.batch_norm_backward(dy, x, m, s)
    b = cbn.batch_norm_backward(dy, x, m, s, np.ones(3, dtype))
    for u, v in zip(a, b):
        assert_close(u, f64(v), rtol=1e-6 if dtype == np.float32 else 1e-14,
                     atol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_hand_computed(dtype):
    # one channel, x = [1, 3] -> mean 2, invstd 1 (eps 0), xhat = [-1, 1]
    x = np.array([[1.0], [3.0]], dtype)
    dy = np.array([[0.5], [2.0]], dtype)
    dx, dw, db = cbn.batch_norm_backward(dy, x, np.array([2.0], dtype), np.array([1.0], dtype),
                                         np.array([3.0], dtype))
    # dbias = 2.5, dweight = -0.5 + 2 = 1.5
    # dx = 3 * 1 / 2 * (2*dy - 2.5 - xhat*1.5) = 1.5 * ([1, 4] - 2.5 - [-1.5, 1.5]) = [0, 0]
    assert_close(db, [2.5])
    assert_close(dw, [1.5])
    assert_close(dx, [[0.0], [0.0]])
    dy2 = np.array([[1.0], [0.0]], dtype)
    dx, dw, db = cbn.batch_norm_backward(dy2, x, np.array([2.0], dtype), np.array([1.0], dtype))
    # dbias = 1, dweight = -1; dx = 1/2 * ([2, 0] - 1 - [1, -1]) = [0, 0]
    assert_close(db, [1.0])
    assert_close(dw, [-1.0])
    assert_close(dx, [[0.0], [0.0]])
    x3 = np.array([[0.0], [1.0], [5.0]], dtype)
    m3 = np.array([2.0], dtype)
    s3 = np.array([0.5], dtype)
    dy3 = np.array([[1.0], [0.0], [0.0]], dtype)
    # xhat = [-1, -0.5, 1.5]; dbias = 1; dweight = -1
    # dx = 0.5/3 * ([3, 0, 0] - 1 - xhat*(-1)) = (1/6) * [1, -1.5, 0.5]
    dx, dw, db = cbn.batch_norm_backward(dy3, x3, m3, s3)
    assert_close(db, [1.0])
    assert_close(dw, [-1.0])
    assert_close(dx, np.array([[1.0], [-1.5], [0.5]]) / 6)
