"""Layouts: where an array's channel axis is, and the canonical view the C kernels take.

Every module that needs to know (the argument checks, `cbn.reference`, the benchmark, the tests)
asks here. Channels-first ("NCHW", "channels_first") puts the channel on axis 1, channels-last
("NHWC", "channels_last") on the last axis, for any rank >= 2. The kernels see either as
(N, C, S), S the product of the spatial dims: ``x[n][c][s]`` or ``x[n*S + s][c]``.
"""
from __future__ import annotations

import math

# layout name -> whether it is channels-last
LAYOUTS = {"NCHW": False, "channels_first": False, "NHWC": True, "channels_last": True}


def is_channels_last(layout: str) -> bool:
    """True for a channels-last layout name, False for channels-first; ValueError otherwise."""
    try:
        return LAYOUTS[layout]
    except (KeyError, TypeError):
        raise ValueError(
            f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}") from None


def channel_axis(layout: str, ndim: int) -> int:
    """The channel axis of an ndim-dimensional array in `layout` (a non-negative index)."""
    return ndim - 1 if is_channels_last(layout) else 1


def canonical_view(shape: tuple[int, ...], layout: str,
                   name: str = "x") -> tuple[bool, int, int, int]:
    """(channels_last, N, C, S) of an array of `shape` in `layout`: S is the product of the
    spatial dims. ValueError for a bad layout or fewer than 2 dimensions."""
    # every call passes here: the dict lookup first, is_channels_last for its error
    cl = LAYOUTS.get(layout) if layout.__class__ is str else None
    if cl is None:
        cl = is_channels_last(layout)
    if len(shape) < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (N, C, ...), got shape {shape}")
    if cl:
        return cl, shape[0], shape[-1], math.prod(shape[1:-1])
    return cl, shape[0], shape[1], math.prod(shape[2:])
