"""Memory stays flat over thousands of calls of every op (with and without out=, in place,
strided inputs that get copied, the fused ReLU, and calls that raise): no Python-level leak
(tracemalloc, which sees NumPy's array buffers) and no C-level leak (process RSS from
/proc/self/statm, which sees the kernels' malloc'd scratch).

Each kernel call mallocs O(C) scratch plus a few values per 4096-value chunk (about 4 KB for
the shapes here); leaking it would add tens of MB over the calls made, far above the tolerances.
"""
import gc
import os
import tracemalloc

import numpy as np
import pytest

import cbn

CALLS_PER_OP = 2000
WARMUP = 200
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# Allowed growth (measured here: 0 bytes of RSS, < 200 bytes traced, over 50000 calls). RSS:
# allocator noise (malloc arenas of the OpenMP threads, NumPy's small-block cache); traced: a few
# live objects of bookkeeping. A leak of 1 KiB per call of any single op exceeds the RSS limit, one
# of 8 bytes per call the traced limit.
RSS_TOLERANCE = 2 * 2 ** 20
TRACED_TOLERANCE = 16 * 2 ** 10


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _make_ops(dtype, layout, n_threads):
    rng = np.random.default_rng(0)
    shape = (6, 48, 9, 10) if layout == "NCHW" else (6, 9, 10, 48)
    C = 48
    x = (3 + 2 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    xs = np.asfortranarray(x)                         # strided: copied on every call
    w = rng.uniform(0.5, 2, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    w64 = w.astype(np.float64 if dtype == np.float32 else np.float32)   # cast on every call
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    y, m, s = cbn.batch_norm_train(x, w, b, layout=layout, activation="relu")
    out = np.empty_like(x)
    xi, dyi = x.copy(), dy.copy()                     # in-place buffers (values stay finite)
    ro = np.empty_like(x)
    ro.setflags(write=False)
    x1 = np.ones((1, C) + (1,) * (len(shape) - 2), dtype) if layout == "NCHW" else \
        np.ones((1,) * (len(shape) - 1) + (C,), dtype)
    kw = dict(layout=layout, n_threads=n_threads)

    ops = {
        "train": lambda: cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, **kw),
        "train-out": lambda: cbn.batch_norm_train(x, w, b, out=out, **kw),
        "train-in-place": lambda: cbn.batch_norm_train(xi, w, b, out=xi, **kw),
        "train-strided-cast": lambda: cbn.batch_norm_train(xs, w64, None, **kw),
        "train-relu": lambda: cbn.batch_norm_train(x, w, b, activation="relu", **kw),
        "backward": lambda: cbn.batch_norm_backward(dy, x, m, s, w, **kw),
        "backward-out": lambda: cbn.batch_norm_backward(dy, x, m, s, w, out=out, **kw),
        "backward-in-place": lambda: cbn.batch_norm_backward(dyi, x, m, s, w, out=dyi, **kw),
        "backward-strided-relu": lambda: cbn.batch_norm_backward(
            np.asfortranarray(dy), xs, m, s, w64, y=y, activation="relu", **kw),
        "infer": lambda: cbn.batch_norm_infer(x, rm, rv, w, b, **kw),
        "infer-out": lambda: cbn.batch_norm_infer(x, rm, rv, w, b, out=out, **kw),
        "infer-in-place": lambda: cbn.batch_norm_infer(xi, m, 1 / s.astype(np.float64) ** 2,
                                                       w, b, out=xi, **kw),
        "infer-strided-relu": lambda: cbn.batch_norm_infer(xs, rm, rv, w64, None,
                                                           activation="relu", **kw),
        "fold": lambda: cbn.fold_scale_shift(rm, rv, w, b),
        "fold-cast": lambda: cbn.fold_scale_shift(rm.astype(np.int64), rv, w64, None),
    }
    bad = {
        "raise-layout": lambda: cbn.batch_norm_train(x, w, b, layout="NCW"),
        "raise-dtype": lambda: cbn.batch_norm_infer(x.astype(np.int32), rm, rv, **kw),
        "raise-weight-shape": lambda: cbn.batch_norm_backward(dy, x, m, s, w[:-1], **kw),
        "raise-out-readonly": lambda: cbn.batch_norm_train(x, w, b, out=ro, **kw),
        "raise-out-dtype": lambda: cbn.batch_norm_infer(x, rm, rv, out=out.astype(np.float16),
                                                        **kw),
        "raise-one-value": lambda: cbn.batch_norm_train(x1, **kw),
        "raise-momentum": lambda: cbn.batch_norm_train(x, running_mean=rm, running_var=rv,
                                                       momentum=2.0, **kw),
        "raise-threads": lambda: cbn.batch_norm_backward(dy, x, m, s, n_threads=0,
                                                         layout=layout),
        "raise-relu-no-y": lambda: cbn.batch_norm_backward(dy, x, m, s, activation="relu", **kw),
        "raise-fold": lambda: cbn.fold_scale_shift(rm, rv[:-1]),
    }
    return ops, bad


def _run(ops, bad, n):
    for _ in range(n):
        for f in ops.values():
            f()
        for f in bad.values():
            try:
                f()
            except (TypeError, ValueError):
                pass
            else:
                raise AssertionError("expected an error")


@pytest.mark.parametrize("dtype,layout,n_threads", [
    (np.float32, "NCHW", 2), (np.float64, "NHWC", 2), (np.float32, "NHWC", 1),
], ids=["float32-NCHW-2t", "float64-NHWC-2t", "float32-NHWC-1t"])
def test_memory_flat_over_thousands_of_calls(dtype, layout, n_threads):
    ops, bad = _make_ops(dtype, layout, n_threads)
    _run(ops, bad, WARMUP)
    gc.collect()
    rss0 = _rss()
    tracemalloc.start()
    try:
        _run(ops, bad, 50)                    # tracemalloc's own tables settle
        gc.collect()
        traced0 = tracemalloc.get_traced_memory()[0]
        rss1 = _rss()
        _run(ops, bad, CALLS_PER_OP)
        gc.collect()
        traced1 = tracemalloc.get_traced_memory()[0]
        rss2 = _rss()
        if traced1 - traced0 > TRACED_TOLERANCE:
            top = tracemalloc.take_snapshot().statistics("lineno")[:5]
            raise AssertionError(f"traced memory grew by {traced1 - traced0} bytes over "
                                 f"{CALLS_PER_OP * (len(ops) + len(bad))} calls; top: {top}")
    finally:
        tracemalloc.stop()
    calls = CALLS_PER_OP * (len(ops) + len(bad))
    assert rss2 - rss1 <= RSS_TOLERANCE, (
        f"RSS grew by {(rss2 - rss1) / 2 ** 20:.2f} MiB over {calls} calls "
        f"({(rss2 - rss1) / calls:.0f} bytes per call; after warm-up: "
        f"{(rss1 - rss0) / 2 ** 20:.2f} MiB)")


def test_rss_would_see_a_leak():
    """Control: the RSS probe sees memory that stays allocated (so a flat RSS means something)."""
    before = _rss()
    keep = np.ones(8 << 20)           # 64 MiB, touched; above glibc's mmap threshold, so fresh
    grown = _rss() - before           # pages (not heap memory that earlier tests freed)
    del keep
    assert grown >= 48 * 2 ** 20, grown


def test_memory_flat_over_allocating_calls_with_large_outputs():
    """Outputs of 256 KiB and more go through the output cache (cbn._output_cache): a block
    is kept when its array goes and handed to the next output of its size, so 3000 allocating
    calls with 2 MiB outputs keep RSS flat (a lost block per call would add 6 GB), and what is
    held stays within the cache's limits."""
    from cbn import _output_cache
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64, 16, 16)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
    y, mean, invstd = cbn.batch_norm_train(x)

    def calls():
        cbn.batch_norm_infer(x, rm, rv)
        cbn.batch_norm_train(x)
        cbn.batch_norm_backward(dy, x, mean, invstd)

    for _ in range(20):
        calls()
    before = _rss()
    for _ in range(1000):
        calls()
    assert _rss() - before < RSS_TOLERANCE * 4
    blocks, held, limit = _output_cache.state()
    assert blocks <= 8 and held <= limit
