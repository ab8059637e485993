"""Benchmarks of every op x layout x dtype x shape x implementation, one group per case.

Implementations: cbn (output preallocated with out=np.empty_like(x)), naive NumPy (cbn.reference's
formulas in the input dtype),
PyTorch's CPU kernels (skipped when torch is not importable), and the copy yardstick (a copy of
x into a preallocated array on the same threads), so that `--benchmark-group-by=group` (the
default) prints them side by side. Each benchmark also checks that the implementation's output
matches cbn's, so `--benchmark-disable` makes this a quick test of the benchmark itself.

Inputs are allocated as NumPy code allocates them (cbn.bench.make_inputs), so the addresses are
whatever malloc gives, as for users. Shapes are given in NCHW order and permuted for NHWC. The
default grid is moderate plus one tensor larger than a 32 MB last-level cache (64x64x56x56,
51 MB, cbn.bench.DRAM_SHAPE); the other big shapes and float64 are marked heavy
(CBN_BENCH_FULL=1 or -m heavy).
"""
import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")

from cbn import bench as cbn_bench  # noqa: E402

DEFAULT_SHAPES = [(32, 256, 14, 14), (256, 1024), (8, 64, 8, 8), cbn_bench.DRAM_SHAPE]
HEAVY_SHAPES = [(32, 64, 56, 56), (32, 256, 28, 28), (32, 2048, 7, 7), (16, 32)]
DTYPES = ["float32", "float64"]  # float64 is heavy
IMPLS = ["cbn", "numpy", "torch", "copy"]


def _params():
    params = []
    for shape in DEFAULT_SHAPES + HEAVY_SHAPES:
        for layout in cbn_bench.LAYOUTS:
            for dtype in DTYPES:
                heavy = shape in HEAVY_SHAPES or dtype != "float32"
                for op in cbn_bench.OPS:
                    for impl in IMPLS:
                        params.append(pytest.param(
                            op, layout, dtype, shape, impl,
                            id=f"{op}-{layout}-{dtype}-{cbn_bench.shape_str(shape)}-{impl}",
                            marks=[pytest.mark.heavy] if heavy else []))
    return params


@pytest.mark.parametrize("op,layout,dtype,shape,impl", _params())
def test_batch_norm(benchmark, n_threads, inputs_cache, op, layout, dtype, shape, impl):
    ashape = cbn_bench.layout_shape(shape, layout)
    if impl == "torch" and cbn_bench.import_torch() is None:
        pytest.skip("torch is not installed")
    inputs = inputs_cache(ashape, layout, dtype)
    fn = cbn_bench.make_candidates(op, inputs, n_threads, impls=[impl])[impl]
    x = inputs["x"]
    benchmark.group = f"{op} {layout} {dtype} {cbn_bench.shape_str(ashape)}"
    benchmark.extra_info.update({
        "op": op, "layout": layout, "dtype": dtype, "shape": list(ashape), "impl": impl,
        "threads": n_threads, "nbytes": x.nbytes,
        "bytes_moved": cbn_bench.TRAFFIC[op] * x.nbytes if impl != "copy" else 2 * x.nbytes,
    })
    result = cbn_bench.main_output(benchmark(fn), layout)

    # The benchmark measures the right thing: same output as cbn (copy: x itself).
    if impl == "copy":
        np.testing.assert_array_equal(result, x)
    elif impl != "cbn":
        expected = cbn_bench.make_candidates(op, inputs, n_threads, impls=["cbn"])["cbn"]()
        tol = 1e-3 if dtype == "float32" else 1e-9
        assert cbn_bench.max_rel_error(result, expected) < tol
    else:
        assert result.shape == ashape and result.dtype == np.dtype(dtype)
