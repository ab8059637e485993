"""cbn.BatchNorm, the stateful layer: PyTorch's BatchNorm semantics over several steps, against
the functional API / reference (always) and torch.nn.BatchNorm*d (when torch is installed)."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import DTYPES, assert_close, f64

LAYOUT_SHAPES = [("NCHW", (6, 3, 5, 4)), ("NHWC", (6, 5, 4, 3)), ("NCHW", (9, 3)),
                 ("NCHW", (4, 3, 7)), ("NHWC", (3, 2, 2, 2, 3))]


def to_nchw(a, layout):
    return a if layout == "NCHW" else np.moveaxis(a, -1, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("layout,shape", LAYOUT_SHAPES)
def test_training_steps_follow_reference(layout, shape, momentum, dtype, rng):
    bn = cbn.BatchNorm(3, momentum=momentum, layout=layout, dtype=dtype)
    bn.weight[...] = rng.uniform(0.5, 2, 3)
    bn.bias[...] = rng.normal(size=3)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(1, 4):
        x = (rng.normal(size=shape) * step + step).astype(dtype)
        y = bn(x)
        m = 1.0 / step if momentum is None else momentum
        r = ref.batch_norm_train(f64(x), f64(bn.weight), f64(bn.bias), running_mean=rm,
                                 running_var=rv, momentum=m, layout=layout)
        rm, rv = r[3], r[4]
        assert_close(y, r[0])
        assert_close(bn.running_mean, rm)
        assert_close(bn.running_var, rv)
        assert bn.num_batches_tracked == step
        dy = rng.normal(size=shape).astype(dtype)
        dx = bn.backward(dy)
        e = ref.batch_norm_backward(f64(dy), f64(x), r[1], r[2], f64(bn.weight), layout=layout)
        assert_close(dx, e[0])
        assert_close(bn.grad_weight, e[1])
        assert_close(bn.grad_bias, e[2])
    x = rng.normal(size=shape).astype(dtype)
    assert bn.eval() is bn and not bn.training
    assert_close(bn(x), ref.batch_norm_infer(f64(x), rm, rv, f64(bn.weight), f64(bn.bias),
                                             layout=layout))
    assert bn.num_batches_tracked == 3          # eval does not count


def test_affine_false_and_no_running_stats(rng):
    bn = cbn.BatchNorm(4, affine=False, track_running_stats=False)
    assert bn.weight is None and bn.bias is None and bn.running_mean is None
    x = rng.normal(size=(5, 4, 3)).astype(np.float32)
    y = bn.eval()(x)                             # batch statistics in eval too
    assert_close(y, ref.batch_norm_train(f64(x))[0])
    bn.train()
    bn(x)
    bn.backward(np.ones_like(x))
    assert bn.grad_weight is None and bn.grad_bias is None
    assert bn.state_dict() == {}


def test_relu_layer_matches_functional(rng):
    bn = cbn.BatchNorm(3, activation="relu", layout="NHWC")
    x = rng.normal(size=(4, 5, 3)).astype(np.float32)
    y = bn(x)
    fy, m, s = cbn.batch_norm_train(x, bn.weight, bn.bias, layout="NHWC", activation="relu")
    np.testing.assert_array_equal(y, fy)
    dy = rng.normal(size=x.shape).astype(np.float32)
    np.testing.assert_array_equal(bn.backward(dy), cbn.batch_norm_backward(
        dy, x, m, s, bn.weight, layout="NHWC", y=fy, activation="relu")[0])


def test_errors(rng, tmp_path):
    bn = cbn.BatchNorm(3)
    with pytest.raises(RuntimeError, match="forward"):
        bn.backward(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        bn(np.ones((2, 3), np.float64))
    with pytest.raises(ValueError, match="3 channels"):
        bn(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="num_features"):
        cbn.BatchNorm(0)
    with pytest.raises(TypeError, match="dtype"):
        cbn.BatchNorm(3, dtype=np.int32)
    with pytest.raises(ValueError, match="keys"):
        bn.load_state_dict({"weight": np.ones(3)})
    bad = bn.state_dict()
    bad["bias"] = np.zeros(4)
    with pytest.raises(ValueError, match="shape"):
        bn.load_state_dict(bad)


def test_state_dict_and_save_load_round_trip(rng, tmp_path):
    bn = cbn.BatchNorm(3, dtype=np.float64)
    bn(rng.normal(size=(6, 3)))
    bn.weight[...] = [1.5, 2.0, 0.5]
    path = tmp_path / "bn.npz"
    bn.save(path)
    other = cbn.BatchNorm(3, dtype=np.float64).load(path)
    for k, a in bn.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], a)
    assert other.num_batches_tracked == 1


@pytest.mark.parametrize("layout,shape", LAYOUT_SHAPES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False)])
def test_matches_torch_over_steps(layout, shape, momentum, affine, track, rng):
    torch = pytest.importorskip("torch")
    ndim = len(shape)
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
           5: torch.nn.BatchNorm3d}[ndim]
    tb = cls(3, momentum=momentum, affine=affine, track_running_stats=track).double()
    bn = cbn.BatchNorm(3, momentum=momentum, affine=affine, track_running_stats=track,
                       layout=layout, dtype=np.float64)
    if affine:
        w = rng.uniform(0.5, 2, 3)
        bn.weight[...] = w
        with torch.no_grad():
            tb.weight.copy_(torch.from_numpy(w))
    for step in range(3):
        x = rng.normal(size=shape) * 2 + 1
        dy = rng.normal(size=shape)
        tx = torch.from_numpy(to_nchw(x, layout).copy()).requires_grad_(True)
        ty = tb(tx)
        ty.backward(torch.from_numpy(to_nchw(dy, layout).copy()))
        y = bn(x)
        dx = bn.backward(dy)
        np.testing.assert_allclose(to_nchw(y, layout), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(to_nchw(dx, layout), tx.grad.numpy(), rtol=1e-9, atol=1e-11)
        if affine:
            np.testing.assert_allclose(bn.grad_weight, tb.weight.grad.numpy(), rtol=1e-9)
            np.testing.assert_allclose(bn.grad_bias, tb.bias.grad.numpy(), rtol=1e-9)
            tb.weight.grad = tb.bias.grad = None
    for k, a in bn.state_dict().items():
        np.testing.assert_allclose(a, tb.state_dict()[k].numpy(), rtol=1e-12)
    tb.eval()
    bn.eval()
    x = rng.normal(size=shape)
    np.testing.assert_allclose(to_nchw(bn(x), layout),
                               tb(torch.from_numpy(to_nchw(x, layout).copy())).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


def test_state_dict_moves_between_torch_and_cbn(rng):
    torch = pytest.importorskip("torch")
    tb = torch.nn.BatchNorm2d(3)
    tb(torch.randn(4, 3, 5, 5))
    bn = cbn.BatchNorm(3)
    bn.load_state_dict({k: t.numpy() for k, t in tb.state_dict().items()})
    back = torch.nn.BatchNorm2d(3)
    back.load_state_dict({k: torch.from_numpy(np.asarray(a)) for k, a in bn.state_dict().items()})
    for k, t in tb.state_dict().items():
        assert torch.equal(back.state_dict()[k], t)


def test_load_state_dict_checks_everything_before_writing(rng):
    bn = cbn.BatchNorm(3)
    good = {k: a + 1 for k, a in bn.state_dict().items()}
    for key, value, exc in [("num_batches_tracked", np.array([1, 2]), ValueError),
                            ("num_batches_tracked", np.array(1.5), ValueError),
                            ("num_batches_tracked", np.array(-1), ValueError),
                            ("running_var", np.array(["a", "b", "c"]), TypeError),
                            ("running_var", np.ones((3, 1)), ValueError)]:
        bad = dict(good, **{key: value})
        with pytest.raises(exc, match=key):
            bn.load_state_dict(bad)
        assert (bn.weight == 1).all() and (bn.bias == 0).all() and bn.num_batches_tracked == 0
    with pytest.raises(ValueError, match="missing \\['bias'\\]"):
        bn.load_state_dict({k: a for k, a in good.items() if k != "bias"})
    assert bn.load_state_dict(good) == ([], [])
    assert (bn.weight == 2).all() and bn.num_batches_tracked == 1


def test_load_state_dict_not_strict(rng):
    bn = cbn.BatchNorm(3, affine=False)
    full = cbn.BatchNorm(3).state_dict()             # an affine layer's: weight, bias extra
    full["running_mean"] = np.arange(3.0)
    with pytest.raises(ValueError, match="unexpected"):
        bn.load_state_dict(full)
    missing, unexpected = bn.load_state_dict(
        {k: a for k, a in full.items() if k != "running_var"}, strict=False)
    assert missing == ["running_var"] and sorted(unexpected) == ["bias", "weight"]
    np.testing.assert_array_equal(bn.running_mean, [0, 1, 2])
    np.testing.assert_array_equal(bn.running_var, [1, 1, 1])
    assert bn.running_mean.dtype == np.float32


def test_backward_uses_the_saved_batch(rng):
    """backward uses the statistics and weight of its forward, even after an SGD step or an
    eval forward in between would have changed them."""
    bn = cbn.BatchNorm(3, dtype=np.float64)
    x, dy = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    bn.weight[...] = [2.0, 0.5, 1.0]
    y, m, s = cbn.batch_norm_train(x, bn.weight, bn.bias)
    bn(x)
    expected = cbn.batch_norm_backward(dy, x, m, s, bn.weight)
    bn.weight -= 0.3                                  # an optimizer step before backward
    bn.running_mean[...] = 5
    np.testing.assert_array_equal(bn.backward(dy), expected[0])
    np.testing.assert_array_equal(bn.grad_weight, expected[1])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_interleaved_train_eval_match_torch(layout, momentum, affine, track, rng):
    torch = pytest.importorskip("torch")
    shape = (4, 3, 5, 2) if layout == "NCHW" else (4, 5, 2, 3)
    tb = torch.nn.BatchNorm2d(3, momentum=momentum, affine=affine,
                              track_running_stats=track).double()
    bn = cbn.BatchNorm(3, momentum=momentum, affine=affine, track_running_stats=track,
                       layout=layout, dtype=np.float64)
    for step, mode in enumerate([True, True, False, True, False, False, True]):
        tb.train(mode)
        assert bn.train(mode) is bn
        x = rng.normal(size=shape) * (step + 1) + step
        ty = tb(torch.from_numpy(to_nchw(x, layout).copy()))
        np.testing.assert_allclose(to_nchw(bn(x), layout), ty.detach().numpy(),
                                   rtol=1e-10, atol=1e-12)
    assert set(bn.state_dict()) == set(tb.state_dict())
    for k, a in bn.state_dict().items():
        np.testing.assert_allclose(a, tb.state_dict()[k].numpy(), rtol=1e-12)
        assert a.dtype == tb.state_dict()[k].numpy().dtype


def test_state_dict_moves_cbn_torch_cbn(rng):
    torch = pytest.importorskip("torch")
    bn = cbn.BatchNorm(3, momentum=None)
    bn.weight[...] = rng.uniform(0.5, 2, 3)
    for _ in range(3):
        bn(rng.normal(size=(4, 3, 5, 5)).astype(np.float32))
    tb = torch.nn.BatchNorm2d(3)
    tb.load_state_dict({k: torch.from_numpy(np.asarray(a)) for k, a in bn.state_dict().items()})
    back = cbn.BatchNorm(3)
    back.load_state_dict({k: t.numpy() for k, t in tb.state_dict().items()})
    for k, a in bn.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], a)
    assert back.num_batches_tracked == 3
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(back.eval()(x),
                               tb.eval()(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
