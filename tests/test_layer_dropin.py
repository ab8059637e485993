"""cbn.BatchNorm as a drop-in for torch.nn.BatchNorm*d: PyTorch's positional
constructor, bias=False, empty batches (functional API and layer), reset methods, repr, the
`training` attribute and BatchNorm1d/2d/3d's rank checks.

Every behaviour is checked against the float64 reference `cbn.reference` without PyTorch; the
tests at the end also compare with torch.nn when it is installed (skipped otherwise). PyTorch's
own test inputs run through cbn in tests/test_layer_torch_suite.py.
"""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import DTYPES, assert_close, f64

# -- constructor -----------------------------------------------------------------------------


def test_positional_constructor_in_pytorchs_order():
    bn = cbn.BatchNorm(3, 0.001, 0.8, True, False)     # written so in PyTorch's own tests
    assert (bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats) == \
        (3, 0.001, 0.8, True, False)
    assert bn.running_mean is None and bn.weight is not None
    bn = cbn.BatchNorm(10, 0.001, None)
    assert bn.momentum is None and bn.track_running_stats
    # cbn's own arguments stay keyword-only; so does dtype (PyTorch's 7th positional, after
    # device, has no meaning here)
    with pytest.raises(TypeError):
        cbn.BatchNorm(3, 1e-5, 0.1, True, True, "NHWC")
    bn = cbn.BatchNorm(3, layout="NHWC", dtype=np.float64, activation="relu", n_threads=1)
    assert bn.layout == "NHWC" and bn.dtype == np.float64


def test_constructor_refuses_what_it_refused_before():
    with pytest.raises(ValueError, match="momentum"):
        cbn.BatchNorm(3, 1e-5, -0.1)
    with pytest.raises(ValueError, match="eps"):
        cbn.BatchNorm(3, -1.0)
    with pytest.raises(TypeError, match="num_features"):
        cbn.BatchNorm(3.0)


def test_repr_reads_like_pytorchs():
    assert repr(cbn.BatchNorm(64)) == (
        "BatchNorm(64, eps=1e-05, momentum=0.1, affine=True, bias=True, "
        "track_running_stats=True, layout='NCHW', activation=None)")
    assert repr(cbn.BatchNorm2d(8, 1e-3, None, True, False, bias=False, layout="NHWC",
                                activation="relu")) == (
        "BatchNorm2d(8, eps=0.001, momentum=None, affine=True, bias=False, "
        "track_running_stats=False, layout='NHWC', activation='relu')")
    assert repr(cbn.BatchNorm1d(3, affine=False)).startswith(
        "BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=False, bias=False,")


# -- bias=False ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", [("NCHW", (5, 3, 4, 2)), ("NHWC", (6, 2, 3))])
def test_bias_false_follows_reference(layout, shape, dtype, rng):
    bn = cbn.BatchNorm(3, bias=False, layout=layout, dtype=dtype)
    assert bn.affine and bn.bias is None and bn.weight is not None
    bn.weight[...] = rng.uniform(0.5, 2, 3)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(3):
        x = (rng.normal(size=shape) * 2 + step).astype(dtype)
        y = bn(x)
        r = ref.batch_norm_train(f64(x), f64(bn.weight), None, running_mean=rm,
                                 running_var=rv, layout=layout)
        rm, rv = r[3], r[4]
        assert_close(y, r[0])
        dy = rng.normal(size=shape).astype(dtype)
        dx = bn.backward(dy)
        e = ref.batch_norm_backward(f64(dy), f64(x), r[1], r[2], f64(bn.weight), layout=layout)
        assert_close(dx, e[0])
        assert_close(bn.grad_weight, e[1])
        assert bn.grad_bias is None
    assert list(bn.state_dict()) == ["weight", "running_mean", "running_var",
                                     "num_batches_tracked"]
    assert_close(bn.running_mean, rm)
    x = rng.normal(size=shape).astype(dtype)
    assert_close(bn.eval()(x), ref.batch_norm_infer(f64(x), rm, rv, f64(bn.weight), None,
                                                    layout=layout))


def test_bias_false_state_dict_round_trip_and_strict_keys(rng, tmp_path):
    bn = cbn.BatchNorm(3, bias=False, dtype=np.float64)
    bn(rng.normal(size=(5, 3)))
    bn.weight[...] = [2.0, 3.0, 4.0]
    bn.save(tmp_path / "bn.npz")
    other = cbn.BatchNorm(3, bias=False, dtype=np.float64).load(tmp_path / "bn.npz")
    for k, a in bn.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], a)
    # a layer with a bias wants one; a layer without refuses it (strict, as PyTorch)
    with pytest.raises(ValueError, match="missing \\['bias'\\]"):
        cbn.BatchNorm(3, dtype=np.float64).load_state_dict(bn.state_dict())
    with pytest.raises(ValueError, match="unexpected \\['bias'\\]"):
        other.load_state_dict(cbn.BatchNorm(3, dtype=np.float64).state_dict())


# -- empty batches ---------------------------------------------------------------------------

EMPTY = [("NCHW", (0, 5, 2, 2)), ("NHWC", (0, 2, 2, 5)), ("NCHW", (0, 5)), ("NCHW", (3, 5, 0)),
         ("NHWC", (2, 0, 5)), ("NCHW", (0, 5, 2, 2, 2))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", EMPTY)
def test_functional_empty_batch(layout, shape, dtype, rng):
    """Empty y, running statistics untouched, mean 0 / invstd 1/sqrt(eps); backward gives an
    empty dx and zero dweight/dbias; out= and a fused ReLU work too."""
    w, b = rng.uniform(0.5, 2, 5).astype(dtype), rng.normal(size=5).astype(dtype)
    rm, rv = rng.normal(size=5).astype(dtype), rng.uniform(1, 2, 5).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    x = np.empty(shape, dtype)
    out = np.empty(shape, dtype)
    y, mean, invstd = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv,
                                           momentum=0.5, eps=1e-3, layout=layout, out=out,
                                           activation="relu")
    assert y is out and y.shape == shape and y.dtype == dtype
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    np.testing.assert_array_equal(mean, np.zeros(5, dtype))
    assert_close(invstd, np.full(5, 1 / np.sqrt(1e-3)))
    assert mean.dtype == invstd.dtype == dtype
    dx, dw, db = cbn.batch_norm_backward(x, x, mean, invstd, w, layout=layout, y=y,
                                         activation="relu")
    assert dx.shape == shape and dx.dtype == dtype
    np.testing.assert_array_equal(dw, np.zeros(5, dtype))
    np.testing.assert_array_equal(db, np.zeros(5, dtype))
    assert cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout).shape == shape


def test_functional_empty_batch_eps_zero_and_errors_still_checked():
    x = np.empty((0, 3), np.float32)
    _, mean, invstd = cbn.batch_norm_train(x, eps=0.0)
    assert (mean == 0).all() and np.isposinf(invstd).all()
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    # an empty batch is validated like any other: nothing is written on a bad argument
    with pytest.raises(ValueError, match="momentum"):
        cbn.batch_norm_train(x, running_mean=rm, running_var=rv, momentum=2.0)
    with pytest.raises(ValueError, match="weight"):
        cbn.batch_norm_train(x, np.ones(4))
    with pytest.raises(TypeError, match="running_mean"):
        cbn.batch_norm_train(x, running_mean=rm.astype(np.float64), running_var=rv)
    # one value per channel still raises (PyTorch too), empty or not elsewhere
    for shape in [(1, 3), (1, 3, 1, 1)]:
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            cbn.batch_norm_train(np.ones(shape, np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_layer_empty_batch_is_counted_but_changes_nothing(layout, momentum, dtype, rng):
    """Batches [full, empty, full, empty]: outputs and running statistics follow the reference
    on the full batches, with the momentum PyTorch uses (the empty batch counts in
    num_batches_tracked, so momentum=None's factor 1/num_batches_tracked counts it too)."""
    full = (4, 3, 2, 5) if layout == "NCHW" else (4, 2, 5, 3)
    empty = (0,) + full[1:]
    bn = cbn.BatchNorm2d(3, momentum=momentum, layout=layout, dtype=dtype)
    bn.weight[...] = rng.uniform(0.5, 2, 3)
    bn.bias[...] = rng.normal(size=3)
    rm, rv = np.zeros(3), np.ones(3)
    for step, shape in enumerate([full, empty, full, empty], start=1):
        x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
        y = bn(x)
        dy = rng.normal(size=shape).astype(dtype)
        dx = bn.backward(dy)
        assert bn.num_batches_tracked == step
        if shape == empty:
            assert y.shape == dx.shape == empty
            np.testing.assert_array_equal(bn.grad_weight, np.zeros(3, dtype))
            np.testing.assert_array_equal(bn.grad_bias, np.zeros(3, dtype))
        else:
            m = 1.0 / step if momentum is None else momentum
            r = ref.batch_norm_train(f64(x), f64(bn.weight), f64(bn.bias), running_mean=rm,
                                     running_var=rv, momentum=m, layout=layout)
            rm, rv = r[3], r[4]
            assert_close(y, r[0])
            e = ref.batch_norm_backward(f64(dy), f64(x), r[1], r[2], f64(bn.weight),
                                        layout=layout)
            assert_close(dx, e[0])
            assert_close(bn.grad_weight, e[1])
        assert_close(bn.running_mean, rm)
        assert_close(bn.running_var, rv)
    assert bn.eval()(np.empty(empty, dtype)).shape == empty
    assert bn.num_batches_tracked == 4


def test_layer_empty_batch_without_running_stats_and_affine(rng):
    bn = cbn.BatchNorm1d(4, affine=False, track_running_stats=False)
    for mode in (True, False):
        bn.train(mode)
        assert bn(np.empty((0, 4, 3), np.float32)).shape == (0, 4, 3)
        assert bn.num_batches_tracked == 0       # not tracked, as in PyTorch
    bn.train()
    bn.backward(np.empty((0, 4, 3), np.float32))
    assert bn.grad_weight is None and bn.grad_bias is None
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(np.ones((1, 4), np.float32))


# -- reset methods, training attribute ---------------------------------------------------------


def test_reset_running_stats_and_parameters(rng):
    bn = cbn.BatchNorm(3, dtype=np.float64)
    arrays = [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    fresh = cbn.BatchNorm(3, dtype=np.float64).state_dict()
    for _ in range(2):
        bn(rng.normal(size=(4, 3, 5)) + 3)
    bn.weight += 1
    bn.bias -= 2
    bn.reset_running_stats()
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.running_mean, fresh["running_mean"])
    np.testing.assert_array_equal(bn.running_var, fresh["running_var"])
    assert (bn.weight == 2).all() and (bn.bias == -2).all()     # parameters kept
    bn(rng.normal(size=(4, 3, 5)))
    bn.reset_parameters()
    for k, a in fresh.items():
        np.testing.assert_array_equal(bn.state_dict()[k], a)
    # in place, like PyTorch's zero_()/fill_(): references held elsewhere see the reset
    assert all(a is b for a, b in zip(arrays, [bn.weight, bn.bias, bn.running_mean,
                                               bn.running_var]))
    # after a reset the layer follows the reference from scratch
    x = rng.normal(size=(6, 3, 2))
    r = ref.batch_norm_train(x, running_mean=np.zeros(3), running_var=np.ones(3))
    assert_close(bn(x), r[0])
    assert_close(bn.running_var, r[4])
    # layers without parameters or running statistics reset what they have
    cbn.BatchNorm(3, affine=False, track_running_stats=False).reset_parameters()
    cbn.BatchNorm(3, bias=False).reset_parameters()


def test_training_attribute_switches_mode(rng):
    bn = cbn.BatchNorm(3, dtype=np.float64)
    x = rng.normal(size=(5, 3)) + 2
    bn(x)
    bn.training = False                       # as torch code sets module.training
    y = bn(x)
    assert bn.num_batches_tracked == 1
    assert_close(y, ref.batch_norm_infer(x, bn.running_mean, bn.running_var))
    bn.training = True
    bn(x)
    assert bn.num_batches_tracked == 2


# -- BatchNorm1d / 2d / 3d -------------------------------------------------------------------


@pytest.mark.parametrize("cls,ok,bad", [
    (cbn.BatchNorm1d, [2, 3], [4, 5], ),
    (cbn.BatchNorm2d, [4], [2, 3, 5]),
    (cbn.BatchNorm3d, [5], [2, 3, 4]),
])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_rank_checks_with_pytorchs_wording(cls, ok, bad, layout, rng):
    bn = cls(3, layout=layout, dtype=np.float64)
    assert isinstance(bn, cbn.BatchNorm)
    wanted = {cbn.BatchNorm1d: "2D or 3D", cbn.BatchNorm2d: "4D", cbn.BatchNorm3d: "5D"}[cls]
    for ndim in ok:
        shape = [2] * ndim
        shape[1 if layout == "NCHW" else -1] = 3
        x = rng.normal(size=shape)
        assert_close(bn(x), ref.batch_norm_train(x, layout=layout)[0])
    for ndim in bad + [1]:
        x = np.ones([3] * ndim)
        with pytest.raises(ValueError) as info:
            bn(x)
        assert str(info.value) == f"expected {wanted} input (got {ndim}D input)"
    assert bn.num_batches_tracked == len(ok)      # a refused input changes nothing


def test_plain_batchnorm_takes_every_rank(rng):
    bn = cbn.BatchNorm(3, dtype=np.float64)
    for shape in [(4, 3), (4, 3, 2), (4, 3, 2, 2), (4, 3, 2, 2, 2), (2, 3, 2, 1, 2, 1)]:
        x = rng.normal(size=shape)
        assert_close(bn(x), ref.batch_norm_train(x)[0])
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        bn(np.ones(3))


# -- against torch.nn, when installed ---------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"])
def test_torch_repr_and_rank_errors_agree(name):
    torch = _torch()
    tb, bn = getattr(torch.nn, name)(5, bias=False), getattr(cbn, name)(5, bias=False)
    assert repr(bn).startswith(repr(tb)[:-1] + ", ")
    for ndim in range(1, 7):
        shape = (2, 5) + (2,) * (ndim - 2) if ndim >= 2 else (5,)
        try:
            tb(torch.ones(shape))
            torch_error = None
        except ValueError as e:
            torch_error = str(e)
        try:
            bn(np.ones(shape, np.float32))
            cbn_error = None
        except ValueError as e:
            cbn_error = str(e)
        assert cbn_error == torch_error, ndim


def test_torch_bias_false_state_dict_moves_both_ways(rng):
    torch = _torch()
    tb = torch.nn.BatchNorm2d(3, bias=False)
    with torch.no_grad():
        tb.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2, 3).astype(np.float32)))
    tb(torch.randn(4, 3, 5, 5))
    bn = cbn.BatchNorm2d(3, bias=False)
    assert bn.load_state_dict({k: t.numpy() for k, t in tb.state_dict().items()}) == ([], [])
    back = torch.nn.BatchNorm2d(3, bias=False)
    back.load_state_dict({k: torch.from_numpy(np.asarray(a)) for k, a in bn.state_dict().items()})
    for k, t in tb.state_dict().items():
        assert torch.equal(back.state_dict()[k], t)
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(bn.eval()(x), tb.eval()(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_torch_empty_batches_interleaved(momentum, rng):
    torch = _torch()
    tb = torch.nn.BatchNorm2d(3, momentum=momentum).double()
    bn = cbn.BatchNorm2d(3, momentum=momentum, dtype=np.float64)
    for n in [4, 0, 3, 0, 0, 5]:
        x = rng.normal(size=(n, 3, 2, 2)) * 3 + 1
        tx = torch.from_numpy(x).requires_grad_(True)
        ty = tb(tx)
        dy = rng.normal(size=x.shape)
        ty.backward(torch.from_numpy(dy))
        y = bn(x)
        dx = bn.backward(dy)
        assert y.shape == tuple(ty.shape) and dx.shape == tuple(tx.grad.shape)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(bn.grad_weight, tb.weight.grad.numpy(), rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(bn.grad_bias, tb.bias.grad.numpy(), rtol=1e-9, atol=1e-12)
        tb.weight.grad = tb.bias.grad = None
        for k, a in bn.state_dict().items():
            np.testing.assert_allclose(a, tb.state_dict()[k].numpy(), rtol=1e-12)


def test_readme_porting_example_runs(rng):
    """README's 'Porting a PyTorch BatchNorm2d' block, run as written, moves the state both
    ways unchanged."""
    torch = _torch()
    import os
    readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "README.md")
    with open(readme) as f:
        text = f.read()
    block = text.split("Porting a PyTorch `BatchNorm2d`")[1].split("```python\n")[1]
    block = block.split("```")[0]
    ns = {"cbn": cbn, "np": np}
    exec(compile(block, "README.md", "exec"), ns)
    tb, bn, bn_nhwc = ns["tb"], ns["bn"], ns["bn_nhwc"]
    assert (bn.eps, bn.momentum) == (tb.eps, tb.momentum) == (1e-3, 0.01)
    for k, t in tb.state_dict().items():
        np.testing.assert_array_equal(bn.state_dict()[k], t.numpy())
        np.testing.assert_array_equal(bn_nhwc.state_dict()[k], t.numpy())
    x = rng.normal(size=(2, 64, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(np.moveaxis(bn_nhwc(np.moveaxis(x, 1, -1).copy()), -1, 1),
                               tb(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
