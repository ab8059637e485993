"""Fold a frozen batch norm into the layer before it (BN(FC(x)) = FC'(x)).

In eval mode ``BN(z) = z * scale + shift`` per channel, with ``scale, shift =
fold_scale_shift(running_mean, running_var, weight, bias, eps)``. For a layer
``z = W x + b`` whose output channels are BN's channels::

    BN(W x + b) = (scale * W) x + (scale * b + shift)

so the folded layer has ``W' = scale[:, None] * W`` and ``b' = scale * b + shift`` and the BN
disappears from inference. A missing bias (b = None) counts as zeros: after folding the layer
needs one, which is why a layer followed by BN is usually built without bias.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

import numpy as np
from numpy.typing import ArrayLike

from . import _validate as v
from ._api import fold_scale_shift
from ._types import FloatArray

if TYPE_CHECKING:
    from .layer import BatchNorm

# a cbn.BatchNorm, a dict with running_mean, running_var [, weight, bias, eps], or a tuple or
# list (running_mean, running_var[, weight[, bias[, eps]]])
BatchNormStats = Union["BatchNorm", dict[str, Any], tuple[Any, ...], list[Any]]
_Stats = tuple[ArrayLike, ArrayLike, Union[ArrayLike, None], Union[ArrayLike, None], float]

__all__ = ["fold_linear", "fold_conv"]


def _bn_stats(bn: BatchNormStats) -> _Stats:
    """(running_mean, running_var, weight, bias, eps) of a cbn.BatchNorm, a mapping or a tuple."""
    if hasattr(bn, "running_mean") and hasattr(bn, "running_var"):
        layer: Any = bn   # a cbn.BatchNorm, or any layer with its attributes
        if layer.running_mean is None:
            raise ValueError("the BatchNorm keeps no running statistics "
                             "(track_running_stats=False): there is nothing frozen to fold")
        return layer.running_mean, layer.running_var, layer.weight, layer.bias, layer.eps
    if isinstance(bn, dict):
        try:
            return (bn["running_mean"], bn["running_var"], bn.get("weight"), bn.get("bias"),
                    bn.get("eps", 1e-5))
        except KeyError as exc:
            raise ValueError(f"bn_or_stats needs the key {exc.args[0]!r}") from None
    if isinstance(bn, (tuple, list)) and 2 <= len(bn) <= 5:
        mean, var, weight, bias, eps = tuple(bn) + (None, None, 1e-5)[len(bn) - 2:]
        return mean, var, weight, bias, eps
    raise TypeError("bn_or_stats must be a cbn.BatchNorm, a dict with running_mean, running_var "
                    "[, weight, bias, eps] or a tuple (running_mean, running_var[, weight, bias"
                    f"[, eps]]), got {type(bn).__name__}")


def _fold(W: ArrayLike, b: ArrayLike | None, bn_or_stats: BatchNormStats, min_ndim: int,
          what: str) -> tuple[FloatArray, FloatArray]:
    W = v.float_array(W, "W")
    if W.ndim < min_ndim:
        raise ValueError(f"W must be {what}, got shape {W.shape}")
    out_channels = W.shape[0]
    mean, var, weight, bias, eps = _bn_stats(bn_or_stats)
    for a, name in ((mean, "running_mean"), (var, "running_var"), (weight, "weight"),
                    (bias, "bias")):
        v.refuse_masked(a, name)
    mean = np.asarray(mean)
    if mean.shape != (out_channels,):
        raise ValueError(f"the batch norm must have {out_channels} channels (W's output "
                         f"channels), got running_mean of shape {mean.shape}")
    scale, shift = fold_scale_shift(mean.astype(np.float64), np.asarray(var, np.float64),
                                    None if weight is None else np.asarray(weight, np.float64),
                                    None if bias is None else np.asarray(bias, np.float64), eps)
    b = np.zeros(out_channels) if b is None else v.channel_param(b, "b", out_channels,
                                                                   np.dtype(np.float64))
    W_folded = W.astype(np.float64) * scale.reshape((-1,) + (1,) * (W.ndim - 1))
    return W_folded.astype(W.dtype), (scale * b + shift).astype(W.dtype)


def fold_linear(W: ArrayLike, b: ArrayLike | None,
                bn_or_stats: BatchNormStats) -> tuple[FloatArray, FloatArray]:
    """Fold an eval-mode batch norm into the fully connected layer before it.

    Parameters
    ----------
    W : ndarray, shape (out, in)
        The layer computes ``x @ W.T + b``; float32 or float64 (the result's dtype).
    b : ndarray of shape (out,) or None
    bn_or_stats : cbn.BatchNorm, dict or tuple
        The batch norm over the layer's ``out`` channels: a `cbn.BatchNorm` (its running
        statistics, weight, bias and eps), a dict with ``running_mean``, ``running_var`` and
        optionally ``weight``, ``bias``, ``eps``, or a tuple ``(running_mean, running_var[,
        weight[, bias[, eps]]])``.

    Returns
    -------
    W_folded, b_folded : ndarray
        ``x @ W_folded.T + b_folded == bn_eval(x @ W.T + b)`` (computed in float64).
    """
    W = v.float_array(W, "W")
    if W.ndim != 2:
        raise ValueError(f"W must be (out, in) for a linear layer, got shape {W.shape}")
    return _fold(W, b, bn_or_stats, 2, "(out, in)")


def fold_conv(W: ArrayLike, b: ArrayLike | None,
              bn_or_stats: BatchNormStats) -> tuple[FloatArray, FloatArray]:
    """Fold an eval-mode batch norm into the convolution before it.

    W is (out, in, kh, kw) (or any number of kernel dims after ``in``); the output channel axis
    is the first. Arguments and result as for `fold_linear`: the folded convolution equals
    convolution-then-BN in eval mode.
    """
    return _fold(W, b, bn_or_stats, 3, "(out, in, *kernel)")
