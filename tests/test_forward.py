"""Training forward (`cbn.batch_norm_train`) against `cbn.reference` over generated cases."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import (ALL_CASES, DTYPES, SMALL_CASES, assert_close, assert_meta, case_arrays,
                      case_id, channel_axis, f64, make_params, make_x, n_channels,
                      values_per_channel)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_matches_reference(rng, case, dtype, affine):
    layout, shape, C, x, _, weight, bias, rm, rv = case_arrays(rng, case, dtype, affine)
    rm0, rv0 = rm.copy(), rv.copy()

    y, save_mean, save_invstd = cbn.batch_norm_train(
        x, weight, bias, running_mean=rm, running_var=rv, layout=layout)
    ey, emean, einvstd, erm, erv = ref.batch_norm_train(
        f64(x), f64(weight), f64(bias), running_mean=f64(rm0), running_var=f64(rv0),
        layout=layout)

    assert_meta(y, shape, dtype)
    assert_meta(save_mean, (C,), dtype)
    assert_meta(save_invstd, (C,), dtype)
    assert_close(y, ey)
    assert_close(save_mean, emean)
    assert_close(save_invstd, einvstd, atol=0)
    assert_close(rm, erm)
    assert_close(rv, erv, atol=0)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.37, 1.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [("NCHW", (4, 3, 5)), ("NHWC", (3, 5, 4)), ("NCHW", (2, 7)),
                                  ("NHWC", (2, 1, 1, 6))], ids=case_id)
def test_running_statistics_conventions(rng, case, dtype, momentum, unbiased):
    layout, shape, C, x, _, _, _, rm, rv = case_arrays(rng, case, dtype)
    M = values_per_channel(shape, layout)
    rm0, rv0 = f64(rm.copy()), f64(rv.copy())
    _, save_mean, save_invstd = cbn.batch_norm_train(
        x, running_mean=rm, running_var=rv, momentum=momentum, layout=layout,
        unbiased_running_var=unbiased)

    # the formulas written out, independently of the reference module
    xs = np.moveaxis(f64(x), channel_axis(layout, x.ndim), -1).reshape(-1, C)
    mean = xs.mean(axis=0)
    var = ((xs - mean) ** 2).mean(axis=0)
    batch_var = var * M / (M - 1) if unbiased else var
    assert_close(rm, (1 - momentum) * rm0 + momentum * mean)
    assert_close(rv, (1 - momentum) * rv0 + momentum * batch_var)
    if momentum == 0.0:
        np.testing.assert_array_equal(rm, rm0.astype(dtype))
        np.testing.assert_array_equal(rv, rv0.astype(dtype))
    # same from the reference module
    _, _, _, erm, erv = ref.batch_norm_train(f64(x), running_mean=rm0, running_var=rv0,
                                             momentum=momentum, layout=layout,
                                             unbiased_running_var=unbiased)
    assert_close(rm, erm)
    assert_close(rv, erv)


def test_unbiased_running_var_differs_by_bessel_factor(rng):
    x = make_x(rng, (3, 2, 2), np.float64)  # M = 6
    rv_u, rv_b = np.zeros(2), np.zeros(2)
    cbn.batch_norm_train(x, running_mean=np.zeros(2), running_var=rv_u, momentum=1.0)
    cbn.batch_norm_train(x, running_mean=np.zeros(2), running_var=rv_b, momentum=1.0,
                         unbiased_running_var=False)
    assert_close(rv_u, rv_b * 6 / 5)
    assert_close(rv_b, f64(x).transpose(1, 0, 2).reshape(2, -1).var(axis=1))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_hand_computed(dtype):
    # one channel [1, 3]: mean 2, biased var 1, unbiased var 2
    x = np.array([[1.0, 10.0], [3.0, 14.0]], dtype)  # C=2; second channel mean 12, var 4
    rm = np.array([0.0, 1.0], dtype)
    rv = np.array([1.0, 1.0], dtype)
    y, m, s = cbn.batch_norm_train(x, [2.0, 1.0], [0.5, 0.0], running_mean=rm, running_var=rv,
                                   eps=0.0, momentum=0.5)
    assert_close(m, [2.0, 12.0])
    assert_close(s, [1.0, 0.5])
    assert_close(y, [[-1.5, -1.0], [2.5, 1.0]])
    assert_close(rm, [1.0, 6.5])
    assert_close(rv, [1.5, 4.5])


@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_eps(rng, dtype, eps):
    x = make_x(rng, (6, 3, 4), dtype)
    y, m, s = cbn.batch_norm_train(x, eps=eps)
    ey, em, es, _, _ = ref.batch_norm_train(f64(x), eps=eps)
    assert_close(y, ey)
    assert_close(s, es, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", SMALL_CASES[:6] + [("NCHW", (12, 8, 33, 31))], ids=case_id)
def test_output_is_normalized(rng, case, dtype):
    layout, shape = case
    if values_per_channel(shape, layout) < 3:
        pytest.skip("needs a few values per channel")
    C = n_channels(shape, layout)
    x = make_x(rng, shape, dtype, layout, loc=3.0, scale=2.0)
    y, _, _ = cbn.batch_norm_train(x, layout=layout, eps=0.0)
    ys = np.moveaxis(f64(y), channel_axis(layout, y.ndim), -1).reshape(-1, C)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(ys.mean(axis=0), 0.0, atol=tol)
    np.testing.assert_allclose(ys.var(axis=0), 1.0, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape_first", [(2, 3), (4, 3, 5), (2, 5, 3, 4), (2, 3, 2, 3, 4),
                                         (8, 24, 20, 18)])
def test_layouts_agree(rng, dtype, shape_first):
    """Channels-last on the moved-axis array gives the channels-first result, moved."""
    C = shape_first[1]
    x = make_x(rng, shape_first, dtype)
    w, b = make_params(rng, C, dtype)
    y1, m1, s1 = cbn.batch_norm_train(x, w, b, layout="NCHW")
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y2, m2, s2 = cbn.batch_norm_train(xl, w, b, layout="NHWC")
    assert_close(np.moveaxis(y2, -1, 1), f64(y1))
    assert_close(m2, f64(m1))
    assert_close(s2, f64(s1))


@pytest.mark.parametrize("alias,canonical", [("channels_first", "NCHW"), ("channels_last", "NHWC")])
def test_layout_aliases(rng, alias, canonical):
    x = make_x(rng, (3, 4, 5, 6), np.float32)
    a = cbn.batch_norm_train(x, layout=alias)
    b = cbn.batch_norm_train(x, layout=canonical)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_defaults(rng):
    """Default layout is NCHW, default eps 1e-5, default momentum 0.1 (unbiased)."""
    x = make_x(rng, (4, 3, 5), np.float64)
    rm, rv = np.zeros(3), np.ones(3)
    y, m, s = cbn.batch_norm_train(x, running_mean=rm, running_var=rv)
    ey, em, es, erm, erv = ref.batch_norm_train(x, running_mean=np.zeros(3),
                                                running_var=np.ones(3),
                                                momentum=0.1, eps=1e-5, layout="NCHW")
    assert_close(y, ey)
    assert_close(s, es)
    assert_close(rm, erm)
    assert_close(rv, erv)


def test_returns_fresh_arrays(rng):
    x = make_x(rng, (4, 3, 5), np.float32)
    y, m, s = cbn.batch_norm_train(x)
    assert y.flags.c_contiguous and y.flags.writeable
    assert not np.shares_memory(y, x)
    assert not np.shares_memory(m, s)


def test_constant_channel(rng):
    """A channel with zero variance gives mean = value, invstd = 1/sqrt(eps), y = bias."""
    x = make_x(rng, (5, 3, 4), np.float64)
    x[:, 1] = 2.5
    y, m, s = cbn.batch_norm_train(x, None, np.array([0.0, 7.0, 0.0]), eps=1e-5)
    assert m[1] == 2.5
    assert_close(s[1], 1 / np.sqrt(1e-5))
    assert_close(y[:, 1], np.full((5, 4), 7.0))


def test_keras_momentum_convention(rng):
    """Keras momentum 0.99 == cbn/PyTorch momentum 0.01 with the biased running variance."""
    x = make_x(rng, (8, 3, 4), np.float64)
    rm, rv = np.zeros(3), np.ones(3)
    cbn.batch_norm_train(x, running_mean=rm, running_var=rv, momentum=1 - 0.99,
                         unbiased_running_var=False)
    mean = x.mean(axis=(0, 2))
    var = x.var(axis=(0, 2))
    assert_close(rm, 0.99 * 0 + 0.01 * mean)
    assert_close(rv, 0.99 * 1 + 0.01 * var)
