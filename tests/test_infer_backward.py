"""Backward through frozen statistics (`cbn.batch_norm_infer_backward`, and `cbn.BatchNorm.backward`
after an eval-mode forward): the float64 reference, the exact dx = dy * scale, PyTorch autograd,
bit-identity across thread counts, the streaming path, bad input."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import (ALL_CASES, DTYPES, assert_close, assert_identical, assert_meta, case_arrays,
                      case_id, channel_axis, f64, make_running, make_x)


def _per_channel(a, layout, ndim):
    """a (C,) shaped to broadcast against an array of `ndim` dims in `layout`."""
    shape = [1] * ndim
    shape[channel_axis(layout, ndim)] = -1
    return a.reshape(shape)


def _setup(rng, case, dtype, affine=True):
    layout, _, _, x, dy, weight, bias, rm, rv = case_arrays(rng, case, dtype, affine, loc=0.5)
    return layout, x, dy, weight, bias, rm, rv


@pytest.mark.parametrize("affine", [True, False], ids=["weight", "noweight"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_matches_reference(rng, case, dtype, affine):
    layout, x, dy, weight, _, rm, rv = _setup(rng, case, dtype, affine)
    C = rm.shape[0]
    dx, dweight, dbias = cbn.batch_norm_infer_backward(dy, x, rm, rv, weight, eps=1e-3,
                                                       layout=layout)
    edx, edw, edb = ref.batch_norm_infer_backward(f64(dy), f64(x), f64(rm), f64(rv), f64(weight),
                                                  eps=1e-3, layout=layout)
    assert_meta(dx, x.shape, dtype)
    assert_meta(dweight, (C,), dtype)
    assert_meta(dbias, (C,), dtype)
    assert_close(dbias, edb)
    assert_close(dweight, edw)
    assert_close(dx, edx)
    # dx is one multiply by inference's own scale, in x's dtype
    scale, _ = cbn.fold_scale_shift(rm, rv, weight, eps=1e-3)
    assert_identical(dx, dy * _per_channel(scale, layout, x.ndim))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [("NCHW", (4, 3, 5, 7)), ("NHWC", (4, 5, 7, 3)),
                                  ("NCHW", (16, 40, 13, 15)), ("NHWC", (4, 8, 5, 600))],
                         ids=case_id)
def test_fused_relu_masks_dy(rng, case, dtype):
    layout, x, dy, weight, bias, rm, rv = _setup(rng, case, dtype)
    y = cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout, activation="relu")
    assert 0 < np.count_nonzero(y > 0) < y.size
    g = np.where(y > 0, dy, 0).astype(dtype)
    got = cbn.batch_norm_infer_backward(dy, x, rm, rv, weight, layout=layout, y=y,
                                        activation="relu")
    want = cbn.batch_norm_infer_backward(g, x, rm, rv, weight, layout=layout)
    for a, b in zip(got, want):
        assert_identical(a, b)
    edx, edw, edb = ref.batch_norm_infer_backward(f64(g), f64(x), f64(rm), f64(rv), f64(weight),
                                                  layout=layout)
    assert_close(got[1], edw)
    assert_close(got[2], edb)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_finite_differences(rng, dtype):
    """The gradients of sum(dy * y) with y = batch_norm_infer(x, ...) in float64, by central
    differences in weight, bias and one x value (y is linear in each: exact up to rounding)."""
    layout, x, dy, weight, bias, rm, rv = _setup(rng, ("NCHW", (3, 4, 5)), np.float64)

    def loss(x_, w_, b_):
        return float((dy * cbn.batch_norm_infer(x_, rm, rv, w_, b_, layout=layout)).sum())

    dx, dw, db = cbn.batch_norm_infer_backward(dy, x, rm, rv, weight, layout=layout)
    h = 1e-3
    for c in range(4):
        e = np.zeros(4)
        e[c] = h
        np.testing.assert_allclose((loss(x, weight + e, bias) - loss(x, weight - e, bias)) / (2 * h),
                                   dw[c], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose((loss(x, weight, bias + e) - loss(x, weight, bias - e)) / (2 * h),
                                   db[c], rtol=1e-7, atol=1e-9)
    e = np.zeros_like(x)
    e[1, 2, 3] = h
    np.testing.assert_allclose((loss(x + e, weight, bias) - loss(x - e, weight, bias)) / (2 * h),
                               dx[1, 2, 3], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [("NCHW", (12, 8, 33, 31)), ("NCHW", (3, 3, 131, 67)),
                                  ("NCHW", (16, 40, 13, 15)), ("NHWC", (8, 20, 18, 24)),
                                  ("NHWC", (4, 8, 5, 600)), ("NCHW", (70001, 2))], ids=case_id)
def test_bit_identical_for_every_thread_count(rng, case, dtype):
    layout, x, dy, weight, bias, rm, rv = _setup(rng, case, dtype)
    y = cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout, activation="relu")
    base = cbn.batch_norm_infer_backward(dy, x, rm, rv, weight, layout=layout, y=y,
                                         activation="relu", residual=True, n_threads=1)
    for n in (2, 3, 5, -1):
        got = cbn.batch_norm_infer_backward(dy, x, rm, rv, weight, layout=layout, y=y,
                                            activation="relu", residual=True, n_threads=n)
        for a, b, name in zip(got, base, ["dx", "dweight", "dbias", "d_residual"]):
            assert_identical(a, b, f"{name}, n_threads={n}")


@pytest.mark.parametrize("case", [("NCHW", (4, 3, 600, 700)), ("NCHW", (96, 900, 7, 7)),
                                  ("NHWC", (16, 1024, 260)), ("NHWC", (2, 2000, 1100))],
                         ids=case_id)
def test_streamed_outputs(rng, case):
    """Outputs past the streaming-store threshold (16 MB), the residual's gradient included."""
    layout, x, dy, weight, bias, rm, rv = _setup(rng, case, np.float32)
    assert x.nbytes >= 16 * 1024 * 1024
    y = cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout, activation="relu")
    dx, dw, db, dr = cbn.batch_norm_infer_backward(dy, x, rm, rv, weight, layout=layout, y=y,
                                                   activation="relu", residual=True)
    g = np.where(y > 0, dy, np.float32(0))
    scale, _ = cbn.fold_scale_shift(rm, rv, weight)
    assert_identical(dx, g * _per_channel(scale, layout, x.ndim))
    assert_identical(dr, g)
    _, edw, edb = ref.batch_norm_infer_backward(f64(g), f64(x), f64(rm), f64(rv), f64(weight),
                                                layout=layout)
    assert_close(dw, edw)
    assert_close(db, edb)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_in_place_and_empty_batch(rng, layout):
    layout, x, dy, weight, _, rm, rv = _setup(rng, (layout, (6, 24, 10)), np.float32)
    want = cbn.batch_norm_infer_backward(dy, x, rm, rv, weight, layout=layout)
    d = dy.copy()
    got = cbn.batch_norm_infer_backward(d, x, rm, rv, weight, layout=layout, out=d)
    assert got[0] is d
    for a, b in zip(got, want):
        assert_identical(a, b)
    empty = np.empty((0,) + x.shape[1:], np.float32)
    dx, dw, db = cbn.batch_norm_infer_backward(empty, empty, rm, rv, weight, layout=layout)
    assert dx.shape == empty.shape
    assert_identical(dw, np.zeros_like(rm))
    assert_identical(db, np.zeros_like(rm))


def test_bad_input_writes_nothing(rng):
    x = make_x(rng, (4, 3, 5), np.float32)
    rm, rv = make_running(rng, 3, np.float32)
    out = np.full_like(x, 7.0)

    def call(**kw):
        args = dict(dy=x, x=x, running_mean=rm, running_var=rv, out=out)
        args.update(kw)
        return cbn.batch_norm_infer_backward(args.pop("dy"), args.pop("x"), **args)

    with pytest.raises(TypeError, match="dy"):
        call(dy=x.astype(np.float64))
    with pytest.raises(ValueError, match="dy"):
        call(dy=x[:2])
    with pytest.raises(ValueError, match="running_mean"):
        call(running_mean=rm[:2])
    with pytest.raises(ValueError, match="running_mean and running_var"):
        call(running_var=None)
    with pytest.raises(ValueError, match="eps"):
        call(eps=-1.0)
    with pytest.raises(ValueError, match="needs y"):
        call(activation="relu")
    with pytest.raises(TypeError, match="residual"):
        call(residual=x)
    with pytest.raises(TypeError, match="out"):
        call(out=out.astype(np.float64))
    assert (out == 7.0).all()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_layer_backward_in_eval_mode(rng, layout, activation):
    """After an eval-mode forward, BatchNorm.backward goes through the frozen statistics."""
    bn = cbn.BatchNorm(3, layout=layout, activation=activation, dtype=np.float64)
    bn.weight[...] = [1.5, -0.5, 2.0]
    bn.bias[...] = [0.1, 0.2, -0.3]
    bn.running_mean[...] = [0.5, -1.0, 0.0]
    bn.running_var[...] = [2.0, 0.5, 1.0]
    shape = (4, 5, 6, 3) if layout == "NHWC" else (4, 3, 5, 6)
    x = make_x(rng, shape, np.float64, layout)
    dy = make_x(rng, shape, np.float64, layout)
    y = bn.eval()(x)
    dx = bn.backward(dy)
    want = cbn.batch_norm_infer_backward(dy, x, bn.running_mean, bn.running_var, bn.weight,
                                         eps=bn.eps, layout=layout, y=y, activation=activation)
    assert_identical(dx, want[0])
    assert_identical(bn.grad_weight, want[1])
    assert_identical(bn.grad_bias, want[2])


def test_torch_autograd_frozen(rng):
    torch = pytest.importorskip("torch")
    for layout, shape in [("NCHW", (4, 3, 5, 7)), ("NHWC", (4, 5, 7, 3))]:
        layout, x, dy, weight, bias, rm, rv = _setup(rng, (layout, shape), np.float64)
        y = cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout, activation="relu")
        dx, dw, db = cbn.batch_norm_infer_backward(dy, x, rm, rv, weight, layout=layout, y=y,
                                                   activation="relu")
        perm = (0, 3, 1, 2) if layout == "NHWC" else (0, 1, 2, 3)
        tx = torch.tensor(x).permute(*perm).requires_grad_()
        tw = torch.tensor(weight).requires_grad_()
        tb = torch.tensor(bias).requires_grad_()
        ty = torch.relu(torch.nn.functional.batch_norm(tx, torch.tensor(rm), torch.tensor(rv),
                                                       tw, tb, training=False, eps=1e-5))
        back = (0, 2, 3, 1) if layout == "NHWC" else (0, 1, 2, 3)
        ty.backward(torch.tensor(dy).permute(*perm))
        assert_close(y, ty.detach().permute(*back).numpy())
        assert_close(dx, tx.grad.permute(*back).numpy())
        assert_close(dw, tw.grad.numpy())
        assert_close(db, tb.grad.numpy())
