"""The 16-bit storage section: float16 and bfloat16 tensors against float32, and against PyTorch.

A 16-bit tensor moves half the bytes of a float32 one, so a kernel that is bound by memory
should take about half the time; the section reports cbn's 16-bit time / its float32 time per
op x layout x shape (the bytes ratio is 0.5), and PyTorch's time on the same 16-bit tensors
(float32 parameters, as mixed-precision code calls it) / cbn's. Every candidate allocates its
output, as a user's call does; the parameters and statistics are float32 in every case.
"""
import numpy as np

from .._layout import channel_axis
from .arrays import make_inputs
from .cases import layout_shape
from .peers import import_torch, main_output, make_candidates, max_rel_error
from .timing import time_interleaved

# A DRAM-resident tensor (51 MB in float32) and a cache-resident one.
STORAGE_SHAPES = [(64, 64, 56, 56), (32, 256, 14, 14)]
STORAGE_OPS = ("train", "backward", "infer")
TENSORS = ("x", "dy")  # what a 16-bit call stores in 16 bits; parameters stay float32


def storage_dtypes():
    """{name: dtype} of the 16-bit storage types this process can make: float16 always,
    bfloat16 when ml_dtypes is installed."""
    dtypes = {"float16": np.dtype(np.float16)}
    try:
        import ml_dtypes
    except ImportError:
        return dtypes
    dtypes["bfloat16"] = np.dtype(ml_dtypes.bfloat16)
    return dtypes


def as_storage(inputs, dtype):
    """`inputs` (float32, from make_inputs) with x and dy rounded to `dtype`, and save_mean /
    save_invstd recomputed from the rounded x so that backward sees consistent statistics."""
    out = dict(inputs)
    for k in TENSORS:
        if k in inputs:
            out[k] = inputs[k].astype(dtype)
    wide = out["x"].astype(np.float64)
    axes = tuple(i for i in range(wide.ndim)
                 if i != channel_axis(inputs["layout"], wide.ndim))
    mean = wide.mean(axis=axes)
    out["save_mean"] = mean.astype(np.float32)
    out["save_invstd"] = (1.0 / np.sqrt(wide.var(axis=axes) + 1e-5)).astype(np.float32)
    return out


def measure_storage(n_threads, layouts, rounds, budget, shapes=None, ops=STORAGE_OPS):
    """One record per shape x layout x op: median seconds of cbn (allocating) in float32 and in
    each 16-bit dtype, and of PyTorch on the same 16-bit tensors when it is installed."""
    dtypes = storage_dtypes()
    torch_ok = import_torch() is not None
    rows = []
    for shape in shapes or STORAGE_SHAPES:
        for layout in layouts:
            base = make_inputs(layout_shape(shape, layout), layout, np.float32)
            inputs = {"float32": base}
            inputs.update({name: as_storage(base, dt) for name, dt in dtypes.items()})
            for op in ops:
                cands = {}
                for name, inp in inputs.items():
                    impls = ["cbn_alloc"] + (["torch"] if torch_ok and name != "float32" else [])
                    for impl, fn in make_candidates(op, inp, n_threads, impls).items():
                        cands[f"{impl}_{name}"] = fn
                errors = _torch_errors(cands, layout, dtypes)
                res = time_interleaved(cands, rounds, budget=budget)
                t = {k: v["median_s"] for k, v in res.items()}
                row = {"op": op, "layout": layout, "shape": list(base["x"].shape),
                       "nbytes_float32": base["x"].nbytes, "results": res,
                       "torch_max_rel_error": errors}
                for name in dtypes:
                    row[f"{name}_over_float32"] = t[f"cbn_alloc_{name}"] / t["cbn_alloc_float32"]
                    tt = t.get(f"torch_{name}")
                    row[f"torch_over_cbn_{name}"] = (None if tt is None
                                                     else tt / t[f"cbn_alloc_{name}"])
                rows.append(row)
            del inputs, base
    return rows


def _torch_errors(cands, layout, dtypes):
    """{dtype name: PyTorch's output against cbn's on the same 16-bit inputs} (max relative
    error, as in the main table), for the dtypes PyTorch was timed on."""
    errors = {}
    for name in dtypes:
        if f"torch_{name}" in cands:
            mine = main_output(cands[f"cbn_alloc_{name}"](), layout).astype(np.float32)
            theirs = main_output(cands[f"torch_{name}"](), layout).astype(np.float32)
            errors[name] = max_rel_error(theirs, mine)
    return errors
