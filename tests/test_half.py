"""16-bit storage (float16, ml_dtypes.bfloat16): 16-bit tensors, float32 parameters and
statistics (cbn_f16.c, cbn_bf16.c).

* Exactness: every kernel on 16-bit tensors equals the float32 kernel on the widened tensors,
  its tensor outputs rounded once to the storage type (NumPy's / ml_dtypes' astype, both round
  to nearest even) bit for bit, its per-channel outputs identical; both layouts, every kernel
  path (the conftest's tagged cases: 16-bit storage plans as float32 does), streaming sizes.
* The conversions themselves against NumPy / ml_dtypes for all 65536 bit patterns (widening and
  the round trip) and for float32 values around every rounding boundary (narrowing).
* Values against the float64 reference within the storage's precision; PyTorch when installed.
* Bad input (TypeError/ValueError, nothing written), bit identity across thread counts, the
  layer in mixed precision.

bfloat16 tests are skipped when ml_dtypes is absent.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import cbn
from cbn import _core
from cbn import reference as ref
from cbn import split
from conftest import (ALL_CASES, STREAM_CASES, THREAD_CASES, assert_identical, case_id, make_x,
                      n_channels)

try:
    import ml_dtypes
except ImportError:         # bfloat16 cases skip
    ml_dtypes = None

F32 = np.dtype(np.float32)
needs_ml_dtypes = pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes not installed")
HALF = [pytest.param("float16", id="f16"),
        pytest.param("bfloat16", id="bf16", marks=needs_ml_dtypes)]
# a relative step of the storage type (2^-10, 2^-7): the tolerance against float64
STEP = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}


def half(name):
    return np.dtype(np.float16) if name == "float16" else np.dtype(ml_dtypes.bfloat16)


def to_half(a, dt):
    return None if a is None else np.asarray(a, np.float32).astype(dt)


def widen(a):
    return None if a is None else np.asarray(a).astype(np.float32)


def assert_rounded_from(actual, expected32, dt, err_msg=""):
    """actual (16-bit) is expected32 (float32) rounded once to dt, bit for bit; a NaN only
    needs to be a NaN (the quiet-NaN payload is not specified)."""
    assert actual.dtype == dt, (actual.dtype, dt)
    with np.errstate(over="ignore", invalid="ignore"):    # overflow to inf is expected
        want = np.asarray(expected32, np.float32).astype(dt)
    a, w = actual.view(np.uint16), want.view(np.uint16)
    nan = np.isnan(want.astype(np.float32))
    assert np.array_equal(np.isnan(actual.astype(np.float32)), nan), err_msg
    assert_identical(np.where(nan, 0, a), np.where(nan, 0, w), err_msg)


def inputs(rng, case, dt, loc=0.0):
    """x, dy, residual in dt; weight, bias, running_mean, running_var in float32."""
    layout, shape = case
    C = n_channels(shape, layout)
    x = to_half(make_x(rng, shape, np.float32, layout, loc=loc), dt)
    dy = to_half(rng.standard_normal(shape), dt)
    res = to_half(rng.standard_normal(shape), dt)
    w = (rng.standard_normal(C) * 0.5 + 1).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    rm = (rng.standard_normal(C) * 0.1).astype(np.float32)
    rv = (rng.random(C) + 0.5).astype(np.float32)
    return layout, x, dy, res, w, b, rm, rv


# ---- exactness: 16-bit == float32 on the widened inputs, rounded once --------------------------

def check_train_and_backward(rng, case, name, activation, with_residual, n_threads=None):
    dt = half(name)
    layout, x, dy, res, w, b, rm, rv = inputs(rng, case, dt)
    res = res if with_residual else None
    rm16, rv16, rm32, rv32 = rm.copy(), rv.copy(), rm.copy(), rv.copy()
    y, mean, invstd = cbn.batch_norm_train(x, w, b, running_mean=rm16, running_var=rv16,
                                           layout=layout, activation=activation, residual=res,
                                           n_threads=n_threads)
    y32, mean32, invstd32 = cbn.batch_norm_train(widen(x), w, b, running_mean=rm32,
                                                 running_var=rv32, layout=layout,
                                                 activation=activation, residual=widen(res),
                                                 n_threads=n_threads)
    assert_rounded_from(y, y32, dt, "y")
    for got, want in ((mean, mean32), (invstd, invstd32), (rm16, rm32), (rv16, rv32)):
        assert got.dtype == F32
        assert_identical(got, want)
    yb = y if activation else None
    grads = cbn.batch_norm_backward(dy, x, mean, invstd, w, layout=layout, y=yb,
                                    activation=activation, residual=with_residual,
                                    n_threads=n_threads)
    grads32 = cbn.batch_norm_backward(widen(dy), widen(x), mean, invstd, w, layout=layout,
                                      y=widen(yb), activation=activation,
                                      residual=with_residual, n_threads=n_threads)
    assert_rounded_from(grads[0], grads32[0], dt, "dx")
    assert_identical(grads[1], grads32[1])
    assert_identical(grads[2], grads32[2])
    if with_residual:
        assert_rounded_from(grads[3], grads32[3], dt, "d_residual")
    return y, mean, invstd, grads


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_train_and_backward_equal_float32_rounded(rng, case, name):
    check_train_and_backward(rng, case, name, None, False)


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("case", [("NCHW", (4, 3, 5, 7)), ("NHWC", (4, 5, 7, 3)),
                                  ("NCHW", (12, 8, 33, 31)), ("NHWC", (8, 20, 18, 24)),
                                  ("NCHW", (4, 300, 9, 11)), ("NHWC", (2, 1, 40003))],
                         ids=case_id)
def test_relu_and_residual_equal_float32_rounded(rng, case, name):
    check_train_and_backward(rng, case, name, "relu", True)
    check_train_and_backward(rng, case, name, None, True)


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("case", STREAM_CASES, ids=case_id)
def test_streaming_sizes_equal_float32_rounded(rng, case, name):
    check_train_and_backward(rng, case, name, "relu", True)


def assert_frozen_paths_rounded(dt, layout, activation, x, dy, res, rm, rv, w, b, y=None):
    """Inference (without and with the residual) and backward through frozen statistics (with
    the residual's gradient) equal the float32 calls on the widened inputs, rounded once; the
    parameter gradients equal them exactly. y: the ReLU's output backward is given (default:
    inference's own). Returns the 16-bit backward's results."""
    for r in (None, res):
        got = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout, activation=activation,
                                   residual=r)
        want = cbn.batch_norm_infer(widen(x), rm, rv, w, b, layout=layout,
                                    activation=activation, residual=widen(r))
        assert_rounded_from(got, want, dt, "infer")
    yb = (got if y is None else y) if activation else None
    g = cbn.batch_norm_infer_backward(dy, x, rm, rv, w, layout=layout, y=yb,
                                      activation=activation, residual=True)
    g32 = cbn.batch_norm_infer_backward(widen(dy), widen(x), rm, rv, w, layout=layout,
                                        y=widen(yb), activation=activation, residual=True)
    assert_rounded_from(g[0], g32[0], dt, "dx")
    assert_identical(g[1], g32[1])
    assert_identical(g[2], g32[2])
    assert_rounded_from(g[3], g32[3], dt, "d_residual")
    return g


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("case", ALL_CASES[::2] + STREAM_CASES[:1], ids=case_id)
def test_infer_and_frozen_backward_equal_float32_rounded(rng, case, name, activation):
    dt = half(name)
    layout, x, dy, res, w, b, rm, rv = inputs(rng, case, dt)
    assert_frozen_paths_rounded(dt, layout, activation, x, dy, res, rm, rv, w, b)


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("layout, shape", [("NCHW", (3, 5, 37)), ("NHWC", (3, 37, 21))])
def test_non_finite_values_and_signed_zeros_equal_float32_rounded(rng, layout, shape, name,
                                                                  activation):
    # The elementwise pass's selects (the ReLU clamp and its gradient's mask) on NaN, +-inf and
    # -0 in x, dy and y, and a residual: float16 computes them in vectors (f16_vectors.h), with
    # masks on the runs' and rows' last values (37, 21: not multiples of 8 or 16).
    dt = half(name)
    C = shape[1] if layout == "NCHW" else shape[-1]

    def with_specials(a, k):
        flat = a.reshape(-1)
        flat[k::7], flat[k + 1::11], flat[k + 2::13], flat[k + 3::17] = (
            np.nan, np.inf, -np.inf, -0.0)
        return a.astype(dt)

    x = with_specials(rng.standard_normal(shape).astype(np.float32), 0)
    dy = with_specials(rng.standard_normal(shape).astype(np.float32), 2)
    y = with_specials(rng.standard_normal(shape).astype(np.float32), 4)
    res = with_specials(rng.standard_normal(shape).astype(np.float32), 5)
    rm = rng.standard_normal(C).astype(np.float32)
    rv = rng.random(C).astype(np.float32) + 0.5
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    g = assert_frozen_paths_rounded(dt, layout, activation, x, dy, res, rm, rv, w, b, y=y)
    # a ReLU's gradient is exactly +0 where y is not > 0 (NaN and -0 included)
    if activation:
        shut = ~(widen(y) > 0)
        assert (g[3].view(np.uint16)[shut] == 0).all()


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("case", ALL_CASES[1::2], ids=case_id)
def test_split_kernels_equal_float32(rng, case, name):
    dt = half(name)
    layout, x, dy, res, w, b, rm, rv = inputs(rng, case, dt)
    count, mean, m2 = split.batch_stats(x, layout=layout)
    count32, mean32, m2_32 = split.batch_stats(widen(x), layout=layout)
    assert count == count32
    assert_identical(mean, mean32)
    assert_identical(m2, m2_32)
    if count < 2:
        return
    invstd = 1.0 / np.sqrt(m2 / count + 1e-5)
    y = split.batch_norm_normalize(x, mean, invstd, w, b, layout=layout, activation="relu")
    y32 = split.batch_norm_normalize(widen(x), mean, invstd, w, b, layout=layout,
                                     activation="relu")
    assert_rounded_from(y, y32, dt, "normalize")
    m32 = mean.astype(np.float32)
    sums = split.batch_norm_backward_reduce(dy, x, m32, y=y, activation="relu", layout=layout)
    sums32 = split.batch_norm_backward_reduce(widen(dy), widen(x), m32, y=widen(y),
                                              activation="relu", layout=layout)
    for got, want in zip(sums, sums32):
        assert_identical(got, want)
    i32 = invstd.astype(np.float32)
    dx = split.batch_norm_backward_dx(dy, x, m32, i32, *sums, count, w, y=y, activation="relu",
                                      layout=layout)
    dx32 = split.batch_norm_backward_dx(widen(dy), widen(x), m32, i32, *sums, count, w,
                                        y=widen(y), activation="relu", layout=layout)
    assert_rounded_from(dx, dx32, dt, "backward_dx")


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("case", THREAD_CASES, ids=case_id)
def test_bit_identical_across_threads(many_threads, rng, case, name):
    dt = half(name)
    layout, x, dy, res, w, b, rm, rv = inputs(rng, case, dt)
    first = None
    for n in (1, 3, 16):
        y, mean, invstd = cbn.batch_norm_train(x, w, b, layout=layout, activation="relu",
                                               residual=res, n_threads=n)
        grads = cbn.batch_norm_backward(dy, x, mean, invstd, w, layout=layout, y=y,
                                        activation="relu", residual=True, n_threads=n)
        got = (y, mean, invstd) + tuple(grads)
        if first is None:
            first = got
        else:
            for a, b_ in zip(got, first):
                assert_identical(a.view(np.uint16) if a.dtype == dt else a,
                                 b_.view(np.uint16) if b_.dtype == dt else b_, f"{n} threads")


@pytest.mark.parametrize("name", HALF)
def test_output_at_odd_two_byte_offsets(rng, name):
    """Streamed outputs starting 2, 30 and 62 bytes past a cache line (the peeling to whole
    64-byte lines in 2-byte elements), and one ending mid-line: same bits as a fresh array."""
    dt = half(name)
    case = ("NCHW", (4, 3, 600, 700))
    layout, x, dy, res, w, b, rm, rv = inputs(rng, case, dt)
    want = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout)
    for skip in (1, 15, 31):
        raw = np.zeros(x.size + 64, dt)
        base = (-raw.ctypes.data % 64) // 2 + skip
        out = raw[base:base + x.size].reshape(x.shape)
        got = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout, out=out)
        assert got is out
        assert_identical(out.view(np.uint16), want.view(np.uint16))
        assert not raw[:base].view(np.uint16).any()
        assert not raw[base + x.size:].view(np.uint16).any()


# Run in a subprocess at one CPU level (CBN_CPU_LEVEL): 16-bit train, backward and inference
# against float32 at that level, on shapes of three paths, and on runs (NCHW) and rows (NHWC)
# of every length up to 40 and around the 128-value conversion block: each length leaves a
# different tail for the 16- and 8-value conversions (masked at v4, padded at v3); prints "ok".
_LEVEL_CHECK = """
import numpy as np, cbn
names = ["float16"]
try:
    import ml_dtypes
    names.append("bfloat16")
except ImportError:
    pass
rng = np.random.default_rng(5)
for name in names:
    dt = np.dtype(np.float16) if name == "float16" else np.dtype(ml_dtypes.bfloat16)
    lengths = list(range(1, 41)) + [127, 128, 129, 255, 257]
    shapes = ([("NCHW", (12, 8, 33, 31)), ("NCHW", (4, 300, 9, 11)), ("NHWC", (8, 20, 18, 24))]
              + [("NCHW", (5, 3, n)) for n in lengths] + [("NHWC", (9, 2, n)) for n in lengths])
    for layout, shape in shapes:
        x = rng.standard_normal(shape).astype(dt)
        dy = rng.standard_normal(shape).astype(dt)
        w = rng.random(x.shape[1 if layout == "NCHW" else -1]).astype(np.float32) + 0.5
        y, m, s = cbn.batch_norm_train(x, w, layout=layout, activation="relu")
        y32, m32, s32 = cbn.batch_norm_train(x.astype(np.float32), w, layout=layout,
                                             activation="relu")
        assert (y.view(np.uint16) == y32.astype(dt).view(np.uint16)).all(), (name, shape)
        assert (m == m32).all() and (s == s32).all()
        g = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout, y=y, activation="relu")
        g32 = cbn.batch_norm_backward(dy.astype(np.float32), x.astype(np.float32), m, s, w,
                                      layout=layout, y=y.astype(np.float32), activation="relu")
        assert (g[0].view(np.uint16) == g32[0].astype(dt).view(np.uint16)).all(), (name, shape)
        assert (g[1] == g32[1]).all() and (g[2] == g32[2]).all()
        yi = cbn.batch_norm_infer(x, m, 1 / s**2, w, layout=layout)
        yi32 = cbn.batch_norm_infer(x.astype(np.float32), m, 1 / s**2, w, layout=layout)
        assert (yi.view(np.uint16) == yi32.astype(dt).view(np.uint16)).all(), (name, shape)
print("ok", cbn.cpu_level())
"""


@pytest.mark.skipif(not _core.cpu_dispatched(), reason="a single-level build")
@pytest.mark.parametrize("level", [lv for lv in ("v2", "v3", "v4")
                                   if _core.cpu_supports_level(lv)])
def test_every_cpu_level_equals_float32_rounded(level):
    """Each dispatched level's 16-bit kernels (v2: no F16C, SSE vectors; v4: AVX-512) against
    the float32 kernels of the same level."""
    env = dict(os.environ, CBN_CPU_LEVEL=level)
    run = subprocess.run([sys.executable, "-c", _LEVEL_CHECK], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["ok", level]


# ---- the conversions ---------------------------------------------------------------------------

def all_patterns(dt):
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dt)


@pytest.mark.parametrize("name", HALF)
def test_widening_every_bit_pattern(name):
    """Each finite 16-bit value widens exactly: a channel of one value has that value as its
    mean (float64, no rounding on the way)."""
    dt = half(name)
    x = all_patterns(dt)
    finite = np.isfinite(x.astype(np.float32))
    xf = x[finite]
    _, mean, m2 = split.batch_stats(xf.reshape(1, -1), layout="NCHW")
    # by value: the mean of -0 alone is +0 (pivot -0 plus a sum of +0)
    np.testing.assert_array_equal(mean, xf.astype(np.float64))
    assert not m2.any()


@pytest.mark.parametrize("name", HALF)
def test_round_trip_every_bit_pattern(name):
    """Inference with scale 1 and shift 0 widens and narrows each of the 65536 patterns:
    every one comes back (NaN as a NaN, -0 as +0 since -0*1 + 0 = +0), infinities included."""
    dt = half(name)
    x = all_patterns(dt)
    C = x.size
    ones, zeros = np.ones(C, np.float32), np.zeros(C, np.float32)
    y = cbn.batch_norm_infer(x.reshape(1, C), zeros, ones, eps=0.0)
    want = x.copy()
    want[x.view(np.uint16) == 0x8000] = 0
    assert_rounded_from(y.ravel(), want.astype(np.float32), dt)


def narrowing_values(dt):
    """float32 values at and around every rounding boundary of dt: each finite 16-bit value,
    the midpoints between neighbours (ties), one float32 step either side of each, values past
    the largest finite (overflow), subnormal ranges, NaN and infinities, plus random bits."""
    v = all_patterns(dt).astype(np.float32)
    v = np.sort(v[np.isfinite(v)])
    mid = (v[:-1].astype(np.float64) + v[1:]) / 2       # exact in float32 (one more bit)
    mid = mid.astype(np.float32)
    step = [np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))]
    big = float(v[-1])
    extra = np.array([big * 1.0001, min(big * 2, 3.4e38), -min(big * 2, 3.4e38), 3e38, -3e38,
                      1e-45, -1e-45, 1e-30, 6e-8, 3e-8, 2.9802322e-08], np.float32)
    rnd = np.random.default_rng(7).integers(0, 1 << 32, 1 << 20, dtype=np.uint64)
    rnd = rnd.astype(np.uint32).view(np.float32)
    return np.concatenate([v, mid, *step, extra, rnd])


@pytest.mark.parametrize("name", HALF)
def test_narrowing_rounds_to_nearest_even(name):
    """Inference with x = 1, running statistics (0, 1), eps 0 and weight w writes w rounded
    to dt: the kernels' narrowing of arbitrary float32 values, against NumPy / ml_dtypes."""
    dt = half(name)
    w = narrowing_values(dt)
    # -0*1 + 0 = +0, and an infinite or NaN weight makes the shift 0 - 0*w NaN: those go
    # through the round trip above
    w = w[(w != 0) & np.isfinite(w)]
    C = w.size
    x = np.ones((1, C), dt)
    y = cbn.batch_norm_infer(x, np.zeros(C, np.float32), np.ones(C, np.float32), w, eps=0.0)
    assert_rounded_from(y.ravel(), w, dt)


# ---- values against the float64 reference and PyTorch ------------------------------------------

@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("case", [("NCHW", (8, 5, 9, 11)), ("NHWC", (8, 9, 11, 5))],
                         ids=case_id)
def test_values_against_float64_reference(rng, case, name):
    dt = half(name)
    layout, x, dy, res, w, b, rm, rv = inputs(rng, case, dt, loc=3.0)
    x64 = x.astype(np.float64)
    y, mean, invstd = cbn.batch_norm_train(x, w, b, layout=layout)
    y_ref, mean_ref, invstd_ref, _, _ = ref.batch_norm_train(x64, w, b, layout=layout)
    tol = 2 * STEP[name]
    np.testing.assert_allclose(y.astype(np.float64), y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-6)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-6)
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, w, layout=layout)
    dx_ref, dw_ref, db_ref = ref.batch_norm_backward(dy.astype(np.float64), x64, mean_ref,
                                                     invstd_ref, w, layout=layout)
    scale = max(1.0, np.abs(dx_ref).max())
    np.testing.assert_allclose(dx.astype(np.float64), dx_ref, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4 * max(1, np.abs(dw_ref).max()))
    np.testing.assert_allclose(db, db_ref, rtol=1e-5, atol=1e-4)


def torch_view(a, torch):
    """a 16-bit ndarray as a torch tensor of the same dtype (bfloat16 through its bits)."""
    if a.dtype == np.float16:
        return torch.from_numpy(a)
    return torch.from_numpy(a.view(np.uint16).astype(np.int16)).view(torch.bfloat16)


@pytest.mark.parametrize("name", HALF)
def test_against_pytorch(rng, name):
    """torch CPU native_batch_norm on 16-bit input with float32 parameters: same outputs within
    a step of the storage type, same statistics within float32 rounding."""
    torch = pytest.importorskip("torch")
    dt = half(name)
    layout, x, dy, res, w, b, rm, rv = inputs(rng, ("NCHW", (6, 4, 7, 9)), dt)
    rm_t, rv_t = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    xt = torch_view(x, torch).requires_grad_(True)
    wt = torch.from_numpy(w).requires_grad_(True)
    bt = torch.from_numpy(b).requires_grad_(True)
    yt = torch.nn.functional.batch_norm(xt, rm_t, rv_t, wt, bt, training=True, momentum=0.1,
                                        eps=1e-5)
    yt.backward(torch_view(dy, torch))
    y, mean, invstd = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv)
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, w)
    tol = 2 * STEP[name]
    np.testing.assert_allclose(y.astype(np.float64), yt.detach().float().numpy(), rtol=tol,
                               atol=tol)
    np.testing.assert_allclose(rm, rm_t.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, rv_t.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx.astype(np.float64), xt.grad.float().numpy(), rtol=4 * tol,
                               atol=4 * tol)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-2, atol=1e-2)


# ---- bad input, the layer ----------------------------------------------------------------------

@needs_ml_dtypes
def test_mixed_16bit_types_refused():
    x = np.ones((2, 3, 4), np.float16)
    dy = x.astype(ml_dtypes.bfloat16)
    mean, invstd = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(TypeError, match="dtype of x"):
        cbn.batch_norm_backward(dy, x, mean, invstd)
    with pytest.raises(TypeError, match="residual"):
        cbn.batch_norm_train(x, residual=dy)


@pytest.mark.parametrize("name", HALF)
def test_bad_buffers_refused_and_nothing_written(rng, name):
    dt = half(name)
    x = to_half(rng.standard_normal((4, 3, 5)), dt)
    rm, rv = np.zeros(3, np.float16), np.ones(3, np.float16)
    out = np.full(x.shape, 7, dt)
    with pytest.raises(TypeError, match=r"running_mean must have dtype float32 \(float32 for x"):
        cbn.batch_norm_train(x, running_mean=rm, running_var=rv, out=out)
    assert (out.astype(np.float32) == 7).all()
    assert (rm == 0).all() and (rv == 1).all()
    rm32, rv32 = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(TypeError, match="out must have dtype"):
        cbn.batch_norm_train(x, running_mean=rm32, running_var=rv32,
                             out=np.empty(x.shape, np.float32))
    assert (rm32 == 0).all() and (rv32 == 1).all()
    with pytest.raises(ValueError, match="shape"):
        cbn.batch_norm_infer(x, rm32, np.ones(4, np.float32), out=out)
    assert (out.astype(np.float32) == 7).all()


def test_other_2byte_types_refused():
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        cbn.batch_norm_train(np.ones((2, 3), np.int16))


@pytest.mark.parametrize("name", HALF)
def test_layer_mixed_precision(rng, name):
    """A float32 layer takes 16-bit input: output and dx in the input's dtype, equal to the
    layer on the widened input rounded once; parameters and buffers stay float32 and equal."""
    dt = half(name)
    layout, x, dy, res, w, b, rm, rv = inputs(rng, ("NCHW", (4, 3, 5, 6)), dt)
    bn16, bn32 = cbn.BatchNorm2d(3, activation="relu"), cbn.BatchNorm2d(3, activation="relu")
    for train in (True, False):
        bn16.train(train), bn32.train(train)
        y, y32 = bn16(x, residual=res), bn32(widen(x), residual=widen(res))
        assert_rounded_from(y, y32, dt)
        dx, dres = bn16.backward(dy)
        dx32, dres32 = bn32.backward(widen(dy))
        assert_rounded_from(dx, dx32, dt)
        assert_rounded_from(dres, dres32, dt)
        assert bn16.grad_weight.dtype == F32
        assert_identical(bn16.grad_weight, bn32.grad_weight)
        assert_identical(bn16.running_var, bn32.running_var)
    with pytest.raises(TypeError, match="needs a float32 layer"):
        cbn.BatchNorm2d(3, dtype=np.float64)(x)
