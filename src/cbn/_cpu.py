"""The CPU level cbn's kernels run at, chosen when cbn is imported.

The default build holds the kernels compiled for three x86-64 levels (x86-64-v2, -v3, -v4) and
runs the best one this CPU supports; CBN_CPU_LEVEL=v2|v3|v4 in the environment forces one.
Single-level builds (CBN_NATIVE=1, CBN_PORTABLE=1, non-x86 machines) run the one they have.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from . import _core

LEVELS = ("v2", "v3", "v4")


def cpu_level() -> str:
    """The instruction-set level cbn's kernels run at.

    Returns
    -------
    str
        "v2", "v3" or "v4" (x86-64-v2: SSE4.2; -v3: AVX2 + FMA; -v4: AVX-512) in the default,
        dispatched build; "native" for a ``CBN_NATIVE=1`` build (-march=native), "generic" for
        a ``CBN_PORTABLE=1`` build or a build on another architecture.
    """
    return _core.cpu_level()


def _supported() -> list[str]:
    return [lv for lv in LEVELS if _core.cpu_supports_level(lv)]


def _select_at_import(environ: Mapping[str, str] = os.environ) -> None:
    """Choose the level from CBN_CPU_LEVEL (unset or empty: the best this CPU has); ImportError
    naming the level and what the CPU supports when that is impossible."""
    want = environ.get("CBN_CPU_LEVEL", "").strip()
    if _core.select_cpu_level(want) == 0:
        return
    have = ", ".join(_supported()) or "none of " + ", ".join(LEVELS)
    if not _core.cpu_dispatched():
        raise ImportError(
            f"CBN_CPU_LEVEL={want!r}: this cbn was built for one level, {cpu_level()!r} "
            "(CBN_NATIVE=1 or CBN_PORTABLE=1, or not x86-64), so no other level can be chosen; "
            "unset CBN_CPU_LEVEL, or reinstall with the default build")
    if not want:
        raise ImportError(
            "this CPU lacks x86-64-v2 (SSE4.2, POPCNT), the lowest level cbn's default build "
            "runs; reinstall with CBN_PORTABLE=1")
    if want not in LEVELS:
        raise ImportError(f"CBN_CPU_LEVEL={want!r} is not a level: expected one of "
                          f"{', '.join(LEVELS)} (this CPU supports {have})")
    raise ImportError(f"CBN_CPU_LEVEL={want!r}: this CPU (or its OS) does not support level "
                      f"{want}; it supports {have}")


_select_at_import()
