"""Fused ReLU: activation="relu" on training forward and inference, and its gradient in backward.

The reference is cbn.reference followed by np.maximum(., 0) (forward) and cbn.reference's
backward fed with dy masked where y <= 0, so these tests check the fusion, not the formulas.
"""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import (ALL_CASES, DTYPES, assert_close, assert_identical, case_arrays, case_id,
                      f64, make_x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_train_relu_matches_reference_then_relu(case, dtype, rng):
    layout, shape, _, x, _, w, b, _, _ = case_arrays(rng, case, dtype)
    y, mean, invstd = cbn.batch_norm_train(x, w, b, layout=layout, activation="relu")
    r_y, r_mean, r_invstd, _, _ = ref.batch_norm_train(f64(x), f64(w), f64(b), layout=layout)
    assert_close(y, np.maximum(r_y, 0.0))
    assert_close(mean, r_mean)
    assert_close(invstd, r_invstd)
    assert (y >= 0).all()
    # the fused clamp is exactly a clamp of the unfused output
    plain, _, _ = cbn.batch_norm_train(x, w, b, layout=layout)
    assert_identical(y, np.maximum(plain, dtype(0)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_backward_relu_masks_dy_where_y_not_positive(case, dtype, rng):
    layout, shape, _, x, dy, w, b, _, _ = case_arrays(rng, case, dtype)
    y, mean, invstd = cbn.batch_norm_train(x, w, b, layout=layout, activation="relu")
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, w, layout=layout, y=y,
                                         activation="relu")
    masked = np.where(y > 0, dy, dtype(0))
    r_dx, r_dw, r_db = ref.batch_norm_backward(f64(masked), f64(x), f64(mean), f64(invstd),
                                               f64(w), layout=layout)
    assert_close(dx, r_dx)
    assert_close(dw, r_dw)
    assert_close(db, r_db)
    # identical to the unfused backward fed with the masked gradient
    u_dx, u_dw, u_db = cbn.batch_norm_backward(masked, x, mean, invstd, w, layout=layout)
    assert_identical(dx, u_dx)
    assert_identical(dw, u_dw)
    assert_identical(db, u_db)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_infer_relu(case, dtype, rng):
    layout, shape, C, x, _, w, b, rm, rv = case_arrays(rng, case, dtype)
    y = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout, activation="relu")
    plain = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout)
    assert_identical(y, np.maximum(plain, dtype(0)))
    assert_close(y, np.maximum(ref.batch_norm_infer(f64(x), f64(rm), f64(rv), f64(w), f64(b),
                                                    layout=layout), 0.0))


@pytest.mark.parametrize("layout,shape", [("NCHW", (12, 8, 33, 31)), ("NHWC", (8, 20, 18, 24)),
                                          ("NCHW", (3, 2, 30001)), ("NCHW", (16, 40, 7, 7))])
def test_relu_paths_bit_identical_across_threads(layout, shape, rng):
    x = make_x(rng, shape, np.float32, layout)
    dy = rng.standard_normal(shape).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        y, m, s = cbn.batch_norm_train(x, layout=layout, activation="relu", n_threads=n)
        g = cbn.batch_norm_backward(dy, x, m, s, layout=layout, y=y, activation="relu",
                                    n_threads=n)
        results.append((y, m, s) + g)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_identical(a, b)


def test_relu_keeps_nan():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    x[1, 2] = np.nan
    y, _, _ = cbn.batch_norm_train(x, layout="NHWC", activation="relu")
    assert np.isnan(y[:, 2]).all() and np.isfinite(np.delete(y, 2, axis=1)).all()


def test_bad_activation_and_missing_y_raise_before_writing():
    x = np.ones((4, 3), np.float32)
    x[0] = 2
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="activation"):
        cbn.batch_norm_train(x, activation="gelu", out=out)
    with pytest.raises(ValueError, match="activation"):
        cbn.batch_norm_infer(x, np.zeros(3, np.float32), np.ones(3, np.float32),
                             activation="tanh", out=out)
    y, m, s = cbn.batch_norm_train(x)
    with pytest.raises(ValueError, match="needs y"):
        cbn.batch_norm_backward(x, x, m, s, activation="relu", out=out)
    with pytest.raises(ValueError, match="shape"):
        cbn.batch_norm_backward(x, x, m, s, y=y[:2], activation="relu", out=out)
    with pytest.raises(TypeError, match="dtype"):
        cbn.batch_norm_backward(x, x, m, s, y=y.astype(np.float64), activation="relu", out=out)
    assert (out == 7.0).all()
