"""PyTorch's own test inputs for batch norm, run through cbn and compared with PyTorch (2.13).

* `module_db` (torch.testing._internal.common_modules): every constructor and forward input of
  BatchNorm1d/2d/3d builds the torch module and the cbn layer of the same name from the same
  arguments; several training steps (forward and backward) then eval compare outputs, dx,
  gradients, running statistics, num_batches_tracked and the state_dict, float32 and float64,
  in both of cbn's layouts. Its error inputs are checked against the list of cases cbn treats
  differently by design.
* `op_db` (torch.testing._internal.common_methods_invocations): every OpInfo sample of
  nn.functional.batch_norm against cbn.batch_norm_train / batch_norm_infer (and
  batch_norm_backward for training samples).

Skipped when torch, or the `expecttest` package its testing modules import, is missing.
"""
import numpy as np
import pytest

import cbn

torch = pytest.importorskip("torch")
common_modules = pytest.importorskip("torch.testing._internal.common_modules")
common_methods = pytest.importorskip("torch.testing._internal.common_methods_invocations")

NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}
# (rtol, atol relative to the largest expected magnitude); float32 differs from PyTorch by the
# float32 rounding of both sides (cbn accumulates in float64, PyTorch in float32)
TOL = {torch.float32: (2e-5, 2e-5), torch.float64: (1e-10, 1e-12)}
STEPS = 3

# PyTorch behaviours that cbn does not share, on purpose; every error input of module_db must be
# listed here (a new one fails the test until someone decides).
ERROR_INPUTS_BY_DESIGN = {
    # PyTorch refuses eps < 0 when the layer first runs; cbn refuses it when it is built
    "eps=-1.0": ("refused at construction", "eps"),
    # PyTorch's kernel refuses eps=0; cbn accepts it and gives 1/sqrt(var), inf (NaN output) for
    # a constant channel (README, Guarantees: Edge values)
    "eps=0.0": ("accepted", None),
}


def _close(actual, expected, tdtype, what):
    rtol, atol = TOL[tdtype]
    expected = np.asarray(expected)
    finite = expected[np.isfinite(expected)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)


def _np(t):
    return t.detach().numpy()


def _to_layout(a, layout):
    """NCHW array as `layout` wants it (channels last: the channel axis moved to the end)."""
    return a if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(a, 1, -1))


def _from_layout(a, layout):
    return a if layout == "NCHW" else np.moveaxis(a, -1, 1)


# -- module_db -----------------------------------------------------------------------------------

BATCH_NORM_MODULES = [m for m in common_modules.module_db
                      if m.module_cls.__name__ in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")]


def _module_cases():
    cases = []
    for info in BATCH_NORM_MODULES:
        for tdtype in (torch.float32, torch.float64):
            inputs = info.module_inputs_func(info, device="cpu", dtype=tdtype,
                                             requires_grad=False, training=True)
            for i, mi in enumerate(inputs):
                desc = getattr(mi, "desc", "") or f"input{i}"
                cases.append(pytest.param(info, tdtype, mi,
                                          id=f"{info.module_cls.__name__}-{desc}-{tdtype}"))
    return cases


MODULE_CASES = _module_cases()


def test_module_db_has_the_batch_norm_inputs():
    # guards against a silent pass if a later PyTorch renames or drops the entries
    assert len(BATCH_NORM_MODULES) == 3
    assert len(MODULE_CASES) >= 3 * 2 * 6


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("info,tdtype,module_input", MODULE_CASES)
def test_module_db_inputs_match_torch(info, tdtype, module_input, layout):
    name = info.module_cls.__name__
    ctor = module_input.constructor_input
    tb = info.module_cls(*ctor.args, **ctor.kwargs, dtype=tdtype)
    bn = getattr(cbn, name)(*ctor.args, **ctor.kwargs, layout=layout,
                            dtype=NUMPY_DTYPE[tdtype])
    assert set(bn.state_dict()) == set(tb.state_dict())
    gen = torch.Generator().manual_seed(0)
    if tb.weight is not None:           # parameters other than PyTorch's ones and zeros
        with torch.no_grad():
            tb.weight.uniform_(0.5, 2.0, generator=gen)
            if tb.bias is not None:
                tb.bias.normal_(generator=gen)
        bn.load_state_dict({k: _np(t) for k, t in tb.state_dict().items()})
    x0 = module_input.forward_input.args[0]
    for step in range(STEPS):
        tx = (x0 * (step + 1) + step).detach().clone().requires_grad_(True)
        dy = torch.randn(tx.shape, dtype=tdtype, generator=gen)
        ty = tb(tx)
        ty.backward(dy)
        y = bn(_to_layout(_np(tx), layout))
        dx = bn.backward(_to_layout(_np(dy), layout))
        _close(_from_layout(y, layout), _np(ty), tdtype, f"y, step {step}")
        _close(_from_layout(dx, layout), _np(tx.grad), tdtype, f"dx, step {step}")
        for p in ("weight", "bias"):
            tp = getattr(tb, p)
            assert (getattr(bn, "grad_" + p) is None) == (tp is None)
            if tp is not None:
                _close(getattr(bn, "grad_" + p), _np(tp.grad), tdtype, f"grad_{p}, step {step}")
                tp.grad = None
    _compare_state(bn, tb, tdtype)
    tb.eval()
    bn.eval()
    tx = x0 * 0.5 - 1
    _close(_from_layout(bn(_to_layout(_np(tx), layout)), layout), _np(tb(tx)), tdtype, "eval y")
    _compare_state(bn, tb, tdtype)


def _compare_state(bn, tb, tdtype):
    ts = tb.state_dict()
    state = bn.state_dict()
    assert list(state) == list(ts)
    for k, a in state.items():
        assert a.dtype == _np(ts[k]).dtype, k
        if k == "num_batches_tracked":
            assert int(a) == int(ts[k])
        else:
            _close(a, _np(ts[k]), tdtype, k)


@pytest.mark.parametrize("info", BATCH_NORM_MODULES, ids=lambda m: m.module_cls.__name__)
def test_module_db_error_inputs(info):
    errors = list(info.module_error_inputs_func(info, device="cpu", dtype=torch.float32,
                                                requires_grad=False, training=True))
    assert errors
    for err in errors:
        mi = err.module_error_input
        ctor = mi.constructor_input
        key = ", ".join(f"{k}={v!r}" for k, v in ctor.kwargs.items())
        assert key in ERROR_INPUTS_BY_DESIGN, f"PyTorch error input not listed: {key}"
        # PyTorch raises it (so the list stays honest)
        with pytest.raises(err.error_type, match=err.error_regex):
            info.module_cls(*ctor.args, **ctor.kwargs)(*mi.forward_input.args)
        what, word = ERROR_INPUTS_BY_DESIGN[key]
        x = _np(mi.forward_input.args[0]).astype(np.float32)
        if what == "refused at construction":
            with pytest.raises(ValueError, match=word):
                getattr(cbn, info.module_cls.__name__)(*ctor.args, **ctor.kwargs)
        else:
            bn = getattr(cbn, info.module_cls.__name__)(*ctor.args, **ctor.kwargs)
            assert np.isfinite(bn(x)).all()


# -- op_db: nn.functional.batch_norm ----------------------------------------------------------

BATCH_NORM_OPS = [op for op in common_methods.op_db if op.name == "nn.functional.batch_norm"]


def _refused_by_design(x, training, momentum):
    """(reason, word in cbn's message) for a sample cbn refuses on purpose, else None."""
    if x.ndim < 2:
        return ("1-D input: cbn's functions need a channel axis, (N, C, ...) with ndim >= 2",
                "at least 2 dimensions")
    if training and not 0.0 <= momentum <= 1.0:
        return ("momentum outside [0, 1] in training: cbn's momentum is the weight of the new "
                "batch in a convex combination", "momentum")
    return None


def _op_samples():
    cases = []
    for op in BATCH_NORM_OPS:
        for tdtype in (torch.float32, torch.float64):
            for i, s in enumerate(op.sample_inputs("cpu", tdtype, requires_grad=False)):
                cases.append(pytest.param(
                    s, tdtype, id=f"{op.variant_test_name or 'default'}-{i}-{tdtype}"))
    return cases


OP_SAMPLES = _op_samples()


def test_op_db_has_the_batch_norm_samples():
    assert BATCH_NORM_OPS and len(OP_SAMPLES) >= 2 * 10
    compared = [s for s in OP_SAMPLES
                if _refused_by_design(s.values[0].input, s.values[0].kwargs.get("training", False),
                                      s.values[0].kwargs.get("momentum", 0.1)) is None]
    assert len(compared) >= len(OP_SAMPLES) // 2     # most samples are really compared


def _clone(t):
    return None if t is None else t.detach().clone()


@pytest.mark.parametrize("sample,tdtype", OP_SAMPLES)
def test_op_db_samples_match_functional(sample, tdtype):
    x = sample.input.detach().clone()
    rm, rv, w, b = (_clone(t) for t in sample.args)
    training = sample.kwargs.get("training", False)
    momentum = sample.kwargs.get("momentum", 0.1)
    eps = sample.kwargs.get("eps", 1e-5)
    np_rm, np_rv, np_w, np_b = (None if t is None else _np(t).copy() for t in (rm, rv, w, b))

    refused = _refused_by_design(x, training, momentum)
    if refused is not None:
        reason, word = refused
        with pytest.raises(ValueError, match=word):
            if training:
                cbn.batch_norm_train(_np(x), np_w, np_b, running_mean=np_rm, running_var=np_rv,
                                     momentum=momentum, eps=eps)
            else:
                cbn.batch_norm_infer(_np(x), np_rm, np_rv, np_w, np_b, eps=eps)
        if np_rm is not None:                       # nothing written on refusal
            np.testing.assert_array_equal(np_rm, _np(rm))
        return

    tx = x.requires_grad_(training)
    tw = None if w is None else w.requires_grad_(training)
    tb_ = None if b is None else b.requires_grad_(training)
    ty = torch.nn.functional.batch_norm(tx, rm, rv, tw, tb_, training=training,
                                        momentum=momentum, eps=eps)
    if not training:
        y = cbn.batch_norm_infer(_np(x), np_rm, np_rv, np_w, np_b, eps=eps)
        _close(y, _np(ty), tdtype, "infer y")
        return
    y, save_mean, save_invstd = cbn.batch_norm_train(
        _np(x), np_w, np_b, running_mean=np_rm, running_var=np_rv, momentum=momentum, eps=eps)
    _close(y, _np(ty), tdtype, "train y")
    if rm is not None:
        _close(np_rm, _np(rm), tdtype, "running_mean")
        _close(np_rv, _np(rv), tdtype, "running_var")
    dy = torch.randn(ty.shape, dtype=tdtype, generator=torch.Generator().manual_seed(1))
    ty.backward(dy)
    dx, dw, db = cbn.batch_norm_backward(_np(dy), _np(x), save_mean, save_invstd, np_w)
    _close(dx, _np(tx.grad), tdtype, "dx")
    if tw is not None:
        _close(dw, _np(tw.grad), tdtype, "dweight")
        _close(db, _np(tb_.grad), tdtype, "dbias")
