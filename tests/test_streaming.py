"""Outputs past the streaming-store threshold (16 MB): the kernels then compute blocks in L1 and
stream them out, a path of its own in every layout. Checked against the float64 reference and
for bit-identity across thread counts."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import assert_close, assert_identical, case_id, f64, make_params, make_x, n_channels

# float32, just over 16 MB each: channels-first with long runs, channels-first in column mode
# (runs of 49), channels-last narrower and wider than a column tile (512)
STREAM_CASES = [
    ("NCHW", (4, 3, 600, 700)),
    ("NCHW", (96, 900, 7, 7)),
    ("NHWC", (16, 1024, 260)),
    ("NHWC", (2, 2000, 1100)),
]


@pytest.mark.parametrize("case", STREAM_CASES, ids=case_id)
def test_streamed_outputs_match_reference(rng, case):
    layout, shape = case
    C = n_channels(shape, layout)
    x = make_x(rng, shape, np.float32, layout, loc=1.0)
    dy = make_x(rng, shape, np.float32, layout)
    assert x.nbytes >= 16 * 1024 * 1024
    weight, bias = make_params(rng, C, np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)

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

    # one thread and two threads split the work differently but must give the same bits
    y1, _, _ = cbn.batch_norm_train(x, weight, bias, layout=layout, n_threads=1)
    dx1, _, _ = cbn.batch_norm_backward(dy, x, mean, invstd, weight, layout=layout, n_threads=1)
    y2, _, _ = cbn.batch_norm_train(x, weight, bias, layout=layout, n_threads=2)
    dx2, _, _ = cbn.batch_norm_backward(dy, x, mean, invstd, weight, layout=layout, n_threads=2)
    assert_identical(y1, y2)
    assert_identical(dx1, dx2)
