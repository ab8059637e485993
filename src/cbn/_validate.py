"""Argument checks shared by the public functions, and the preamble they share: an input and
its canonical view, outputs, threads, and the inputs as the kernels read them.

Each check raises TypeError for a wrong dtype and ValueError for a wrong shape or value,
naming what was expected and what was given, before any output is written. (Checks that
belong to one function only, such as the layer's state_dict keys, stay with that function.)
"""
from __future__ import annotations

import math
import numbers
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _core
from ._alloc import empty_apart
from ._threads import resolve_threads
from ._types import FloatArray, Threads

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# statistics (means, sums, M2) are accumulated and exchanged in float64
F64 = np.dtype(np.float64)
F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)


def is_16bit(dtype: np.dtype[Any]) -> bool:
    """float16 or ml_dtypes.bfloat16 (told by name and size: cbn never imports ml_dtypes)."""
    # the size first: float32 and float64 are answered without building a dtype or a name
    # (this runs several times per call: the comparison with np.float16 alone took ~1 us)
    return dtype.itemsize == 2 and (dtype == F16 or dtype.name == "bfloat16")


def param_dtype(x_dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype of the per-channel arrays for tensors of x_dtype: x's own, float32 for 16-bit
    storage (mixed precision: 16-bit tensors, float32 parameters and statistics)."""
    return F32 if is_16bit(x_dtype) else x_dtype


def param_why(x_dtype: np.dtype[Any]) -> str:
    """Why a per-channel buffer must have param_dtype(x_dtype), for error messages."""
    return f"float32 for x of dtype {x_dtype}" if is_16bit(x_dtype) else "the dtype of x"


def refuse_masked(a: object, name: str) -> None:
    """np.asarray would drop a masked array's mask, and cbn would compute with masked values."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} must not be a masked array (cbn would ignore its mask); pass "
                        f"{name}.filled(value) or the unmasked part")


def float_array(a: ArrayLike, name: str) -> FloatArray:
    """a as an ndarray of float32 or float64, or of 16-bit storage (float16, bfloat16), any
    strides."""
    if a.__class__ is not np.ndarray:
        refuse_masked(a, name)
        a = np.asarray(a)
    if a.dtype not in FLOAT_DTYPES and not is_16bit(a.dtype):
        raise TypeError(f"{name} must have dtype float32, float64, float16 or bfloat16, "
                        f"got {a.dtype}")
    return a


def gradient_and_input(dy: ArrayLike, x: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """(dy, x) as float arrays of one dtype and one shape."""
    x = float_array(x, "x")
    dy = float_array(dy, "dy")
    same_dtype(dy, "dy", x, "x")
    same_shape(dy, "dy", x, "x")
    return dy, x


# array_flags bits
_CONTIGUOUS, _WRITEABLE, _ALIGNED = 1, 2, 4


def contiguous_input(a: FloatArray, out: FloatArray | None = None) -> FloatArray:
    """a as a C-contiguous, aligned array (the C kernels dereference typed pointers), copied
    when it is strided, misaligned, or overlaps `out` without being it."""
    if _core.array_flags(a) & (_CONTIGUOUS | _ALIGNED) != _CONTIGUOUS | _ALIGNED:
        return np.array(a, order="C")
    if out is not None and out is not a:
        # both are C-contiguous here, so each occupies exactly [address, address + nbytes)
        lo, o_lo = _core.address(a), _core.address(out)
        if lo < o_lo + out.nbytes and o_lo < lo + a.nbytes:
            return a.copy()
    return a


def refuse_overlaps(names: tuple[str, ...], arrays: tuple[FloatArray | None, ...],
                    n_written: int, n_against_out: int) -> None:
    """ValueError, naming both arguments, when a buffer cbn writes shares memory with an array
    it reads or with another buffer it writes (running_mean a view of x, one array passed as
    both running statistics, out holding weight): the kernels would read values they have
    already overwritten, or write one result over another.

    arrays (with their argument names) are as they go to the kernel, C-contiguous or None: first
    the n_written buffers cbn writes, starting with the N*C*S output (None when cbn allocated
    it), then the arrays it only reads. The output is compared with arrays[1:n_against_out]
    only: the N*C*S inputs listed after those are either the output itself (in place, which
    the kernels support) or were copied apart by contiguous_input.
    """
    pair = _core.overlapping_pair(arrays, n_written, n_against_out)
    if pair is None:
        return
    w, r = names[pair[0]], names[pair[1]]
    if pair[1] < n_written:
        raise ValueError(f"{w} and {r} must not share memory (cbn writes both)")
    raise ValueError(f"{w} must not share memory with {r} (cbn writes {w} while it reads {r})")


# None stays None, an array stays an array: the overloads keep a required argument's type
@overload
def channel_param(a: None, name: str, C: int, dtype: np.dtype[Any]) -> None: ...
@overload
def channel_param(a: ArrayLike, name: str, C: int, dtype: np.dtype[Any]) -> FloatArray: ...
@overload
def channel_param(a: ArrayLike | None, name: str, C: int,
                  dtype: np.dtype[Any]) -> FloatArray | None: ...
def channel_param(a: ArrayLike | None, name: str, C: int,
                  dtype: np.dtype[Any]) -> FloatArray | None:
    """A read-only per-channel array: cast to dtype, C-contiguous, shape (C,). None stays None."""
    if a is None:
        return None
    if a.__class__ is not np.ndarray:
        refuse_masked(a, name)
        a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real floating-point array, got dtype {a.dtype}")
    if a.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) for {C} channels, got {a.shape}")
    if a.dtype != dtype or _core.array_flags(a) & (_CONTIGUOUS | _ALIGNED) != _CONTIGUOUS | _ALIGNED:
        a = np.array(a, dtype=dtype, order="C")
    return a


def writable_buffer(a: object, name: str, shape: tuple[int, ...],
                    dtype: np.dtype[Any], why: str = "the dtype of x") -> FloatArray:
    """A buffer cbn writes into: ndarray of exactly dtype and shape, C-contiguous, writeable.
    Subclasses that are plain memory (np.memmap) are written into and returned as they are."""
    if a.__class__ is not np.ndarray:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
        refuse_masked(a, name)
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} ({why}), got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    flags = _core.array_flags(a)
    if not flags & _CONTIGUOUS:
        raise ValueError(f"{name} must be C-contiguous")
    if not flags & _WRITEABLE:
        raise ValueError(f"{name} must be writeable, got a read-only array")
    if not flags & _ALIGNED:
        raise ValueError(f"{name} must be aligned for its dtype, got a misaligned view")
    return a


def running_stats(running_mean: object, running_var: object, C: int, dtype: np.dtype[Any],
                  why: str = "the dtype of x") -> tuple[FloatArray | None, FloatArray | None]:
    """Both running buffers checked as writable (C,) arrays, or both None."""
    if running_mean is None and running_var is None:
        return None, None
    if running_mean is None or running_var is None:
        given = "running_mean" if running_var is None else "running_var"
        raise ValueError(
            f"running_mean and running_var must be given together, got only {given}")
    return (writable_buffer(running_mean, "running_mean", (C,), dtype, why),
            writable_buffer(running_var, "running_var", (C,), dtype, why))


def relu(activation: object) -> bool:
    """True for a fused ReLU, False for none."""
    if activation is None:
        return False
    if activation == "relu":
        return True
    raise ValueError(f"activation must be None or 'relu', got {activation!r}")


def real_number(value: object, name: str) -> float:
    """value as a float: Python and NumPy real numbers only (no str, no bool, no array)."""
    if value.__class__ is float:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def eps_value(eps: object) -> float:
    eps = real_number(eps, "eps")
    if not 0.0 <= eps < math.inf:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return eps


def momentum_value(momentum: object) -> float:
    momentum = real_number(momentum, "momentum")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return momentum


def flag(value: object, name: str) -> bool:
    """A yes/no argument: bool or numpy.bool_ only (a str such as "no" would count as True)."""
    if value.__class__ is bool:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def enough_values(count: int, shape: tuple[int, ...], n_ranks: int | None = None) -> None:
    """Training needs 2+ values per channel; an empty batch (0 values) is allowed (PyTorch).
    count: values per channel of x (of `shape`) or, with n_ranks, over that many processes."""
    if count == 1:
        got = (f"input of shape {shape} ({count} value(s) per channel)" if n_ranks is None else
               f"{count} value(s) per channel over the {n_ranks} rank(s) of comm (this rank's "
               f"input has shape {shape})")
        raise ValueError(f"Expected more than 1 value per channel when training, got {got}")


def same_shape(a: FloatArray, a_name: str, b: FloatArray, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} must have the shape of {b_name} {b.shape}, got {a.shape}")


def same_dtype(a: FloatArray, a_name: str, b: FloatArray, b_name: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{a_name} must have the dtype of {b_name} ({b.dtype}), got {a.dtype}")


def residual_input(residual: ArrayLike | None, x: FloatArray) -> FloatArray | None:
    """The residual added to the output (None: none), checked against x: x's dtype and shape."""
    if residual is None:
        return None
    residual = float_array(residual, "residual")
    same_dtype(residual, "residual", x, "x")
    same_shape(residual, "residual", x, "x")
    return residual


def relu_output(y: ArrayLike | None, activation: object, x: FloatArray) -> FloatArray | None:
    """The forward output that a fused ReLU's gradient needs, checked against x; None without
    an activation (y is then not needed, and not read)."""
    if not relu(activation):
        return None
    if y is None:
        raise ValueError("activation='relu' needs y, the output of the forward pass")
    y = float_array(y, "y")
    same_dtype(y, "y", x, "x")
    same_shape(y, "y", x, "x")
    return y


def forward_arrays(x: FloatArray, residual: FloatArray | None, out: object, n_threads: Threads
                   ) -> tuple[FloatArray, FloatArray, FloatArray | None, int]:
    """(y, x, residual, n_threads) for a call that writes y from x (and a residual or None):
    y is `out` checked or a new array placed apart from the inputs (_alloc.empty_apart),
    n_threads resolved, x and the residual contiguous, copied where they overlap y without
    being it."""
    y = (empty_apart(x.shape, x.dtype, x, residual) if out is None
         else writable_buffer(out, "out", x.shape, x.dtype))
    n_threads = resolve_threads(n_threads)
    x = contiguous_input(x, y)
    if residual is not None:
        residual = contiguous_input(residual, y)
    return y, x, residual, n_threads


def gradient_arrays(dy: FloatArray, x: FloatArray, y: FloatArray | None, out: object,
                    n_threads: Threads, residual: object = False
                    ) -> tuple[FloatArray, FloatArray | None, FloatArray, FloatArray,
                               FloatArray | None, int]:
    """(dx, d_residual, x, dy, y, n_threads) for a call that writes dx from dy, x (and the
    forward's output y, or None): dx is `out` checked or a new array, d_residual a new array
    when the forward added a residual (the bool `residual`; else None), n_threads resolved, x,
    dy and y contiguous, copied where they overlap dx without being it."""
    residual = flag(residual, "residual")
    dx = (empty_apart(x.shape, x.dtype, x, dy, y) if out is None
          else writable_buffer(out, "out", x.shape, x.dtype))
    d_res = empty_apart(x.shape, x.dtype, x, dy, y, dx) if residual else None
    n_threads = resolve_threads(n_threads)
    x, dy, y = gradient_inputs(x, dy, y, dx)
    return dx, d_res, x, dy, y, n_threads


def gradient_inputs(x: FloatArray, dy: FloatArray, y: FloatArray | None,
                    dx: FloatArray | None = None
                    ) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """x, dy and y (or None) as contiguous arrays, copied where they overlap dx without being it."""
    x = contiguous_input(x, dx)
    dy = contiguous_input(dy, dx)
    if y is not None:
        y = contiguous_input(y, dx)
    return x, dy, y


def check_status(rc: int) -> None:
    """Turn a C status code into an exception (validation above makes these rare)."""
    if rc == 0:
        return
    if rc == -3:
        raise MemoryError(f"cbn kernel: {_core.error_string(rc)}")
    raise RuntimeError(f"cbn kernel failed: {_core.error_string(rc)} (code {rc})")
