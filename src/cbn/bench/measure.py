"""One measurement each: a case of the main table, the per-call cost, the copy bandwidth, and
the contention check of --busy. Every function returns a JSON-ready record."""
import time

import numpy as np

import cbn

from . import _copy
from .arrays import make_inputs
from .cases import CONTENTION_SETTLE_S, CONTENTION_SHAPE, TRAFFIC, layout_shape
from .kernels import KERNEL_CALLS
from .peers import (IMPLS, PEERS, copy_candidate, main_output, make_candidates, max_rel_error,
                    strided_sample)
from .timing import time_interleaved
from .worker import CHECK_ELEMS, Remote


def build_candidates(op, inputs, n_threads, impls, workers):
    """Candidates for the timing engine, with each peer's error against cbn's output.

    Impls in `workers` ({impl: worker.Worker}) run in their worker process; the others here.
    Returns ({impl: candidate}, {impl: max relative error}).
    """
    local = [i for i in impls if i not in workers]
    if "cbn" not in local:
        local = ["cbn"] + local
    cands = make_candidates(op, inputs, n_threads, local)
    layout = inputs["layout"]
    ref = main_output(cands["cbn"](), layout)
    errors = {name: max_rel_error(main_output(fn(), layout), ref)
              for name, fn in cands.items() if name not in ("cbn", "copy", "cbn_alloc")}
    ref_sample = strided_sample(ref, CHECK_ELEMS)
    for impl in impls:
        if impl in workers:
            check = workers[impl].setup(op, inputs["key"], n_threads)
            if check is not None:
                cands[impl] = Remote(workers[impl])
                errors[impl] = max_rel_error(np.asarray(check), ref_sample)
    if "cbn" not in impls:
        del cands["cbn"]
    return cands, errors


def _ratio(num, den):
    return None if num is None or den is None else num / den


def run_case(op, inputs, n_threads, impls, rounds, budget, min_slow_samples, stat="median",
             flush=None, workers=None):
    """Measure one op on one input set; returns the case's record."""
    x = inputs["x"]
    cands, errors = build_candidates(op, inputs, n_threads, impls, workers or {})
    res = time_interleaved(cands, rounds, budget=budget, min_slow_samples=min_slow_samples,
                           flush=flush)
    t = {name: (res[name][stat + "_s"] if name in res else None) for name in IMPLS}
    moved = TRAFFIC[op] * x.nbytes
    record = {
        "op": op, "layout": inputs["layout"], "shape": list(x.shape), "dtype": x.dtype.name,
        "stat": stat, "nbytes": x.nbytes, "bytes_moved": moved, "results": res,
        "max_rel_error": errors,
    }
    for peer in PEERS:
        record[f"speedup_vs_{peer}"] = _ratio(t[peer], t["cbn_alloc"])
    record["gbps"] = moved / t["cbn"] / 1e9
    record["copy_ratio"] = _ratio(t["cbn"], t["copy"])
    return record


def measure_overhead(n_threads, impls, rounds, dtype, workers=None):
    """Per-call cost on a tiny input (2, 4) and on (256, 1024), NCHW: the full cbn call (out=),
    the C kernel called directly (`kernels.KERNEL_CALLS`: no validation), their difference (the
    Python-side overhead), and the peers."""
    rows = []
    for shape in ((2, 4), (256, 1024)):
        inputs = make_inputs(shape, "NCHW", dtype, seed=1)
        for op in KERNEL_CALLS:
            peers = [i for i in impls if i in ("cbn", "numpy", "torch")]
            cands, _ = build_candidates(op, inputs, n_threads, peers, workers or {})
            cands["core"] = KERNEL_CALLS[op](inputs, np.empty_like(inputs["x"]), n_threads)
            res = time_interleaved(cands, rounds, budget=0.3, min_sample=2e-3)
            m = {k: v["median_s"] for k, v in res.items()}
            rows.append({
                "op": op, "shape": list(shape), "dtype": inputs["x"].dtype.name, "results": res,
                "python_overhead_s": (m["cbn"] - m["core"]) if "cbn" in m else None,
            })
    return rows


def measure_bandwidth(n_threads, dtype):
    """Copy bandwidth on a 25.7 MB (float32) array: the yardstick and NumPy's np.copyto."""
    x = np.random.default_rng(2).standard_normal(6422528, dtype=dtype)
    dst = np.empty_like(x)
    fns = {"yardstick": copy_candidate(x, n_threads, dst),
           "np.copyto": lambda: np.copyto(dst, x)}
    res = time_interleaved(fns, 7)
    return {"nbytes": x.nbytes,
            "yardstick_gbps": 2 * x.nbytes / res["yardstick"]["median_s"] / 1e9,
            "copyto_gbps": 2 * x.nbytes / res["np.copyto"]["median_s"] / 1e9,
            "results": res}


def measure_contention(n_threads, busy, dtype, layouts, rounds=30):
    """--busy: training (out=) on CONTENTION_SHAPE, mean time per call at n_threads beside the
    busy process, against one thread with the busy process stopped (an idle machine).

    The mean, not the median: a thread that lost its core stalls the whole call, and those
    stalls are what contention costs. Returns one record per layout.
    """
    was_on = cbn.set_contention_fallback(True)      # cbn as it runs by default
    try:
        return _contention_rows(n_threads, busy, dtype, layouts, rounds)
    finally:
        cbn.set_contention_fallback(was_on)


def _contention_rows(n_threads, busy, dtype, layouts, rounds):
    rows = []
    for layout in layouts:
        inputs = make_inputs(layout_shape(CONTENTION_SHAPE, layout), layout, dtype,
                             need_dy=False)
        one = make_candidates("train", inputs, 1, ["cbn"])["cbn"]
        many = make_candidates("train", inputs, n_threads, ["cbn"])["cbn"]
        busy.pause()
        try:
            # after contention cbn runs on one thread for 0.25 s (csrc/contention.c): an idle
            # machine is one that has been idle longer than that
            time.sleep(CONTENTION_SETTLE_S)
            idle = time_interleaved({"idle_1": one, "idle_n": many}, rounds, budget=2.0)
        finally:
            busy.resume()
        # contention that lasts: cbn notices it within tens of milliseconds of calls
        settle = time.perf_counter() + CONTENTION_SETTLE_S
        while time.perf_counter() < settle:
            many()
        loaded = time_interleaved({"busy_n": many}, rounds, budget=2.0)
        res = {**idle, **loaded}
        rows.append({
            "op": "train", "layout": layout, "shape": list(inputs["x"].shape),
            "dtype": inputs["x"].dtype.name, "threads": n_threads, "results": res,
            "busy_n_over_idle_1": res["busy_n"]["mean_s"] / res["idle_1"]["mean_s"],
        })
    return rows
