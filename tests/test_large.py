"""Tensors of more than 2^31 elements: indexing is 64-bit throughout.

A float32 array of just over 2^31 values (8.6 GB) is normalized in place (training forward with
running statistics, `out=x`), then run through inference in place, in both layouts. Statistics
and running statistics are checked against exact float64 sums; every value of the training
output, and the inference output of every 8th block and of everything past index 2^31 - 2^20,
is checked against the float64 formulas, block by block, without a second copy of the array
(the data are regenerated from per-block seeds). Past index 2^31 is where a 32-bit index would
wrap; channels-first (2, 2, 2^29 + 3) also has more than 2^30 values per channel, and in
channels-last (2, 2^24 + 1, 64) the row count fits 32 bits but row * C does not.

Marked slow (run in CI); skipped, with the reason, when the machine does not have about twice
the array's size of memory available. One buffer serves both layouts. About 80 s on 2 cores
(peak RSS 8.5 GB), mostly generating and checking the data in NumPy; the kernels take ~1 s.
"""
import math
import os

import numpy as np
import pytest

import cbn

pytestmark = pytest.mark.slow

CASES = [("NCHW", (2, 2, 2 ** 29 + 3)), ("NHWC", (2, 2 ** 24 + 1, 64))]
N_VALUES = max(math.prod(shape) for _, shape in CASES)
SEED = 20240611
BLOCK = 1 << 20                                   # values per generated block
MOMENTUM = 0.5
EPS = 1e-5
U32 = 2.0 ** -24


def _available_bytes():
    """Memory this process can still get: the larger of os.sysconf's free pages and the
    kernel's MemAvailable estimate, capped by a cgroup (v2 or v1) limit when there is one."""
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = max(avail, int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2 ** 60:
            avail = min(avail, int(limit) - usage)
    return avail


@pytest.fixture(scope="module")
def buffer():
    """One float32 buffer for every case (touching 8.6 GB of fresh memory is itself slow)."""
    nbytes = N_VALUES * 4
    need = 2 * nbytes
    avail = _available_bytes()
    if avail < need:
        pytest.skip(f"needs ~{need / 2 ** 30:.1f} GiB of available memory for a "
                    f"{nbytes / 2 ** 30:.1f} GiB float32 array of {N_VALUES} elements, "
                    f"{avail / 2 ** 30:.1f} GiB available")
    buf = np.empty(N_VALUES, np.float32)
    yield buf
    del buf


class Data:
    """Per-channel parameters of one case, and its blocks: channels-first blocks lie within one
    run (one channel, rows of the (N*C, S) view); channels-last blocks are row ranges of the
    (rows, C) view. Block values: loc + spread * (uniform - 0.5), from the block's own seed."""

    def __init__(self, layout, shape):
        self.layout, self.shape = layout, shape
        self.cf = layout == "NCHW"
        self.C = shape[1] if self.cf else shape[-1]
        rng = np.random.default_rng(SEED)
        self.loc = rng.uniform(-300, 300, self.C).astype(np.float32)
        self.spread = rng.uniform(0.5, 3, self.C).astype(np.float32)
        self.weight = (rng.uniform(0.5, 2, self.C) * rng.choice([-1, 1], self.C)) \
            .astype(np.float32)
        self.bias = rng.standard_normal(self.C).astype(np.float32)

    def view(self, x):
        return x.reshape(-1, x.shape[-1]) if self.cf else x.reshape(-1, self.C)

    def blocks(self):
        """(key, channel or None, index into view, flat offset of the block's first value)."""
        if self.cf:
            S = self.shape[-1]
            for r in range(self.shape[0] * self.C):
                for k in range(0, S, BLOCK):
                    yield (r, k), r % self.C, (r, slice(k, min(k + BLOCK, S))), r * S + k
        else:
            rows = math.prod(self.shape[:-1])
            step = BLOCK // self.C
            for k in range(0, rows, step):
                yield (k,), None, (slice(k, min(k + step, rows)),), k * self.C

    def values(self, key, ch, n):
        gen = np.random.Generator(np.random.PCG64([SEED, *key]))
        if ch is not None:
            z = gen.random(n, dtype=np.float32) - np.float32(0.5)
            return self.loc[ch] + self.spread[ch] * z
        z = gen.random((n, self.C), dtype=np.float32) - np.float32(0.5)
        return self.loc + self.spread * z

    def per_channel(self, a, ch):
        a = np.asarray(a, np.float64)
        return a[ch] if ch is not None else a


def _fill(x, data):
    """Write the data; return the exact per-channel mean and biased variance (float64 sums of
    the deviations from loc, which is within a spread of the mean: nothing cancels)."""
    view = data.view(x)
    C = data.C
    s1 = [[] for _ in range(C)]
    s2 = [[] for _ in range(C)]
    scratch = np.empty(BLOCK, np.float64)
    for key, ch, idx, _ in data.blocks():
        v = data.values(key, ch, view[idx].shape[0])
        view[idx] = v
        d = scratch[:v.size].reshape(v.shape)
        np.subtract(v, data.per_channel(data.loc, ch), out=d)
        if ch is not None:
            s1[ch].append(float(d.sum()))
            s2[ch].append(float(np.dot(d, d)))
        else:
            a, b = d.sum(axis=0), np.einsum("ij,ij->j", d, d)
            for c in range(C):
                s1[c].append(float(a[c]))
                s2[c].append(float(b[c]))
    M = x.size // C
    d_mean = np.array([math.fsum(s) / M for s in s1])
    mean = data.loc.astype(np.float64) + d_mean
    var = np.array([math.fsum(s) / M for s in s2]) - d_mean ** 2
    return mean, var


def _verify(x, data, a, b, bound, what, select=lambda offset: True):
    """Check the selected blocks of x: |x - (a * v + b)| <= bound per channel, with v the
    block's original values (regenerated); a, b, bound are per-channel float64."""
    view = data.view(x)
    want = np.empty(BLOCK, np.float64)
    err = np.empty(BLOCK, np.float64)
    worst, where, checked = 0.0, None, 0
    for key, ch, idx, offset in data.blocks():
        if not select(offset):
            continue
        got = view[idx]
        v = data.values(key, ch, got.shape[0])
        w = want[:v.size].reshape(v.shape)
        e = err[:v.size].reshape(v.shape)
        np.multiply(v, data.per_channel(a, ch), out=w)
        np.add(w, data.per_channel(b, ch), out=w)
        np.subtract(got, w, out=e)
        np.abs(e, out=e)
        ratio = float(np.max(e.max(axis=0) / data.per_channel(bound, ch)))
        checked += got.size
        if not ratio <= worst:                      # NaN counts as a failure too
            worst, where = ratio, (key, offset)
            if not ratio <= 1.0:
                break
    assert worst <= 1.0, (f"{what}: error {worst:.3g} x the tolerance in the block at flat "
                          f"index {where[1]} (key {where[0]})")
    return checked


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_more_than_2_31_elements_in_place(buffer, case):
    layout, shape = case
    n = math.prod(shape)
    assert n > 2 ** 31
    x = buffer[:n].reshape(shape)
    data = Data(layout, shape)
    C = data.C
    mean, var = _fill(x, data)
    M = n // C
    invstd = 1.0 / np.sqrt(var + EPS)
    sd = np.sqrt(var)

    # training forward, in place, with running statistics
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y, m, s = cbn.batch_norm_train(x, data.weight, data.bias, running_mean=rm, running_var=rv,
                                   momentum=MOMENTUM, eps=EPS, layout=layout, out=x)
    assert y is x
    assert np.all(np.abs(m - mean) <= 2 * U32 * np.abs(mean) + 1e-6 * sd), (m, mean)
    np.testing.assert_allclose(s, invstd, rtol=1e-6)
    np.testing.assert_allclose(rm, MOMENTUM * mean, rtol=4 * U32, atol=1e-6 * sd.max())
    np.testing.assert_allclose(rv, (1 - MOMENTUM) + MOMENTUM * var * M / (M - 1), rtol=1e-6)

    # y = w * (v - mean) * invstd + b = a * v + c per channel; |xhat| is at most xmax (the data
    # lie within loc +- spread/2); tolerance: 16 roundings of the terms, plus the statistics'
    w64, b64 = data.weight.astype(np.float64), data.bias.astype(np.float64)
    a = w64 * invstd
    c = b64 - a * mean
    xmax = (data.spread / 2 + np.abs(data.loc - mean)) * invstd
    ybound = 16 * U32 * (np.abs(w64) * xmax + np.abs(b64)) + 1e-6 * np.abs(w64) * (xmax + 1)
    checked = _verify(x, data, a, c, ybound, "training forward (in place)")
    assert checked == n

    # inference in place on the normalized data, with the updated running statistics:
    # z = y * scale + shift, checked on every 8th block and everything from 2^31 - 2^20 on
    scale = w64 / np.sqrt(rv.astype(np.float64) + EPS)
    shift = b64 - rm.astype(np.float64) * scale
    z = cbn.batch_norm_infer(x, rm, rv, data.weight, data.bias, eps=EPS, layout=layout, out=x)
    assert z is x
    ymax = np.abs(w64) * xmax + np.abs(b64)
    zbound = np.abs(scale) * ybound + 16 * U32 * (np.abs(scale) * ymax + np.abs(shift))
    tail = 2 ** 31 - BLOCK
    checked = _verify(x, data, a * scale, c * scale + shift, zbound, "inference (in place)",
                      select=lambda off: off // BLOCK % 8 == 0 or off + BLOCK >= tail)
    assert checked > (n - tail) + n // 16
