"""The timing engine: candidates timed round-robin in one loop, so a noisy machine hits all alike.

A candidate is anything with ``sample(number, warm) -> seconds per call``: `Local` wraps a
zero-argument callable of this process; `worker.Remote` asks a worker process, which times its
own calls (so the pipe is never inside a measurement).
"""
import gc
import math
import os
import statistics
import time

import numpy as np

from . import _copy


def time_calls(fn, number):
    """Seconds per call of `number` back-to-back calls of fn."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


class Local:
    """A zero-argument callable of this process as a candidate."""

    def __init__(self, fn):
        self.fn = fn

    def sample(self, number, warm):
        if warm:
            self.fn()
        return time_calls(self.fn, number)


def time_interleaved(candidates, rounds, budget=0.5, min_sample=1e-3, min_slow_samples=1,
                     flush=None):
    """Time candidates round-robin, `rounds` times; returns {name: stats}.

    `candidates`: {name: zero-argument callable or candidate (see module doc)}. Each candidate is
    first called once (warm-up) and timed once more. Warm mode (flush=None): a sample is one
    call, or a loop of calls lasting at least `min_sample` seconds for fast ones (per-call time
    reported), right after one untimed call of the same candidate, so every sample is "warm"
    (what fits in cache is there) whichever candidate ran before it. Cold mode (flush: a
    callable that evicts the caches, e.g. CacheFlusher): a sample is one call right after
    flush(). A candidate whose `rounds` samples would take more than `budget` seconds gets
    fewer samples (at least `min_slow_samples`), spread evenly over the rounds. Each round
    starts with a different candidate. The garbage collector is off while timing.
    stats: median_s, min_s, mean_s, samples (seconds per call), number (calls per sample).
    """
    cands = {name: (c if hasattr(c, "sample") else Local(c)) for name, c in candidates.items()}
    names = list(cands)
    number, count = {}, {}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in names:
            est = max(cands[name].sample(1, warm=True), 1e-9)
            if flush is None:
                number[name] = max(1, min(100000, int(math.ceil(min_sample / est))))
                cost = est * (number[name] + 1)
            else:
                number[name] = 1
                cost = est
            count[name] = max(min(rounds, min_slow_samples), min(rounds, int(budget / cost)))
        samples = {name: [] for name in names}
        for i in range(rounds):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                n = count[name]
                if (i * n) // rounds < ((i + 1) * n) // rounds:
                    if flush is not None:
                        flush()
                    samples[name].append(cands[name].sample(number[name], warm=flush is None))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: {"median_s": statistics.median(s), "min_s": min(s),
                   "mean_s": statistics.fmean(s), "samples": s, "number": number[name]}
            for name, s in samples.items()}


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
        _copy.copy(self.dst, self.src, self.n_threads)
