"""The public batch-norm functions: validate, allocate, resolve threads, call the C kernels."""
from __future__ import annotations

from typing import Literal, Union, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _core
from . import _validate as v
from ._alloc import empty_output
from ._layout import canonical_view
from ._types import Activation, FloatArray, Layout, Threads

# The three gradients (dx, dweight, dbias), or four with the residual's (d_residual) last.
_Grads = tuple[FloatArray, FloatArray, FloatArray]
_GradsResidual = tuple[FloatArray, FloatArray, FloatArray, FloatArray]
_AnyGrads = Union[_Grads, _GradsResidual]

# Argument names of the arrays each function checks for overlaps, in v.refuse_overlaps' order:
# the buffers it writes (out first), then the per-channel arrays it reads, then x (and the
# residual).
_TRAIN_BUFFERS = ("out", "running_mean", "running_var", "weight", "bias", "x", "residual")
_BACKWARD_BUFFERS = ("out", "save_mean", "save_invstd", "weight")
_INFER_BUFFERS = ("out", "running_mean", "running_var", "weight", "bias")
_INFER_BACKWARD_BUFFERS = ("out", "running_mean", "running_var", "weight")

_LAYOUT_DOC = """layout : {"NCHW", "channels_first", "NHWC", "channels_last"}, default "NCHW"
        Where the channel axis is: axis 1 for channels-first ((N, C), (N, C, L), (N, C, H, W),
        (N, C, D, H, W)), the last axis for channels-last ((N, C), (N, L, C), (N, H, W, C), ...)."""

_THREADS_DOC = """n_threads : int or None, default None
        Threads to use. None: the value of `cbn.set_num_threads`, else the OpenMP default
        (OMP_NUM_THREADS, threadpoolctl). Negative counts back from the maximum (-1 = all).
        At most the CPUs available to the process (or OMP_NUM_THREADS when larger) and
        OMP_THREAD_LIMIT; one in a process forked after cbn used threads. Results are
        bit-identical for every thread count."""


def batch_norm_train(x: ArrayLike, weight: ArrayLike | None = None,
                     bias: ArrayLike | None = None, *, running_mean: FloatArray | None = None,
                     running_var: FloatArray | None = None, momentum: float = 0.1,
                     eps: float = 1e-5, layout: Layout = "NCHW",
                     unbiased_running_var: bool = True, activation: Activation = None,
                     residual: ArrayLike | None = None, out: FloatArray | None = None,
                     n_threads: Threads = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    x = v.float_array(x, "x")
    cl, N, C, S = canonical_view(x.shape, layout)
    dtype = v.param_dtype(x.dtype)
    weight = v.channel_param(weight, "weight", C, dtype)
    bias = v.channel_param(bias, "bias", C, dtype)
    running_mean, running_var = v.running_stats(running_mean, running_var, C, dtype,
                                                v.param_why(x.dtype))
    momentum = v.momentum_value(momentum)
    eps = v.eps_value(eps)
    unbiased_running_var = v.flag(unbiased_running_var, "unbiased_running_var")
    relu = v.relu(activation)
    residual = v.residual_input(residual, x)
    v.enough_values(N * S, x.shape)
    y, x, residual, n_threads = v.forward_arrays(x, residual, out, n_threads)
    if out is not None or running_mean is not None:
        v.refuse_overlaps(_TRAIN_BUFFERS, (out, running_mean, running_var, weight, bias, x,
                                           residual), 3, 5)
    save_mean = empty_output((C,), dtype)
    save_invstd = empty_output((C,), dtype)
    if N * S == 0:
        # An empty batch (PyTorch): y is empty and the running statistics stay as they are. The
        # C kernel refuses M == 0 (its contract); here it has nothing to compute.
        _empty_batch_stats(save_mean, save_invstd, eps)
        return y, save_mean, save_invstd
    v.check_status(_core.train_forward(
        x, y, N, C, S, cl, weight, bias, running_mean, running_var, momentum, eps,
        unbiased_running_var, save_mean, save_invstd, relu, n_threads, residual))
    return y, save_mean, save_invstd


def _empty_batch_stats(save_mean: FloatArray, save_invstd: FloatArray, eps: float) -> None:
    """save_mean/save_invstd of an empty batch: mean 0 and variance 0, the statistics that
    `cbn.split.batch_stats` gives for no values, so save_invstd = 1/sqrt(eps) (inf for eps=0).
    Backward of an empty batch does not read them (its dweight and dbias are 0)."""
    save_mean[...] = 0
    with np.errstate(divide="ignore", over="ignore"):
        save_invstd[...] = 1.0 / np.sqrt(np.float64(eps))


batch_norm_train.__doc__ = f"""Training-mode batch normalization: normalize x with its own batch statistics.

    For every channel c, over the M values of that channel (all axes but the channel axis)::

        mean = sum(x) / M,  var = sum((x - mean)**2) / M        (biased, two-pass, in float64)
        y = (x - mean) / sqrt(var + eps) * weight + bias

    Parameters
    ----------
    x : array_like of float32 or float64, ndim >= 2
        Input; any strides (copied to contiguous when needed). Not modified unless ``out=x``.
    weight, bias : array_like, shape (C,), optional
        Scale (gamma) and shift (beta), cast to x's dtype. None means 1 and 0 (affine=False).
    running_mean, running_var : ndarray, shape (C,), optional
        Running statistics, updated in place when given (both or neither; x's dtype, writeable,
        C-contiguous; sharing memory with no other argument)::

            running_mean = (1 - momentum) * running_mean + momentum * mean
            running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)

        (``var`` alone with ``unbiased_running_var=False``).
    momentum : float in [0, 1], default 0.1
        PyTorch's convention: the weight of the new batch. Keras/ONNX momentum (0.99, 0.9)
        weighs the old value: pass ``1 - their_momentum``.
    eps : float >= 0, default 1e-5
    {_LAYOUT_DOC}
    unbiased_running_var : bool, default True
        Update running_var with the unbiased batch variance (PyTorch) or the biased one
        (Keras/ONNX).
    activation : {None, "relu"}, default None
        "relu": ``y = max(y, 0)`` in the same pass (no extra array, no extra pass).
    residual : array_like, optional
        Added before the activation, in the same pass: ``y = relu(bn(x) + residual)`` (the end
        of a ResNet block), or ``bn(x) + residual`` without activation. x's dtype and shape;
        the sum is rounded in that dtype, so y equals ``np.maximum(bn(x) + residual, 0)``.
        Its gradient comes from ``batch_norm_backward(..., residual=True)``.
    out : ndarray, optional
        Where to write y: x's dtype and shape, C-contiguous, writeable (an ndarray subclass
        such as np.memmap is written into and returned). ``out=x`` (or ``out=residual``) works
        in place; out must not share memory with weight, bias or the running statistics.
    {_THREADS_DOC}

    Returns
    -------
    y : ndarray
        Normalized output, x's dtype and shape.
    save_mean, save_invstd : ndarray, shape (C,)
        Batch mean and 1/sqrt(var + eps), x's dtype: what `batch_norm_backward` takes.

    An empty batch (M == 0, e.g. shape (0, C, H, W)) is allowed, as in PyTorch: y is empty,
    the running statistics are not touched, save_mean is 0 and save_invstd 1/sqrt(eps), and
    its backward gives dweight = dbias = 0.

    Raises
    ------
    TypeError
        x (or an output buffer) of a dtype other than float32/float64, a masked array, a
        str or bool for eps/momentum/n_threads, a non-bool unbiased_running_var.
    ValueError
        Bad shape, layout, eps (negative or not finite), momentum, M == 1 value per channel,
        or a written buffer sharing memory with another argument. Nothing is written.

    Examples
    --------
    >>> import numpy as np, cbn
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, (8, 4, 5, 5)).astype(np.float32)
    >>> y, mean, invstd = cbn.batch_norm_train(x)
    >>> bool(abs(y.mean()) < 1e-5)
    True
    """


# residual=True adds d_residual to the result: the overloads tell checkers how many arrays come
@overload
def batch_norm_backward(dy: ArrayLike, x: ArrayLike, save_mean: ArrayLike,
                        save_invstd: ArrayLike, weight: ArrayLike | None = ..., *,
                        layout: Layout = ..., y: ArrayLike | None = ...,
                        activation: Activation = ..., residual: Literal[False] = ...,
                        out: FloatArray | None = ..., n_threads: Threads = ...) -> _Grads: ...
@overload
def batch_norm_backward(dy: ArrayLike, x: ArrayLike, save_mean: ArrayLike,
                        save_invstd: ArrayLike, weight: ArrayLike | None = ..., *,
                        layout: Layout = ..., y: ArrayLike | None = ...,
                        activation: Activation = ..., residual: Literal[True],
                        out: FloatArray | None = ...,
                        n_threads: Threads = ...) -> _GradsResidual: ...
@overload
def batch_norm_backward(dy: ArrayLike, x: ArrayLike, save_mean: ArrayLike,
                        save_invstd: ArrayLike, weight: ArrayLike | None = ..., *,
                        layout: Layout = ..., y: ArrayLike | None = ...,
                        activation: Activation = ..., residual: bool,
                        out: FloatArray | None = ..., n_threads: Threads = ...) -> _AnyGrads: ...
def batch_norm_backward(dy: ArrayLike, x: ArrayLike, save_mean: ArrayLike,
                        save_invstd: ArrayLike, weight: ArrayLike | None = None, *,
                        layout: Layout = "NCHW", y: ArrayLike | None = None,
                        activation: Activation = None, residual: bool = False,
                        out: FloatArray | None = None, n_threads: Threads = None) -> _AnyGrads:
    dy, x = v.gradient_and_input(dy, x)
    cl, N, C, S = canonical_view(x.shape, layout)
    dtype = v.param_dtype(x.dtype)
    if save_mean is None or save_invstd is None:
        raise ValueError("save_mean and save_invstd (returned by batch_norm_train) are required")
    save_mean = v.channel_param(save_mean, "save_mean", C, dtype)
    save_invstd = v.channel_param(save_invstd, "save_invstd", C, dtype)
    weight = v.channel_param(weight, "weight", C, dtype)
    y = v.relu_output(y, activation, x)
    dx, d_residual, x, dy, y, n_threads = v.gradient_arrays(dy, x, y, out, n_threads, residual)
    if out is not None:
        v.refuse_overlaps(_BACKWARD_BUFFERS, (dx, save_mean, save_invstd, weight), 1, 4)
    dweight = empty_output((C,), dtype)
    dbias = empty_output((C,), dtype)
    v.check_status(_core.backward(dy, x, save_mean, save_invstd, weight, y, dx, dweight, dbias,
                                  N, C, S, cl, n_threads, d_residual))
    return _gradients(dx, dweight, dbias, d_residual)


def _gradients(dx: FloatArray, dweight: FloatArray, dbias: FloatArray,
               d_residual: FloatArray | None) -> _AnyGrads:
    if d_residual is None:
        return dx, dweight, dbias
    return dx, dweight, dbias, d_residual


batch_norm_backward.__doc__ = f"""Gradients of `batch_norm_train` with respect to x, weight and bias.

    With ``xhat = (x - save_mean) * save_invstd`` and M values per channel::

        dbias   = sum(dy)
        dweight = sum(dy * xhat)
        dx      = weight * save_invstd * (dy - dbias / M - xhat * dweight / M)

    Parameters
    ----------
    dy : array_like
        Gradient of the loss with respect to y; x's dtype and shape, any strides.
    x : array_like of float32 or float64
        The input given to `batch_norm_train`.
    save_mean, save_invstd : array_like, shape (C,)
        As returned by `batch_norm_train` (cast to x's dtype).
    weight : array_like, shape (C,), optional
        The weight given to `batch_norm_train`; None means 1.
    {_LAYOUT_DOC}
    y : array_like, optional
        With ``activation="relu"``: the output of ``batch_norm_train(..., activation="relu")``;
        dy is taken as 0 where ``y <= 0`` (the ReLU's gradient), in the same pass.
    activation : {None, "relu"}, default None
    residual : bool, default False
        True when the forward added a residual (``batch_norm_train(..., residual=r)``): also
        return its gradient, ``d_residual = dy`` masked by ``y > 0`` with ``activation="relu"``
        (the gradient that reaches batch norm), written in the pass that writes dx.
    out : ndarray, optional
        Where to write dx (x's dtype and shape, C-contiguous, writeable); ``out=dy`` works.
    {_THREADS_DOC}

    Returns
    -------
    dx : ndarray
        x's dtype and shape.
    dweight, dbias : ndarray, shape (C,)
        x's dtype.
    d_residual : ndarray
        Only with ``residual=True``: x's dtype and shape (a new array).
    """


def batch_norm_infer(x: ArrayLike, running_mean: ArrayLike, running_var: ArrayLike,
                     weight: ArrayLike | None = None, bias: ArrayLike | None = None, *,
                     eps: float = 1e-5, layout: Layout = "NCHW", activation: Activation = None,
                     residual: ArrayLike | None = None, out: FloatArray | None = None,
                     n_threads: Threads = None) -> FloatArray:
    x = v.float_array(x, "x")
    cl, N, C, S = canonical_view(x.shape, layout)
    dtype = v.param_dtype(x.dtype)
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm_infer needs running_mean and running_var, got None")
    running_mean = v.channel_param(running_mean, "running_mean", C, dtype)
    running_var = v.channel_param(running_var, "running_var", C, dtype)
    weight = v.channel_param(weight, "weight", C, dtype)
    bias = v.channel_param(bias, "bias", C, dtype)
    eps = v.eps_value(eps)
    relu = v.relu(activation)
    residual = v.residual_input(residual, x)
    y, x, residual, n_threads = v.forward_arrays(x, residual, out, n_threads)
    if out is not None:
        v.refuse_overlaps(_INFER_BUFFERS, (y, running_mean, running_var, weight, bias), 1, 5)
    v.check_status(_core.infer(x, y, N, C, S, cl, running_mean, running_var, weight, bias, eps,
                               relu, n_threads, residual))
    return y


batch_norm_infer.__doc__ = f"""Inference-mode (frozen) batch normalization: one multiply-add per value.

    ``y = x * scale + shift`` per channel with ``scale, shift = fold_scale_shift(running_mean,
    running_var, weight, bias, eps)`` computed once per call (in float64).

    Parameters
    ----------
    x : array_like of float32 or float64, ndim >= 2
    running_mean, running_var : array_like, shape (C,)
        Frozen statistics (cast to x's dtype; not modified).
    weight, bias : array_like, shape (C,), optional
        None means 1 and 0.
    eps : float >= 0, default 1e-5
    {_LAYOUT_DOC}
    activation : {None, "relu"}, default None
        "relu": ``y = max(y, 0)`` in the same pass.
    residual : array_like, optional
        Added before the activation in the same pass, ``y = relu(x * scale + shift +
        residual)``, rounded in x's dtype (as for `batch_norm_train`).
    out : ndarray, optional
        Where to write y (x's dtype and shape, C-contiguous, writeable); ``out=x`` or
        ``out=residual`` works.
    {_THREADS_DOC}

    Returns
    -------
    y : ndarray
        x's dtype and shape.
    """


@overload
def batch_norm_infer_backward(dy: ArrayLike, x: ArrayLike, running_mean: ArrayLike,
                              running_var: ArrayLike, weight: ArrayLike | None = ..., *,
                              eps: float = ..., layout: Layout = ..., y: ArrayLike | None = ...,
                              activation: Activation = ..., residual: Literal[False] = ...,
                              out: FloatArray | None = ..., n_threads: Threads = ...) -> _Grads: ...
@overload
def batch_norm_infer_backward(dy: ArrayLike, x: ArrayLike, running_mean: ArrayLike,
                              running_var: ArrayLike, weight: ArrayLike | None = ..., *,
                              eps: float = ..., layout: Layout = ..., y: ArrayLike | None = ...,
                              activation: Activation = ..., residual: Literal[True],
                              out: FloatArray | None = ...,
                              n_threads: Threads = ...) -> _GradsResidual: ...
@overload
def batch_norm_infer_backward(dy: ArrayLike, x: ArrayLike, running_mean: ArrayLike,
                              running_var: ArrayLike, weight: ArrayLike | None = ..., *,
                              eps: float = ..., layout: Layout = ..., y: ArrayLike | None = ...,
                              activation: Activation = ..., residual: bool,
                              out: FloatArray | None = ...,
                              n_threads: Threads = ...) -> _AnyGrads: ...
def batch_norm_infer_backward(dy: ArrayLike, x: ArrayLike, running_mean: ArrayLike,
                              running_var: ArrayLike, weight: ArrayLike | None = None, *,
                              eps: float = 1e-5, layout: Layout = "NCHW",
                              y: ArrayLike | None = None, activation: Activation = None,
                              residual: bool = False, out: FloatArray | None = None,
                              n_threads: Threads = None) -> _AnyGrads:
    dy, x = v.gradient_and_input(dy, x)
    cl, N, C, S = canonical_view(x.shape, layout)
    dtype = v.param_dtype(x.dtype)
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm_infer_backward needs running_mean and running_var, got None")
    running_mean = v.channel_param(running_mean, "running_mean", C, dtype)
    running_var = v.channel_param(running_var, "running_var", C, dtype)
    weight = v.channel_param(weight, "weight", C, dtype)
    eps = v.eps_value(eps)
    y = v.relu_output(y, activation, x)
    dx, d_residual, x, dy, y, n_threads = v.gradient_arrays(dy, x, y, out, n_threads, residual)
    if out is not None:
        v.refuse_overlaps(_INFER_BACKWARD_BUFFERS, (dx, running_mean, running_var, weight), 1, 4)
    dweight = empty_output((C,), dtype)
    dbias = empty_output((C,), dtype)
    v.check_status(_core.infer_backward(dy, x, running_mean, running_var, weight, eps, y, dx,
                                        d_residual, dweight, dbias, N, C, S, cl, n_threads))
    return _gradients(dx, dweight, dbias, d_residual)


batch_norm_infer_backward.__doc__ = f"""Gradients of `batch_norm_infer` (frozen statistics) with respect to x, weight and bias.

    Fine-tuning with frozen batch norm: the running statistics are constants, the weight and
    bias still learn. With ``root = sqrt(running_var + eps)`` (float64) and g = dy (masked by
    ``y > 0`` with ``activation="relu"``)::

        dx      = g * scale          scale = weight / root, the scale batch_norm_infer uses
        dweight = sum(g * (x - running_mean)) / root
        dbias   = sum(g)

    The sums are carried in float64 (float32: float blocks of at most 8 values per lane, see
    README); x and dy are read once per channel.

    Parameters
    ----------
    dy : array_like
        Gradient of the loss with respect to y; x's dtype and shape, any strides.
    x : array_like of float32 or float64
        The input given to `batch_norm_infer`.
    running_mean, running_var : array_like, shape (C,)
        The statistics given to `batch_norm_infer` (cast to x's dtype).
    weight : array_like, shape (C,), optional
        None means 1.
    eps : float >= 0, default 1e-5
    {_LAYOUT_DOC}
    y, activation
        As for `batch_norm_backward`: with ``activation="relu"``, y is the forward's output.
    residual : bool, default False
        As for `batch_norm_backward`: also return the residual's gradient.
    out : ndarray, optional
        Where to write dx (x's dtype and shape, C-contiguous, writeable); ``out=dy`` works.
    {_THREADS_DOC}

    Returns
    -------
    dx : ndarray
    dweight, dbias : ndarray, shape (C,)
    d_residual : ndarray
        Only with ``residual=True``.

    Examples
    --------
    >>> import numpy as np, cbn
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    >>> mean, var = np.zeros(3, np.float32), np.full(3, 4.0, np.float32)
    >>> w = np.ones(3, np.float32)
    >>> dx, dw, db = cbn.batch_norm_infer_backward(np.ones_like(x), x, mean, var, w, eps=0.0)
    >>> float(dx[0, 0, 0, 0]), float(db[0])
    (0.5, 100.0)
    """


def fold_scale_shift(running_mean: ArrayLike, running_var: ArrayLike,
                     weight: ArrayLike | None = None, bias: ArrayLike | None = None,
                     eps: float = 1e-5) -> tuple[FloatArray, FloatArray]:
    """Fold running statistics and the affine parameters into one per-channel multiply-add.

    ``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale``,
    computed in float64, so that ``batch_norm_infer(x, ...) == x * scale + shift`` per channel.

    Parameters
    ----------
    running_mean, running_var : array_like, shape (C,)
        float32 or float64 (the result's dtype); other real dtypes become float64.
    weight, bias : array_like, shape (C,), optional
        None means 1 and 0.
    eps : float >= 0, default 1e-5

    Returns
    -------
    scale, shift : ndarray, shape (C,)
    """
    if running_mean.__class__ is not np.ndarray:
        v.refuse_masked(running_mean, "running_mean")
        running_mean = np.asarray(running_mean)
    if running_mean.ndim != 1:
        raise ValueError(f"running_mean must be 1-D (C,), got shape {running_mean.shape}")
    dtype = running_mean.dtype if running_mean.dtype in v.FLOAT_DTYPES else v.F64
    C = running_mean.shape[0]
    running_mean = v.channel_param(running_mean, "running_mean", C, dtype)
    running_var = v.channel_param(running_var, "running_var", C, dtype)
    weight = v.channel_param(weight, "weight", C, dtype)
    bias = v.channel_param(bias, "bias", C, dtype)
    eps = v.eps_value(eps)
    scale = empty_output((C,), dtype)
    shift = empty_output((C,), dtype)
    v.check_status(_core.fold_scale_shift(C, running_mean, running_var, weight, bias, eps,
                                          scale, shift))
    return scale, shift
