"""cbn.BatchNorm (and BatchNorm1d/2d/3d): the stateful batch-normalization layer, a drop-in for
torch.nn.BatchNorm*d on NumPy arrays (PyTorch's constructor, semantics and state_dict keys)."""
from __future__ import annotations

import os
from typing import Any, ClassVar, Mapping, NamedTuple, Optional, TypeVar, cast

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _api
from . import _validate as v
from ._layout import canonical_view, is_channels_last
from ._threads import resolve_threads
from ._types import Activation, FloatArray, Layout, Threads

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class IncompatibleKeys(NamedTuple):
    """What load_state_dict returns (PyTorch's named tuple of the same name)."""
    missing_keys: list[str]
    unexpected_keys: list[str]


# What backward needs from the last forward. frozen: it used the running statistics (stat0,
# stat1 = running_mean, running_var), else the batch's (save_mean, save_invstd); y: the output
# when a ReLU was fused, else None; residual: whether one was added.
class _Saved(NamedTuple):
    frozen: bool
    x: FloatArray
    y: Optional[FloatArray]
    stat0: FloatArray
    stat1: FloatArray
    weight: Optional[FloatArray]
    residual: bool

_Layer = TypeVar("_Layer", bound="BatchNorm")


def _buffer(a: FloatArray | None) -> FloatArray:
    """A running-statistics buffer where track_running_stats says there is one (typing only:
    an attribute set to None by hand fails where it is used, as before)."""
    return cast(FloatArray, a)


class BatchNorm:
    """Stateful batch normalization layer with PyTorch's semantics (``torch.nn.BatchNorm*d``).

    The first five parameters are PyTorch's, in PyTorch's order (``BatchNorm(3, 1e-3, 0.8,
    True, False)`` means what ``torch.nn.BatchNorm2d(3, 1e-3, 0.8, True, False)`` does); the
    others are keyword-only. Any input rank >= 2 is accepted; `BatchNorm1d`, `BatchNorm2d` and
    `BatchNorm3d` also check the rank as PyTorch's classes of those names do.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
        Weight of the new batch in the running statistics, in [0, 1]; None: cumulative average
        (factor ``1 / num_batches_tracked``). Keras/ONNX momentum m is cbn's ``1 - m``.
    affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros); None when False.
    track_running_stats : bool, default True
        Keep ``running_mean``/``running_var`` (zeros/ones) and ``num_batches_tracked``; when
        False, batch statistics are used in eval mode too.
    bias : bool, default True
        With ``affine=True``, False gives a weight without a bias (PyTorch's ``bias=False``):
        ``bias`` and ``grad_bias`` are None and ``state_dict()`` has no ``"bias"``.
    layout : {"NCHW", "NHWC", "channels_first", "channels_last"}, default "NCHW"
    dtype : float32 or float64, default float32
        Of the parameters, buffers and the inputs the layer accepts; a float32 layer also
        accepts float16 and bfloat16 inputs (mixed precision: its output and gradients dx then
        have the input's dtype, its parameters, buffers and grad_* stay float32).
    activation : {None, "relu"}, default None
        A ReLU fused into the normalize pass (and its gradient into backward).
    n_threads : int or None
        As for the functional API.

    Attributes
    ----------
    weight, bias, running_mean, running_var : ndarray or None
    num_batches_tracked : int
        Training batches seen with ``track_running_stats``, empty batches included (as in
        PyTorch: an empty batch leaves the running statistics as they are but is counted).
    training : bool
        Training mode when True; ``train(mode=True)`` / ``eval()`` set it and return the layer,
        and assigning it directly works too.
    grad_weight, grad_bias : ndarray or None
        Set by ``backward``.

    An empty batch (``x.shape[0] == 0``, or a spatial size 0) gives an empty output, and its
    backward zero gradients; one value per channel in training raises ValueError (PyTorch too).

    Examples
    --------
    >>> import numpy as np, cbn
    >>> bn = cbn.BatchNorm(3, activation="relu")
    >>> x = np.random.default_rng(0).normal(size=(8, 3, 4, 4)).astype(np.float32)
    >>> y = bn(x)                                 # training: batch statistics, running update
    >>> dx = bn.backward(np.ones_like(y))         # grad_weight, grad_bias set
    >>> y_eval = bn.eval()(x)                     # frozen running statistics
    >>> dx = bn.backward(np.ones_like(y))         # gradients through the frozen statistics
    >>> y = bn(x, residual=x)                     # relu(bn(x) + x), one pass
    >>> dx, d_residual = bn.backward(np.ones_like(y))
    """

    # BatchNorm1d/2d/3d: the input ranks PyTorch's class of the same name accepts
    _input_ranks: ClassVar[Optional[tuple[int, ...]]] = None

    weight: FloatArray | None
    bias: FloatArray | None
    running_mean: FloatArray | None
    running_var: FloatArray | None
    num_batches_tracked: int
    training: bool
    grad_weight: FloatArray | None
    grad_bias: FloatArray | None

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, bias: bool = True,
                 layout: Layout = "NCHW", dtype: DTypeLike = np.float32,
                 activation: Activation = None, n_threads: Threads = None) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)):
            raise TypeError(f"num_features must be an int, got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        dtype = np.dtype(dtype)
        if dtype not in v.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        is_channels_last(layout)
        v.relu(activation)
        self.num_features = C = int(num_features)
        self.eps = v.eps_value(eps)
        self.momentum = None if momentum is None else v.momentum_value(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.layout = layout
        self.dtype = dtype
        self.activation = activation
        resolve_threads(n_threads)  # a bad count fails here, not at the first forward
        self.n_threads = n_threads
        self.weight = np.empty(C, dtype) if self.affine else None
        self.bias = np.empty(C, dtype) if self.affine and bias else None
        if self.track_running_stats:
            self.running_mean = np.empty(C, dtype)
            self.running_var = np.empty(C, dtype)
        else:
            self.running_mean = self.running_var = None
        self.reset_parameters()
        self.training = True
        self.grad_weight = self.grad_bias = None
        self._saved: _Saved | None = None

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1 (in place), num_batches_tracked = 0."""
        if self.track_running_stats:
            _buffer(self.running_mean)[...] = 0
            _buffer(self.running_var)[...] = 1
        self.num_batches_tracked = 0

    def reset_parameters(self) -> None:
        """reset_running_stats(), weight = 1 and bias = 0 (in place): a new layer's state."""
        self.reset_running_stats()
        if self.weight is not None:
            self.weight[...] = 1
        if self.bias is not None:
            self.bias[...] = 0

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}, layout={self.layout!r}, "
                f"activation={self.activation!r})")

    def train(self: _Layer, mode: bool = True) -> _Layer:
        self.training = bool(mode)
        return self

    def eval(self: _Layer) -> _Layer:
        return self.train(False)

    def forward(self, x: ArrayLike, residual: ArrayLike | None = None) -> FloatArray:
        """y = BN(x): batch statistics (and a running update) in training mode, running
        statistics in eval mode (batch statistics when track_running_stats=False).

        residual: an array of x's shape and dtype added before the activation in the same pass,
        ``y = relu(BN(x) + residual)`` (the end of a ResNet block); ``backward`` then returns
        its gradient too.

        For ``backward``, a forward keeps a reference to ``x`` (not a copy: no extra memory),
        and to ``y`` when ``activation="relu"``, plus copies of the statistics it used and of
        ``weight``. Do not modify ``x`` (or ``y``) in place before ``backward``; pass
        ``x.copy()`` if you must.
        """
        x = checked_input(self, x)
        if not self.training and self.track_running_stats:
            running_mean, running_var = _buffer(self.running_mean), _buffer(self.running_var)
            y = _api.batch_norm_infer(x, running_mean, running_var, self.weight,
                                      self.bias, eps=self.eps, layout=self.layout,
                                      activation=self.activation, residual=residual,
                                      n_threads=self.n_threads)
            self._saved = _Saved(True, x, y if self.activation else None,
                                 running_mean.copy(), running_var.copy(),
                                 None if self.weight is None else self.weight.copy(),
                                 residual is not None)
            return y
        update = self.training and self.track_running_stats
        if update:
            momentum = (1.0 / (self.num_batches_tracked + 1) if self.momentum is None
                        else self.momentum)
        y, mean, invstd = _api.batch_norm_train(
            x, self.weight, self.bias, running_mean=self.running_mean if update else None,
            running_var=self.running_var if update else None,
            momentum=momentum if update else 0.0, eps=self.eps, layout=self.layout,
            activation=self.activation, residual=residual, n_threads=self.n_threads)
        if update:
            self.num_batches_tracked += 1
        self._saved = _Saved(False, x, y if self.activation else None, mean, invstd,
                             None if self.weight is None else self.weight.copy(),
                             residual is not None)
        return y

    def __call__(self, x: ArrayLike, residual: ArrayLike | None = None) -> FloatArray:
        # forward(x) alone when there is no residual: subclasses' forward may take only x
        return self.forward(x) if residual is None else self.forward(x, residual)

    # FloatArray | Any: an array, or (dx, d_residual) after a forward with a residual; the
    # Any (typeshed's convention) spares callers a check the layer's state already decides
    def backward(self, dy: ArrayLike) -> FloatArray | Any:
        """Gradients of the last forward: returns dx, or ``(dx, d_residual)`` when it was given
        a residual; sets grad_weight and grad_bias (None when affine=False). After an eval-mode
        forward with running statistics, the gradients go through those frozen statistics
        (fine-tuning with frozen batch norm: `batch_norm_infer_backward`). RuntimeError when
        there was no forward."""
        if self._saved is None:
            raise RuntimeError("backward() needs a forward() first")
        s = self._saved
        if s.frozen:
            grads = _api.batch_norm_infer_backward(
                dy, s.x, s.stat0, s.stat1, s.weight, eps=self.eps, layout=self.layout, y=s.y,
                activation=self.activation, residual=s.residual, n_threads=self.n_threads)
        else:
            grads = _api.batch_norm_backward(
                dy, s.x, s.stat0, s.stat1, s.weight, layout=self.layout, y=s.y,
                activation=self.activation, residual=s.residual, n_threads=self.n_threads)
        dx, dw, db, *d_residual = grads
        self._set_grads(dw, db)
        return (dx, d_residual[0]) if s.residual else dx

    def _set_grads(self, dweight: FloatArray, dbias: FloatArray) -> None:
        """grad_weight/grad_bias for the parameters the layer has, None for those it has not."""
        self.grad_weight = dweight if self.weight is not None else None
        self.grad_bias = dbias if self.bias is not None else None

    def state_dict(self) -> dict[str, NDArray[Any]]:
        """Parameters and buffers as NumPy arrays under PyTorch's key names (weight, bias,
        running_mean, running_var, num_batches_tracked; those the layer has, as PyTorch), so
        they move to and from ``torch.nn.BatchNorm*d``."""
        d: dict[str, NDArray[Any]] = {}
        if self.weight is not None:
            d["weight"] = self.weight.copy()
        if self.bias is not None:
            d["bias"] = self.bias.copy()
        if self.track_running_stats:
            d["running_mean"] = _buffer(self.running_mean).copy()
            d["running_var"] = _buffer(self.running_var).copy()
            d["num_batches_tracked"] = np.asarray(self.num_batches_tracked, np.int64)
        return d

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike],
                        strict: bool = True) -> IncompatibleKeys:
        """Load parameters and buffers saved by ``state_dict()`` here or by
        ``torch.nn.BatchNorm*d`` (NumPy arrays, or anything ``np.asarray`` accepts).

        strict=True (as PyTorch): the keys must be exactly this layer's (which depend on
        ``affine``, ``bias`` and ``track_running_stats``). strict=False: missing keys keep their
        value and unexpected keys are ignored. Every value is checked before any is written (shape
        ``(num_features,)``, real numbers; ``num_batches_tracked`` a non-negative integer
        scalar): on an error the layer is unchanged. Values are cast to the layer's dtype.

        Returns ``(missing_keys, unexpected_keys)`` as PyTorch does.
        """
        want = list(self.state_dict())
        missing = [k for k in want if k not in state_dict]
        unexpected = [k for k in state_dict if k not in want]
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict keys must be {want}, got {list(state_dict)} "
                             f"(missing {missing}, unexpected {unexpected})")
        arrays: dict[str, Any] = {}
        for k in want:
            if k not in state_dict:
                continue
            if k == "num_batches_tracked":
                n = np.asarray(state_dict[k])
                if n.shape != () or n.dtype.kind not in "iu" or int(n) < 0:
                    raise ValueError("num_batches_tracked must be a non-negative integer scalar "
                                     f"(0-d array or int), got {n!r}")
                arrays[k] = int(n)
            else:
                arrays[k] = v.channel_param(state_dict[k], k, self.num_features, self.dtype)
        for k, a in arrays.items():
            if k == "num_batches_tracked":
                self.num_batches_tracked = a
            else:
                getattr(self, k)[...] = a
        return IncompatibleKeys(missing, unexpected)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write state_dict() to an .npz file."""
        arrays: dict[str, Any] = self.state_dict()   # Any: savez's **kwds, not allow_pickle
        np.savez(path, **arrays)

    def load(self: _Layer, path: str | os.PathLike[str]) -> _Layer:
        """Read an .npz written by save() into this layer (an instance method: build the layer
        with the same num_features/affine/track_running_stats first); returns the layer."""
        with np.load(path) as f:
            self.load_state_dict(dict(f))
        return self

    def _check_input_dim(self, x: FloatArray) -> None:
        """PyTorch's rank check of BatchNorm1d/2d/3d, with its wording (any rank >= 2 here)."""
        if self._input_ranks is not None and x.ndim not in self._input_ranks:
            wanted = " or ".join(f"{r}D" for r in self._input_ranks)
            raise ValueError(f"expected {wanted} input (got {x.ndim}D input)")


class BatchNorm1d(BatchNorm):
    """`BatchNorm` for (N, C) or (N, C, L) input (channels-last: (N, C) or (N, L, C)), like
    ``torch.nn.BatchNorm1d``; other ranks raise ValueError."""
    _input_ranks = (2, 3)


class BatchNorm2d(BatchNorm):
    """`BatchNorm` for 4-D input, (N, C, H, W) (channels-last: (N, H, W, C)), like
    ``torch.nn.BatchNorm2d``; other ranks raise ValueError."""
    _input_ranks = (4,)


class BatchNorm3d(BatchNorm):
    """`BatchNorm` for 5-D input, (N, C, D, H, W) (channels-last: (N, D, H, W, C)), like
    ``torch.nn.BatchNorm3d``; other ranks raise ValueError."""
    _input_ranks = (5,)


def checked_input(layer: BatchNorm, x: ArrayLike) -> FloatArray:
    """x as an ndarray of the layer's dtype (or, for a float32 layer, float16 or bfloat16:
    mixed precision, as torch on CPU) with num_features channels in its layout."""
    x = v.float_array(x, "x")
    layer._check_input_dim(x)
    if x.dtype != layer.dtype and v.param_dtype(x.dtype) != layer.dtype:
        also = " (float16/bfloat16 input needs a float32 layer)" if v.is_16bit(x.dtype) else ""
        raise TypeError(f"x must have the layer's dtype {layer.dtype}{also}, got {x.dtype}")
    _, N, C, S = canonical_view(x.shape, layer.layout)
    if C != layer.num_features:
        raise ValueError(f"x must have {layer.num_features} channels (num_features) on the "
                         f"channel axis of layout {layer.layout!r}, got shape {x.shape}")
    return x
