"""Thread-count resolution, shared by every kernel call (scikit-learn's conventions).

The clamp to what the machine offers lives in the C core (src/cbn/csrc/thread_limit.c, applied
by every kernel's plan): at most the CPUs this process may run on (its affinity mask, OpenMP's
omp_get_num_procs) and OMP_THREAD_LIMIT, and one thread in a process forked after cbn started
threads. Here a request only has to become a C int >= 1; get_num_threads reports the clamped
count.
"""
from __future__ import annotations

import operator

from . import _core
from ._types import Threads

_default_threads: int | None = None  # set by set_num_threads; None -> the OpenMP default
# n_threads is a maximum (kernels use fewer on small inputs, and never more than the CPUs):
# larger requests mean "all", and must fit a C int.
_MOST_THREADS = 1 << 16


def resolve_threads(n_threads: Threads) -> int:
    """Turn a user's n_threads into a count >= 1.

    None -> the value of set_num_threads, else OpenMP's default for the calling thread (honours
    OMP_NUM_THREADS and threadpoolctl); a negative count counts back from that maximum (-1 = all,
    -2 = all but one, never below 1); 0 is an error, and so is a bool.
    """
    if n_threads is None:
        if _default_threads is not None:
            return _default_threads
        return _core.max_threads()
    if n_threads.__class__ is not int:
        if isinstance(n_threads, bool):
            raise TypeError("n_threads must be an int or None, got bool")
        try:
            n_threads = operator.index(n_threads)
        except TypeError:
            raise TypeError(
                f"n_threads must be an int or None, got {type(n_threads).__name__}") from None
    if n_threads > 0:
        return min(n_threads, _MOST_THREADS)
    if n_threads == 0:
        raise ValueError("n_threads must be a nonzero int or None, got 0")
    return max(1, _core.max_threads() + 1 + n_threads)


def set_num_threads(n: Threads) -> None:
    """Set the thread count that cbn calls use when they get ``n_threads=None``.

    Parameters
    ----------
    n : int or None
        A positive count, a negative count back from the maximum (-1 = all), or None to go back
        to the OpenMP default. Calls use at most the CPUs available to the process.
    """
    global _default_threads
    _default_threads = None if n is None else resolve_threads(n)


def get_num_threads() -> int:
    """Most threads a call with ``n_threads=None`` would use now: the requested count clamped
    to the CPUs available to the process and OMP_THREAD_LIMIT, 1 in a forked child."""
    return _core.thread_limit(resolve_threads(None))


def openmp_enabled() -> bool:
    """True when cbn was built with OpenMP (otherwise every kernel runs on one thread)."""
    return _core.openmp_enabled()


def set_contention_fallback(on: bool) -> bool:
    """Turn the busy-machine fallback on or off; return whether it was on.

    While helper threads lose their CPU to other processes (more than a fifth of the last
    ~100 ms), calls run on one thread for 250 ms (up to 2 s while it goes on), then try a team
    again; results are the same bits either way. It is on unless the environment variable CBN_CONTENTION_FALLBACK is "0".
    Turn it off to measure thread scaling, or peak speed beside other processes' short bursts.
    """
    if not isinstance(on, bool):
        raise TypeError(f"set_contention_fallback: on must be a bool, got {type(on).__name__}")
    return _core.set_contention_fallback(on)
