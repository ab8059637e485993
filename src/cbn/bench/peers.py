"""What is timed for each implementation ("impl") of an op, in this process.

* ``cbn``        cbn writing into a preallocated output (``out=np.empty_like(x)``),
* ``cbn_alloc``  cbn allocating its output, as a user calls it (what the peers are compared with),
* ``numpy``      naive NumPy in the input dtype: `cbn.reference`'s formulas with ``dtype=x.dtype``,
* ``torch``      PyTorch's CPU kernels (``aten.native_batch_norm`` / ``native_batch_norm_backward``)
                 on ``torch.from_numpy`` views, channels-last through ``permute``, when importable,
* ``copy``       the yardstick: a plain copy of x into a preallocated array on the same number of
                 OpenMP threads (`cbn.bench._copy`),
* ``jax``, ``ort`` JAX and ONNX Runtime (`optional_peers`): only ever run in a worker process.

`make_candidates` returns one zero-argument callable per impl; each returns the op's main output
(y, or dx for backward) as that library gives it, and `main_output` turns it into a NumPy array.
"""
import math

import numpy as np

import cbn
from .. import reference
from . import _copy
from .._layout import is_channels_last
from .cases import DY_OPS, EPS, MOMENTUM, OPS

IMPLS = ("cbn", "cbn_alloc", "numpy", "torch", "jax", "ort", "copy")
LABELS = {"cbn": "cbn", "cbn_alloc": "alloc", "numpy": "numpy", "torch": "torch", "jax": "jax",
          "ort": "onnxrt", "copy": "copy"}
# Peers: libraries cbn is compared with (speed-up = peer time / cbn_alloc time).
PEERS = ("numpy", "torch", "jax", "ort")
# Peers that always run in their own process (their thread pools must not sit beside cbn's).
OUT_OF_PROCESS = ("jax", "ort")


def import_torch():
    """torch, or None when it is not importable."""
    try:
        import torch
    except Exception:  # ImportError, or a broken install
        return None
    return torch


def set_torch_threads(n_threads):
    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(int(n_threads))


def _torch_view(torch, a, layout):
    """A torch tensor sharing a's memory, in PyTorch's NC... dimension order."""
    if a.dtype.name == "bfloat16":  # ml_dtypes' type, which torch.from_numpy does not know
        t = torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    if is_channels_last(layout) and a.ndim > 2:
        t = t.permute(0, a.ndim - 1, *range(1, a.ndim - 1))
    return t


def main_output(result, layout):
    """A candidate's result as a NumPy array in `layout`."""
    if isinstance(result, np.ndarray):
        return result
    if hasattr(result, "permute"):  # torch, in NC... dimension order
        if is_channels_last(layout) and result.ndim > 2:
            result = result.permute(0, *range(2, result.ndim), 1)
        if str(result.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: compare in float32
            result = result.float()
        return result.detach().numpy()
    return np.asarray(result)


def strided_sample(a, max_elems=1 << 16):
    """An evenly strided float64 sample of at most about max_elems values of a (raveled)."""
    a = np.ravel(a)
    return a[::max(1, a.size // max_elems)].astype(np.float64)


def max_rel_error(actual, expected, max_elems=1 << 20):
    """max|a - e| / max(1, max|e|), on an evenly strided sample of at most max_elems values."""
    a = strided_sample(actual, max_elems)
    e = strided_sample(expected, max_elems)
    if np.size(actual) != np.size(expected) or a.shape != e.shape:
        return math.inf
    if not a.size:
        return 0.0
    return float(np.max(np.abs(a - e)) / max(1.0, float(np.max(np.abs(e)))))


def cbn_call(op, inputs, n_threads, out):
    """cbn's public function for `op`, writing into `out` (None: cbn allocates it)."""
    x, w, b, layout = inputs["x"], inputs["weight"], inputs["bias"], inputs["layout"]
    if op in ("train", "train_residual"):
        rm, rv = inputs["running_mean"].copy(), inputs["running_var"].copy()
        extra = ({"residual": inputs["dy"], "activation": "relu"} if op == "train_residual"
                 else {})
        return lambda: cbn.batch_norm_train(
            x, w, b, running_mean=rm, running_var=rv, momentum=MOMENTUM, eps=EPS, layout=layout,
            out=out, n_threads=n_threads, **extra)[0]
    if op == "infer_backward":
        dy, rm, rv = inputs["dy"], inputs["running_mean"], inputs["running_var"]
        return lambda: cbn.batch_norm_infer_backward(dy, x, rm, rv, w, eps=EPS, layout=layout,
                                                     out=out, n_threads=n_threads)[0]
    if op == "backward":
        dy, sm, si = inputs["dy"], inputs["save_mean"], inputs["save_invstd"]
        return lambda: cbn.batch_norm_backward(dy, x, sm, si, w, layout=layout, out=out,
                                               n_threads=n_threads)[0]
    rm, rv = inputs["running_mean"], inputs["running_var"]
    return lambda: cbn.batch_norm_infer(x, rm, rv, w, b, eps=EPS, layout=layout, out=out,
                                        n_threads=n_threads)


def _numpy(op, inputs):
    x, w, b, layout = inputs["x"], inputs["weight"], inputs["bias"], inputs["layout"]
    dt = x.dtype
    if op == "train":
        rm, rv = inputs["running_mean"], inputs["running_var"]
        return lambda: reference.batch_norm_train(
            x, w, b, running_mean=rm, running_var=rv, momentum=MOMENTUM, eps=EPS, layout=layout,
            dtype=dt)[0]
    if op == "backward":
        dy, sm, si = inputs["dy"], inputs["save_mean"], inputs["save_invstd"]
        return lambda: reference.batch_norm_backward(dy, x, sm, si, w, layout=layout, dtype=dt)[0]
    rm, rv = inputs["running_mean"], inputs["running_var"]
    if op == "train_residual":   # batch norm, then np.add and np.maximum (in place)
        dy = inputs["dy"]

        def unfused():
            y = reference.batch_norm_train(x, w, b, running_mean=rm, running_var=rv,
                                           momentum=MOMENTUM, eps=EPS, layout=layout, dtype=dt)[0]
            np.add(y, dy, out=y)
            return np.maximum(y, 0, out=y)
        return unfused
    if op == "infer_backward":
        dy = inputs["dy"]
        return lambda: reference.batch_norm_infer_backward(dy, x, rm, rv, w, eps=EPS,
                                                           layout=layout, dtype=dt)[0]
    return lambda: reference.batch_norm_infer(x, rm, rv, w, b, eps=EPS, layout=layout, dtype=dt)


def _torch(op, inputs, torch):
    aten = torch.ops.aten
    layout = inputs["layout"]
    tx = _torch_view(torch, inputs["x"], layout)
    tw, tb = torch.from_numpy(inputs["weight"]), torch.from_numpy(inputs["bias"])
    if op == "train":
        trm = torch.from_numpy(inputs["running_mean"].copy())
        trv = torch.from_numpy(inputs["running_var"].copy())
        return lambda: aten.native_batch_norm(tx, tw, tb, trm, trv, True, MOMENTUM, EPS)[0]
    if op == "backward":
        tdy = _torch_view(torch, inputs["dy"], layout)
        tsm = torch.from_numpy(inputs["save_mean"])
        tsi = torch.from_numpy(inputs["save_invstd"])
        trm = torch.from_numpy(inputs["running_mean"])
        trv = torch.from_numpy(inputs["running_var"])
        mask = [True, True, True]
        return lambda: aten.native_batch_norm_backward(tdy, tx, tw, trm, trv, tsm, tsi, True,
                                                       EPS, mask)[0]
    if op == "train_residual":   # PyTorch's separate ops: batch norm, add, relu
        trm = torch.from_numpy(inputs["running_mean"].copy())
        trv = torch.from_numpy(inputs["running_var"].copy())
        tr = _torch_view(torch, inputs["dy"], layout)
        return lambda: torch.relu_(
            aten.native_batch_norm(tx, tw, tb, trm, trv, True, MOMENTUM, EPS)[0].add_(tr))
    trm, trv = torch.from_numpy(inputs["running_mean"]), torch.from_numpy(inputs["running_var"])
    if op == "infer_backward":   # no PyTorch kernel: the formulas in its ops
        tdy = _torch_view(torch, inputs["dy"], layout)
        bshape = [1] * tx.dim()
        bshape[1] = -1
        dims = [d for d in range(tx.dim()) if d != 1]

        def frozen_backward():
            inv = torch.rsqrt(trv + EPS)
            dx = tdy * (tw * inv).reshape(bshape)
            dweight = (tdy * (tx - trm.reshape(bshape))).sum(dims) * inv
            dbias = tdy.sum(dims)
            return dx, dweight, dbias
        return lambda: frozen_backward()[0]
    return lambda: aten.native_batch_norm(tx, tw, tb, trm, trv, False, MOMENTUM, EPS)[0]


def copy_candidate(x, n_threads, dst=None):
    """The yardstick: x copied into `dst` (default np.empty_like(x)) on n_threads threads."""
    dst = np.empty_like(x) if dst is None else dst

    def fn():
        _copy.copy(dst, x, n_threads)
        return dst
    return fn


def make_candidates(op, inputs, n_threads, impls=IMPLS):
    """{impl: zero-argument callable} running `op` on `inputs` (from `arrays.make_inputs`).

    Every candidate has its own output buffers and its own copy of the running statistics.
    "torch", "jax" and "ort" are left out when their library is not importable (or, for "ort",
    cannot express the case).
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if op in DY_OPS and inputs.get("dy") is None:
        raise ValueError(f"{op} needs inputs made with need_dy=True")
    fns = {}
    for impl in impls:
        if impl == "cbn":
            fns[impl] = cbn_call(op, inputs, n_threads, np.empty_like(inputs["x"]))
        elif impl == "cbn_alloc":
            fns[impl] = cbn_call(op, inputs, n_threads, None)
        elif impl == "numpy":
            fns[impl] = _numpy(op, inputs)
        elif impl == "torch":
            torch = import_torch()
            if torch is not None:
                fns[impl] = _torch(op, inputs, torch)
        elif impl in ("jax", "ort"):
            from . import optional_peers
            fn = optional_peers.make(impl, op, inputs, n_threads)
            if fn is not None:
                fns[impl] = fn
        elif impl == "copy":
            fns[impl] = copy_candidate(inputs["x"], n_threads)
        else:
            raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    return fns
