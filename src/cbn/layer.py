"""cbn.BatchNorm: the stateful batch-normalization layer (PyTorch's BatchNorm semantics)."""
from collections import namedtuple

import numpy as np

from . import _api
from . import _validate as v

__all__ = ["BatchNorm"]

_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class BatchNorm:
    """Stateful batch normalization layer with PyTorch's semantics (``torch.nn.BatchNorm*d``).

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
        Weight of the new batch in the running statistics; None: cumulative average (factor
        ``1 / num_batches_tracked``). Keras/ONNX momentum m is cbn's ``1 - m``.
    affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros); None when False.
    track_running_stats : bool, default True
        Keep ``running_mean``/``running_var`` (zeros/ones) and ``num_batches_tracked``; when
        False, batch statistics are used in eval mode too.
    layout : {"NCHW", "NHWC", "channels_first", "channels_last"}, default "NCHW"
    dtype : float32 or float64, default float32
        Of the parameters, buffers and the inputs the layer accepts.
    activation : {None, "relu"}, default None
        A ReLU fused into the normalize pass (and its gradient into backward).
    n_threads : int or None
        As for the functional API.

    Attributes
    ----------
    weight, bias, running_mean, running_var : ndarray or None
    num_batches_tracked : int
    training : bool
        ``train(mode=True)`` / ``eval()`` switch it; both return the layer.
    grad_weight, grad_bias : ndarray or None
        Set by ``backward``.

    Examples
    --------
    >>> import numpy as np, cbn
    >>> bn = cbn.BatchNorm(3, activation="relu")
    >>> x = np.random.default_rng(0).normal(size=(8, 3, 4, 4)).astype(np.float32)
    >>> y = bn(x)                                 # training: batch statistics, running update
    >>> dx = bn.backward(np.ones_like(y))         # grad_weight, grad_bias set
    >>> y_eval = bn.eval()(x)                     # frozen running statistics
    """

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, layout="NCHW", dtype=np.float32, activation=None,
                 n_threads=None):
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)):
            raise TypeError(f"num_features must be an int, got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        dtype = np.dtype(dtype)
        if dtype not in v._FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        v.channels_last(layout)
        v.relu(activation)
        self.num_features = C = int(num_features)
        self.eps = v.eps_value(eps)
        self.momentum = None if momentum is None else v.momentum_value(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.layout = layout
        self.dtype = dtype
        self.activation = activation
        self.n_threads = n_threads
        self.weight = np.ones(C, dtype) if self.affine else None
        self.bias = np.zeros(C, dtype) if self.affine else None
        if self.track_running_stats:
            self.running_mean = np.zeros(C, dtype)
            self.running_var = np.ones(C, dtype)
        else:
            self.running_mean = self.running_var = None
        self.num_batches_tracked = 0
        self.training = True
        self.grad_weight = self.grad_bias = None
        self._saved = None

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def forward(self, x):
        """y = BN(x): batch statistics (and a running update) in training mode, running
        statistics in eval mode (batch statistics when track_running_stats=False).

        For ``backward``, a forward that uses batch statistics keeps a reference to ``x`` (not
        a copy: no extra memory), and to ``y`` when ``activation="relu"``, plus copies of the
        saved mean/invstd and of ``weight``. Do not modify ``x`` (or ``y``) in place before
        ``backward``; pass ``x.copy()`` if you must.
        """
        x = _check_input(self, x)
        if not self.training and self.track_running_stats:
            self._saved = None
            return _api.batch_norm_infer(x, self.running_mean, self.running_var, self.weight,
                                         self.bias, eps=self.eps, layout=self.layout,
                                         activation=self.activation, n_threads=self.n_threads)
        update = self.training and self.track_running_stats
        if update:
            momentum = (1.0 / (self.num_batches_tracked + 1) if self.momentum is None
                        else self.momentum)
        y, mean, invstd = _api.batch_norm_train(
            x, self.weight, self.bias, running_mean=self.running_mean if update else None,
            running_var=self.running_var if update else None,
            momentum=momentum if update else 0.0, eps=self.eps, layout=self.layout,
            activation=self.activation, n_threads=self.n_threads)
        if update:
            self.num_batches_tracked += 1
        self._saved = (x, y if self.activation else None, mean, invstd,
                       None if self.weight is None else self.weight.copy())
        return y

    def __call__(self, x):
        return self.forward(x)

    def backward(self, dy):
        """dx for the last forward that used batch statistics; sets grad_weight and grad_bias
        (None when affine=False). RuntimeError when there is none (no forward yet, or the last
        forward was an eval-mode one with running statistics)."""
        if self._saved is None:
            raise RuntimeError("backward() needs a forward() that used batch statistics first "
                               "(training mode)")
        x, y, mean, invstd, weight = self._saved
        dx, dw, db = _api.batch_norm_backward(dy, x, mean, invstd, weight, layout=self.layout,
                                              y=y, activation=self.activation,
                                              n_threads=self.n_threads)
        self.grad_weight, self.grad_bias = (dw, db) if self.affine else (None, None)
        return dx

    def state_dict(self):
        """Parameters and buffers as NumPy arrays under PyTorch's key names (weight, bias,
        running_mean, running_var, num_batches_tracked), so they move to and from
        ``torch.nn.BatchNorm*d``."""
        d = {}
        if self.affine:
            d["weight"], d["bias"] = self.weight.copy(), self.bias.copy()
        if self.track_running_stats:
            d["running_mean"] = self.running_mean.copy()
            d["running_var"] = self.running_var.copy()
            d["num_batches_tracked"] = np.asarray(self.num_batches_tracked, np.int64)
        return d

    def load_state_dict(self, state_dict, strict=True):
        """Load parameters and buffers saved by ``state_dict()`` here or by
        ``torch.nn.BatchNorm*d`` (NumPy arrays, or anything ``np.asarray`` accepts).

        strict=True (as PyTorch): the keys must be exactly this layer's (which depend on
        ``affine`` and ``track_running_stats``). strict=False: missing keys keep their value and
        unexpected keys are ignored. Every value is checked before any is written (shape
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
        arrays = {}
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
        return _IncompatibleKeys(missing, unexpected)

    def save(self, path):
        """Write state_dict() to an .npz file."""
        np.savez(path, **self.state_dict())

    def load(self, path):
        """Read an .npz written by save() into this layer (an instance method: build the layer
        with the same num_features/affine/track_running_stats first); returns the layer."""
        with np.load(path) as f:
            self.load_state_dict(dict(f))
        return self



def _check_input(layer, x):
    """x as an ndarray of the layer's dtype with num_features channels in its layout."""
    x = v.float_array(x, "x")
    if x.dtype != layer.dtype:
        raise TypeError(f"x must have the layer's dtype {layer.dtype}, got {x.dtype}")
    N, C, S = v.canonical_dims(x.shape, v.channels_last(layer.layout))
    if C != layer.num_features:
        raise ValueError(f"x must have {layer.num_features} channels (num_features) on the "
                         f"channel axis of layout {layer.layout!r}, got shape {x.shape}")
    return x
