# Types of the compiled bridge (_core.pyx), for mypy: the Python modules that call it are
# checked against these. tests/test_typing.py runs mypy's stubtest, which fails when this file
# and the built module disagree (a function or argument added, renamed or removed).
from typing import Any, Optional

from numpy.typing import NDArray

_Array = NDArray[Any]
_OptArray = Optional[NDArray[Any]]

def address(a: _Array) -> int: ...
def array_flags(a: _Array) -> int: ...
def overlapping_pair(
    arrays: tuple[_OptArray, ...], n_written: int, n_against_first: int
) -> Optional[tuple[int, int]]: ...
def error_string(code: int) -> str: ...
def openmp_enabled() -> bool: ...
def max_threads() -> int: ...
def release_memory() -> None: ...
def thread_limit(requested: int) -> int: ...
def plan_path(
    N: int, C: int, S: int, channels_last: bool, f32: bool, op: str, n_threads: int
) -> dict[str, Any]: ...
def train_forward(
    x: _Array, y: _Array, N: int, C: int, S: int, channels_last: bool, weight: _OptArray,
    bias: _OptArray, running_mean: _OptArray, running_var: _OptArray, momentum: float,
    eps: float, unbiased_running_var: bool, save_mean: _Array, save_invstd: _Array, relu: bool,
    n_threads: int, residual: _OptArray = None,
) -> int: ...
def backward(
    dy: _Array, x: _Array, save_mean: _Array, save_invstd: _Array, weight: _OptArray,
    y: _OptArray, dx: _Array, dweight: _Array, dbias: _Array, N: int, C: int, S: int,
    channels_last: bool, n_threads: int, d_residual: _OptArray = None,
) -> int: ...
def infer_backward(
    dy: _Array, x: _Array, running_mean: _Array, running_var: _Array, weight: _OptArray,
    eps: float, y: _OptArray, dx: _Array, d_residual: _OptArray, dweight: _Array,
    dbias: _Array, N: int, C: int, S: int, channels_last: bool, n_threads: int,
) -> int: ...
def infer(
    x: _Array, y: _Array, N: int, C: int, S: int, channels_last: bool, running_mean: _Array,
    running_var: _Array, weight: _OptArray, bias: _OptArray, eps: float, relu: bool,
    n_threads: int, residual: _OptArray = None,
) -> int: ...
def fold_scale_shift(
    C: int, running_mean: _Array, running_var: _Array, weight: _OptArray, bias: _OptArray,
    eps: float, scale: _Array, shift: _Array,
) -> int: ...
def batch_stats(
    x: _Array, N: int, C: int, S: int, channels_last: bool, mean: _Array, m2: _Array,
    n_threads: int,
) -> int: ...
def combine_stats(
    P: int, C: int, count: _Array, mean: _Array, m2: _Array, mean_out: _Array, m2_out: _Array
) -> tuple[int, float]: ...
def normalize(
    x: _Array, y: _Array, N: int, C: int, S: int, channels_last: bool, mean: _Array,
    invstd: _Array, weight: _OptArray, bias: _OptArray, relu: bool, n_threads: int,
) -> int: ...
def backward_reduce(
    dy: _Array, x: _Array, mean: _Array, y: _OptArray, N: int, C: int, S: int,
    channels_last: bool, sum_dy: _Array, sum_dy_xmu: _Array, sum_xmu: _Array, n_threads: int,
) -> int: ...
def backward_dx(
    dy: _Array, x: _Array, mean: _Array, invstd: _Array, weight: _OptArray, y: _OptArray,
    sum_dy: _Array, sum_dy_xmu: _Array, sum_xmu: _Array, count: float, dx: _Array, N: int,
    C: int, S: int, channels_last: bool, n_threads: int,
) -> int: ...
