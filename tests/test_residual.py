"""The fused residual add (+ ReLU): ``batch_norm_train/batch_norm_infer(..., residual=r)`` give
exactly ``max(bn(x) + r, 0)`` rounded in x's dtype, and ``batch_norm_backward(..., residual=True)``
the residual's gradient (dy masked by y > 0) beside unchanged dx, dweight, dbias. Checked
against the unfused computation bit for bit, the float64 reference, PyTorch autograd, across
thread counts, on the streaming path, in place, and for bad input."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import (ALL_CASES, DTYPES, assert_close, assert_identical, case_arrays, case_id, f64,
                      make_running, make_x)

ACTIVATIONS = [None, "relu"]


def _act(v, activation):
    return np.maximum(v, v.dtype.type(0)) if activation == "relu" else v


def _setup(rng, case, dtype):
    layout, shape, _, x, dy, weight, bias, rm, rv = case_arrays(rng, case, dtype, loc=0.5)
    r = make_x(rng, shape, dtype, layout)
    return layout, x, r, dy, weight, bias, rm, rv


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_equals_unfused_and_reference(rng, case, dtype, activation):
    layout, x, r, dy, weight, bias, rm, rv = _setup(rng, case, dtype)
    # training: y and the running update
    rm1, rv1, rm2, rv2 = rm.copy(), rv.copy(), rm.copy(), rv.copy()
    y_bn, mean, invstd = cbn.batch_norm_train(x, weight, bias, running_mean=rm1, running_var=rv1,
                                              layout=layout)
    y, mean2, invstd2 = cbn.batch_norm_train(x, weight, bias, running_mean=rm2, running_var=rv2,
                                             layout=layout, residual=r, activation=activation)
    assert_identical(y, _act(y_bn + r, activation))
    for a, b in [(mean2, mean), (invstd2, invstd), (rm2, rm1), (rv2, rv1)]:
        assert_identical(a, b)
    ey = ref.batch_norm_train(f64(x), f64(weight), f64(bias), layout=layout, residual=f64(r))[0]
    assert_close(y, _act(ey, activation))
    # inference
    yi = cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout, residual=r,
                              activation=activation)
    assert_identical(yi, _act(cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout) + r,
                              activation))
    eyi = ref.batch_norm_infer(f64(x), f64(rm), f64(rv), f64(weight), f64(bias), layout=layout,
                               residual=f64(r))
    assert_close(yi, _act(eyi, activation))
    # backward: dx, dweight, dbias as without residual; d_residual = the masked dy
    y_arg = y if activation else None
    want = cbn.batch_norm_backward(dy, x, mean, invstd, weight, layout=layout, y=y_arg,
                                   activation=activation)
    got = cbn.batch_norm_backward(dy, x, mean, invstd, weight, layout=layout, y=y_arg,
                                  activation=activation, residual=True)
    assert len(got) == 4
    for a, b in zip(got[:3], want):
        assert_identical(a, b)
    g = np.where(y > 0, dy, dtype(0)) if activation else dy
    assert_identical(got[3], g)
    assert got[3] is not dy


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [("NCHW", (12, 8, 33, 31)), ("NCHW", (3, 3, 131, 67)),
                                  ("NCHW", (16, 40, 13, 15)), ("NHWC", (8, 20, 18, 24)),
                                  ("NHWC", (4, 8, 5, 600)), ("NCHW", (70001, 2))], ids=case_id)
def test_bit_identical_for_every_thread_count(rng, case, dtype):
    layout, x, r, dy, weight, bias, rm, rv = _setup(rng, case, dtype)

    def run(n):
        y, m, s = cbn.batch_norm_train(x, weight, bias, layout=layout, residual=r,
                                       activation="relu", n_threads=n)
        back = cbn.batch_norm_backward(dy, x, m, s, weight, layout=layout, y=y,
                                       activation="relu", residual=True, n_threads=n)
        yi = cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout, residual=r,
                                  activation="relu", n_threads=n)
        return (y, m, s) + back + (yi,)

    base = run(1)
    for n in (2, 3, 5, -1):
        for a, b in zip(run(n), base):
            assert_identical(a, b, f"n_threads={n}")


@pytest.mark.parametrize("case", [("NCHW", (4, 3, 600, 700)), ("NCHW", (96, 900, 7, 7)),
                                  ("NHWC", (16, 1024, 260)), ("NHWC", (2, 2000, 1100))],
                         ids=case_id)
def test_streamed_outputs(rng, case):
    """Outputs past the streaming-store threshold (16 MB)."""
    layout, x, r, dy, weight, bias, rm, rv = _setup(rng, case, np.float32)
    assert x.nbytes >= 16 * 1024 * 1024
    y_bn, m, s = cbn.batch_norm_train(x, weight, bias, layout=layout)
    y, _, _ = cbn.batch_norm_train(x, weight, bias, layout=layout, residual=r, activation="relu")
    assert_identical(y, _act(y_bn + r, "relu"))
    yi = cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout, residual=r,
                              activation="relu")
    assert_identical(yi, _act(cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout) + r,
                              "relu"))
    want = cbn.batch_norm_backward(dy, x, m, s, weight, layout=layout, y=y, activation="relu")
    got = cbn.batch_norm_backward(dy, x, m, s, weight, layout=layout, y=y, activation="relu",
                                  residual=True)
    for a, b in zip(got[:3], want):
        assert_identical(a, b)
    assert_identical(got[3], np.where(y > 0, dy, np.float32(0)))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_in_place_over_the_residual(rng, layout):
    shape = (6, 1000, 24) if layout == "NHWC" else (6, 24, 1000)
    layout, x, r, dy, weight, bias, rm, rv = _setup(rng, (layout, shape), np.float32)
    want, _, _ = cbn.batch_norm_train(x, weight, bias, layout=layout, residual=r,
                                      activation="relu")
    for n in (1, 3):
        ri = r.copy()
        y, _, _ = cbn.batch_norm_train(x, weight, bias, layout=layout, residual=ri,
                                       activation="relu", out=ri, n_threads=n)
        assert y is ri
        assert_identical(y, want)
    want = cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout, residual=r)
    ri = r.copy()
    assert_identical(cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout, residual=ri,
                                          out=ri), want)
    # the residual may be x itself, and y may overwrite both
    xi = x.copy()
    y, _, _ = cbn.batch_norm_train(xi, weight, bias, layout=layout, residual=xi, out=xi)
    y_bn, _, _ = cbn.batch_norm_train(x, weight, bias, layout=layout)
    assert_identical(y, y_bn + x)


def test_empty_batch(rng):
    x = np.empty((0, 3, 4), np.float32)
    y, m, s = cbn.batch_norm_train(x, residual=x, activation="relu")
    assert y.shape == x.shape
    dx, dw, db, dr = cbn.batch_norm_backward(x, x, m, s, y=y, activation="relu", residual=True)
    assert dr.shape == x.shape and (dw == 0).all() and (db == 0).all()


def test_bad_residual_writes_nothing(rng):
    x = make_x(rng, (4, 3, 5), np.float32)
    rm, rv = make_running(rng, 3, np.float32)
    rm0, rv0 = rm.copy(), rv.copy()
    out = np.full_like(x, 7.0)
    for bad, err, match in [(x.astype(np.float64), TypeError, "residual"),
                            (x[:, :2], ValueError, "residual"),
                            (x.astype(np.int32), TypeError, "residual")]:
        with pytest.raises(err, match=match):
            cbn.batch_norm_train(x, running_mean=rm, running_var=rv, residual=bad, out=out)
        with pytest.raises(err, match=match):
            cbn.batch_norm_infer(x, rm, rv, residual=bad, out=out)
    assert (out == 7.0).all()
    assert_identical(rm, rm0)
    assert_identical(rv, rv0)
    # a running statistic that shares memory with the residual would be read after written
    buf = np.zeros(x.size, np.float32)
    with pytest.raises(ValueError, match="residual"):
        cbn.batch_norm_train(x, running_mean=buf[:3], running_var=rv, residual=buf.reshape(x.shape),
                             out=out)
    assert (out == 7.0).all() and (buf == 0).all()
    _, m, s = cbn.batch_norm_train(x)
    with pytest.raises(TypeError, match="residual must be a bool"):
        cbn.batch_norm_backward(x, x, m, s, residual=x, out=out)
    assert (out == 7.0).all()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_layer(rng, layout, training):
    shape = (4, 5, 6, 3) if layout == "NHWC" else (4, 3, 5, 6)
    bn = cbn.BatchNorm(3, layout=layout, activation="relu").train(training)
    bn.running_mean[...] = [0.5, -1.0, 0.0]
    bn.running_var[...] = [2.0, 0.5, 1.0]
    layout, x, r, dy, _, _, _, _ = _setup(rng, (layout, shape), np.float32)
    state = bn.state_dict()
    y = bn(x, residual=r)
    dx, dr = bn.backward(dy)
    # the unfused layer on bn(x) + r, with the ReLU applied outside
    unfused = cbn.BatchNorm(3, layout=layout).train(training)
    unfused.load_state_dict(state)
    y_bn = unfused(x)
    assert_identical(y, np.maximum(y_bn + r, np.float32(0)))
    g = np.where(y > 0, dy, np.float32(0))
    assert_identical(dr, g)
    assert_identical(dx, unfused.backward(g))
    assert_identical(bn.grad_weight, unfused.grad_weight)
    assert_identical(bn.grad_bias, unfused.grad_bias)
    # without a residual the layer's backward returns dx alone again
    bn(x)
    assert isinstance(bn.backward(dy), np.ndarray)


def test_torch_autograd(rng):
    torch = pytest.importorskip("torch")
    for layout, shape in [("NCHW", (4, 3, 5, 7)), ("NHWC", (4, 5, 7, 3))]:
        layout, x, r, dy, weight, bias, _, _ = _setup(rng, (layout, shape), np.float64)
        y, m, s = cbn.batch_norm_train(x, weight, bias, layout=layout, residual=r,
                                       activation="relu")
        dx, dw, db, dr = cbn.batch_norm_backward(dy, x, m, s, weight, layout=layout, y=y,
                                                 activation="relu", residual=True)
        perm, back = ((0, 3, 1, 2), (0, 2, 3, 1)) if layout == "NHWC" else ((0, 1, 2, 3),) * 2
        tx = torch.tensor(x).permute(*perm).requires_grad_()
        tr = torch.tensor(r).permute(*perm).requires_grad_()
        tw = torch.tensor(weight).requires_grad_()
        tb = torch.tensor(bias).requires_grad_()
        ty = torch.relu(torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True,
                                                       eps=1e-5) + tr)
        ty.backward(torch.tensor(dy).permute(*perm))
        assert_close(y, ty.detach().permute(*back).numpy())
        assert_close(dx, tx.grad.permute(*back).numpy())
        assert_close(dr, tr.grad.permute(*back).numpy())
        assert_close(dw, tw.grad.numpy())
        assert_close(db, tb.grad.numpy())
