"""Benchmark report for cbn: ``python -m cbn.bench`` (``--help`` for the options).

For every shape x layout x op (training forward, backward, inference) it times, interleaved
round-robin in one loop so that a noisy machine hits every candidate alike:

* ``cbn``        cbn with its output preallocated (``out=``),
* ``cbn alloc``  cbn allocating its output, as a user calls it (what the peers are compared with),
* ``numpy``      naive NumPy in the input dtype (`numpy_train`, `numpy_backward`, `numpy_infer`),
* ``torch``      PyTorch's CPU kernels (``aten.native_batch_norm`` / ``native_batch_norm_backward``)
                 on ``torch.from_numpy`` views, channels-last through ``permute``, when importable,
* ``copy``       the yardstick: a plain copy of x into a preallocated array with the same number
                 of OpenMP threads (``cbn._core.yardstick_copy``),

and prints the median time of each, the speed-ups of cbn over NumPy and PyTorch (every library
allocating its outputs as usual), cbn's effective bandwidth (the bytes that must cross memory:
train and infer read x and write y, backward reads x and dy and writes dx) and the ratio of cbn's
time (``out=``) to the copy's, then geometric means and the per-call cost on tiny inputs.

How it measures (see `time_interleaved`):

* Samples are warm by default: each is preceded by one untimed call of the same candidate, and
  fast calls are looped to last >= 1 ms, so tensors that fit in the last-level cache are timed
  in cache (as pytest-benchmark does). ``--cold`` evicts the caches before every sample instead.
* Slow candidates (naive NumPy on the big shapes) are timed in fewer rounds than the others
  (at least 3, spread evenly over the loop): see ``--budget``.
* x, dy and preallocated outputs sit at different offsets within a 4 KiB page (`empty_at`), and
  malloc is put in its steady state first (`settle_allocator`).
* Other processes' CPU use is watched (/proc/stat); cases measured while another process took a
  sizeable share of a core are flagged ``*busy`` (with as many threads as cores, that slows
  multithreaded code down by whole scheduler time slices).

The naive NumPy peers live here (and only here); the pytest-benchmark suite in ``bench/`` imports
them together with `make_inputs` and `make_candidates`.
"""
import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

import cbn
from cbn import _core

OPS = ("train", "backward", "infer")
LAYOUTS = ("NCHW", "NHWC")
# Shapes are given in NCHW order (N, C, *spatial) and permuted to (N, *spatial, C) for NHWC.
DEFAULT_SHAPES = [
    (32, 64, 56, 56), (32, 256, 28, 28), (32, 256, 14, 14), (32, 2048, 7, 7), (256, 1024),
    (8, 64, 8, 8), (16, 32),  # small: per-call overhead dominates
]
MOMENTUM = 0.1
EPS = 1e-5
IMPLS = ("cbn", "cbn_alloc", "numpy", "torch", "copy")
LABELS = {"cbn": "cbn", "cbn_alloc": "cbn alloc", "numpy": "numpy", "torch": "torch",
          "copy": "copy"}
# Bytes that must cross memory, in units of x.nbytes.
TRAFFIC = {"train": 2, "backward": 3, "infer": 2}
# Issue 3's targets for cbn (out=) / copy, for 4 MB - 100 MB tensors.
COPY_TARGETS = {"train": 1.3, "backward": 2.0, "infer": 1.1}
# Cores' worth of CPU used by other processes above which timings are flagged as unreliable.
BUSY = 0.2


# --------------------------------------------------------------------------------------------
# Shapes and layouts

def is_channels_last(layout):
    return layout in ("NHWC", "channels_last")


def layout_shape(shape_nchw, layout):
    """The array shape for `layout` of a shape given in NCHW order."""
    shape = tuple(int(s) for s in shape_nchw)
    if is_channels_last(layout):
        return (shape[0],) + shape[2:] + (shape[1],)
    return shape


def channel_axis(ndim, layout):
    return ndim - 1 if is_channels_last(layout) else 1


def _geometry(x, layout):
    """(reduction axes, per-channel broadcast shape, M) of x in `layout`."""
    axis = channel_axis(x.ndim, layout)
    axes = tuple(i for i in range(x.ndim) if i != axis)
    bshape = [1] * x.ndim
    bshape[axis] = x.shape[axis]
    return axes, tuple(bshape), x.size // x.shape[axis]


def shape_str(shape):
    return "x".join(str(s) for s in shape)


def parse_shapes(text):
    """'32x64x56x56,256x1024' -> [(32, 64, 56, 56), (256, 1024)]."""
    shapes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            shape = tuple(int(s) for s in part.replace("*", "x").split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad shape {part!r}: expected e.g. 32x64x56x56")
        if len(shape) < 2 or min(shape) < 1:
            raise argparse.ArgumentTypeError(
                f"bad shape {part!r}: need at least 2 positive dimensions (N and C)")
        shapes.append(shape)
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes


# --------------------------------------------------------------------------------------------
# Naive NumPy peers: what a user would write, in the input dtype.

def numpy_train(x, weight=None, bias=None, running_mean=None, running_var=None, *,
                momentum=MOMENTUM, eps=EPS, layout="NCHW"):
    """Training forward, naive NumPy: returns (y, save_mean, save_invstd); running stats in place."""
    axes, b, M = _geometry(x, layout)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * invstd
    if weight is not None:
        y = y * weight.reshape(b)
    if bias is not None:
        y = y + bias.reshape(b)
    if running_mean is not None:
        running_mean *= 1.0 - momentum
        running_mean += momentum * mean.ravel()
        running_var *= 1.0 - momentum
        running_var += momentum * M / (M - 1) * var.ravel()
    return y, mean.ravel(), invstd.ravel()


def numpy_backward(dy, x, save_mean, save_invstd, weight=None, *, layout="NCHW"):
    """Backward, naive NumPy (the standard formula): returns (dx, dweight, dbias)."""
    axes, b, M = _geometry(x, layout)
    invstd = save_invstd.reshape(b)
    xhat = (x - save_mean.reshape(b)) * invstd
    dbias = dy.sum(axis=axes)
    dweight = (dy * xhat).sum(axis=axes)
    k = invstd / M if weight is None else weight.reshape(b) * invstd / M
    dx = k * (M * dy - dbias.reshape(b) - xhat * dweight.reshape(b))
    return dx, dweight, dbias


def numpy_infer(x, running_mean, running_var, weight=None, bias=None, *, eps=EPS,
                layout="NCHW"):
    """Inference, naive NumPy: y = x * scale + shift."""
    _, b, _ = _geometry(x, layout)
    scale = 1.0 / np.sqrt(running_var + eps)
    if weight is not None:
        scale = weight * scale
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return x * scale.reshape(b) + shift.reshape(b)


# --------------------------------------------------------------------------------------------
# PyTorch (optional)

def import_torch():
    """torch, or None when it is not importable."""
    try:
        import torch
    except Exception:  # ImportError, or a broken install
        return None
    return torch


def set_torch_threads(n_threads):
    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(int(n_threads))


def _torch_view(torch, a, layout):
    """A torch tensor sharing a's memory, in PyTorch's NC... dimension order."""
    t = torch.from_numpy(a)
    if is_channels_last(layout) and a.ndim > 2:
        t = t.permute(0, a.ndim - 1, *range(1, a.ndim - 1))
    return t


def _torch_to_numpy(t, layout):
    """The NumPy array (in `layout`) of a torch result in NC... dimension order."""
    if is_channels_last(layout) and t.ndim > 2:
        t = t.permute(0, *range(2, t.ndim), 1)
    return t.detach().numpy()


# --------------------------------------------------------------------------------------------
# Inputs and candidates

PAGE = 4096


def empty_at(shape, dtype, page_offset):
    """An uninitialized C-contiguous array starting `page_offset` bytes into a 4 KiB page.

    The benchmark places x, dy and the preallocated outputs at different offsets within a page
    (all cache-line aligned): with np.empty_like(x), a big output starts at the same page offset
    as x, and the loads of x then falsely depend on the stores to the output ("4K aliasing"),
    which on some CPUs costs a copy or a batch-norm kernel 20-30%: a property of the addresses,
    not of the code under test.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + PAGE, np.uint8)
    start = (page_offset - raw.ctypes.data) % PAGE
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def settle_allocator():
    """Allocate and free a block just under 32 MiB, once, before measuring anything.

    glibc's malloc serves big blocks with fresh mmap()s (a page fault per 4 KiB on first touch)
    until the program frees one, after which it raises its threshold to that block's size (up
    to 32 MiB) and serves them from its heap. Every long-running program is in that second
    state; without this, allocating candidates (naive NumPy, PyTorch, cbn without out=) would be
    up to 3x slower at first, and faster once some earlier benchmark freed a big array.
    """
    a = np.empty((32 << 20) - (1 << 16), np.uint8)
    del a


def empty_apart(a, delta):
    """Like np.empty_like(a) (C order), starting `delta` bytes further into a page than a."""
    return empty_at(a.shape, a.dtype, (a.ctypes.data + delta) % PAGE)


def make_inputs(shape, layout="NCHW", dtype=np.float32, seed=0, need_dy=True):
    """Random inputs for every op, x of the given array shape (already in `layout`).

    Returns a dict: layout, x, dy (when need_dy), weight, bias, running_mean, running_var,
    save_mean and save_invstd (cbn's statistics of x, for backward).
    """
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    C = shape[channel_axis(len(shape), layout)]
    x = empty_at(shape, dtype, 64)
    rng.standard_normal(shape, dtype=dtype, out=x)
    x *= 2.0
    x += 0.5
    d = {
        "layout": layout,
        "x": x,
        "weight": rng.uniform(0.5, 1.5, C).astype(dtype),
        "bias": rng.standard_normal(C).astype(dtype),
        "running_mean": rng.standard_normal(C).astype(dtype) * 0.1 + 0.5,
        "running_var": rng.uniform(3.0, 5.0, C).astype(dtype),
    }
    if need_dy:
        d["dy"] = empty_apart(x, 1024)
        rng.standard_normal(shape, dtype=dtype, out=d["dy"])
    _, d["save_mean"], d["save_invstd"] = cbn.batch_norm_train(x, layout=layout)
    return d


def make_candidates(op, inputs, n_threads, impls=IMPLS):
    """{impl: zero-argument callable} running `op` on `inputs` (from `make_inputs`).

    Each callable returns the op's main output (y, or dx for backward) as it comes from that
    library (`main_output` turns it into a NumPy array). Every candidate has its own output
    buffers and its own copy of the running statistics. "cbn" writes into a preallocated output
    (`out=`), "cbn_alloc" lets cbn allocate it. "torch" is left out when PyTorch is not
    importable. "copy" copies x into a preallocated array on n_threads threads. Preallocated
    outputs sit half a page apart from x (see `empty_at`).
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    layout = inputs["layout"]
    x, w, b = inputs["x"], inputs["weight"], inputs["bias"]
    rm0, rv0 = inputs["running_mean"], inputs["running_var"]
    sm, si = inputs["save_mean"], inputs["save_invstd"]
    dy = inputs.get("dy")
    if op == "backward" and dy is None:
        raise ValueError("backward needs inputs made with need_dy=True")
    fns = {}
    for impl in impls:
        rm, rv = rm0.copy(), rv0.copy()
        if impl in ("cbn", "cbn_alloc"):
            out = empty_apart(x, 2048) if impl == "cbn" else None
            if op == "train":
                def fn(out=out, rm=rm, rv=rv):
                    return cbn.batch_norm_train(
                        x, w, b, running_mean=rm, running_var=rv, momentum=MOMENTUM, eps=EPS,
                        layout=layout, out=out, n_threads=n_threads)[0]
            elif op == "backward":
                def fn(out=out):
                    return cbn.batch_norm_backward(dy, x, sm, si, w, layout=layout, out=out,
                                                   n_threads=n_threads)[0]
            else:
                def fn(out=out):
                    return cbn.batch_norm_infer(x, rm0, rv0, w, b, eps=EPS, layout=layout,
                                                out=out, n_threads=n_threads)
        elif impl == "numpy":
            if op == "train":
                def fn(rm=rm, rv=rv):
                    return numpy_train(x, w, b, rm, rv, momentum=MOMENTUM, eps=EPS,
                                       layout=layout)[0]
            elif op == "backward":
                def fn():
                    return numpy_backward(dy, x, sm, si, w, layout=layout)[0]
            else:
                def fn():
                    return numpy_infer(x, rm0, rv0, w, b, eps=EPS, layout=layout)
        elif impl == "torch":
            torch = import_torch()
            if torch is None:
                continue
            aten = torch.ops.aten
            tx = _torch_view(torch, x, layout)
            tw, tb = torch.from_numpy(w), torch.from_numpy(b)
            trm, trv = torch.from_numpy(rm), torch.from_numpy(rv)
            if op == "train":
                def fn():
                    return aten.native_batch_norm(tx, tw, tb, trm, trv, True, MOMENTUM, EPS)[0]
            elif op == "backward":
                tdy = _torch_view(torch, dy, layout)
                tsm, tsi = torch.from_numpy(sm), torch.from_numpy(si)
                mask = [True, True, True]

                def fn():
                    return aten.native_batch_norm_backward(tdy, tx, tw, trm, trv, tsm, tsi, True,
                                                           EPS, mask)[0]
            else:
                trm0, trv0 = torch.from_numpy(rm0), torch.from_numpy(rv0)

                def fn():
                    return aten.native_batch_norm(tx, tw, tb, trm0, trv0, False, MOMENTUM,
                                                  EPS)[0]
        elif impl == "copy":
            dst = empty_apart(x, 2048)

            def fn(dst=dst):
                _core.yardstick_copy(dst, x, n_threads)
                return dst
        else:
            raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
        fns[impl] = fn
    return fns


def main_output(result, layout):
    """A candidate's result as a NumPy array in `layout`."""
    if isinstance(result, np.ndarray):
        return result
    return _torch_to_numpy(result, layout)


def max_rel_error(actual, expected, max_elems=1 << 20):
    """max|a - e| / max(1, max|e|), on an evenly strided sample of at most max_elems values."""
    a = np.ravel(actual)
    e = np.ravel(expected)
    if a.shape != e.shape:
        return math.inf
    step = max(1, a.size // max_elems)
    a = a[::step].astype(np.float64)
    e = e[::step].astype(np.float64)
    if not a.size:
        return 0.0
    return float(np.max(np.abs(a - e)) / max(1.0, float(np.max(np.abs(e)))))


# --------------------------------------------------------------------------------------------
# Timing

def _one(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def last_level_cache_bytes():
    """Size of the CPU's largest cache (Linux sysfs), or None."""
    best = None
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = os.listdir(base)
    except OSError:
        return None
    for e in entries:
        try:
            with open(os.path.join(base, e, "size")) as f:
                text = f.read().strip().upper()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            size = int(text.rstrip("KMG")) * mult
        except ValueError:
            continue
        best = size if best is None else max(best, size)
    return best


class CacheFlusher:
    """Evicts the caches by copying a scratch buffer of twice the last-level cache (>= 64 MB)."""

    def __init__(self, n_threads):
        nbytes = max(64 << 20, 2 * (last_level_cache_bytes() or 0))
        self.src = np.ones(nbytes // 8)
        self.dst = np.zeros_like(self.src)
        self.n_threads = n_threads

    def __call__(self):
        _core.yardstick_copy(self.dst, self.src, self.n_threads)


def time_interleaved(fns, rounds, budget=0.5, min_sample=1e-3, min_slow_samples=1, flush=None):
    """Time zero-argument callables round-robin, `rounds` times; returns {name: stats}.

    Each candidate is first called once (warm-up) and timed once more. Warm mode (flush=None): a
    sample is one call, or a loop of calls lasting at least `min_sample` seconds for fast ones
    (per-call time reported), right after one untimed call of the same candidate, so every
    sample is "warm" (what fits in cache is there) whichever candidate ran before it. Cold mode
    (flush: a callable that evicts the caches, e.g. CacheFlusher): a sample is one call right
    after flush(). A candidate whose `rounds` samples would take more than `budget` seconds gets
    fewer samples (at least `min_slow_samples`), spread evenly over the rounds. Each round
    starts with a different candidate. The garbage collector is off while timing.
    stats: median_s, min_s, samples (seconds per call), number (calls per sample).
    """
    names = list(fns)
    est, number, count = {}, {}, {}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in names:
            fns[name]()
            est[name] = max(_one(fns[name], 1), 1e-9)
            if flush is None:
                number[name] = max(1, min(100000, int(math.ceil(min_sample / est[name]))))
                cost = est[name] * (number[name] + 1)
            else:
                number[name] = 1
                cost = est[name]
            count[name] = max(min(rounds, min_slow_samples), min(rounds, int(budget / cost)))
        samples = {name: [] for name in names}
        for i in range(rounds):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                n = count[name]
                if (i * n) // rounds < ((i + 1) * n) // rounds:
                    if flush is None:
                        fns[name]()
                    else:
                        flush()
                    samples[name].append(_one(fns[name], number[name]))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: {"median_s": statistics.median(s), "min_s": min(s), "samples": s,
                   "number": number[name]} for name, s in samples.items()}


# --------------------------------------------------------------------------------------------
# Report

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


class CpuMonitor:
    """CPU time that other processes took while we measured (Linux /proc/stat; else None).

    sample() returns the other processes' busy CPU seconds per wall-clock second since the last
    call (1.0 = one core fully busy): on a machine with as many cores as threads, anything
    sizeable there slows multithreaded kernels down in steps of scheduler time slices.
    """

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._read()

    @staticmethod
    def _busy_jiffies():
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        v = [int(t) for t in fields[1:9]]  # user nice system idle iowait irq softirq steal
        return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]

    def _read(self):
        busy = self._busy_jiffies()
        return None if busy is None else (busy, time.process_time(), time.perf_counter())

    def sample(self):
        now = self._read()
        prev, self.last = self.last, now
        if now is None or prev is None or now[2] - prev[2] <= 0:
            return None
        others = (now[0] - prev[0]) / self.hz - (now[1] - prev[1])
        # /proc/stat counts whole clock ticks per CPU: allow one tick of slack per CPU.
        others -= (os.cpu_count() or 1) / self.hz
        return max(0.0, others / (now[2] - prev[2]))


def idle_check(seconds=0.5):
    """Others' CPU load (cores) over `seconds` while this process sleeps."""
    mon = CpuMonitor()
    time.sleep(seconds)
    return mon.sample()


def geomean(values):
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _fmt(v, spec, width):
    return f"{'n/a':>{width}}" if v is None else f"{v:>{width}{spec}}"


def _ratio(num, den):
    return None if num is None or den is None else num / den


class _Progress:
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


def _stat_of(res, name, stat):
    r = res.get(name)
    return None if r is None else r[stat + "_s"]


def run_case(op, inputs, n_threads, impls, rounds, budget, min_slow_samples, stat="median",
             flush=None):
    """Measure one op on one input set; returns the case's record (JSON-ready)."""
    x = inputs["x"]
    fns = make_candidates(op, inputs, n_threads, impls)
    layout = inputs["layout"]
    # Sanity check of the peers against cbn (sampled for big arrays): catches benchmark bugs.
    ref = main_output(fns["cbn"](), layout)
    errors = {}
    for name, fn in fns.items():
        if name not in ("cbn", "copy"):
            errors[name] = max_rel_error(main_output(fn(), layout), ref)
    res = time_interleaved(fns, rounds, budget=budget, min_slow_samples=min_slow_samples,
                           flush=flush)
    t = {name: _stat_of(res, name, stat) for name in IMPLS}
    moved = TRAFFIC[op] * x.nbytes
    return {
        "op": op, "layout": layout, "shape": list(x.shape), "dtype": x.dtype.name, "stat": stat,
        "nbytes": x.nbytes, "bytes_moved": moved, "results": res, "max_rel_error": errors,
        "speedup_vs_numpy": _ratio(t["numpy"], t["cbn_alloc"]),
        "speedup_vs_torch": _ratio(t["torch"], t["cbn_alloc"]),
        "gbps": moved / t["cbn"] / 1e9,
        "copy_ratio": _ratio(t["cbn"], t["copy"]),
    }


def measure_overhead(n_threads, impls, rounds, dtype):
    """Per-call cost on a tiny input (2, 4) and on (256, 1024), NCHW: the full cbn call (out=),
    the C kernel called directly through cbn._core (no validation), their difference (the
    Python-side overhead), and the peers."""
    rows = []
    for shape in ((2, 4), (256, 1024)):
        inputs = make_inputs(shape, "NCHW", dtype, seed=1)
        x = inputs["x"]
        for op in OPS:
            fns = make_candidates(op, inputs, n_threads,
                                  [i for i in ("cbn", "numpy", "torch") if i in impls])
            core = _direct_core_call(op, fns["cbn"])
            if core is not None:
                fns["core"] = core
            res = time_interleaved(fns, rounds, budget=0.3, min_sample=2e-3)
            m = {k: v["median_s"] for k, v in res.items()}
            rows.append({
                "op": op, "shape": list(shape), "dtype": x.dtype.name, "results": res,
                "python_overhead_s": (m["cbn"] - m["core"]) if "core" in m else None,
            })
    return rows


_CORE_NAMES = {"train": "train_forward", "backward": "backward", "infer": "infer"}


def _direct_core_call(op, public_call):
    """A callable that repeats the cbn._core call which `public_call` (a cbn function call)
    makes, with the same arguments, skipping cbn's Python layer; None if that fails.

    The arguments are captured by briefly wrapping the function in cbn._core, so this does not
    depend on the private signature.
    """
    name = _CORE_NAMES[op]
    real = getattr(_core, name, None)
    if real is None:
        return None
    captured = []

    def spy(*args, **kwargs):
        captured.append((args, kwargs))
        return real(*args, **kwargs)

    try:
        setattr(_core, name, spy)
        try:
            public_call()
        finally:
            setattr(_core, name, real)
    except Exception:
        return None
    if len(captured) != 1:
        return None
    args, kwargs = captured[0]
    return lambda: real(*args, **kwargs)


def measure_bandwidth(n_threads, dtype):
    """Copy bandwidth on a 25.7 MB (float32) array: the yardstick and NumPy's np.copyto
    (destination half a page apart from the source, like every output here)."""
    x = empty_at((6422528,), dtype, 64)
    np.random.default_rng(2).standard_normal(x.shape, dtype=dtype, out=x)
    dst = empty_apart(x, 2048)
    fns = {"yardstick": lambda: _core.yardstick_copy(dst, x, n_threads),
           "np.copyto": lambda: np.copyto(dst, x)}
    res = time_interleaved(fns, 7)
    return {"nbytes": x.nbytes,
            "yardstick_gbps": 2 * x.nbytes / res["yardstick"]["median_s"] / 1e9,
            "copyto_gbps": 2 * x.nbytes / res["np.copyto"]["median_s"] / 1e9,
            "results": res}


def print_header(meta, out):
    p = lambda s="": print(s, file=out)  # noqa: E731
    p("cbn benchmark report (python -m cbn.bench)")
    p(f"  CPU:      {meta['cpu']} ({meta['cpu_count']} logical CPUs), {meta['platform']}")
    p(f"  threads:  {meta['threads']} (cbn, copy yardstick"
      + (", torch" if meta["torch"] not in ("not installed", "disabled") else "")
      + "; naive NumPy is single-threaded)")
    p(f"  versions: cbn {meta['cbn']}, numpy {meta['numpy']}, torch {meta['torch']}, "
      f"python {meta['python']}")
    p(f"  OpenMP:   {'on' if meta['openmp'] else 'OFF (serial build: every kernel runs on 1 thread)'}")
    p(f"  timing:   {meta['dtype']}; {meta['rounds']} interleaved rounds, {meta['stat']} of "
      f"{'cold (caches evicted)' if meta['cold'] else 'warm'} samples; slow candidates get "
      f"fewer rounds")
    p(f"            (>= {meta['min_slow_samples']}, about {meta['budget_s']} s per candidate and "
      f"case: naive NumPy on big shapes)")
    load = meta.get("other_load_before")
    if load is not None:
        p(f"  load:     other processes used {load:.2f} cores before the run"
          + ("  WARNING: the machine is busy; multithreaded timings will be slow and noisy"
             if load > BUSY else ""))
    bw = meta.get("bandwidth")
    if bw:
        p(f"  copy bandwidth ({bw['nbytes'] / 1e6:.1f} MB): yardstick {bw['yardstick_gbps']:.1f}"
          f" GB/s at {meta['threads']} thread(s), np.copyto {bw['copyto_gbps']:.1f} GB/s "
          f"(1 thread)")
    p()


def print_table(cases, out):
    p = lambda s="": print(s, file=out)  # noqa: E731
    head = (f"{'op':<8} {'layout':<6} {'shape':<16} {'MB':>6}  {'cbn':>8} {'alloc':>8} "
            f"{'numpy':>8} {'torch':>8} {'copy':>8}  {'xNumPy':>7} {'xTorch':>7} {'GB/s':>6} "
            f"{'/copy':>6}")
    p(head)
    p("-" * len(head))
    last_op = None
    busy = False
    for c in cases:
        if last_op is not None and c["op"] != last_op:
            p()
        last_op = c["op"]
        r = c["results"]
        ms = [None if k not in r else r[k][c["stat"] + "_s"] * 1e3
              for k in ("cbn", "cbn_alloc", "numpy", "torch", "copy")]
        flag = ""
        bad = [k for k, e in c["max_rel_error"].items() if e > 1e-3]
        if bad:
            flag = "  !mismatch: " + ",".join(bad)
        if (c.get("other_load") or 0) > BUSY:
            flag += f"  *busy {c['other_load']:.1f}"
            busy = True
        p(f"{c['op']:<8} {c['layout']:<6} {shape_str(c['shape']):<16} {c['nbytes'] / 1e6:>6.2f}  "
          + " ".join(_fmt(v, ".3f", 8) for v in ms) + "  "
          + f"{_fmt(c['speedup_vs_numpy'], '.1f', 7)} {_fmt(c['speedup_vs_torch'], '.2f', 7)} "
          + f"{_fmt(c['gbps'], '.1f', 6)} {_fmt(c['copy_ratio'], '.2f', 6)}{flag}")
    p()
    p(f"ms: {cases[0]['stat'] if cases else 'median'} time per call. cbn: outputs preallocated (out=); alloc: cbn allocating its "
      "outputs like")
    p("the peers do. xNumPy, xTorch: peer time / cbn alloc time. GB/s: bytes that must cross "
      "memory")
    p("(train, infer: x + y; backward: x + dy + dx) / cbn time. /copy: cbn time / copy time "
      "(copy of x")
    p("into a preallocated array on the same threads).")
    if busy:
        p("*busy N: other processes kept N cores busy while this case ran: its timings are "
          "unreliable.")


def _is_busy(c):
    return (c.get("other_load") or 0) > BUSY


def summarize(cases):
    """Geometric means, per op and overall, of the cases not flagged busy (all cases when every
    one is flagged); loads are over all cases."""
    loads = [c["other_load"] for c in cases if c.get("other_load") is not None]
    clean = [c for c in cases if not _is_busy(c)]
    n_busy = len(cases) - len(clean)
    if clean:
        cases = clean
    s = {"busy_cases_left_out": n_busy if clean else 0,
         "speedup_vs_numpy_geomean": geomean([c["speedup_vs_numpy"] for c in cases]),
         "speedup_vs_torch_geomean": geomean([c["speedup_vs_torch"] for c in cases]),
         "copy_ratio_geomean": geomean([c["copy_ratio"] for c in cases]),
         "by_op": {}}
    vs_torch = [c for c in cases if c["speedup_vs_torch"] is not None]
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
        s["by_op"][op] = {
            "speedup_vs_numpy_geomean": geomean([c["speedup_vs_numpy"] for c in cs]),
            "speedup_vs_torch_geomean": geomean([c["speedup_vs_torch"] for c in cs]),
            "copy_ratio_geomean": geomean([c["copy_ratio"] for c in cs]),
            "copy_ratio_geomean_4_100MB": geomean(ratios_big),
            "copy_ratio_max_4_100MB": max(ratios_big) if ratios_big else None,
            "copy_ratio_target": COPY_TARGETS[op],
        }
    return s


def print_summary(s, out):
    p = lambda s_="": print(s_, file=out)  # noqa: E731
    p()
    left_out = s.get("busy_cases_left_out")
    p("Geometric means over the cases above"
      + (f" ({left_out} flagged *busy left out; rerun on an idle machine):" if left_out else ":"))
    p(f"  {'':<10} {'xNumPy':>8} {'xTorch':>8} {'/copy':>7}   {'/copy on 4-100 MB tensors':<26}")
    for op, v in s["by_op"].items():
        big = ("n/a (no 4-100 MB case)" if v["copy_ratio_geomean_4_100MB"] is None else
               f"{v['copy_ratio_geomean_4_100MB']:.2f}, max {v['copy_ratio_max_4_100MB']:.2f}"
               f" (target <= {v['copy_ratio_target']})")
        p(f"  {op:<10} {_fmt(v['speedup_vs_numpy_geomean'], '.1f', 8)} "
          f"{_fmt(v['speedup_vs_torch_geomean'], '.2f', 8)} "
          f"{_fmt(v['copy_ratio_geomean'], '.2f', 7)}   {big}")
    p(f"  {'all':<10} {_fmt(s['speedup_vs_numpy_geomean'], '.1f', 8)} "
      f"{_fmt(s['speedup_vs_torch_geomean'], '.2f', 8)} {_fmt(s['copy_ratio_geomean'], '.2f', 7)}")
    w = s.get("worst_vs_torch")
    if w:
        p(f"  slowest case against PyTorch: {w['op']} {w['layout']} {shape_str(w['shape'])}: "
          f"{w['speedup']:.2f}x")
    load = s.get("other_load")
    if load:
        p(f"  other processes' CPU load while measuring: mean {load['mean']:.2f}, "
          f"max {load['max']:.2f} cores" + ("  (WARNING: timings unreliable)"
                                           if load["max"] > BUSY else ""))


def print_overhead(rows, out):
    p = lambda s="": print(s, file=out)  # noqa: E731
    p()
    p("Per-call cost (NCHW, us per call; cbn with out=; 'C kernel' calls cbn._core directly, "
      "skipping")
    p("validation; 'python' = cbn - C kernel, the Python-side overhead):")
    p(f"  {'op':<9} {'shape':<9} {'cbn':>8} {'C kernel':>9} {'python':>7} {'numpy':>8} "
      f"{'torch':>8}")
    for r in rows:
        us = {k: v["median_s"] * 1e6 for k, v in r["results"].items()}
        po = r["python_overhead_s"]
        p(f"  {r['op']:<9} {shape_str(r['shape']):<9} {_fmt(us.get('cbn'), '.1f', 8)} "
          f"{_fmt(us.get('core'), '.1f', 9)} {_fmt(None if po is None else po * 1e6, '.1f', 7)} "
          f"{_fmt(us.get('numpy'), '.1f', 8)} {_fmt(us.get('torch'), '.1f', 8)}")


def matplotlib_available():
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None


def _hatch_busy(patches, cases):
    for patch, c in zip(patches, cases):
        if (c.get("other_load") or 0) > BUSY:
            patch.set_hatch("///")
            patch.set_edgecolor("black")


def plot(cases, path):
    """One row per op: speed-ups over the peers (left), cbn/copy ratios (right), log scales."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        print(f"--plot: matplotlib is not installed, no plot written to {path} "
              f"(pip install matplotlib)", file=sys.stderr)
        return False
    ops = [op for op in OPS if any(c["op"] == op for c in cases)]
    n_max = max(sum(1 for c in cases if c["op"] == op) for op in ops)
    width_in = max(5.0, 0.42 * n_max + 1.5)
    fig, axes = plt.subplots(len(ops), 2, figsize=(2 * width_in, 3.6 * len(ops) + 0.6),
                             squeeze=False)
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    for i, op in enumerate(ops):
        cs = [c for c in cases if c["op"] == op]
        xs = np.arange(len(cs))
        labels = [f"{shape_str(c['shape'])} {c['layout']}" for c in cs]
        ax = axes[i][0]
        series = [("vs PyTorch", "speedup_vs_torch", "tab:orange"),
                  ("vs naive NumPy", "speedup_vs_numpy", "tab:blue")]
        series = [sr for sr in series if any(c[sr[1]] is not None for c in cs)]
        width = 0.8 / max(1, len(series))
        for k, (label, key, color) in enumerate(series):
            vals = [c[key] if c[key] is not None else np.nan for c in cs]
            bars = ax.bar(xs + (k - (len(series) - 1) / 2) * width, vals, width, label=label,
                          color=color)
            ax.bar_label(bars, labels=[("" if np.isnan(v) else f"{v:.1f}") for v in vals],
                         fontsize=6, padding=1)
            _hatch_busy(bars.patches, cs)
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_title(f"{op}: speed-up of cbn (peer time / cbn time, higher is better)",
                     fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        ax = axes[i][1]
        vals = [c["copy_ratio"] for c in cs]
        target = [4e6 <= c["nbytes"] <= 100e6 for c in cs]
        bars = ax.bar(xs, vals, 0.6, color=["tab:green" if t else "silver" for t in target])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=6, padding=1)
        _hatch_busy(bars.patches, cs)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=2))
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(COPY_TARGETS[op], color="tab:red", ls="--", lw=1,
                   label=f"target {COPY_TARGETS[op]} (4-100 MB tensors, green)")
        ax.set_title(f"{op}: cbn time / time of copying x (lower is better)", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
        for ax in axes[i]:
            ax.yaxis.set_major_formatter(fmt)
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=50, ha="right", fontsize=7)
            ax.grid(axis="y", which="major", alpha=0.3)
            ax.margins(y=0.15)
    first = cases[0] if cases else {}
    busy = any((c.get("other_load") or 0) > BUSY for c in cases)
    fig.suptitle(f"cbn batch norm, {first.get('dtype', '')}: {first.get('stat', 'median')}s of "
                 f"interleaved runs" + ("  (hatched: measured while other processes were "
                                        "busy, unreliable)" if busy else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def build_parser():
    ap = argparse.ArgumentParser(
        prog="python -m cbn.bench",
        description="Time cbn's batch norm against naive NumPy, PyTorch and a copy of the same "
                    "array (interleaved round-robin, medians).")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for cbn, the copy and PyTorch (default: cbn.get_num_threads())")
    ap.add_argument("--layout", choices=("NCHW", "NHWC", "both"), default="both")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--shapes", type=parse_shapes, default=None,
                    help="comma-separated shapes in NCHW order, e.g. 32x64x56x56,256x1024 "
                         "(permuted for NHWC); default: the issue's 7 shapes")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of "
                    + ",".join(OPS))
    ap.add_argument("--repeat", type=int, default=None,
                    help="interleaved rounds per case (default 15, 3 with --quick)")
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
                    help="fewer rounds, naive NumPy timed once per case (about 10 s)")
    ap.add_argument("--json", metavar="FILE", help="write every raw number to FILE")
    ap.add_argument("--plot", metavar="FILE.png", help="bar chart (needs matplotlib)")
    ap.add_argument("--no-numpy", action="store_true", help="skip the naive NumPy peer")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    ap.add_argument("--no-overhead", action="store_true",
                    help="skip the per-call cost section")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    for o in ops:
        if o not in OPS:
            build_parser().error(f"--ops: unknown op {o!r}; choose from {','.join(OPS)}")
    layouts = list(LAYOUTS) if args.layout == "both" else [args.layout]
    shapes = args.shapes or DEFAULT_SHAPES
    threads = cbn.get_num_threads() if args.threads is None else args.threads
    if threads < 1:
        build_parser().error("--threads must be >= 1")
    rounds = args.repeat if args.repeat is not None else (3 if args.quick else 15)
    if rounds < 1:
        build_parser().error("--repeat must be >= 1")
    budget = args.budget if args.budget is not None else (0.1 if args.quick else 0.4)
    min_slow = 1 if args.quick else min(3, rounds)
    dtype = np.dtype(args.dtype)

    torch = None if args.no_torch else import_torch()
    if torch is not None:
        torch.set_num_threads(threads)
    torch_desc = ("disabled" if args.no_torch else
                  "not installed" if torch is None else torch.__version__)
    impls = ["cbn", "cbn_alloc"] + ([] if args.no_numpy else ["numpy"]) \
        + ([] if torch is None else ["torch"]) + ["copy"]

    plot_path = args.plot
    if plot_path and not matplotlib_available():
        print(f"--plot: matplotlib is not installed (pip install matplotlib); continuing "
              f"without writing {plot_path}", file=sys.stderr)
        plot_path = None
    out = sys.stdout
    meta = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "threads": threads, "cbn": cbn.__version__, "numpy": np.__version__,
        "torch": torch_desc, "python": platform.python_version(),
        "openmp": bool(cbn.openmp_enabled()), "dtype": dtype.name, "rounds": rounds,
        "budget_s": budget, "min_slow_samples": min_slow, "impls": impls, "stat": args.stat,
        "cold": bool(args.cold), "llc_bytes": last_level_cache_bytes(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    t_start = time.perf_counter()
    settle_allocator()
    progress = _Progress()
    progress.show("checking that the machine is idle ...")
    meta["other_load_before"] = idle_check(0.5)
    progress.show("measuring copy bandwidth ...")
    meta["bandwidth"] = measure_bandwidth(threads, dtype)
    progress.done()
    print_header(meta, out)
    out.flush()

    flush = CacheFlusher(threads) if args.cold else None
    monitor = CpuMonitor()
    total = len(shapes) * len(layouts) * len(ops)
    cases = []
    i = 0
    try:
        for shape in shapes:
            for layout in layouts:
                ashape = layout_shape(shape, layout)
                inputs = make_inputs(ashape, layout, dtype, need_dy="backward" in ops)
                for op in ops:
                    i += 1
                    progress.show(f"[{i}/{total}] {op} {layout} ({','.join(map(str, ashape))}) "
                                  f"...")
                    cases.append(run_case(op, inputs, threads, impls, rounds, budget, min_slow,
                                          args.stat, flush))
                    cases[-1]["other_load"] = monitor.sample()
                del inputs
        overhead = None
        if not args.no_overhead:
            progress.show("per-call cost ...")
            overhead = measure_overhead(threads, impls, rounds, dtype)
    finally:
        progress.done()
    cases.sort(key=lambda c: (OPS.index(c["op"]), [tuple(layout_shape(s, c["layout"]))
                                                   for s in shapes].index(tuple(c["shape"])),
                              LAYOUTS.index(c["layout"])))
    print_table(cases, out)
    summary = summarize(cases)
    print_summary(summary, out)
    if overhead:
        print_overhead(overhead, out)
    elapsed = time.perf_counter() - t_start
    print(f"\n(total {elapsed:.1f} s)", file=out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "cases": cases, "summary": summary, "overhead": overhead,
                       "elapsed_s": elapsed}, f, indent=1)
        print(f"raw numbers written to {args.json}", file=out)
    if plot_path:
        if plot(cases, plot_path):
            print(f"plot written to {plot_path}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
