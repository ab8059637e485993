"""The C kernel behind each op, called directly through cbn._core (no argument checks).

The per-call section of the report times these beside the public functions: the difference is
cbn's Python-side cost. `KERNEL_CALLS` maps every op to a function that builds the call once
(outputs allocated, sizes computed) and returns a zero-argument callable repeating it; the
arguments mirror what cbn's public function passes for the same inputs (no ReLU, unbiased
running variance), which `tests/test_bench.py` checks bit for bit.
"""
import numpy as np

from .. import _core
from .._layout import canonical_view
from .cases import EPS, MOMENTUM


def _dims(x, layout):
    """(N, C, S, channels_last) of x: the kernels' canonical view."""
    cl, N, C, S = canonical_view(x.shape, layout)
    return N, C, S, cl


def _checked(call):
    """Run `call` once, fail loudly on a non-zero status, return it for timing."""
    rc = call()
    if rc != 0:
        raise RuntimeError(f"cbn._core returned status {rc}: {_core.error_string(rc)}")
    return call


def train_call(inputs, out, n_threads, residual=None):
    """cbn_train_forward: y into `out`, running statistics updated in copies, saved stats;
    with a residual, cbn_train_forward_residual with a fused ReLU."""
    x, layout = inputs["x"], inputs["layout"]
    N, C, S, last = _dims(x, layout)
    w, b = inputs["weight"], inputs["bias"]
    rm, rv = inputs["running_mean"].copy(), inputs["running_var"].copy()
    save_mean, save_invstd = np.empty(C, x.dtype), np.empty(C, x.dtype)
    return _checked(lambda: _core.train_forward(
        x, out, N, C, S, last, w, b, rm, rv, MOMENTUM, EPS, True, save_mean, save_invstd,
        residual is not None, n_threads, residual))


def backward_call(inputs, out, n_threads):
    """cbn_backward: dx into `out`, dweight and dbias."""
    x, dy, layout = inputs["x"], inputs["dy"], inputs["layout"]
    N, C, S, last = _dims(x, layout)
    dweight, dbias = np.empty(C, x.dtype), np.empty(C, x.dtype)
    return _checked(lambda: _core.backward(
        dy, x, inputs["save_mean"], inputs["save_invstd"], inputs["weight"], None, out, dweight,
        dbias, N, C, S, last, n_threads))


def infer_call(inputs, out, n_threads):
    """cbn_infer: y into `out` from the frozen statistics."""
    x, layout = inputs["x"], inputs["layout"]
    N, C, S, last = _dims(x, layout)
    return _checked(lambda: _core.infer(
        x, out, N, C, S, last, inputs["running_mean"], inputs["running_var"], inputs["weight"],
        inputs["bias"], EPS, False, n_threads))


def train_residual_call(inputs, out, n_threads):
    """cbn_train_forward_residual: y = relu(bn(x) + dy) into `out` (dy as the residual)."""
    return train_call(inputs, out, n_threads, inputs["dy"])


def infer_backward_call(inputs, out, n_threads):
    """cbn_infer_backward: dx into `out`, dweight and dbias, through the frozen statistics."""
    x, dy, layout = inputs["x"], inputs["dy"], inputs["layout"]
    N, C, S, last = _dims(x, layout)
    dweight, dbias = np.empty(C, x.dtype), np.empty(C, x.dtype)
    return _checked(lambda: _core.infer_backward(
        dy, x, inputs["running_mean"], inputs["running_var"], inputs["weight"], EPS, None, out,
        None, dweight, dbias, N, C, S, last, n_threads))


KERNEL_CALLS = {"train": train_call, "backward": backward_call, "infer": infer_call,
                "train_residual": train_residual_call, "infer_backward": infer_backward_call}
