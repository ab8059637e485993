"""--align-sweep: does cbn's speed depend on where x, dy and out sit?

NumPy hands out large arrays at any 16-byte offset (heap reuse, slices, np.frombuffer, a memmap
with a header), and the distance between two arrays modulo 4 KiB decides whether loads of one
falsely wait for stores to the other (4K aliasing). For every op x layout, cbn (with `out=`) is
timed with x, dy and out at every 16-byte offset modulo 64, in three different parts of a page,
plus a few page-relative placements: out (or dy) at x's page offset, or 64 bytes after it. All
placements of one row are timed interleaved; a row reports the best and worst time, worst/best
(target <= `cases.ALIGN_TARGET`) and where the worst placement put the arrays.
"""
import numpy as np

from .arrays import PlacedBuffer, make_inputs
from .cases import ALIGN_TARGET, DY_OPS, OPS, layout_shape
from .peers import cbn_call
from .timing import time_interleaved

LINE_OFFSETS = (0, 16, 32, 48)
# Where in a page each array sits when the offsets mod 64 vary: different quarters of the page,
# so that no two of them alias unless a placement asks for it.
DY_BASE, OUT_BASE = 1024, 2048


def placements(op):
    """Page offsets (x, dy, out) to time for `op`; dy is None when the op does not read dy."""
    uses_dy = op in DY_OPS
    dys = [DY_BASE + d for d in LINE_OFFSETS] if uses_dy else [None]
    grid = [(x, dy, OUT_BASE + o) for x in LINE_OFFSETS for dy in dys for o in LINE_OFFSETS]
    page = []
    for a in (0, 16):
        same = DY_BASE + a if uses_dy else None
        page += [(a, same, a),                # out exactly a multiple of 4 KiB from x
                 (a, same, a + 64)]           # out one cache line after x, modulo 4 KiB
        if uses_dy:
            page += [(a, a, OUT_BASE + a),    # dy a multiple of 4 KiB from x
                     (a, a, a)]               # all three
    seen, out = set(), []
    for p in grid + page:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def placement_str(p):
    x, dy, out = p
    return f"x@{x} " + ("" if dy is None else f"dy@{dy} ") + f"out@{out}"


def sweep_row(op, shape, layout, dtype, n_threads, rounds, stat="median"):
    """Time cbn's `op` (out=) at every placement; returns the row's record."""
    rng = np.random.default_rng(3)
    base = make_inputs(shape, layout, dtype, need_dy=False)
    xs = PlacedBuffer(shape, dtype, rng)
    dys = PlacedBuffer(shape, dtype, rng) if op in DY_OPS else None
    outs = PlacedBuffer(shape, dtype)
    cands = {}
    for p in placements(op):
        inputs = dict(base, x=xs.at(p[0]))
        if dys is not None:
            inputs["dy"] = dys.at(p[1])
        name = placement_str(p)
        cands[name] = cbn_call(op, inputs, n_threads, outs.at(p[2]))
    res = time_interleaved(cands, rounds, budget=max(0.2, 0.05 * rounds))
    t = {name: r[stat + "_s"] for name, r in res.items()}
    best = min(t, key=t.get)
    worst = max(t, key=t.get)
    return {
        "op": op, "layout": layout, "shape": list(shape), "dtype": np.dtype(dtype).name,
        "stat": stat, "placements": len(t), "best_s": t[best], "worst_s": t[worst],
        "worst_over_best": t[worst] / t[best], "best_placement": best,
        "worst_placement": worst, "target": ALIGN_TARGET,
        "times_s": t,
    }


def run_sweep(shapes, layouts, ops, dtype, n_threads, rounds, stat="median", progress=None):
    """One `sweep_row` per shape x layout x op (shapes in NCHW order)."""
    rows = []
    todo = [(op, shape, layout) for shape in shapes for layout in layouts for op in OPS
            if op in ops]
    for i, (op, shape, layout) in enumerate(todo, 1):
        ashape = layout_shape(shape, layout)
        if progress is not None:
            progress(f"[{i}/{len(todo)}] align sweep: {op} {layout} "
                     f"({','.join(map(str, ashape))}) ...")
        rows.append(sweep_row(op, ashape, layout, dtype, n_threads, rounds, stat))
    return rows
