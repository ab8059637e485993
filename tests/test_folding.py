"""fold_linear / fold_conv: the folded layer equals layer-then-BN in eval mode."""
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import cbn
from conftest import DTYPES

TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def bn_eval(z, mean, var, weight, bias, eps, axis=1):
    shape = [1] * z.ndim
    shape[axis] = -1
    r = lambda a: np.asarray(a, np.float64).reshape(shape)
    return (z - r(mean)) / np.sqrt(r(var) + eps) * r(weight) + r(bias)


def conv2d(x, W, b):
    """Valid 2-D convolution (cross-correlation, as deep-learning frameworks define it)."""
    kh, kw = W.shape[2:]
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))      # (N, Cin, H', W', kh, kw)
    out = np.einsum("nchwij,ocij->nohw", win, W)
    return out + (0 if b is None else b.reshape(1, -1, 1, 1))


def random_bn(rng, C, dtype):
    bn = cbn.BatchNorm(C, dtype=dtype, eps=1e-3)
    bn.running_mean[...] = rng.normal(size=C)
    bn.running_var[...] = rng.uniform(0.2, 3, C)
    bn.weight[...] = rng.uniform(0.5, 2, C)
    bn.bias[...] = rng.normal(size=C)
    return bn


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_linear(dtype, with_bias, rng):
    W = rng.normal(size=(6, 5)).astype(dtype)
    b = rng.normal(size=6).astype(dtype) if with_bias else None
    bn = random_bn(rng, 6, dtype)
    x = rng.normal(size=(10, 5)).astype(dtype)
    Wf, bf = cbn.fold_linear(W, b, bn)
    assert Wf.dtype == dtype and bf.dtype == dtype and Wf.shape == W.shape and bf.shape == (6,)
    z = x.astype(np.float64) @ W.T.astype(np.float64) + (0 if b is None else b)
    expected = bn_eval(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    np.testing.assert_allclose(x @ Wf.T + bf, expected, rtol=TOL[np.dtype(dtype)],
                               atol=TOL[np.dtype(dtype)] * np.abs(expected).max())
    # the layer itself in eval mode gives the same
    np.testing.assert_allclose(bn.eval()(z.astype(dtype)), expected,
                               rtol=TOL[np.dtype(dtype)], atol=TOL[np.dtype(dtype)] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_conv(dtype, with_bias, rng):
    W = rng.normal(size=(4, 3, 3, 2)).astype(dtype)
    b = rng.normal(size=4).astype(dtype) if with_bias else None
    bn = random_bn(rng, 4, dtype)
    x = rng.normal(size=(2, 3, 7, 6)).astype(dtype)
    Wf, bf = cbn.fold_conv(W, b, bn)
    z = conv2d(x.astype(np.float64), W.astype(np.float64), None if b is None else f64(b))
    expected = bn_eval(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    got = conv2d(x.astype(np.float64), Wf.astype(np.float64), f64(bf))
    np.testing.assert_allclose(got, expected, rtol=TOL[np.dtype(dtype)],
                               atol=TOL[np.dtype(dtype)] * np.abs(expected).max())


def f64(a):
    return np.asarray(a, np.float64)


def test_stats_as_dict_or_tuple(rng):
    W = rng.normal(size=(3, 2))
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    a = cbn.fold_linear(W, None, {"running_mean": mean, "running_var": var})
    b = cbn.fold_linear(W, None, (mean, var))
    c = cbn.fold_linear(W, None, (mean, var, np.ones(3), np.zeros(3), 1e-5))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a, c):
        np.testing.assert_array_equal(x, y)


def test_fold_errors(rng):
    W = rng.normal(size=(3, 2))
    with pytest.raises(ValueError, match="channels"):
        cbn.fold_linear(W, None, (np.zeros(4), np.ones(4)))
    with pytest.raises(ValueError, match="out, in"):
        cbn.fold_linear(W[None], None, (np.zeros(3), np.ones(3)))
    with pytest.raises(TypeError, match="dtype"):
        cbn.fold_linear(W.astype(np.int64), None, (np.zeros(3), np.ones(3)))
    with pytest.raises(ValueError, match="running"):
        cbn.fold_linear(W, None, cbn.BatchNorm(3, dtype=np.float64, track_running_stats=False))
    with pytest.raises(TypeError, match="bn_or_stats"):
        cbn.fold_linear(W, None, 42)
    with pytest.raises(ValueError, match="shape"):
        cbn.fold_linear(W, np.zeros(5), (np.zeros(3), np.ones(3)))
