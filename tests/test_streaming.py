"""Outputs past the streaming-store threshold (16 MB): the kernels then compute blocks in L1 and
stream them out, a path of its own in every layout. Checked against the float64 reference, for
bit-identity across thread counts and in place."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import (DTYPES, STREAM_CASES, assert_close, assert_identical, case_arrays, case_id,
                      f64)

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", STREAM_CASES, ids=case_id)
def test_streamed_outputs_match_reference(rng, many_threads, case, dtype):
    layout, shape, C, x, dy, weight, bias, _, _ = case_arrays(rng, case, dtype, loc=1.0)
    assert x.nbytes >= 16 * 1024 * 1024
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)

    y, mean, invstd = cbn.batch_norm_train(x, weight, bias, layout=layout)
    ey, emean, einvstd, _, _ = ref.batch_norm_train(f64(x), f64(weight), f64(bias),
                                                    layout=layout)
    assert_close(mean, emean)
    assert_close(invstd, einvstd)
    assert_close(y, ey)

    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, weight, layout=layout)
    edx, edw, edb = ref.batch_norm_backward(f64(dy), f64(x), f64(mean), f64(invstd),
                                            f64(weight), layout=layout)
    assert_close(dx, edx)
    assert_close(dw, edw)
    assert_close(db, edb)

    yi = cbn.batch_norm_infer(x, rm, rv, weight, bias, layout=layout)
    assert_close(yi, ref.batch_norm_infer(f64(x), f64(rm), f64(rv), f64(weight), f64(bias),
                                          layout=layout))

    # 1, 2 and 3 threads split the work differently but must give the same bits
    for n in (1, 3):
        yn, _, _ = cbn.batch_norm_train(x, weight, bias, layout=layout, n_threads=n)
        dxn, _, _ = cbn.batch_norm_backward(dy, x, mean, invstd, weight, layout=layout,
                                            n_threads=n)
        assert_identical(yn, y)
        assert_identical(dxn, dx)

    # in place (out=x, out=dy): the same bits as into fresh arrays
    yi_expected = yi
    xi, dyi = x.copy(), dy.copy()
    cbn.batch_norm_backward(dyi, xi, mean, invstd, weight, layout=layout, out=dyi)
    assert_identical(dyi, dx)
    cbn.batch_norm_infer(xi, rm, rv, weight, bias, layout=layout, out=xi)
    assert_identical(xi, yi_expected)
    xi = x.copy()
    cbn.batch_norm_train(xi, weight, bias, layout=layout, out=xi)
    assert_identical(xi, y)
