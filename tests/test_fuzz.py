"""Property-based tests (hypothesis): random shapes, layouts, dtypes, views, offsets and scales of
the data, eps, momentum, activation and n_threads; every op agrees with `cbn.reference`, and bad
arguments raise the documented error with nothing written.

Tolerances are relative to the conditioning of each result, not to a fixed scale: with u the unit
roundoff of the dtype (2^-24 for float32, 2^-53 for float64) an output may be off by a small
multiple of u times the magnitudes of the terms it is made of (for y: |weight * xhat| and |bias|;
for inference, whose documented formula is x*scale + shift: |x*scale|, |bias| and
|running_mean*scale|), plus the error the statistics may carry. So a float32 array at an offset
of 1e6 with a spread of 1e-3 is held to the same standard as unit data. The float64 reference
runs on the channels laid out as contiguous rows, where NumPy sums pairwise (see _rows).

Reproducible in CI: derandomize=True, no example database. More examples locally:
CBN_FUZZ_EXAMPLES=10 python -m pytest tests/test_fuzz.py (a multiplier).
"""
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, event, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cbn  # noqa: E402
from cbn import reference as ref  # noqa: E402
from conftest import (STATS_RTOL, assert_identical, backward_truth, channel_axis,  # noqa: E402
                      f64)

_MULT = max(1, int(os.environ.get("CBN_FUZZ_EXAMPLES", "1")))


def fuzz_settings(n):
    return settings(max_examples=n * _MULT, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


LAYOUT_NAMES = ["NCHW", "channels_first", "NHWC", "channels_last"]
THREADS = [None, 1, 2, 3, -1]
DTYPES = [np.float32, np.float64]
VIEWS = ["contiguous", "fortran", "transposed", "sliced", "reversed", "offset"]
# unit roundoff, and the multiple of it an output may be off by (per term it is made of).
# Calibrated: 8x the CI examples (CBN_FUZZ_EXAMPLES=8) pass with K = 4 (float32) and 64
# (float64) and STAT_RTOL 1e-7 / 1e-13; the values below leave margins of 4x (K), 10x (STAT_RTOL).
U = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float64): 2.0 ** -53}
U64 = 2.0 ** -53
K = {np.dtype(np.float32): 16.0, np.dtype(np.float64): 256.0}
# relative error of the statistics (mean relative to the spread, invstd, running_var); the
# documented float32 guarantee is 1e-5
STAT_RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}


# -- strategies -----------------------------------------------------------------------------------

@st.composite
def shapes(draw, layout):
    """(shape, kind): 2-D..5-D with sizes 1 and odd sizes; sometimes big enough for several
    threads ('long': 65536..200000 values), sometimes many channels (channels-last column
    tiles are 512 wide)."""
    ndim = draw(st.integers(2, 5))
    kind = draw(st.sampled_from(["small"] * 6 + ["long"] * 2 + ["wide"]))
    cax = channel_axis(layout, ndim)
    shape = [draw(st.integers(1, 7)) for _ in range(ndim)]
    if kind == "wide":
        shape[cax] = draw(st.integers(300, 1100))
        for i in range(ndim):
            if i != cax:
                shape[i] = draw(st.integers(1, 3))
    elif kind == "long":
        axes = [i for i in range(ndim) if i != cax]
        ax = draw(st.sampled_from(axes))
        rest = int(np.prod([s for i, s in enumerate(shape) if i != ax]))
        shape[ax] = draw(st.integers(65536 // rest + 1, 200000 // rest))
    return tuple(shape), kind


def _values(rng, shape, dtype, layout, loc, scale):
    """loc + scale * (per-channel offset in +-2, per-channel spread 0.5..2, normal values)."""
    axis = channel_axis(layout, len(shape))
    b = [1] * len(shape)
    b[axis] = shape[axis]
    off = rng.uniform(-2, 2, shape[axis]).reshape(b)
    spread = rng.uniform(0.5, 2, shape[axis]).reshape(b)
    return (loc + scale * (off + spread * rng.standard_normal(shape))).astype(dtype)


def _view(kind, data, rng):
    """An array with the values of `data` laid out as `kind` (not C-contiguous for most)."""
    shape, dtype = data.shape, data.dtype
    if kind == "contiguous":
        return data.copy()
    if kind == "fortran":
        return np.asfortranarray(data)
    if kind == "transposed":
        perm = rng.permutation(len(shape))
        base = np.empty([shape[p] for p in perm], dtype)
        v = base.transpose(np.argsort(perm))
    elif kind == "sliced":
        steps = [int(rng.integers(1, 3)) for _ in shape]
        starts = [int(rng.integers(0, 2)) for _ in shape]
        base = np.full([st_ + s * n + 1 for st_, s, n in zip(starts, steps, shape)], np.nan,
                       dtype)
        v = base[tuple(slice(a, a + s * n, s) for a, s, n in zip(starts, steps, shape))]
    elif kind == "reversed":
        base = np.empty(shape, dtype)
        v = base[tuple(slice(None, None, -1) if rng.integers(2) else slice(None)
                       for _ in shape)]
    else:  # "offset": C-contiguous, but starting 1..7 elements into a buffer (not 64-B aligned)
        k = int(rng.integers(1, 8))
        v = np.empty(data.size + k, dtype)[k:].reshape(shape)
    v[...] = data
    assert v.shape == shape
    return v


@st.composite
def problems(draw, min_values_per_channel=1):
    """Everything one call needs: layout name, shape, dtype, x (some view), data loc/scale."""
    layout = draw(st.sampled_from(LAYOUT_NAMES))
    shape, kind = draw(shapes(layout))
    C = shape[channel_axis(layout, len(shape))]
    M = int(np.prod(shape)) // C
    if M < min_values_per_channel:           # training needs M >= 2: grow the batch
        shape = (shape[0] + 1,) + shape[1:]
        M = int(np.prod(shape)) // C
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    loc = draw(st.one_of(st.sampled_from([0.0, 1e6, -1e6, 1e3]),
                         st.floats(-1e6, 1e6, allow_nan=False)))
    scale = 10.0 ** draw(st.floats(-3, 3))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    data = _values(rng, shape, dtype, layout, loc, scale)
    view = draw(st.sampled_from(VIEWS))
    x = _view(view, data, rng)
    event(f"shape kind: {kind}")
    event(f"view: {view}")
    note(f"layout={layout} shape={shape} ({kind}, M={M}) dtype={dtype} loc={loc} "
         f"scale={scale:.3g} view={view} seed={seed}")
    return dict(layout=layout, shape=shape, C=C, M=M, dtype=dtype, loc=loc, scale=scale,
                x=x, rng=rng)


def _params(draw, rng, C, dtype):
    """weight, bias (None, x's dtype, another float dtype, or a list: all cast to x's dtype)."""
    affine = draw(st.sampled_from(["none", "same", "float64", "float32", "weight-only",
                                   "list"]))
    if affine == "none":
        return None, None
    w = rng.uniform(0.25, 2.0, C) * rng.choice([-1.0, 1.0], C)
    b = rng.standard_normal(C) * 3
    if affine == "weight-only":
        return w.astype(dtype), None
    if affine == "list":
        return w.astype(dtype).tolist(), b.astype(dtype).tolist()
    pd = dtype if affine == "same" else np.dtype(affine)
    return w.astype(pd), b.astype(pd)


def _eff(a, dtype):
    """A per-channel input as cbn sees it: cast to x's dtype, then float64."""
    return None if a is None else np.asarray(a, dtype=dtype).astype(np.float64)


def _bshape(layout, ndim, C):
    b = [1] * ndim
    b[channel_axis(layout, ndim)] = C
    return tuple(b)


def _check(name, got, want, bound):
    """|got - want| <= bound elementwise; NaN where NaN, equal infinities."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    bad_nan = np.isnan(got) != np.isnan(want)
    both_inf = np.isinf(want) & (got == want)
    with np.errstate(invalid="ignore"):
        err = np.abs(got - want)
        fail = bad_nan | (~np.isnan(want) & ~both_inf & ~(err <= bound))
    if fail.any():
        i = np.flatnonzero(fail.ravel())
        j = i[np.argmax((err.ravel() / np.maximum(np.broadcast_to(bound, err.shape).ravel(),
                                                   1e-300))[i])] if i.size else 0
        raise AssertionError(
            f"{name}: {i.size} of {got.size} values out of tolerance; worst at flat index {j}: "
            f"got {got.ravel()[j]!r}, want {want.ravel()[j]!r}, "
            f"bound {np.broadcast_to(bound, got.shape).ravel()[j]!r}")


def _rows(a, layout):
    """a as a contiguous (1, C, M) channels-first array: the reference then reduces along
    contiguous rows, where NumPy sums pairwise (over a strided axis it sums naively, and its
    float64 mean of 32769 values at 1e6 is off by ~5e-9, more than cbn's error)."""
    cax = channel_axis(layout, a.ndim)
    t = np.ascontiguousarray(np.moveaxis(a, cax, 0))
    return t.reshape(1, t.shape[0], -1)


def _unrows(a3, shape, layout):
    """Inverse of _rows for an array of x's shape."""
    cax = channel_axis(layout, len(shape))
    other = [n for i, n in enumerate(shape) if i != cax]
    return np.moveaxis(a3.reshape([shape[cax]] + other), 0, cax)


def _degenerate(xf, layout):
    """True when a channel's spread is at the rounding level of its values (nearly constant):
    there the reference's own float64 rounding decides between var = 0 and var = tiny."""
    axes = tuple(i for i in range(xf.ndim) if i != channel_axis(layout, xf.ndim))
    spread = xf.max(axis=axes) - xf.min(axis=axes)
    return bool(np.any(spread <= 1e-9 * np.abs(xf).max(axis=axes)))


# -- the ops against the reference ----------------------------------------------------------------

@fuzz_settings(500)
@given(data=st.data())
def test_fuzz_train_backward(data):
    draw = data.draw
    p = draw(problems(min_values_per_channel=2))
    layout, shape, C, M, dtype, x, rng = (p[k] for k in
                                          ("layout", "shape", "C", "M", "dtype", "x", "rng"))
    u, k = U[dtype], K[dtype]
    w, b = _params(draw, rng, C, dtype)
    eps = draw(st.sampled_from([1e-5, 1e-5, 1e-3, 0.5, 0.0]))
    xf = x.astype(np.float64)          # a copy: x may be overwritten in place
    if eps == 0.0 and _degenerate(xf, layout):
        eps = 1e-5
    momentum = draw(st.sampled_from([0.1, 0.0, 1.0, 0.01, 0.5]))
    unbiased = draw(st.booleans())
    relu = draw(st.sampled_from([None, None, "relu"]))
    n_threads = draw(st.sampled_from(THREADS))
    out_kind = draw(st.sampled_from(["new", "out", "in-place"]))
    with_running = draw(st.booleans())
    note(f"eps={eps} momentum={momentum} unbiased={unbiased} relu={relu} "
         f"n_threads={n_threads} out={out_kind} running={with_running} "
         f"affine={type(w).__name__}")

    rm0 = (p["loc"] + p["scale"] * rng.standard_normal(C)).astype(dtype)
    rv0 = (p["scale"] ** 2 * rng.uniform(0.25, 4.0, C)).astype(dtype)
    rm, rv = (rm0.copy(), rv0.copy()) if with_running else (None, None)
    x_before = x.copy()
    if out_kind == "in-place" and not x.flags.c_contiguous:
        out_kind = "out"
    out = {"new": None, "out": np.full(shape, np.nan, dtype), "in-place": x}[out_kind]

    y, m, s = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, momentum=momentum,
                                   eps=eps, layout=layout, unbiased_running_var=unbiased,
                                   activation=relu, out=out, n_threads=n_threads)
    assert y.shape == shape and y.dtype == dtype and m.shape == s.shape == (C,)
    assert m.dtype == s.dtype == dtype
    if out is not None:
        assert y is out
    else:
        assert y.flags.c_contiguous and not np.shares_memory(y, x)
    if out_kind != "in-place":
        np.testing.assert_array_equal(x, x_before)

    wf, bf = _eff(w, dtype), _eff(b, dtype)
    ey, em, es, erm, erv = ref.batch_norm_train(_rows(xf, layout), wf, bf,
                                                running_mean=f64(rm0), running_var=f64(rv0),
                                                momentum=momentum, eps=eps, layout="NCHW",
                                                unbiased_running_var=unbiased)
    ey = _unrows(ey, shape, layout)
    bsh = _bshape(layout, len(shape), C)
    axes = tuple(i for i in range(len(shape)) if i != channel_axis(layout, len(shape)))
    var = ((xf - em.reshape(bsh)) ** 2).mean(axis=axes)
    sd = np.sqrt(var)
    rt = STAT_RTOL[dtype]

    # the mean: rounded to the dtype, plus float64 rounding of both sums (~u64 * |mean|, NumPy's
    # pairwise mean included), plus the statistics' tolerance relative to the spread
    mean_err = 32 * U64 * np.abs(em) + rt * sd
    _check("save_mean", m, em, mean_err + 2 * u * np.abs(em))
    _check("save_invstd", s, es, (rt + 2 * u) * es)
    # y = w * xhat + b: off by a few roundings of its terms, plus the error of the mean (its
    # rounding to the dtype is absorbed into the shift) and of invstd
    aw = np.ones(bsh) if wf is None else np.abs(wf).reshape(bsh)
    ab = 0.0 if bf is None else np.abs(bf).reshape(bsh)
    xhat = np.abs((xf - em.reshape(bsh)) * es.reshape(bsh))
    ybound = k * u * (aw * (xhat + 1.0) + ab) + \
        aw * (rt * xhat + (mean_err * es).reshape(bsh))
    want_y = np.maximum(ey, 0.0) if relu else ey
    _check("y", y, want_y, ybound)
    if relu:
        assert not np.any(y < 0)
    if with_running:
        mm = momentum
        _check("running_mean", rm, erm,
               k * u * (np.abs(erm) + (1 - mm) * np.abs(f64(rm0))) + mm * mean_err)
        _check("running_var", rv, erv, (k * u + rt) * np.abs(erv))

    # the same bits with one thread (determinism over random shapes)
    if n_threads != 1:
        rm1, rv1 = (rm0.copy(), rv0.copy()) if with_running else (None, None)
        y1, m1, s1 = cbn.batch_norm_train(x_before, w, b, running_mean=rm1, running_var=rv1,
                                          momentum=momentum, eps=eps, layout=layout,
                                          unbiased_running_var=unbiased, activation=relu,
                                          n_threads=1)
        assert_identical(y, y1, "train y vs n_threads=1")
        assert_identical(m, m1)
        assert_identical(s, s1)
        if with_running:
            assert_identical(rm, rm1)
            assert_identical(rv, rv1)

    # backward from the saved statistics
    dy_loc = draw(st.sampled_from([0.0, 0.0, 5.0]))
    dy_data = (dy_loc + rng.standard_normal(shape)).astype(dtype)
    dy = _view(draw(st.sampled_from(VIEWS)), dy_data, rng)
    dy_before = dy.copy()
    y_in = y.copy() if relu else None
    x_in = x_before if out_kind == "in-place" else x
    back_out = draw(st.sampled_from(["new", "out", "in-place"]))
    if back_out == "in-place" and not dy.flags.c_contiguous:
        back_out = "out"
    dout = {"new": None, "out": np.full(shape, np.nan, dtype), "in-place": dy}[back_out]
    note(f"backward: out={back_out} dy_loc={dy_loc}")
    dx, dw, db = cbn.batch_norm_backward(dy, x_in, m, s, w, layout=layout, y=y_in,
                                         activation=relu, out=dout, n_threads=n_threads)
    assert dx.shape == shape and dx.dtype == dtype and dw.dtype == db.dtype == dtype
    if dout is not None:
        assert dx is dout
    dyf = f64(dy_before)
    if relu:
        dyf = np.where(y_in > 0, dyf, 0.0)
    # around the exact batch mean: backward corrects for save_mean's rounding
    edx, edw, edb = backward_truth(_rows(dyf, layout), _rows(xf, layout), wf, "NCHW", invstd=s)
    edx = _unrows(edx, shape, layout)
    mf, sf = f64(m).reshape(bsh), f64(s).reshape(bsh)
    xh = np.abs((xf - mf) * sf)
    sum_dy = np.abs(dyf).sum(axis=axes)
    sum_dyx = (np.abs(dyf) * xh).sum(axis=axes)
    # dbias, dweight: sums of M terms, each off by a tiny multiple of the sum of |terms|
    # (float32: float blocks, STATS_RTOL; float64: double sums); dx: a few roundings of its
    # terms, plus those sums' errors
    srt = STATS_RTOL[np.dtype(dtype)] if dtype == np.float32 else 1e-13
    _check("dbias", db, edb, k * u * np.abs(edb) + srt * sum_dy)
    _check("dweight", dw, edw, k * u * np.abs(edw) + srt * sum_dyx)
    a = np.abs(aw * sf)
    terms = sum_dy.reshape(bsh) / M + xh * sum_dyx.reshape(bsh) / M
    dxbound = k * u * a * (np.abs(dyf) + terms) + srt * a * terms
    _check("dx", dx, edx, dxbound)
    np.testing.assert_array_equal(x_in, x_before)
    if back_out != "in-place":
        np.testing.assert_array_equal(dy, dy_before)


@fuzz_settings(400)
@given(data=st.data())
def test_fuzz_infer_and_fold(data):
    draw = data.draw
    p = draw(problems())
    layout, shape, C, dtype, x, rng = (p[k] for k in
                                       ("layout", "shape", "C", "dtype", "x", "rng"))
    u, k = U[dtype], K[dtype]
    w, b = _params(draw, rng, C, dtype)
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.5, 0.0]))
    relu = draw(st.sampled_from([None, None, "relu"]))
    n_threads = draw(st.sampled_from(THREADS))
    out_kind = draw(st.sampled_from(["new", "out", "in-place"]))
    stat_dtype = np.dtype(draw(st.sampled_from(["same", "float64", "float32"]))
                          .replace("same", dtype.name))
    rm = (p["loc"] + p["scale"] * rng.standard_normal(C)).astype(stat_dtype)
    rv = (p["scale"] ** 2 * rng.uniform(0.25, 4.0, C)).astype(stat_dtype)
    note(f"eps={eps} relu={relu} n_threads={n_threads} out={out_kind} stats={stat_dtype}")
    x_before = x.copy()
    rm_before, rv_before = rm.copy(), rv.copy()
    if out_kind == "in-place" and not x.flags.c_contiguous:
        out_kind = "out"
    out = {"new": None, "out": np.full(shape, np.nan, dtype), "in-place": x}[out_kind]

    yi = cbn.batch_norm_infer(x, rm, rv, w, b, eps=eps, layout=layout, activation=relu,
                              out=out, n_threads=n_threads)
    assert yi.shape == shape and yi.dtype == dtype
    if out is not None:
        assert yi is out
    np.testing.assert_array_equal(rm, rm_before)
    np.testing.assert_array_equal(rv, rv_before)

    rmf, rvf, wf, bf = (_eff(a, dtype) for a in (rm, rv, w, b))
    xf = f64(x_before)
    escale, eshift = ref.fold_scale_shift(rmf, rvf, wf, bf, eps=eps)
    want = ref.batch_norm_infer(xf, rmf, rvf, wf, bf, eps=eps, layout=layout)
    if relu:
        want = np.maximum(want, 0.0)
    bsh = _bshape(layout, len(shape), C)
    # the documented formula x*scale + shift, scale and shift rounded to the dtype
    shift_terms = np.abs(rmf * escale) + (0.0 if bf is None else np.abs(bf))
    bound = k * u * (np.abs(xf * escale.reshape(bsh)) + shift_terms.reshape(bsh))
    _check("infer y", yi, want, bound)

    # fold_scale_shift: the same coefficients, in the dtype of running_mean
    sc, sh = cbn.fold_scale_shift(rm, rv, w, b, eps=eps)
    fd = rm.dtype
    assert sc.dtype == sh.dtype == fd and sc.shape == sh.shape == (C,)
    rmf2, rvf2, wf2, bf2 = (_eff(a, fd) for a in (rm, rv, w, b))
    esc, esh = ref.fold_scale_shift(rmf2, rvf2, wf2, bf2, eps=eps)
    _check("scale", sc, esc, 4 * U[fd] * np.abs(esc))
    _check("shift", sh, esh,
           4 * U[fd] * (np.abs(esh) + np.abs(rmf2 * esc) + (0 if bf2 is None else np.abs(bf2))))

    if n_threads != 1:
        assert_identical(yi, cbn.batch_norm_infer(x_before, rm, rv, w, b, eps=eps, layout=layout,
                                                  activation=relu, n_threads=1))


# -- bad arguments: the documented exception, nothing written -------------------------------------

def _noncontiguous(shape, dtype, fill):
    """A writeable array of `shape` that is not C-contiguous (wrong shape when every axis is 1:
    NumPy calls any such array contiguous)."""
    big = [i for i, n in enumerate(shape) if n > 1]
    if not big:
        return np.full(tuple(shape) + (2,), fill, dtype)
    wide = list(shape)
    wide[big[-1]] *= 2
    return np.full(wide, fill, dtype)[tuple(slice(None, None, 2) if i == big[-1] else slice(None)
                                            for i in range(len(shape)))]


def _mutations(op):
    """(name, exception, message fragment, mutate(kw, ctx)) for `op`."""
    def setter(key, make):
        def mutate(kw, ctx):
            kw[key] = make(kw, ctx)
        return mutate

    common = [
        ("x-int", TypeError, "x", setter("x", lambda kw, c: kw["x"].astype(np.int32))),
        ("x-complex", TypeError, "x", setter("x", lambda kw, c: kw["x"].astype(np.complex64))),
        ("x-bool", TypeError, "x", setter("x", lambda kw, c: kw["x"] > 0)),
        ("x-1d", ValueError, "x", setter("x", lambda kw, c: kw["x"].ravel())),
        ("layout", ValueError, "layout", setter("layout", lambda kw, c: c["rng"].choice(
            ["nchw", "NCW", "", "channels-first", "NHCW"]))),
        ("layout-type", ValueError, "layout", setter("layout", lambda kw, c: 1)),
        ("weight-len", ValueError, "weight",
         setter("weight", lambda kw, c: np.ones(c["C"] + int(c["rng"].integers(1, 3))))),
        ("weight-2d", ValueError, "weight", setter("weight", lambda kw, c: np.ones((c["C"], 1)))),
        ("weight-complex", TypeError, "weight",
         setter("weight", lambda kw, c: np.ones(c["C"], np.complex128))),
        ("out-shape", ValueError, "out",
         setter("out", lambda kw, c: np.full(c["shape"][:-1] + (c["shape"][-1] + 1,),
                                             SENTINEL, c["dtype"]))),
        ("out-dtype", TypeError, "out",
         setter("out", lambda kw, c: np.full(c["shape"], SENTINEL,
                                             np.float64 if c["dtype"] == np.float32
                                             else np.float32))),
        ("out-readonly", ValueError, "out", setter("out", lambda kw, c: _readonly(
            np.full(c["shape"], SENTINEL, c["dtype"])))),
        ("out-strided", ValueError, "out", setter("out", lambda kw, c: _noncontiguous(
            c["shape"], c["dtype"], SENTINEL))),
        ("out-list", TypeError, "out", setter("out", lambda kw, c: np.full(
            c["shape"], SENTINEL, c["dtype"]).tolist())),
        ("n_threads-0", ValueError, "n_threads", setter("n_threads", lambda kw, c: 0)),
        ("n_threads-float", TypeError, "n_threads", setter("n_threads", lambda kw, c: 2.0)),
    ]
    eps = [
        ("eps-negative", ValueError, "eps",
         setter("eps", lambda kw, c: -float(c["rng"].uniform(1e-9, 1.0)))),
        ("eps-nan", ValueError, "eps", setter("eps", lambda kw, c: float("nan"))),
    ]
    bias = [("bias-len", ValueError, "bias",
             setter("bias", lambda kw, c: np.zeros(max(0, c["C"] - 1)))),
            ("bias-object", TypeError, "bias",
             setter("bias", lambda kw, c: np.zeros(c["C"], object)))]
    if op == "train":
        def one_per_channel(kw, c):
            shp = [1] * len(c["shape"])
            shp[channel_axis(kw["layout"], len(shp))] = c["C"]
            kw["x"] = np.ones(shp, c["dtype"])
            if kw.get("out") is not None:
                kw["out"] = np.full(shp, SENTINEL, c["dtype"])
        return common + eps + bias + [
            ("momentum-high", ValueError, "momentum",
             setter("momentum", lambda kw, c: 1.0 + float(c["rng"].uniform(1e-6, 2)))),
            ("momentum-negative", ValueError, "momentum",
             setter("momentum", lambda kw, c: -float(c["rng"].uniform(1e-6, 2)))),
            ("momentum-nan", ValueError, "momentum", setter("momentum", lambda kw, c: np.nan)),
            ("running_var-missing", ValueError, "running_", setter("running_var",
                                                                   lambda kw, c: None)),
            ("running_mean-missing", ValueError, "running_", setter("running_mean",
                                                                    lambda kw, c: None)),
            ("running_mean-dtype", TypeError, "running_mean", setter(
                "running_mean", lambda kw, c: np.full(c["C"], SENTINEL,
                                                      np.float64 if c["dtype"] == np.float32
                                                      else np.float32))),
            ("running_var-len", ValueError, "running_var",
             setter("running_var", lambda kw, c: np.full(c["C"] + 1, SENTINEL, c["dtype"]))),
            ("running_var-readonly", ValueError, "running_var", setter(
                "running_var", lambda kw, c: _readonly(np.full(c["C"], SENTINEL, c["dtype"])))),
            ("running_mean-strided", ValueError, "running_mean", setter(
                "running_mean", lambda kw, c: _noncontiguous((c["C"],), c["dtype"], SENTINEL))),
            ("running_mean-list", TypeError, "running_mean", setter(
                "running_mean", lambda kw, c: [SENTINEL] * c["C"])),
            ("one-value-per-channel", ValueError, "more than 1 value", one_per_channel),
        ]
    if op == "infer":
        return common + eps + bias + [
            ("running_var-len", ValueError, "running_var",
             setter("running_var", lambda kw, c: np.ones(c["C"] + 2))),
            ("running_mean-none", ValueError, "running_mean",
             setter("running_mean", lambda kw, c: None)),
            ("running_mean-complex", TypeError, "running_mean",
             setter("running_mean", lambda kw, c: np.zeros(c["C"], np.complex64))),
        ]
    return common + [  # backward
        ("dy-shape", ValueError, "dy", setter("dy", lambda kw, c: np.ones(
            c["shape"][:-1] + (c["shape"][-1] + 1,), c["dtype"]))),
        ("dy-dtype", TypeError, "dy", setter("dy", lambda kw, c: kw["dy"].astype(
            np.float64 if c["dtype"] == np.float32 else np.float32))),
        ("dy-int", TypeError, "dy", setter("dy", lambda kw, c: kw["dy"].astype(np.int64))),
        ("save_mean-len", ValueError, "save_mean",
         setter("save_mean", lambda kw, c: np.zeros(c["C"] + 1))),
        ("save_invstd-none", ValueError, "save_", setter("save_invstd", lambda kw, c: None)),
        ("relu-without-y", ValueError, "y", setter("activation", lambda kw, c: "relu")),
        ("activation-unknown", ValueError, "activation",
         setter("activation", lambda kw, c: "gelu")),
    ]


SENTINEL = 1234.5


def _readonly(a):
    a.setflags(write=False)
    return a


def _call(op, kw):
    kw = dict(kw)
    if op == "train":
        return cbn.batch_norm_train(kw.pop("x"), kw.pop("weight"), kw.pop("bias"), **kw)
    if op == "infer":
        return cbn.batch_norm_infer(kw.pop("x"), kw.pop("running_mean"), kw.pop("running_var"),
                                    kw.pop("weight"), kw.pop("bias"), **kw)
    return cbn.batch_norm_backward(kw.pop("dy"), kw.pop("x"), kw.pop("save_mean"),
                                   kw.pop("save_invstd"), kw.pop("weight"), **kw)


@fuzz_settings(400)
@given(data=st.data())
def test_fuzz_bad_arguments(data):
    draw = data.draw
    op = draw(st.sampled_from(["train", "infer", "backward"]))
    p = draw(problems(min_values_per_channel=2))
    layout, shape, C, dtype, x, rng = (p[k] for k in
                                       ("layout", "shape", "C", "dtype", "x", "rng"))
    w, b = _params(draw, rng, C, dtype)
    in_place = draw(st.booleans()) and op != "backward"
    if in_place:
        x = np.ascontiguousarray(x)
    out = x if in_place else np.full(shape, SENTINEL, dtype)
    kw = dict(x=x, weight=w, layout=layout, out=out, n_threads=draw(st.sampled_from(THREADS)))
    if op == "train":
        kw.update(bias=b, running_mean=np.full(C, SENTINEL, dtype),
                  running_var=np.full(C, SENTINEL, dtype), momentum=0.1, eps=1e-5)
    elif op == "infer":
        kw.update(bias=b, running_mean=np.zeros(C, dtype), running_var=np.ones(C, dtype),
                  eps=1e-5)
    else:
        kw.update(dy=_view(draw(st.sampled_from(VIEWS)),
                           rng.standard_normal(shape).astype(dtype), rng),
                  save_mean=np.zeros(C, dtype), save_invstd=np.ones(C, dtype))
    muts = _mutations(op)
    name, exc, fragment, mutate = draw(st.sampled_from(muts))
    ctx = dict(rng=rng, C=C, shape=shape, dtype=dtype)
    mutate(kw, ctx)
    note(f"op={op} mutation={name} in_place={in_place}")
    arrays = {k: v for k, v in kw.items() if isinstance(v, np.ndarray)}
    before = {k: v.copy() for k, v in arrays.items()}
    with pytest.raises(exc) as info:
        _call(op, kw)
    assert fragment.lower() in str(info.value).lower(), (name, str(info.value))
    for key, a in arrays.items():
        assert np.array_equal(a, before[key], equal_nan=a.dtype.kind in "fc"), \
            f"{key} was written by a call that raised ({name})"


@pytest.mark.parametrize("n", [2 ** 31, 2 ** 63, 10 ** 30])
def test_huge_n_threads(n):
    """n_threads is a maximum: a huge one is clamped (and results stay bit-identical)."""
    x = np.random.default_rng(0).standard_normal((4, 3, 5))
    out = np.full(x.shape, SENTINEL)
    cbn.batch_norm_train(x, out=out, n_threads=n)
    np.testing.assert_array_equal(out, cbn.batch_norm_train(x, n_threads=1)[0])
