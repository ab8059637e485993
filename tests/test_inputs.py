"""Input handling: strided views, Fortran order, read-only arrays, array-likes, casts of the
per-channel inputs, `out=` (including in place), and inputs left unmodified."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import (DTYPES, assert_close, assert_identical, assert_meta, f64, make_params,
                      make_running, make_x)

# -- strided inputs -------------------------------------------------------------------------------


def _unaligned(a):
    """A C-contiguous but misaligned copy of a (offset by one byte in a byte buffer)."""
    buf = np.empty(a.nbytes + 1, np.uint8)
    u = np.frombuffer(buf, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    u[...] = a
    return u


VIEWS = {
    # name: (layout, function(rng, dtype) -> a non-C-contiguous array)
    "fortran-nchw": ("NCHW", lambda r, d: np.asfortranarray(make_x(r, (4, 3, 5, 6), d))),
    "fortran-nhwc": ("NHWC", lambda r, d: np.asfortranarray(make_x(r, (4, 5, 6, 3), d, "NHWC"))),
    "fortran-2d": ("NCHW", lambda r, d: np.asfortranarray(make_x(r, (9, 5), d))),
    "transposed": ("NCHW", lambda r, d: make_x(r, (7, 6, 3, 4), d).transpose(3, 2, 1, 0)),
    "nchw-view-of-nhwc": ("NCHW", lambda r, d: make_x(r, (4, 5, 6, 3), d, "NHWC")
                          .transpose(0, 3, 1, 2)),
    "nhwc-view-of-nchw": ("NHWC", lambda r, d: make_x(r, (4, 3, 5, 6), d).transpose(0, 2, 3, 1)),
    "step-batch": ("NCHW", lambda r, d: make_x(r, (9, 3, 5), d)[::2]),
    "step-channel": ("NCHW", lambda r, d: make_x(r, (4, 7, 5), d)[:, ::2]),
    "step-channel-last": ("NHWC", lambda r, d: make_x(r, (4, 5, 7), d, "NHWC")[..., 1::3]),
    "step-spatial": ("NCHW", lambda r, d: make_x(r, (3, 4, 10, 9), d)[:, :, 1::3, ::2]),
    "negative-strides": ("NCHW", lambda r, d: make_x(r, (4, 3, 5, 6), d)[::-1, :, ::-1, ::-2]),
    "negative-channel": ("NHWC", lambda r, d: make_x(r, (4, 5, 6), d, "NHWC")[:, ::-1, ::-1]),
    "sliced-medium": ("NCHW", lambda r, d: make_x(r, (12, 10, 33, 40), d)[:, 1:9, :, 3:34]),
    "sliced-medium-nhwc": ("NHWC", lambda r, d: make_x(r, (8, 20, 18, 30), d, "NHWC")
                           [..., 2:26]),
    "broadcast": ("NCHW", lambda r, d: np.broadcast_to(make_x(r, (4, 3, 1), d), (4, 3, 6))),
    "unaligned": ("NCHW", lambda r, d: _unaligned(make_x(r, (4, 3, 5, 7), d))),
    "unaligned-nhwc": ("NHWC", lambda r, d: _unaligned(make_x(r, (4, 5, 7, 3), d, "NHWC"))),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("view", list(VIEWS))
def test_strided_x_and_dy(rng, view, dtype):
    """Any strided x (and dy) gives exactly the result of its contiguous copy."""
    layout, make = VIEWS[view]
    x = make(rng, dtype)
    dy = make(rng, dtype)
    x0, dy0 = x.copy(), dy.copy()
    xc, dyc = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    C = x.shape[1] if layout == "NCHW" else x.shape[-1]
    w, b = make_params(rng, C, dtype)
    rm, rv = make_running(rng, C, dtype)

    y, m, s = cbn.batch_norm_train(x, w, b, layout=layout)
    yc, mc, sc = cbn.batch_norm_train(xc, w, b, layout=layout)
    assert_meta(y, x.shape, dtype)
    assert y.flags.c_contiguous
    assert_identical(y, yc)
    assert_identical(m, mc)
    assert_identical(s, sc)
    ey, em, es, _, _ = ref.batch_norm_train(f64(x), f64(w), f64(b), layout=layout)
    assert_close(y, ey)

    dx, dw, db = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout)
    dxc, dwc, dbc = cbn.batch_norm_backward(dyc, xc, m, s, w, layout=layout)
    assert_identical(dx, dxc)
    assert_identical(dw, dwc)
    assert_identical(db, dbc)

    yi = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout)
    assert_identical(yi, cbn.batch_norm_infer(xc, rm, rv, w, b, layout=layout))

    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_strided_per_channel_inputs(rng, dtype):
    x = make_x(rng, (4, 3, 5), dtype)
    w = make_x(rng, (6,), dtype)[::2]
    b = make_x(rng, (3, 2), dtype)[:, 1]
    rm = make_x(rng, (3,), dtype)[::-1]
    rv = np.abs(make_x(rng, (9,), dtype))[::3] + 0.5
    y, m, s = cbn.batch_norm_train(x, w, b)
    assert_identical(y, cbn.batch_norm_train(x, w.copy(), b.copy())[0])
    dx = cbn.batch_norm_backward(x, x, np.repeat(m, 2)[::2], s, w)[0]
    assert_identical(dx, cbn.batch_norm_backward(x, x, m, s, w.copy())[0])
    yi = cbn.batch_norm_infer(x, rm, rv, w, b)
    assert_identical(yi, cbn.batch_norm_infer(x, rm.copy(), rv.copy(), w.copy(), b.copy()))


# -- read-only inputs, inputs unmodified ----------------------------------------------------------

def _ro(a):
    a = np.array(a)
    a.setflags(write=False)
    return a


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_read_only_inputs(rng, dtype, layout):
    shape = (4, 3, 5, 6) if layout == "NCHW" else (4, 5, 6, 3)
    x = make_x(rng, shape, dtype, layout)
    dy = make_x(rng, shape, dtype, layout)
    w, b = make_params(rng, 3, dtype)
    rm, rv = make_running(rng, 3, dtype)
    y, m, s = cbn.batch_norm_train(_ro(x), _ro(w), _ro(b), layout=layout)
    assert_identical(y, cbn.batch_norm_train(x, w, b, layout=layout)[0])
    dx, dw, db = cbn.batch_norm_backward(_ro(dy), _ro(x), _ro(m), _ro(s), _ro(w), layout=layout)
    assert_identical(dx, cbn.batch_norm_backward(dy, x, m, s, w, layout=layout)[0])
    yi = cbn.batch_norm_infer(_ro(x), _ro(rm), _ro(rv), _ro(w), _ro(b), layout=layout)
    assert_identical(yi, cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout))
    sc, sh = cbn.fold_scale_shift(_ro(rm), _ro(rv), _ro(w), _ro(b))
    assert_meta(sc, (3,), dtype)
    assert y.flags.writeable and dx.flags.writeable and yi.flags.writeable


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_inputs_unmodified(rng, dtype, layout):
    shape = (6, 4, 7, 5) if layout == "NCHW" else (6, 7, 5, 4)
    x = make_x(rng, shape, dtype, layout)
    dy = make_x(rng, shape, dtype, layout)
    w, b = make_params(rng, 4, dtype)
    rm, rv = make_running(rng, 4, dtype)
    args = [x, dy, w, b, rm, rv]
    before = [a.copy() for a in args]

    _, m, s = cbn.batch_norm_train(x, w, b, layout=layout)
    m0, s0 = m.copy(), s.copy()
    cbn.batch_norm_backward(dy, x, m, s, w, layout=layout)
    cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout)
    cbn.fold_scale_shift(rm, rv, w, b)
    for a, a0 in zip(args + [m, s], before + [m0, s0]):
        assert_identical(a, a0)


def test_running_stats_are_the_only_inputs_written(rng):
    x = make_x(rng, (4, 3, 5), np.float64)
    rm, rv = make_running(rng, 3, np.float64)
    rm_id, rv_id = id(rm), id(rv)
    rm0 = rm.copy()
    out = cbn.batch_norm_train(x, running_mean=rm, running_var=rv)
    assert id(rm) == rm_id and id(rv) == rv_id
    assert not np.array_equal(rm, rm0)
    assert all(not np.shares_memory(o, a) for o in out for a in (x, rm, rv))


# -- array-likes and casts of per-channel inputs --------------------------------------------------

def test_nested_lists(rng):
    x = make_x(rng, (4, 3, 5), np.float64)
    y, m, s = cbn.batch_norm_train(x.tolist(), [1.0, 2.0, 3.0], [0.0, 1.0, 0.0])
    assert_meta(y, (4, 3, 5), np.float64)
    assert_identical(y, cbn.batch_norm_train(x, np.array([1.0, 2.0, 3.0]),
                                             np.array([0.0, 1.0, 0.0]))[0])
    dx, dw, db = cbn.batch_norm_backward(x.tolist(), x.tolist(), m.tolist(), s.tolist())
    assert_meta(dx, (4, 3, 5), np.float64)
    yi = cbn.batch_norm_infer(x.tolist(), [0.0, 1.0, 2.0], [1.0, 1.0, 2.0])
    assert_meta(yi, (4, 3, 5), np.float64)


@pytest.mark.parametrize("pdtype", [np.float64, np.float32, np.float16, "list"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_per_channel_inputs_are_cast_to_x_dtype(rng, dtype, pdtype):
    """weight, bias, save_mean/save_invstd and inference running stats of another float dtype
    (or float64 lists) act exactly like the same values already cast to x's dtype."""
    x = make_x(rng, (4, 3, 5), dtype)
    dy = make_x(rng, (4, 3, 5), dtype)
    w = rng.uniform(0.5, 2.0, 3)
    b = rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)

    def given(a):
        return a.tolist() if pdtype == "list" else a.astype(pdtype)

    def cast(a):
        # the value the caller gave, converted to x's dtype
        return np.asarray(given(a), dtype=np.float64).astype(dtype) if pdtype == "list" \
            else a.astype(pdtype).astype(dtype)

    y, m, s = cbn.batch_norm_train(x, given(w), given(b))
    ye, me, se = cbn.batch_norm_train(x, cast(w), cast(b))
    assert_meta(y, x.shape, dtype)
    assert_meta(m, (3,), dtype)
    assert_identical(y, ye)
    assert_identical(s, se)

    m64, s64 = f64(m), f64(s)
    dx, dw, db = cbn.batch_norm_backward(dy, x, given(m64), given(s64), given(w))
    dxe, dwe, dbe = cbn.batch_norm_backward(dy, x, cast(m64), cast(s64), cast(w))
    assert_meta(dx, x.shape, dtype)
    assert_meta(dw, (3,), dtype)
    assert_meta(db, (3,), dtype)
    assert_identical(dx, dxe)
    assert_identical(dw, dwe)

    yi = cbn.batch_norm_infer(x, given(rm), given(rv), given(w), given(b))
    yie = cbn.batch_norm_infer(x, cast(rm), cast(rv), cast(w), cast(b))
    assert_meta(yi, x.shape, dtype)
    assert_identical(yi, yie)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_integer_valued_python_lists(rng, dtype):
    """[1, 2, 3] as weight is the natural way to write a small example."""
    x = make_x(rng, (4, 3, 5), dtype)
    y, _, _ = cbn.batch_norm_train(x, [1, 2, 3], [0, 0, 1])
    assert_identical(y, cbn.batch_norm_train(x, np.array([1, 2, 3], dtype),
                                             np.array([0, 0, 1], dtype))[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_none_weight_bias_is_identity_affine(rng, dtype):
    x = make_x(rng, (4, 3, 5), dtype)
    dy = make_x(rng, (4, 3, 5), dtype)
    ones, zeros = np.ones(3, dtype), np.zeros(3, dtype)
    rm, rv = make_running(rng, 3, dtype)
    tight = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)

    y0, m0, s0 = cbn.batch_norm_train(x)
    y1, m1, s1 = cbn.batch_norm_train(x, ones, zeros)
    assert_close(y0, f64(y1), **tight)
    assert_identical(m0, m1)
    assert_identical(s0, s1)
    assert_close(cbn.batch_norm_train(x, ones)[0], f64(y1), **tight)
    assert_close(cbn.batch_norm_train(x, None, zeros)[0], f64(y1), **tight)

    d0 = cbn.batch_norm_backward(dy, x, m0, s0)
    d1 = cbn.batch_norm_backward(dy, x, m0, s0, ones)
    for a, b in zip(d0, d1):
        assert_close(a, f64(b), **tight)

    assert_close(cbn.batch_norm_infer(x, rm, rv), f64(cbn.batch_norm_infer(x, rm, rv, ones,
                                                                            zeros)), **tight)
    sc0, sh0 = cbn.fold_scale_shift(rm, rv)
    sc1, sh1 = cbn.fold_scale_shift(rm, rv, ones, zeros)
    assert_close(sc0, f64(sc1), **tight)
    assert_close(sh0, f64(sh1), **tight)


# -- out= -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_out_buffers(rng, dtype, layout):
    shape = (12, 8, 33, 31) if layout == "NCHW" else (8, 20, 18, 24)
    C = shape[1] if layout == "NCHW" else shape[-1]
    x = make_x(rng, shape, dtype, layout)
    dy = make_x(rng, shape, dtype, layout)
    w, b = make_params(rng, C, dtype)
    rm, rv = make_running(rng, C, dtype)

    y_new, m, s = cbn.batch_norm_train(x, w, b, layout=layout)
    out = np.full(shape, 7.0, dtype)
    y, m2, s2 = cbn.batch_norm_train(x, w, b, layout=layout, out=out)
    assert y is out
    assert_identical(out, y_new)
    assert_identical(m2, m)

    dx_new = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout)[0]
    out = np.full(shape, 7.0, dtype)
    dx = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout, out=out)[0]
    assert dx is out
    assert_identical(out, dx_new)

    yi_new = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout)
    out = np.full(shape, 7.0, dtype)
    yi = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout, out=out)
    assert yi is out
    assert_identical(out, yi_new)


@pytest.mark.parametrize("shape,layout", [((4, 3, 5, 6), "NCHW"), ((4, 5, 6, 3), "NHWC"),
                                          ((12, 8, 33, 31), "NCHW"), ((8, 20, 18, 24), "NHWC"),
                                          ((7, 5), "NHWC"), ((4, 1, 9), "NCHW")])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_in_place(rng, dtype, shape, layout):
    """out=x for training forward and inference, out=dy for backward: same values as out of
    place, written into the given array."""
    C = shape[1] if layout == "NCHW" else shape[-1]
    x = make_x(rng, shape, dtype, layout)
    dy = make_x(rng, shape, dtype, layout)
    w, b = make_params(rng, C, dtype)
    rm, rv = make_running(rng, C, dtype)
    rm_a, rv_a, rm_b, rv_b = rm.copy(), rv.copy(), rm.copy(), rv.copy()

    y_ref, m_ref, s_ref = cbn.batch_norm_train(x, w, b, running_mean=rm_a, running_var=rv_a,
                                               layout=layout)
    xi = x.copy()
    y, m, s = cbn.batch_norm_train(xi, w, b, running_mean=rm_b, running_var=rv_b,
                                   layout=layout, out=xi)
    assert y is xi
    assert_identical(xi, y_ref)
    assert_identical(m, m_ref)
    assert_identical(s, s_ref)
    assert_identical(rm_b, rm_a)
    assert_identical(rv_b, rv_a)

    dx_ref = cbn.batch_norm_backward(dy, x, m_ref, s_ref, w, layout=layout)
    dyi = dy.copy()
    dx = cbn.batch_norm_backward(dyi, x, m_ref, s_ref, w, layout=layout, out=dyi)
    assert dx[0] is dyi
    for a, b_ in zip(dx, dx_ref):
        assert_identical(a, b_)

    yi_ref = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout)
    xi = x.copy()
    yi = cbn.batch_norm_infer(xi, rm, rv, w, b, layout=layout, out=xi)
    assert yi is xi
    assert_identical(xi, yi_ref)


def test_out_overlapping_input(rng):
    """out sharing memory with x without being x (a shifted window of one buffer): the result
    is still that of the untouched input."""
    buf = make_x(rng, (5 * 3 * 4,), np.float64)
    x = buf[:48].reshape(4, 3, 4)
    out = buf[12:].reshape(4, 3, 4)
    expected = cbn.batch_norm_train(x.copy())[0]
    y = cbn.batch_norm_train(x, out=out)[0]
    assert y is out
    assert_close(y, expected, rtol=1e-12, atol=1e-12)

    base = make_x(rng, (8, 3, 5), np.float64)
    x = base[::2]                                       # strided view
    out = base.reshape(-1)[:x.size].reshape(x.shape)    # C-contiguous, overlaps x
    expected = cbn.batch_norm_infer(x.copy(), np.zeros(3), np.full(3, 2.0))
    y = cbn.batch_norm_infer(x, np.zeros(3), np.full(3, 2.0), out=out)
    assert y is out
    assert_close(y, expected, rtol=1e-12, atol=1e-12)
