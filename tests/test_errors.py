"""Every documented error: the right exception, a message naming what was expected and what was
given, and nothing written (out buffers, running statistics and in-place x keep their values)."""
import numpy as np
import pytest

import cbn

SENTINEL = 1234.5
C = 3
SHAPES = {"NCHW": (4, C, 5), "NHWC": (4, 5, C)}
MORE_THAN_ONE = "Expected more than 1 value per channel when training"


def sentinel(shape, dtype=np.float32, order="C"):
    return np.full(shape, SENTINEL, dtype=dtype, order=order)


def read_only(a):
    a.setflags(write=False)
    return a


def bump_last(shape, k=1):
    return tuple(shape[:-1]) + (shape[-1] + k,)


def fortran_view(shape, dtype=np.float32):
    """A writeable array of `shape` that is not C-contiguous (for ndim >= 2)."""
    return sentinel(shape, dtype, order="F")


def strided(n, dtype=np.float32):
    return sentinel(2 * n, dtype)[::2]


# -------------------------------------------------------------------------------------------------
# Mutations: (id, function(kw) that breaks exactly one argument, exception, message fragments).
# kw holds every argument of the call; buffers cbn would write are sentinel-filled.

def _set(**changes):
    def mutate(kw):
        for k, v in changes.items():
            kw[k] = v(kw) if callable(v) else v
    return mutate


def _new_x(shape, dtype=np.float32, fix_out=True):
    def mutate(kw):
        kw["x"] = np.ones(shape, dtype)
        if fix_out and "out" in kw:
            kw["out"] = sentinel(shape)
        if "dy" in kw:
            kw["dy"] = np.ones(shape, dtype)
    return mutate


X_ERRORS = [
    ("x-1d", _new_x((5,)), ValueError, ["(5,)"]),
    ("x-0d", _new_x(()), ValueError, ["()"]),
    ("x-int32", _new_x((4, C, 5), np.int32, False), TypeError, ["int32"]),
    ("x-int64", _new_x((4, C, 5), np.int64, False), TypeError, ["int64"]),
    ("x-bool", _new_x((4, C, 5), np.bool_, False), TypeError, ["bool"]),
    ("x-complex", _new_x((4, C, 5), np.complex128, False), TypeError, ["complex128"]),
    ("x-object", _new_x((4, C, 5), object, False), TypeError, ["object"]),
    ("x-int16", _new_x((4, C, 5), np.int16, False), TypeError, ["int16"]),  # float16 is valid
    ("layout-unknown", _set(layout="NCWH"), ValueError, ["NCWH", "NCHW"]),
    ("layout-empty", _set(layout=""), ValueError, ["NCHW"]),
    ("layout-None", _set(layout=None), ValueError, ["None"]),
    ("out-shape", _set(out=lambda kw: sentinel(bump_last(kw["x"].shape))), ValueError,
     ["out", "shape"]),
    ("out-ndim", _set(out=lambda kw: sentinel(kw["x"].shape + (1,))), ValueError, ["out"]),
    ("out-dtype", _set(out=lambda kw: sentinel(kw["x"].shape, np.float64)), TypeError,
     ["out", "float32", "float64"]),
    ("out-int", _set(out=lambda kw: np.zeros(kw["x"].shape, np.int32)), TypeError,
     ["out", "int32"]),
    ("out-readonly", _set(out=lambda kw: read_only(sentinel(kw["x"].shape))), ValueError,
     ["out"]),
    ("out-not-contiguous", _set(out=lambda kw: fortran_view(kw["x"].shape)), ValueError,
     ["out"]),
    ("n_threads-0", _set(n_threads=0), ValueError, ["n_threads", "0"]),
]

WEIGHT_ERRORS = [
    ("weight-shape", _set(weight=np.ones(C + 1)), ValueError, ["weight", f"({C + 1},)"]),
    ("weight-2d", _set(weight=np.ones((C, 1))), ValueError, ["weight", f"({C}, 1)"]),
    ("weight-scalar", _set(weight=np.float64(1.0)), ValueError, ["weight"]),
    ("weight-complex", _set(weight=np.ones(C, np.complex128)), TypeError,
     ["weight", "complex128"]),
    ("weight-bool", _set(weight=np.ones(C, bool)), TypeError, ["weight", "bool"]),
    ("weight-object", _set(weight=np.ones(C, object)), TypeError, ["weight", "object"]),
]

BIAS_ERRORS = [
    ("bias-shape", _set(bias=np.zeros(C - 1)), ValueError, ["bias", f"({C - 1},)"]),
    ("bias-complex", _set(bias=np.zeros(C, np.complex64)), TypeError, ["bias", "complex64"]),
]

EPS_ERRORS = [
    ("eps-negative", _set(eps=-1e-3), ValueError, ["eps", "-0.001"]),
    ("eps-nan", _set(eps=float("nan")), ValueError, ["eps", "nan"]),
]

TRAIN_ERRORS = X_ERRORS + WEIGHT_ERRORS + BIAS_ERRORS + EPS_ERRORS + [
    ("momentum-negative", _set(momentum=-0.1), ValueError, ["momentum", "-0.1"]),
    ("momentum-above-1", _set(momentum=1.5), ValueError, ["momentum", "1.5"]),
    ("momentum-nan", _set(momentum=float("nan")), ValueError, ["momentum", "nan"]),
    ("running_mean-shape", _set(running_mean=lambda kw: sentinel(C + 1)), ValueError,
     ["running_mean", f"({C + 1},)"]),
    ("running_var-shape", _set(running_var=lambda kw: sentinel((C, 1))), ValueError,
     ["running_var", f"({C}, 1)"]),
    ("running_mean-alone", _set(running_var=None), ValueError, ["running_var"]),
    ("running_var-alone", _set(running_mean=None), ValueError, ["running_mean"]),
    ("running_mean-readonly", _set(running_mean=lambda kw: read_only(sentinel(C))), ValueError,
     ["running_mean"]),
    ("running_var-readonly", _set(running_var=lambda kw: read_only(sentinel(C))), ValueError,
     ["running_var"]),
    ("running_mean-dtype", _set(running_mean=lambda kw: sentinel(C, np.float64)), TypeError,
     ["running_mean", "float64", "float32"]),
    ("running_var-int", _set(running_var=lambda kw: np.ones(C, np.int64)), TypeError,
     ["running_var", "int64"]),
    ("running_mean-strided", _set(running_mean=lambda kw: strided(C)), ValueError,
     ["running_mean"]),
    ("one-value-per-channel-2d", _new_x((1, C)), ValueError, [MORE_THAN_ONE]),
]
# single-value shapes of more than 2 dimensions depend on where the channel axis is (an empty
# batch is no error: tests/test_layer_dropin.py)
TRAIN_ERRORS_NCHW_ONLY = [
    ("one-value-per-channel-4d", _new_x((1, C, 1, 1)), ValueError, [MORE_THAN_ONE]),
]
TRAIN_ERRORS_NHWC_ONLY = [
    ("one-value-per-channel-nhwc", _new_x((1, 1, 1, C)), ValueError, [MORE_THAN_ONE]),
]

INFER_ERRORS = X_ERRORS + WEIGHT_ERRORS + BIAS_ERRORS + EPS_ERRORS + [
    ("running_mean-shape", _set(running_mean=np.zeros(C + 1)), ValueError,
     ["running_mean", f"({C + 1},)"]),
    ("running_var-shape", _set(running_var=np.ones((1, C))), ValueError,
     ["running_var", f"(1, {C})"]),
    ("running_var-complex", _set(running_var=np.ones(C, np.complex128)), TypeError,
     ["running_var", "complex128"]),
]

BACKWARD_ERRORS = X_ERRORS + WEIGHT_ERRORS + [
    ("dy-shape", _set(dy=lambda kw: np.ones(bump_last(kw["x"].shape), np.float32)), ValueError,
     ["dy"]),
    ("dy-int", _set(dy=lambda kw: np.ones(kw["x"].shape, np.int32)), TypeError,
     ["dy", "int32"]),
    ("save_mean-shape", _set(save_mean=np.zeros(C + 2)), ValueError,
     ["save_mean", f"({C + 2},)"]),
    ("save_invstd-shape", _set(save_invstd=np.ones(C - 1)), ValueError,
     ["save_invstd", f"({C - 1},)"]),
    ("save_invstd-complex", _set(save_invstd=np.ones(C, np.complex64)), TypeError,
     ["save_invstd", "complex64"]),
]


def _train_kwargs(layout):
    shape = SHAPES[layout]
    rng = np.random.default_rng(0)
    return dict(x=rng.standard_normal(shape).astype(np.float32),
                weight=np.ones(C, np.float32), bias=np.zeros(C, np.float32),
                running_mean=sentinel(C), running_var=sentinel(C), momentum=0.1, eps=1e-5,
                layout=layout, out=sentinel(shape))


def _infer_kwargs(layout):
    shape = SHAPES[layout]
    rng = np.random.default_rng(1)
    return dict(x=rng.standard_normal(shape).astype(np.float32),
                running_mean=np.zeros(C, np.float32), running_var=np.ones(C, np.float32),
                weight=np.ones(C, np.float32), bias=np.zeros(C, np.float32), eps=1e-5,
                layout=layout, out=sentinel(shape))


def _backward_kwargs(layout):
    shape = SHAPES[layout]
    rng = np.random.default_rng(2)
    return dict(dy=rng.standard_normal(shape).astype(np.float32),
                x=rng.standard_normal(shape).astype(np.float32),
                save_mean=np.zeros(C, np.float32), save_invstd=np.ones(C, np.float32),
                weight=np.ones(C, np.float32), layout=layout, out=sentinel(shape))


CALLS = {
    "train": (_train_kwargs,
              lambda kw: cbn.batch_norm_train(kw.pop("x"), kw.pop("weight"), kw.pop("bias"), **kw)),
    "infer": (_infer_kwargs,
              lambda kw: cbn.batch_norm_infer(kw.pop("x"), kw.pop("running_mean"),
                                              kw.pop("running_var"), kw.pop("weight"),
                                              kw.pop("bias"), **kw)),
    "backward": (_backward_kwargs,
                 lambda kw: cbn.batch_norm_backward(kw.pop("dy"), kw.pop("x"),
                                                    kw.pop("save_mean"), kw.pop("save_invstd"),
                                                    kw.pop("weight"), **kw)),
}


def _snapshot(kw):
    """Copies of everything that must survive the failed call unchanged."""
    snap = {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            snap[k] = v.copy()
    return snap


def _check_error(func, kw, mutate, exc, parts):
    mutate(kw)
    snap = _snapshot(kw)
    arrays = {k: v for k, v in kw.items() if isinstance(v, np.ndarray)}
    with pytest.raises(exc) as info:
        CALLS[func][1](dict(kw))
    msg = str(info.value)
    for part in parts:
        assert part in msg, f"message {msg!r} does not mention {part!r}"
    for k, a in arrays.items():
        # buffers cbn writes (out, running statistics) hold SENTINEL; inputs their own values
        same = np.array_equal(a, snap[k], equal_nan=a.dtype.kind == "f")
        assert same, f"{k} was modified by a call that raised {exc.__name__}"


def _cases(errors):
    return [pytest.param(mutate, exc, parts, id=name) for name, mutate, exc, parts in errors]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mutate,exc,parts", _cases(TRAIN_ERRORS))
def test_train_errors(layout, mutate, exc, parts):
    _check_error("train", _train_kwargs(layout), mutate, exc, parts)


@pytest.mark.parametrize("mutate,exc,parts", _cases(TRAIN_ERRORS_NCHW_ONLY))
def test_train_errors_channels_first(mutate, exc, parts):
    _check_error("train", _train_kwargs("NCHW"), mutate, exc, parts)


@pytest.mark.parametrize("mutate,exc,parts", _cases(TRAIN_ERRORS_NHWC_ONLY))
def test_train_errors_channels_last(mutate, exc, parts):
    _check_error("train", _train_kwargs("NHWC"), mutate, exc, parts)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mutate,exc,parts", _cases(INFER_ERRORS))
def test_infer_errors(layout, mutate, exc, parts):
    _check_error("infer", _infer_kwargs(layout), mutate, exc, parts)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mutate,exc,parts", _cases(BACKWARD_ERRORS))
def test_backward_errors(layout, mutate, exc, parts):
    _check_error("backward", _backward_kwargs(layout), mutate, exc, parts)


# -- in place: a failing call with out=x (out=dy) leaves x (dy) as it was -----------------------

IN_PLACE_TRAIN = [e for e in TRAIN_ERRORS
                  if not e[0].startswith(("x-", "out-", "one-value"))]


@pytest.mark.parametrize("mutate,exc,parts", _cases(IN_PLACE_TRAIN))
def test_train_errors_in_place(mutate, exc, parts):
    kw = _train_kwargs("NCHW")
    kw["out"] = kw["x"]
    x0 = kw["x"].copy()
    _check_error("train", kw, mutate, exc, parts)
    np.testing.assert_array_equal(kw["x"], x0)


def test_train_single_value_in_place_untouched():
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    rm, rv = sentinel(3), sentinel(3)
    with pytest.raises(ValueError, match=MORE_THAN_ONE):
        cbn.batch_norm_train(x, running_mean=rm, running_var=rv, out=x)
    np.testing.assert_array_equal(x, [[1.0, 2.0, 3.0]])
    assert np.all(rm == SENTINEL) and np.all(rv == SENTINEL)


IN_PLACE_INFER = [e for e in INFER_ERRORS if not e[0].startswith(("x-", "out-"))]


@pytest.mark.parametrize("mutate,exc,parts", _cases(IN_PLACE_INFER))
def test_infer_errors_in_place(mutate, exc, parts):
    kw = _infer_kwargs("NHWC")
    kw["out"] = kw["x"]
    x0 = kw["x"].copy()
    _check_error("infer", kw, mutate, exc, parts)
    np.testing.assert_array_equal(kw["x"], x0)


IN_PLACE_BACKWARD = [e for e in BACKWARD_ERRORS
                     if not e[0].startswith(("x-", "out-", "dy-"))]


@pytest.mark.parametrize("mutate,exc,parts", _cases(IN_PLACE_BACKWARD))
def test_backward_errors_in_place(mutate, exc, parts):
    kw = _backward_kwargs("NCHW")
    kw["out"] = kw["dy"]
    dy0 = kw["dy"].copy()
    _check_error("backward", kw, mutate, exc, parts)
    np.testing.assert_array_equal(kw["dy"], dy0)


# -- cases where the contract allows either TypeError or ValueError ------------------------------

def test_backward_dy_dtype_differs_from_x():
    x = np.ones((4, C, 5), np.float32)
    out = sentinel((4, C, 5))
    with pytest.raises((TypeError, ValueError)):
        cbn.batch_norm_backward(np.ones((4, C, 5)), x, np.zeros(C), np.ones(C), out=out)
    assert np.all(out == SENTINEL)


@pytest.mark.parametrize("which", ["save_mean", "save_invstd"])
def test_backward_missing_saved_statistics(which):
    kw = _backward_kwargs("NCHW")
    kw[which] = None
    with pytest.raises((TypeError, ValueError)):
        CALLS["backward"][1](kw)


@pytest.mark.parametrize("which", ["running_mean", "running_var"])
def test_infer_missing_running_statistics(which):
    kw = _infer_kwargs("NCHW")
    kw[which] = None
    out = kw["out"]
    with pytest.raises((TypeError, ValueError)):
        CALLS["infer"][1](kw)
    assert np.all(out == SENTINEL)


def test_out_not_an_array():
    x = np.ones((4, C, 5), np.float32)
    with pytest.raises((TypeError, ValueError)):
        cbn.batch_norm_train(x, out=[[0.0] * 5] * C * 4)
    with pytest.raises((TypeError, ValueError)):
        cbn.batch_norm_train(x, running_mean=[0.0] * C, running_var=[1.0] * C)


def test_out_in_place_on_strided_x_is_rejected():
    """out must be C-contiguous, so out=x with a strided x is an error (x left as it was)."""
    base = np.arange(2 * 4 * C * 5, dtype=np.float32).reshape(4, C, 10)
    x = base[:, :, ::2]
    base0 = base.copy()
    with pytest.raises(ValueError):
        cbn.batch_norm_train(x, out=x)
    with pytest.raises(ValueError):
        cbn.batch_norm_infer(x, np.zeros(C), np.ones(C), out=x)
    np.testing.assert_array_equal(base, base0)


# -- fold_scale_shift -----------------------------------------------------------------------------

@pytest.mark.parametrize("args,kwargs,exc,parts", [
    ((np.zeros(3), np.ones(4)), {}, ValueError, ["running_var", "(4,)"]),
    ((np.zeros(3), np.ones(3), np.ones(2)), {}, ValueError, ["weight", "(2,)"]),
    ((np.zeros(3), np.ones(3), None, np.ones((3, 1))), {}, ValueError, ["bias", "(3, 1)"]),
    ((np.zeros(3), np.ones(3)), {"eps": -1.0}, ValueError, ["eps", "-1.0"]),
    ((np.zeros((3, 2)), np.ones((3, 2))), {}, ValueError, ["running_mean", "(3, 2)"]),
    ((np.zeros(3, np.complex128), np.ones(3)), {}, TypeError, ["complex128"]),
    ((np.zeros(3), np.ones(3, bool)), {}, TypeError, ["running_var", "bool"]),
], ids=["var-shape", "weight-shape", "bias-2d", "eps", "mean-2d", "complex", "bool"])
def test_fold_scale_shift_errors(args, kwargs, exc, parts):
    with pytest.raises(exc) as info:
        cbn.fold_scale_shift(*args, **kwargs)
    for part in parts:
        assert part in str(info.value), (str(info.value), part)


@pytest.mark.parametrize("func", sorted(CALLS))
def test_unbroken_arguments_do_write(func):
    """Control for the tests above: the same arguments, unbroken, do write every buffer."""
    kw = CALLS[func][0]("NCHW")
    buffers = {k: kw[k] for k in ("out", "running_mean", "running_var")
               if func == "train" or k == "out"}
    CALLS[func][1](dict(kw))
    for k, a in buffers.items():
        assert not np.any(a == SENTINEL), f"{k} not written by a valid {func} call"
