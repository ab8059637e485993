"""Inference (`cbn.batch_norm_infer`) and `cbn.fold_scale_shift` against `cbn.reference`."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import (ALL_CASES, DTYPES, assert_close, assert_meta, case_arrays, case_id,
                      channel_axis, f64, make_params, make_running, make_x)

AFFINE = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize("affine", AFFINE, ids=["w+b", "w", "b", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_matches_reference(rng, case, dtype, affine):
    layout, shape, C, x, _, weight, bias, rm, rv = case_arrays(rng, case, dtype)
    weight = weight if affine[0] else None
    bias = bias if affine[1] else None

    y = cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout)
    ey = ref.batch_norm_infer(f64(x), f64(rm), f64(rv), f64(weight), f64(bias), layout=layout)
    assert_meta(y, shape, dtype)
    assert_close(y, ey)

    # the formula written out directly
    ax = channel_axis(layout, len(shape))
    b = [1] * len(shape)
    b[ax] = C
    w = np.ones(C) if weight is None else f64(weight)
    bb = np.zeros(C) if bias is None else f64(bias)
    direct = ((f64(x) - f64(rm).reshape(b)) / np.sqrt(f64(rv).reshape(b) + 1e-5)
              * w.reshape(b) + bb.reshape(b))
    assert_close(y, direct)


@pytest.mark.parametrize("eps", [0.0, 1e-3, 2.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_eps(rng, dtype, eps):
    x = make_x(rng, (3, 4, 5), dtype)
    rm, rv = make_running(rng, 4, dtype)
    y = cbn.batch_norm_infer(x, rm, rv, eps=eps)
    assert_close(y, ref.batch_norm_infer(f64(x), f64(rm), f64(rv), eps=eps))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_infer_with_batch_statistics_equals_train(rng, dtype, layout):
    """momentum=1 with the biased convention puts the batch statistics into the running buffers;
    inference with them must then reproduce the training output."""
    shape = (4, 6, 5, 3) if layout == "NCHW" else (4, 5, 3, 6)
    x = make_x(rng, shape, dtype, layout)
    w, b = make_params(rng, 6, dtype)
    rm, rv = np.zeros(6, dtype), np.ones(6, dtype)
    y_train, m, s = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, momentum=1.0,
                                         unbiased_running_var=False, layout=layout)
    y_infer = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout)
    assert_close(y_infer, f64(y_train), rtol=1e-4 if dtype == np.float32 else 1e-9)


def test_empty_batch(rng):
    """Inference on an empty batch is well defined: an empty output of the same shape."""
    for layout, shape in [("NCHW", (0, 3, 4)), ("NHWC", (0, 4, 3)), ("NCHW", (0, 3))]:
        x = np.empty(shape, np.float32)
        y = cbn.batch_norm_infer(x, np.zeros(3), np.ones(3), layout=layout)
        assert_meta(y, shape, np.float32)


# -- fold_scale_shift -----------------------------------------------------------------------------

@pytest.mark.parametrize("affine", AFFINE, ids=["w+b", "w", "b", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("C", [1, 3, 16, 17, 300])
def test_fold_scale_shift(rng, C, dtype, affine):
    rm, rv = make_running(rng, C, dtype)
    weight, bias = make_params(rng, C, dtype)
    weight = weight if affine[0] else None
    bias = bias if affine[1] else None
    scale, shift = cbn.fold_scale_shift(rm, rv, weight, bias)
    es, eh = ref.fold_scale_shift(f64(rm), f64(rv), f64(weight), f64(bias))
    assert_meta(scale, (C,), dtype)
    assert_meta(shift, (C,), dtype)
    assert_close(scale, es)
    assert_close(shift, eh)
    w = np.ones(C) if weight is None else f64(weight)
    b = np.zeros(C) if bias is None else f64(bias)
    assert_close(scale, w / np.sqrt(f64(rv) + 1e-5))
    assert_close(shift, b - f64(rm) * w / np.sqrt(f64(rv) + 1e-5))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fold_scale_shift_eps(rng, eps):
    rm, rv = make_running(rng, 5, np.float64)
    scale, shift = cbn.fold_scale_shift(rm, rv, eps=eps)
    assert_close(scale, 1 / np.sqrt(rv + eps))
    assert_close(shift, -rm / np.sqrt(rv + eps))


def test_fold_scale_shift_hand_computed():
    scale, shift = cbn.fold_scale_shift(np.array([1.0, -2.0]), np.array([4.0, 0.25]),
                                        np.array([2.0, 1.0]), np.array([0.5, 0.0]), eps=0.0)
    assert_close(scale, [1.0, 2.0])
    assert_close(shift, [-0.5, 4.0])


def test_fold_scale_shift_lists_give_float64():
    scale, shift = cbn.fold_scale_shift([0.0, 1.0], [1.0, 4.0], eps=0.0)
    assert_meta(scale, (2,), np.float64)
    assert_close(scale, [1.0, 0.5])
    assert_close(shift, [0.0, -0.5])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_infer_equals_folded_affine(rng, dtype, layout):
    """batch_norm_infer(x) == x * scale + shift with fold_scale_shift's scale and shift."""
    shape = (3, 7, 4, 5) if layout == "NCHW" else (3, 4, 5, 7)
    x = make_x(rng, shape, dtype, layout)
    rm, rv = make_running(rng, 7, dtype)
    w, b = make_params(rng, 7, dtype)
    scale, shift = cbn.fold_scale_shift(rm, rv, w, b)
    bshape = [1] * 4
    bshape[channel_axis(layout, 4)] = 7
    folded = f64(x) * f64(scale).reshape(bshape) + f64(shift).reshape(bshape)
    y = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout)
    assert_close(y, folded)
