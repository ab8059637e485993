"""Fused ReLU against batch norm followed by a separate ReLU pass, one group per case.

    pytest bench/test_bench_relu.py --benchmark-group-by=group

"separate" is what a framework without fusion does: cbn's batch norm into y, then
np.maximum(y, 0, out=y) (another full read and write of y); backward masks dy into a new array
first. "fused" does the clamp (or the mask) inside cbn's own passes.
"""
import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")

import cbn  # noqa: E402

SHAPES = [(32, 64, 56, 56), (32, 256, 14, 14)]


def _inputs(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, m, s = cbn.batch_norm_train(x, activation="relu")
    return x, dy, y, m, s


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("how", ["fused", "separate"])
def test_train_relu(benchmark, n_threads, shape, how):
    x, _, y_ref, _, _ = _inputs(shape)
    out = np.empty_like(x)
    if how == "fused":
        def fn():
            return cbn.batch_norm_train(x, activation="relu", out=out, n_threads=n_threads)[0]
    else:
        def fn():
            y = cbn.batch_norm_train(x, out=out, n_threads=n_threads)[0]
            return np.maximum(y, 0, out=y)
    benchmark.group = f"train+relu {'x'.join(map(str, shape))}"
    np.testing.assert_array_equal(benchmark(fn), y_ref)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("how", ["fused", "separate"])
def test_backward_relu(benchmark, n_threads, shape, how):
    x, dy, y, m, s = _inputs(shape)
    out = np.empty_like(x)
    if how == "fused":
        def fn():
            return cbn.batch_norm_backward(dy, x, m, s, y=y, activation="relu", out=out,
                                           n_threads=n_threads)[0]
    else:
        def fn():
            g = np.where(y > 0, dy, np.float32(0))
            return cbn.batch_norm_backward(g, x, m, s, out=out, n_threads=n_threads)[0]
    benchmark.group = f"backward+relu {'x'.join(map(str, shape))}"
    expected = cbn.batch_norm_backward(np.where(y > 0, dy, np.float32(0)), x, m, s)[0]
    np.testing.assert_array_equal(benchmark(fn), expected)
