"""The printed report: header, main table, summary, per-call cost, sweep and contention."""
import math
import platform
import sys

from .cases import OPS, shape_str
from .monitor import BUSY
from .peers import LABELS, PEERS

PEER_TITLES = {"numpy": "xNumPy", "torch": "xTorch", "jax": "xJAX", "ort": "xORT"}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def geomean(values):
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _fmt(v, spec, width):
    return f"{'n/a':>{width}}" if v is None else f"{v:>{width}{spec}}"


def _printer(out):
    return lambda s="": print(s, file=out)


class Progress:
    """One status line on a terminal (rewritten in place), one line each otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.width = 0

    def show(self, text):
        if self.tty:
            pad = " " * max(0, self.width - len(text))
            self.stream.write("\r" + text + pad)
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self):
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
        self.width = 0


def print_header(meta, out):
    p = _printer(out)
    p("cbn benchmark report (python -m cbn.bench)")
    p(f"  CPU:      {meta['cpu']} ({meta['cpu_count']} logical CPUs), {meta['platform']}")
    p(f"  threads:  {meta['threads']} (cbn, copy yardstick"
      + ("".join(f", {LABELS[i]}" for i in ("torch", "ort") if i in meta["impls"]))
      + "; naive NumPy is single-threaded"
      + ("; JAX: XLA's own pool" if "jax" in meta["impls"] and meta["threads"] > 1 else "")
      + ")")
    p(f"  versions: cbn {meta['cbn']}, numpy {meta['numpy']}, torch {meta['torch']}, "
      f"jax {meta['jax']}, onnxruntime {meta['onnxruntime']}, python {meta['python']}")
    p(f"  OpenMP:   {'on' if meta['openmp'] else 'OFF (serial build: every kernel runs on 1 thread)'}")
    if "contention_fallback" in meta:
        p(f"  fallback: cbn's busy-machine fallback {meta['contention_fallback']}")
    p("  arrays:   allocated as NumPy code does (generator outputs, np.empty_like, cbn's own "
      "allocating call)")
    isolated = [LABELS[i] for i in meta.get("own_process", [])]
    if isolated:
        p(f"  processes: {', '.join(isolated)} timed in a process of their own each, "
          f"interleaved with the others")
    p(f"  timing:   {meta['dtype']}; {meta['rounds']} interleaved rounds, {meta['stat']} of "
      f"{'cold (caches evicted)' if meta['cold'] else 'warm'} samples; slow candidates get "
      f"fewer rounds")
    p(f"            (>= {meta['min_slow_samples']}, about {meta['budget_s']} s per candidate and "
      f"case: naive NumPy on big shapes)")
    if meta.get("busy_pid"):
        p(f"  BUSY:     one process spinning in a loop (pid {meta['busy_pid']}) ran beside the "
          f"whole run (--busy): timings are under contention")
    load = meta.get("other_load_before")
    if load is not None:
        p(f"  load:     other processes used {load:.2f} cores before the run"
          + (" (besides the --busy process)" if meta.get("busy_pid") else "")
          + ("  WARNING: the machine is busy; multithreaded timings will be slow and noisy"
             if load > BUSY else ""))
    bw = meta.get("bandwidth")
    if bw:
        p(f"  copy bandwidth ({bw['nbytes'] / 1e6:.1f} MB): yardstick {bw['yardstick_gbps']:.1f}"
          f" GB/s at {meta['threads']} thread(s), np.copyto {bw['copyto_gbps']:.1f} GB/s "
          f"(1 thread)")
    p()


def _peers_present(cases):
    return [peer for peer in PEERS if any(peer in c["results"] for c in cases)
            or peer in ("numpy", "torch")]


def print_table(cases, out):
    p = _printer(out)
    peers = _peers_present(cases)
    impls = ["cbn", "cbn_alloc"] + peers + ["copy"]
    head = (f"{'op':<8} {'layout':<6} {'shape':<16} {'MB':>6}  "
            + " ".join(f"{LABELS[i]:>8}" for i in impls) + "  "
            + " ".join(f"{PEER_TITLES[pr]:>7}" for pr in peers) + f" {'GB/s':>6} {'/copy':>6}")
    p(head)
    p("-" * len(head))
    last_op = None
    busy = False
    for c in cases:
        if last_op is not None and c["op"] != last_op:
            p()
        last_op = c["op"]
        r = c["results"]
        ms = [None if k not in r else r[k][c["stat"] + "_s"] * 1e3 for k in impls]
        flag = ""
        bad = [k for k, e in c["max_rel_error"].items() if e > 1e-3]
        if bad:
            flag = "  !mismatch: " + ",".join(bad)
        if (c.get("other_load") or 0) > BUSY:
            flag += f"  *busy {c['other_load']:.1f}"
            busy = True
        p(f"{c['op']:<8} {c['layout']:<6} {shape_str(c['shape']):<16} {c['nbytes'] / 1e6:>6.2f}  "
          + " ".join(_fmt(v, ".3f", 8) for v in ms) + "  "
          + " ".join(_fmt(c.get(f"speedup_vs_{pr}"), ".2f" if pr != "numpy" else ".1f", 7)
                     for pr in peers)
          + f" {_fmt(c['gbps'], '.1f', 6)} {_fmt(c['copy_ratio'], '.2f', 6)}{flag}")
    p()
    p(f"ms: {cases[0]['stat'] if cases else 'median'} time per call. cbn: output preallocated "
      "(out=np.empty_like(x)); alloc: cbn")
    p("allocating its outputs like the peers do. x<peer>: peer time / cbn alloc time. GB/s: "
      "bytes that must")
    p("cross memory (train, infer: x + y; backward: x + dy + dx) / cbn time. /copy: cbn time / "
      "copy time")
    p("(copy of x into a preallocated array on the same threads). n/a: not installed, or the "
      "peer cannot run the case.")
    if busy:
        p("*busy N: other processes kept N cores busy while this case ran: its timings are "
          "unreliable.")


def _is_busy(c):
    return (c.get("other_load") or 0) > BUSY


def summarize(cases, copy_targets):
    """Geometric means, per op and overall, of the cases not flagged busy (all cases when every
    one is flagged); loads are over all cases."""
    loads = [c["other_load"] for c in cases if c.get("other_load") is not None]
    clean = [c for c in cases if not _is_busy(c)]
    n_busy = len(cases) - len(clean)
    if clean:
        cases = clean
    s = {"busy_cases_left_out": n_busy if clean else 0, "by_op": {}}
    for peer in PEERS:
        s[f"speedup_vs_{peer}_geomean"] = geomean([c.get(f"speedup_vs_{peer}") for c in cases])
    s["copy_ratio_geomean"] = geomean([c["copy_ratio"] for c in cases])
    vs_torch = [c for c in cases if c.get("speedup_vs_torch") is not None]
    if vs_torch:
        worst = min(vs_torch, key=lambda c: c["speedup_vs_torch"])
        s["worst_vs_torch"] = {"op": worst["op"], "layout": worst["layout"],
                               "shape": worst["shape"], "speedup": worst["speedup_vs_torch"]}
    if loads:
        s["other_load"] = {"mean": sum(loads) / len(loads), "max": max(loads)}
    for op in OPS:
        cs = [c for c in cases if c["op"] == op]
        if not cs:
            continue
        big = [c for c in cs if 4e6 <= c["nbytes"] <= 100e6]
        ratios_big = [c["copy_ratio"] for c in big]
        v = {f"speedup_vs_{peer}_geomean": geomean([c.get(f"speedup_vs_{peer}") for c in cs])
             for peer in PEERS}
        v.update({
            "copy_ratio_geomean": geomean([c["copy_ratio"] for c in cs]),
            "copy_ratio_geomean_4_100MB": geomean(ratios_big),
            "copy_ratio_max_4_100MB": max(ratios_big) if ratios_big else None,
            "copy_ratio_target": copy_targets[op],
        })
        s["by_op"][op] = v
    return s


def print_summary(s, out):
    p = _printer(out)
    p()
    left_out = s.get("busy_cases_left_out")
    peers = [pr for pr in PEERS if s.get(f"speedup_vs_{pr}_geomean") is not None
             or pr in ("numpy", "torch")]
    p("Geometric means over the cases above"
      + (f" ({left_out} flagged *busy left out; rerun on an idle machine):" if left_out else ":"))
    p(f"  {'':<10} " + " ".join(f"{PEER_TITLES[pr]:>8}" for pr in peers)
      + f" {'/copy':>7}   {'/copy on 4-100 MB tensors':<26}")

    def peer_cols(v):
        return " ".join(_fmt(v[f"speedup_vs_{pr}_geomean"], ".1f" if pr == "numpy" else ".2f",
                             8) for pr in peers)
    for op, v in s["by_op"].items():
        big = ("n/a (no 4-100 MB case)" if v["copy_ratio_geomean_4_100MB"] is None else
               f"{v['copy_ratio_geomean_4_100MB']:.2f}, max {v['copy_ratio_max_4_100MB']:.2f}"
               f" (target <= {v['copy_ratio_target']})")
        p(f"  {op:<10} {peer_cols(v)} {_fmt(v['copy_ratio_geomean'], '.2f', 7)}   {big}")
    p(f"  {'all':<10} {peer_cols(s)} {_fmt(s['copy_ratio_geomean'], '.2f', 7)}")
    w = s.get("worst_vs_torch")
    if w:
        p(f"  slowest case against PyTorch: {w['op']} {w['layout']} {shape_str(w['shape'])}: "
          f"{w['speedup']:.2f}x")
    load = s.get("other_load")
    if load:
        p(f"  other processes' CPU load while measuring: mean {load['mean']:.2f}, "
          f"max {load['max']:.2f} cores" + ("  (WARNING: timings unreliable)"
                                           if load["max"] > BUSY else ""))


def print_dram(cases, dram_shapes, out):
    """The DRAM-resident cases' /copy ratios, against the targets, one line each."""
    rows = [c for c in cases if tuple(c["shape"]) in dram_shapes]
    if not rows:
        return
    p = _printer(out)
    p()
    p("Tensors larger than the last-level cache (cbn out= time / copy time; targets: train "
      "<= 1.3, backward <= 2.0, infer <= 1.1):")
    for c in rows:
        p(f"  {c['op']:<9} {c['layout']:<5} {shape_str(c['shape']):<14} "
          f"{c['nbytes'] / 1e6:6.1f} MB  /copy {_fmt(c['copy_ratio'], '.2f', 5)}")


def print_overhead(rows, out):
    p = _printer(out)
    p()
    p("Per-call cost (NCHW, us per call; cbn with out=; 'C kernel' calls cbn._core directly "
      "(cbn.bench.kernels),")
    p("skipping validation; 'python' = cbn - C kernel, the Python-side overhead):")
    p(f"  {'op':<9} {'shape':<9} {'cbn':>8} {'C kernel':>9} {'python':>7} {'numpy':>8} "
      f"{'torch':>8}")
    for r in rows:
        us = {k: v["median_s"] * 1e6 for k, v in r["results"].items()}
        po = r["python_overhead_s"]
        p(f"  {r['op']:<9} {shape_str(r['shape']):<9} {_fmt(us.get('cbn'), '.1f', 8)} "
          f"{_fmt(us.get('core'), '.1f', 9)} {_fmt(None if po is None else po * 1e6, '.1f', 7)} "
          f"{_fmt(us.get('numpy'), '.1f', 8)} {_fmt(us.get('torch'), '.1f', 8)}")


def print_sweep(rows, out):
    p = _printer(out)
    head = (f"{'op':<8} {'layout':<6} {'shape':<16} {'places':>6} {'best ms':>8} {'worst ms':>8} "
            f"{'worst/best':>10}  worst placement (byte offsets in a 4 KiB page)")
    p("Alignment sweep: cbn with out=, x/dy/out at every 16-byte offset mod 64 and page-relative "
      "placements")
    p(head)
    p("-" * len(head))
    for r in rows:
        mark = "" if r["worst_over_best"] <= r["target"] else "  > target"
        p(f"{r['op']:<8} {r['layout']:<6} {shape_str(r['shape']):<16} {r['placements']:>6} "
          f"{r['best_s'] * 1e3:>8.3f} {r['worst_s'] * 1e3:>8.3f} {r['worst_over_best']:>10.2f}  "
          f"{r['worst_placement']}{mark}")
    if rows:
        worst = max(rows, key=lambda r: r["worst_over_best"])
        p()
        p(f"{rows[0]['stat']} times. Largest worst/best: {worst['worst_over_best']:.2f} "
          f"({worst['op']} {worst['layout']}); target <= {worst['target']} for every row.")


def print_contention(rows, out):
    p = _printer(out)
    p()
    p("Contention (--busy): training, cbn out=, mean ms per call; idle = the busy process "
      "stopped:")
    p(f"  {'layout':<6} {'shape':<16} {'idle 1 thr':>10} {'idle N thr':>10} {'busy N thr':>10} "
      f"{'busy N / idle 1':>16}")
    for r in rows:
        ms = {k: v["mean_s"] * 1e3 for k, v in r["results"].items()}
        p(f"  {r['layout']:<6} {shape_str(r['shape']):<16} {ms['idle_1']:>10.3f} "
          f"{ms['idle_n']:>10.3f} {ms['busy_n']:>10.3f} {r['busy_n_over_idle_1']:>16.2f}")
    if rows:
        p(f"  N = {rows[0]['threads']} threads; target: busy N-thread mean <= idle 1-thread "
          "mean (ratio <= 1).")


def print_storage(rows, out):
    """The 16-bit storage section: cbn's 16-bit time over its float32 time, and PyTorch's."""
    if not rows:
        return
    p = _printer(out)
    names = [k[:-len("_over_float32")] for k in rows[0] if k.endswith("_over_float32")]
    p()
    p("16-bit storage (x, dy, y, dx in 16 bits; parameters and statistics float32; allocating "
      "calls): cbn 16-bit time / cbn float32 time (bytes moved: 0.5), and PyTorch's time on "
      "the same 16-bit tensors / cbn's:")
    p(f"  {'op':<9} {'layout':<6} {'shape':<14} {'MB f32':>7} "
      + " ".join(f"{n + '/f32':>14} {'xTorch ' + n[:4]:>12}" for n in names))
    for r in rows:
        p(f"  {r['op']:<9} {r['layout']:<6} {shape_str(r['shape']):<14} "
          f"{r['nbytes_float32'] / 1e6:>7.1f} "
          + " ".join(f"{_fmt(r[n + '_over_float32'], '.2f', 14)} "
                     f"{_fmt(r['torch_over_cbn_' + n], '.2f', 12)}" for n in names))
    for n in names:
        p(f"  {n}: geomean time ratio to float32 "
          f"{_fmt(geomean([r[n + '_over_float32'] for r in rows]), '.2f', 4).strip()}, "
          f"against PyTorch "
          f"{_fmt(geomean([r['torch_over_cbn_' + n] for r in rows]), '.2f', 4).strip()}x")
