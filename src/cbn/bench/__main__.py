"""``python -m cbn.bench``: the command line (``--help`` for the options)."""
import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import time

import numpy as np

import cbn
from . import optional_peers, report
from .arrays import make_inputs, settle_allocator
from .cases import (COPY_TARGETS, DEFAULT_SHAPES, DRAM_SHAPE, DY_OPS, LAYOUTS, OPS,
                    SWEEP_SHAPES, layout_shape, parse_shapes)
from .measure import measure_bandwidth, measure_contention, measure_overhead, run_case
from .monitor import BusyProcess, CpuMonitor, idle_check
from .plot import matplotlib_available, plot
from .storage import STORAGE_OPS, measure_storage
from .sweep import run_sweep
from .timing import CacheFlusher, last_level_cache_bytes
from .worker import Worker, WorkerError


def build_parser():
    ap = argparse.ArgumentParser(
        prog="python -m cbn.bench",
        description="Time cbn's batch norm against naive NumPy, PyTorch, JAX and ONNX Runtime "
                    "(when installed) and a copy of the same array (interleaved round-robin, "
                    "medians), on arrays allocated as NumPy code allocates them.")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for cbn, the copy, PyTorch and ONNX Runtime "
                         "(default: cbn.get_num_threads())")
    ap.add_argument("--layout", choices=("NCHW", "NHWC", "both"), default="both")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--shapes", type=parse_shapes, default=None,
                    help="comma-separated shapes in NCHW order, e.g. 32x64x56x56,256x1024 "
                         "(permuted for NHWC); default: 8 shapes including a DRAM-resident "
                         "64x64x56x56 (--align-sweep: 32x64x56x56)")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of "
                    + ",".join(OPS))
    ap.add_argument("--repeat", type=int, default=None,
                    help="interleaved rounds per case (default 15, 3 with --quick; "
                         "--align-sweep: 5)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds a candidate may take per case before it gets fewer rounds "
                         "(default 0.4, 0.1 with --quick)")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="statistic of the samples that the table and ratios use "
                         "(default median; both are in --json)")
    ap.add_argument("--cold", action="store_true",
                    help="evict the caches before every sample (one call each) instead of "
                         "warm samples: every size then runs from DRAM")
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds, naive NumPy timed once per case")
    ap.add_argument("--align-sweep", action="store_true",
                    help="instead of the main table: time cbn (out=) on every op x layout with "
                         "x, dy and out at every 16-byte offset mod 64 and page-relative "
                         "placements; report best, worst and worst/best per row")
    ap.add_argument("--busy", action="store_true",
                    help="run one spinning process beside the whole run (contention), and add "
                         "a check: training's N-thread mean time busy against 1 thread idle")
    ap.add_argument("--isolated", action="store_true",
                    help="time PyTorch in a process of its own (each library in its own "
                         "process, interleaved), not beside cbn's OpenMP threads")
    ap.add_argument("--json", metavar="FILE", help="write every raw number to FILE")
    ap.add_argument("--plot", metavar="FILE.png", help="bar chart (needs matplotlib)")
    ap.add_argument("--no-numpy", action="store_true", help="skip the naive NumPy peer")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    ap.add_argument("--no-jax", action="store_true", help="skip the JAX peer")
    ap.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime peer")
    ap.add_argument("--no-overhead", action="store_true",
                    help="skip the per-call cost section")
    ap.add_argument("--no-storage", action="store_true",
                    help="skip the 16-bit storage section (float16 and bfloat16 against "
                         "float32; bfloat16 needs ml_dtypes)")
    return ap


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _choose_impls(args):
    """(impls to time, impls that run in a worker process of their own)."""
    peers = []
    if not args.no_numpy:
        peers.append("numpy")
    if not args.no_torch and importlib.util.find_spec("torch") is not None:
        peers.append("torch")
    for impl, off in (("jax", args.no_jax), ("ort", args.no_ort)):
        if not off and optional_peers.available(impl):
            peers.append(impl)
    own = [p for p in peers if p in ("jax", "ort") or (p == "torch" and args.isolated)]
    return ["cbn", "cbn_alloc"] + peers + ["copy"], own


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    for o in ops:
        if o not in OPS:
            parser.error(f"--ops: unknown op {o!r}; choose from {','.join(OPS)}")
    layouts = list(LAYOUTS) if args.layout == "both" else [args.layout]
    threads = cbn.get_num_threads() if args.threads is None else args.threads
    if threads < 1:
        parser.error("--threads must be >= 1")
    default_rounds = 5 if args.align_sweep else 15
    rounds = args.repeat if args.repeat is not None else (3 if args.quick else default_rounds)
    if rounds < 1:
        parser.error("--repeat must be >= 1")
    budget = args.budget if args.budget is not None else (0.1 if args.quick else 0.4)
    min_slow = 1 if args.quick else min(3, rounds)
    dtype = np.dtype(args.dtype)
    impls, own_process = _choose_impls(args)
    # Peers interleaved with cbn (PyTorch's OpenMP threads spin on after each of its samples,
    # in its own process with --isolated) take cbn's cores in bursts, which cbn's busy-machine
    # fallback answers with 250 ms on one thread: the table measures cbn's teams, and --busy
    # turns the fallback on for its own check.
    cbn.set_contention_fallback(False)
    if args.align_sweep:
        impls, own_process = ["cbn"], []
    if "torch" in impls and "torch" not in own_process:
        from .peers import set_torch_threads
        set_torch_threads(threads)

    plot_path = args.plot
    if plot_path and not matplotlib_available():
        print(f"--plot: matplotlib is not installed (pip install matplotlib); continuing "
              f"without writing {plot_path}", file=sys.stderr)
        plot_path = None
    out = sys.stdout
    meta = {
        "cpu": report.cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "threads": threads, "cbn": cbn.__version__, "numpy": np.__version__,
        "torch": "disabled" if args.no_torch else _version("torch"),
        "jax": "disabled" if args.no_jax else _version("jax"),
        "onnxruntime": "disabled" if args.no_ort else _version("onnxruntime"),
        "python": platform.python_version(), "openmp": bool(cbn.openmp_enabled()),
        "contention_fallback": "off (on for the --busy check)",
        "dtype": dtype.name, "rounds": rounds, "budget_s": budget,
        "min_slow_samples": min_slow, "impls": impls, "own_process": own_process,
        "stat": args.stat, "cold": bool(args.cold), "llc_bytes": last_level_cache_bytes(),
        "allocation": "numpy default", "busy": bool(args.busy), "isolated": bool(args.isolated),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    t_start = time.perf_counter()
    settle_allocator()
    progress = report.Progress()
    result = {"meta": meta}
    with contextlib.ExitStack() as stack:
        busy = stack.enter_context(BusyProcess()) if args.busy else None
        workers = {}
        for impl in own_process:
            workers[impl] = Worker(impl, threads)
            stack.callback(workers[impl].close)
        ignore = [w.pid for w in workers.values()] + ([busy.pid] if busy else [])
        meta["busy_pid"] = busy.pid if busy else None
        try:
            progress.show("checking that the machine is idle ...")
            meta["other_load_before"] = idle_check(0.5, ignore)
            progress.show("measuring copy bandwidth ...")
            meta["bandwidth"] = measure_bandwidth(threads, dtype)
        finally:
            progress.done()
        report.print_header(meta, out)
        out.flush()
        if args.align_sweep:
            try:
                rows = run_sweep(args.shapes or SWEEP_SHAPES, layouts, ops, dtype, threads,
                                 rounds, args.stat, progress.show)
            finally:
                progress.done()
            report.print_sweep(rows, out)
            result["align_sweep"] = rows
        else:
            shapes = args.shapes or DEFAULT_SHAPES
            try:
                cases, overhead, contention = _main_report(
                    args, shapes, layouts, ops, dtype, threads, impls, workers, rounds, budget,
                    min_slow, busy, ignore, progress)
            finally:
                progress.done()
            report.print_table(cases, out)
            summary = report.summarize(cases, COPY_TARGETS)
            report.print_summary(summary, out)
            dram = {layout_shape(DRAM_SHAPE, lay) for lay in LAYOUTS}
            report.print_dram(cases, dram, out)
            if overhead:
                report.print_overhead(overhead, out)
            if contention:
                report.print_contention(contention, out)
            storage = None
            if not args.no_storage and dtype == np.float32:
                try:
                    progress.show("16-bit storage ...")
                    storage = measure_storage(threads, layouts, rounds, budget, args.shapes,
                                              [op for op in STORAGE_OPS if op in ops])
                finally:
                    progress.done()
                report.print_storage(storage, out)
            result.update(cases=cases, summary=summary, overhead=overhead,
                          contention=contention, storage=storage)
    elapsed = time.perf_counter() - t_start
    result["elapsed_s"] = elapsed
    print(f"\n(total {elapsed:.1f} s)", file=out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"raw numbers written to {args.json}", file=out)
    if plot_path and result.get("cases"):
        if plot(result["cases"], plot_path):
            print(f"plot written to {plot_path}", file=out)
    return 0


def _main_report(args, shapes, layouts, ops, dtype, threads, impls, workers, rounds, budget,
                 min_slow, busy, ignore, progress):
    """The main table's cases, then the per-call cost and (--busy) the contention check."""
    flush = CacheFlusher(threads) if args.cold else None
    monitor = CpuMonitor(ignore)
    total = len(shapes) * len(layouts) * len(ops)
    cases = []
    i = 0
    for shape in shapes:
        for layout in layouts:
            ashape = layout_shape(shape, layout)
            inputs = make_inputs(ashape, layout, dtype, need_dy=any(op in DY_OPS for op in ops))
            for op in ops:
                i += 1
                progress.show(f"[{i}/{total}] {op} {layout} ({','.join(map(str, ashape))}) ...")
                try:
                    cases.append(run_case(op, inputs, threads, impls, rounds, budget, min_slow,
                                          args.stat, flush, workers))
                except WorkerError as e:  # a peer's process died: go on without it
                    print(f"\n{e}; continuing without it", file=sys.stderr)
                    dead = [k for k, w in workers.items() if w.proc.poll() is not None]
                    for k in dead:
                        del workers[k]
                        impls = [m for m in impls if m != k]
                    cases.append(run_case(op, inputs, threads, impls, rounds, budget,
                                          min_slow, args.stat, flush, workers))
                cases[-1]["other_load"] = monitor.sample()
            del inputs
    order = [(s, lay) for s in shapes for lay in LAYOUTS]
    cases.sort(key=lambda c: (OPS.index(c["op"]), next(
        k for k, (s, lay) in enumerate(order)
        if lay == c["layout"] and tuple(layout_shape(s, lay)) == tuple(c["shape"]))))
    overhead = None
    if not args.no_overhead:
        progress.show("per-call cost ...")
        overhead = measure_overhead(threads, impls, rounds, dtype, workers)
    contention = None
    if busy is not None:
        progress.show("contention: training beside the busy process ...")
        contention = measure_contention(threads, busy, dtype, layouts)
    return cases, overhead, contention


if __name__ == "__main__":
    sys.exit(main())
