"""Readable float64 NumPy reference of cbn's batch normalization (the textbook formulas).

Every function mirrors the public function of the same name (same argument names), computes in
float64 whatever the input dtype, and never modifies its inputs. Tests and benchmarks compare the
C kernels against it; it is written to be obviously correct, not fast. The keyword ``dtype``
(default float64) computes the same formulas in another dtype instead: ``dtype=x.dtype`` is the
naive NumPy code a user would write, which the benchmark (`cbn.bench`) times as a peer.

For channel c, over the M values x_i of that channel (every axis but the channel axis)::

    mean   = sum(x_i) / M
    var    = sum((x_i - mean)**2) / M            biased, two-pass
    invstd = 1 / sqrt(var + eps)
    xhat_i = (x_i - mean) * invstd
    y_i    = weight * xhat_i + bias

    running_mean <- (1 - momentum) * running_mean + momentum * mean
    running_var  <- (1 - momentum) * running_var  + momentum * var * M / (M - 1)   (or * 1)

Backward, with dy the gradient of the loss with respect to y::

    dbias   = sum(dy_i)
    dweight = sum(dy_i * xhat_i)
    dx_i    = weight * invstd / M * (M * dy_i - dbias - xhat_i * dweight)

Inference: ``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale``,
``y = x * scale + shift``. Its backward (frozen statistics: they are constants)::

    dbias   = sum(dy_i)
    dweight = sum(dy_i * (x_i - running_mean)) / sqrt(running_var + eps)
    dx_i    = dy_i * scale

A residual r (the forward's ``residual=``) is added to y before the activation, so its gradient
is the gradient reaching batch norm (dy, masked by y > 0 after a ReLU).

Layouts: "NCHW" / "channels_first" puts the channel on axis 1, "NHWC" / "channels_last" on the
last axis; any ndim >= 2.
"""
from __future__ import annotations

from typing import Any, Optional, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from ._layout import canonical_view, channel_axis
from ._types import Layout

# results are in the `dtype` argument's dtype (float64 by default)
_Array = NDArray[Any]

__all__ = ["batch_norm_train", "batch_norm_backward", "batch_norm_infer",
           "batch_norm_infer_backward", "fold_scale_shift"]

@overload
def _as(a: None, dtype: DTypeLike) -> None: ...
@overload
def _as(a: ArrayLike, dtype: DTypeLike) -> _Array: ...
@overload
def _as(a: ArrayLike | None, dtype: DTypeLike) -> _Array | None: ...
def _as(a: ArrayLike | None, dtype: DTypeLike) -> _Array | None:
    return None if a is None else np.asarray(a, dtype=dtype)


def _geometry(x: _Array, layout: str) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    """(reduction axes, per-channel broadcast shape, C, M) for x in `layout`."""
    canonical_view(x.shape, layout)   # ValueError for a bad layout or rank
    axis = channel_axis(layout, x.ndim)
    C = x.shape[axis]
    axes = tuple(i for i in range(x.ndim) if i != axis)
    bshape = [1] * x.ndim
    bshape[axis] = C
    M = x.size // C if C else 0
    return axes, tuple(bshape), C, M


def batch_norm_train(x: ArrayLike, weight: ArrayLike | None = None,
                     bias: ArrayLike | None = None, *, running_mean: ArrayLike | None = None,
                     running_var: ArrayLike | None = None, momentum: float = 0.1,
                     eps: float = 1e-5, layout: Layout = "NCHW",
                     unbiased_running_var: bool = True, residual: ArrayLike | None = None,
                     dtype: DTypeLike = np.float64
                     ) -> tuple[_Array, _Array, _Array, Optional[_Array], Optional[_Array]]:
    """Training forward (plus `residual` when given).

    Returns ``(y, save_mean, save_invstd, new_running_mean, new_running_var)``, all `dtype`;
    the new running statistics are None when not given (the inputs are not modified).
    """
    x = _as(x, dtype)
    axes, b, C, M = _geometry(x, layout)
    mean = x.mean(axis=axes)
    var = ((x - mean.reshape(b)) ** 2).mean(axis=axes)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean.reshape(b)) * invstd.reshape(b)
    if weight is not None:
        y = y * _as(weight, dtype).reshape(b)
    if bias is not None:
        y = y + _as(bias, dtype).reshape(b)
    if residual is not None:
        y = y + _as(residual, dtype)
    new_rm = new_rv = None
    if running_mean is not None:
        new_rm = (1.0 - momentum) * _as(running_mean, dtype) + momentum * mean
    if running_var is not None:
        batch_var = var * M / (M - 1) if unbiased_running_var else var
        new_rv = (1.0 - momentum) * _as(running_var, dtype) + momentum * batch_var
    return y, mean, invstd, new_rm, new_rv


def batch_norm_backward(dy: ArrayLike, x: ArrayLike, save_mean: ArrayLike,
                        save_invstd: ArrayLike, weight: ArrayLike | None = None, *,
                        layout: Layout = "NCHW",
                        dtype: DTypeLike = np.float64) -> tuple[_Array, _Array, _Array]:
    """Gradients of the training forward: ``(dx, dweight, dbias)``, all `dtype`."""
    dy = _as(dy, dtype)
    x = _as(x, dtype)
    axes, b, C, M = _geometry(x, layout)
    invstd = _as(save_invstd, dtype)
    xhat = (x - _as(save_mean, dtype).reshape(b)) * invstd.reshape(b)
    dbias = dy.sum(axis=axes)
    dweight = (dy * xhat).sum(axis=axes)
    w = np.ones(C, dtype) if weight is None else _as(weight, dtype)
    k = (w * invstd / M).reshape(b)
    dx = k * (M * dy - dbias.reshape(b) - xhat * dweight.reshape(b))
    return dx, dweight, dbias


def fold_scale_shift(running_mean: ArrayLike, running_var: ArrayLike,
                     weight: ArrayLike | None = None, bias: ArrayLike | None = None,
                     eps: float = 1e-5, *,
                     dtype: DTypeLike = np.float64) -> tuple[_Array, _Array]:
    """Per-channel ``(scale, shift)`` in `dtype` with ``y = x * scale + shift``."""
    running_mean = _as(running_mean, dtype)
    scale = 1.0 / np.sqrt(_as(running_var, dtype) + eps)
    if weight is not None:
        scale = _as(weight, dtype) * scale
    shift = -running_mean * scale
    if bias is not None:
        shift = _as(bias, dtype) + shift
    return scale, shift


def batch_norm_infer(x: ArrayLike, running_mean: ArrayLike, running_var: ArrayLike,
                     weight: ArrayLike | None = None, bias: ArrayLike | None = None, *,
                     eps: float = 1e-5, layout: Layout = "NCHW",
                     residual: ArrayLike | None = None, dtype: DTypeLike = np.float64) -> _Array:
    """Inference (frozen statistics): ``y = x * scale + shift`` (+ residual) in `dtype`."""
    x = _as(x, dtype)
    axes, b, C, M = _geometry(x, layout)
    scale, shift = fold_scale_shift(running_mean, running_var, weight, bias, eps, dtype=dtype)
    y = x * scale.reshape(b) + shift.reshape(b)
    if residual is not None:
        y = y + _as(residual, dtype)
    return y


def batch_norm_infer_backward(dy: ArrayLike, x: ArrayLike, running_mean: ArrayLike,
                              running_var: ArrayLike, weight: ArrayLike | None = None, *,
                              eps: float = 1e-5, layout: Layout = "NCHW",
                              dtype: DTypeLike = np.float64) -> tuple[_Array, _Array, _Array]:
    """Gradients of inference (the statistics are constants): ``(dx, dweight, dbias)``."""
    dy = _as(dy, dtype)
    x = _as(x, dtype)
    axes, b, C, M = _geometry(x, layout)
    root = np.sqrt(_as(running_var, dtype) + eps)
    w = np.ones(C, dtype) if weight is None else _as(weight, dtype)
    dbias = dy.sum(axis=axes)
    dweight = (dy * (x - _as(running_mean, dtype).reshape(b))).sum(axis=axes) / root
    dx = dy * (w / root).reshape(b)
    return dx, dweight, dbias
