"""Cross-check with PyTorch's own batch norm (skipped when torch is not importable).

PyTorch takes channels-first tensors; channels-last arrays are compared through a permute.
"""
import numpy as np
import pytest

import cbn
from conftest import DTYPES, assert_close, case_arrays, case_id

torch = pytest.importorskip("torch")

CASES = [
    ("NCHW", (6, 4)),
    ("NCHW", (3, 5, 7)),
    ("NCHW", (2, 3, 5, 7)),
    ("NCHW", (2, 3, 3, 4, 5)),
    ("NCHW", (1, 4, 5, 3)),
    ("NCHW", (4, 300, 1, 2)),
    ("NCHW", (12, 8, 33, 31)),
    ("NHWC", (6, 4)),
    ("NHWC", (3, 7, 5)),
    ("NHWC", (2, 5, 7, 3)),
    ("NHWC", (2, 3, 4, 5, 3)),
    ("NHWC", (4, 1, 2, 300)),
    ("NHWC", (8, 20, 18, 24)),
]


def _to_torch(a, layout):
    """ndarray -> channels-first torch tensor (a permuted view for channels-last)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if layout == "NHWC" and t.ndim > 2:
        t = t.movedim(-1, 1)
    return t


def _from_torch(t, layout):
    if layout == "NHWC" and t.ndim > 2:
        t = t.movedim(1, -1)
    return t.detach().contiguous().numpy()


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_training_forward_and_backward(rng, case, dtype, affine):
    layout, shape, C, x, dy, w, b, rm, rv = case_arrays(rng, case, dtype, affine, loc=0.5)
    momentum, eps = 0.2, 1e-4
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    tw = None if w is None else torch.from_numpy(w)
    tb = None if b is None else torch.from_numpy(b)
    tx = _to_torch(x, layout)

    ty, tmean, tinvstd = torch.ops.aten.native_batch_norm(tx, tw, tb, trm, trv, True,
                                                          momentum, eps)
    y, mean, invstd = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv,
                                           momentum=momentum, eps=eps, layout=layout)
    tol = _tol(dtype)
    assert_close(y, _from_torch(ty, layout), **tol)
    assert_close(mean, tmean.numpy(), **tol)
    assert_close(invstd, tinvstd.numpy(), **tol)
    assert_close(rm, trm.numpy(), **tol)
    assert_close(rv, trv.numpy(), **tol)

    tdx, tdw, tdb = torch.ops.aten.native_batch_norm_backward(
        _to_torch(dy, layout), tx, tw, trm, trv, tmean, tinvstd, True, eps, [True, True, True])
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, w, layout=layout)
    assert_close(dx, _from_torch(tdx, layout), **tol)
    if tdw is not None:
        assert_close(dw, tdw.numpy(), **tol)
    if tdb is not None:
        assert_close(db, tdb.numpy(), **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_autograd_gradients(rng, case, dtype):
    """Gradients from torch autograd through F.batch_norm (training mode) agree as well."""
    layout, shape, C, x, dy, w, b, _, _ = case_arrays(rng, case, dtype)
    tx = _to_torch(x, layout).clone().requires_grad_(True)
    tw = torch.from_numpy(w.copy()).requires_grad_(True)
    tb = torch.from_numpy(b.copy()).requires_grad_(True)
    ty = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True, eps=1e-5)
    ty.backward(_to_torch(dy, layout))

    y, mean, invstd = cbn.batch_norm_train(x, w, b, layout=layout)
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, w, layout=layout)
    tol = _tol(dtype)
    assert_close(y, _from_torch(ty, layout), **tol)
    assert_close(dx, _from_torch(tx.grad, layout), **tol)
    assert_close(dw, tw.grad.numpy(), **tol)
    assert_close(db, tb.grad.numpy(), **tol)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_eval_mode(rng, case, dtype, affine):
    layout, shape, C, x, _, w, b, rm, rv = case_arrays(rng, case, dtype, affine)
    ty = torch.nn.functional.batch_norm(
        _to_torch(x, layout), torch.from_numpy(rm), torch.from_numpy(rv),
        None if w is None else torch.from_numpy(w), None if b is None else torch.from_numpy(b),
        training=False, eps=1e-3)
    y = cbn.batch_norm_infer(x, rm, rv, w, b, eps=1e-3, layout=layout)
    assert_close(y, _from_torch(ty, layout), **_tol(dtype))

