"""The phases of training forward and backward as separate calls, for data-parallel training.

When several processes each hold part of a batch, batch statistics must be combined between the
phases (cbn.distributed does this over MPI). Each function here is one C kernel::

    # forward, on every process
    count, mean, m2 = batch_stats(x)                       # this process's part, float64
    count, mean, m2 = combine_stats(all_counts, all_means, all_m2s)   # every process's parts
    invstd = 1 / np.sqrt(m2 / count + eps)
    y = batch_norm_normalize(x, mean, invstd, weight, bias)
    # backward
    sums = batch_norm_backward_reduce(dy, x, save_mean)   # all-reduce the three (sum)
    dx = batch_norm_backward_dx(dy, x, save_mean, save_invstd, *sums, count, weight)
    dweight, dbias = batch_norm_backward_params(*sums, count, save_invstd)

On one process these give the results of `batch_norm_train` / `batch_norm_backward`
(to rounding: the single-process kernels fuse the phases and sum in another order).
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core
from . import _validate as v
from ._layout import canonical_view
from ._threads import resolve_threads
from ._types import Activation, FloatArray, Layout, Threads
from ._validate import F64 as _F64
# Argument names for v.refuse_overlaps: the output, then the per-channel arrays read.
_NORMALIZE_BUFFERS = ("out", "mean", "invstd", "weight", "bias")
_DX_BUFFERS = ("out", "mean", "invstd", "weight", "sum_dy", "sum_dy_xmu", "sum_xmu")


_F64Array = NDArray[np.float64]


def _stats_array(a: ArrayLike, name: str, C: int) -> FloatArray:
    """A per-channel float64 statistic (read-only), shape (C,)."""
    return v.channel_param(a, name, C, _F64)


def batch_stats(x: ArrayLike, *, layout: Layout = "NCHW",
                n_threads: Threads = None) -> tuple[int, _F64Array, _F64Array]:
    """Per-channel count, mean and M2 (sum of squared deviations) of x, in float64.

    Returns
    -------
    count : int
        Values per channel (N * spatial size); may be 0 (then mean and m2 are 0).
    mean, m2 : ndarray of float64, shape (C,)
    """
    x = v.float_array(x, "x")
    cl, N, C, S = canonical_view(x.shape, layout)
    n_threads = resolve_threads(n_threads)
    x = v.contiguous_input(x)
    mean = np.empty(C, _F64)
    m2 = np.empty(C, _F64)
    v.check_status(_core.batch_stats(x, N, C, S, cl, mean, m2, n_threads))
    return N * S, mean, m2


def combine_stats(counts: ArrayLike, means: ArrayLike,
                  m2s: ArrayLike) -> tuple[float, _F64Array, _F64Array]:
    """Combine per-part (count, mean, M2) into those of all parts together, exactly.

    Chan et al.'s pairwise update, parts merged in the order given, so every process that
    combines the same gathered parts gets the same bits.

    Parameters
    ----------
    counts : array_like, shape (P,)
    means, m2s : array_like, shape (P, C)

    Returns
    -------
    count : float
    mean, m2 : ndarray of float64, shape (C,)
    """
    for a, name in ((counts, "counts"), (means, "means"), (m2s, "m2s")):
        v.refuse_masked(a, name)
    counts = np.ascontiguousarray(counts, dtype=_F64)
    means = np.ascontiguousarray(means, dtype=_F64)
    m2s = np.ascontiguousarray(m2s, dtype=_F64)
    if counts.ndim != 1:
        raise ValueError(f"counts must be 1-D (P,), got shape {counts.shape}")
    P = counts.shape[0]
    if means.ndim != 2 or means.shape[0] != P:
        raise ValueError(f"means must have shape ({P}, C), got {means.shape}")
    if m2s.shape != means.shape:
        raise ValueError(f"m2s must have the shape of means {means.shape}, got {m2s.shape}")
    if (counts < 0).any():
        raise ValueError("counts must be >= 0")
    C = means.shape[1]
    mean = np.empty(C, _F64)
    m2 = np.empty(C, _F64)
    rc, total = _core.combine_stats(P, C, counts, means, m2s, mean, m2)
    v.check_status(rc)
    return total, mean, m2


def batch_norm_normalize(x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                         weight: ArrayLike | None = None, bias: ArrayLike | None = None, *,
                         layout: Layout = "NCHW", activation: Activation = None,
                         out: FloatArray | None = None, n_threads: Threads = None) -> FloatArray:
    """``y = (x - mean) * invstd * weight + bias`` per channel, given the statistics.

    mean and invstd are float64 (C,) (e.g. from `combine_stats`); weight and bias are cast to
    x's dtype. ``activation="relu"`` clamps at 0 in the same pass; ``out=x`` works in place.
    """
    x = v.float_array(x, "x")
    cl, N, C, S = canonical_view(x.shape, layout)
    mean = _stats_array(mean, "mean", C)
    invstd = _stats_array(invstd, "invstd", C)
    weight = v.channel_param(weight, "weight", C, v.param_dtype(x.dtype))
    bias = v.channel_param(bias, "bias", C, v.param_dtype(x.dtype))
    relu = v.relu(activation)
    y, x, _, n_threads = v.forward_arrays(x, None, out, n_threads)
    if out is not None:
        v.refuse_overlaps(_NORMALIZE_BUFFERS, (y, mean, invstd, weight, bias), 1, 5)
    v.check_status(_core.normalize(x, y, N, C, S, cl, mean, invstd, weight, bias, relu,
                                   n_threads))
    return y


def batch_norm_backward_reduce(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, *,
                               y: ArrayLike | None = None, activation: Activation = None,
                               layout: Layout = "NCHW", n_threads: Threads = None
                               ) -> tuple[_F64Array, _F64Array, _F64Array]:
    """Per-channel ``sum(dy)``, ``sum(dy * (x - mean))`` and ``sum(x - mean)`` in float64 (dy
    masked by ``y > 0`` with ``activation="relu"``): the sums to all-reduce in a data-parallel
    backward.

    mean is the forward's save_mean (cast to x's dtype). It is the batch mean rounded to x's
    dtype; the third sum lets `batch_norm_backward_dx` and `batch_norm_backward_params` correct
    for that rounding, so data far from zero keep their gradients' precision.

    Returns
    -------
    sum_dy, sum_dy_xmu, sum_xmu : ndarray of float64, shape (C,)
    """
    dy, x = v.gradient_and_input(dy, x)
    cl, N, C, S = canonical_view(x.shape, layout)
    mean = v.channel_param(mean, "mean", C, v.param_dtype(x.dtype))
    if mean is None:
        raise ValueError("mean (the forward's save_mean) is required")
    y = v.relu_output(y, activation, x)
    n_threads = resolve_threads(n_threads)
    x, dy, y = v.gradient_inputs(x, dy, y)
    sum_dy = np.empty(C, _F64)
    sum_dy_xmu = np.empty(C, _F64)
    sum_xmu = np.empty(C, _F64)
    v.check_status(_core.backward_reduce(dy, x, mean, y, N, C, S, cl, sum_dy, sum_dy_xmu,
                                         sum_xmu, n_threads))
    return sum_dy, sum_dy_xmu, sum_xmu


def _count_value(count: float) -> float:
    count = v.real_number(count, "count")
    if not count > 0:
        raise ValueError(f"count must be > 0 (values per channel over all processes), got {count}")
    return count


def batch_norm_backward_dx(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                           sum_dy: ArrayLike, sum_dy_xmu: ArrayLike, sum_xmu: ArrayLike,
                           count: float, weight: ArrayLike | None = None, *,
                           y: ArrayLike | None = None, activation: Activation = None,
                           layout: Layout = "NCHW", out: FloatArray | None = None,
                           n_threads: Threads = None) -> FloatArray:
    """dx of batch norm from the global sums (of `batch_norm_backward_reduce`) over `count`
    values per channel.

    ``dx = weight*invstd * (g - sum_dy/count - (x - mu)*invstd**2 * sum_c/count)`` with
    g = dy (masked by ``y > 0`` with ``activation="relu"``), ``mu = mean + sum_xmu/count`` the
    batch mean and ``sum_c = sum(g * (x - mu))``. mean and invstd are the forward's save_mean
    and save_invstd (cast to x's dtype); ``out=dy`` works in place.
    """
    dy, x = v.gradient_and_input(dy, x)
    cl, N, C, S = canonical_view(x.shape, layout)
    if mean is None or invstd is None:
        raise ValueError("mean and invstd (the forward's save_mean, save_invstd) are required")
    mean = v.channel_param(mean, "mean", C, v.param_dtype(x.dtype))
    invstd = v.channel_param(invstd, "invstd", C, v.param_dtype(x.dtype))
    weight = v.channel_param(weight, "weight", C, v.param_dtype(x.dtype))
    sum_dy = _stats_array(sum_dy, "sum_dy", C)
    sum_dy_xmu = _stats_array(sum_dy_xmu, "sum_dy_xmu", C)
    sum_xmu = _stats_array(sum_xmu, "sum_xmu", C)
    count = _count_value(count)
    y = v.relu_output(y, activation, x)
    dx, _, x, dy, y, n_threads = v.gradient_arrays(dy, x, y, out, n_threads)
    if out is not None:
        v.refuse_overlaps(_DX_BUFFERS, (dx, mean, invstd, weight, sum_dy, sum_dy_xmu, sum_xmu),
                          1, 7)
    v.check_status(_core.backward_dx(dy, x, mean, invstd, weight, y, sum_dy, sum_dy_xmu,
                                     sum_xmu, count, dx, N, C, S, cl, n_threads))
    return dx


def batch_norm_backward_params(sum_dy: ArrayLike, sum_dy_xmu: ArrayLike, sum_xmu: ArrayLike,
                               count: float, invstd: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """``(dweight, dbias)`` from the global sums (of `batch_norm_backward_reduce`) over `count`
    values per channel, in invstd's dtype (invstd: the forward's save_invstd).

    ``dbias = sum_dy`` and ``dweight = (sum_dy_xmu - sum_xmu/count * sum_dy) * invstd``: the sum
    around the batch mean, computed in float64 as `batch_norm_backward` computes it (the same
    sums give the same bits).
    """
    invstd = v.float_array(invstd, "invstd")
    if invstd.ndim != 1:
        raise ValueError(f"invstd must be 1-D (C,), got shape {invstd.shape}")
    C = invstd.shape[0]
    sum_dy = _stats_array(sum_dy, "sum_dy", C)
    sum_dy_xmu = _stats_array(sum_dy_xmu, "sum_dy_xmu", C)
    sum_xmu = _stats_array(sum_xmu, "sum_xmu", C)
    delta = sum_xmu / _count_value(count)
    dweight = ((sum_dy_xmu - delta * sum_dy) * invstd.astype(_F64)).astype(invstd.dtype)
    return dweight, sum_dy.astype(invstd.dtype)
