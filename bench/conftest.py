"""pytest-benchmark suite for cbn (not part of the default test run: pytest's testpaths is tests/).

Run it explicitly::

    pytest bench/                                  # default grid, grouped by case
    pytest bench/ --benchmark-disable -q           # each benchmark once: a quick smoke test
    pytest bench/ -k "train and NHWC" --benchmark-only
    CBN_BENCH_FULL=1 pytest bench/                 # + the big shapes of issue 3 and float64
    pytest bench/ -m heavy                         # only those heavy cases

Environment: CBN_BENCH_THREADS (threads for cbn, the copy yardstick and PyTorch; default
cbn.get_num_threads()), CBN_BENCH_FULL=1 (run the cases marked heavy).
"""
import os
import sys

import pytest

try:
    import cbn  # noqa: F401
except ImportError:  # a source checkout with an in-place build: use src/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "src"))
    import cbn  # noqa: F401

from cbn import bench as cbn_bench


def _threads():
    env = os.environ.get("CBN_BENCH_THREADS")
    return int(env) if env else cbn.get_num_threads()


def pytest_configure(config):
    cbn_bench.settle_allocator()  # malloc's steady state, whatever runs first (see its doc)
    config.addinivalue_line(
        "markers", "heavy: big shapes and float64; run with CBN_BENCH_FULL=1 or -m heavy")


def _full_run(config):
    return (os.environ.get("CBN_BENCH_FULL", "") not in ("", "0")
            or "heavy" in (config.getoption("markexpr", default="") or ""))


def pytest_collection_modifyitems(config, items):
    if _full_run(config):
        return
    # Deselect (rather than skip) the heavy cases, so the summary stays readable.
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("heavy") is not None else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_benchmark_update_machine_info(config, machine_info):
    torch = cbn_bench.import_torch()
    machine_info["cbn"] = {
        "version": cbn.__version__, "openmp": bool(cbn.openmp_enabled()),
        "threads": _threads(), "cpu_model": cbn_bench.cpu_model(),
        "torch": None if torch is None else torch.__version__,
    }


@pytest.fixture(scope="session")
def n_threads():
    """Thread count for cbn, the copy yardstick and PyTorch (set once for the session)."""
    n = _threads()
    cbn_bench.set_torch_threads(n)
    return n


@pytest.fixture(scope="session")
def inputs_cache():
    """make_inputs results shared by every benchmark of one (shape, layout, dtype)."""
    cache = {}

    def get(shape, layout, dtype):
        key = (tuple(shape), layout, dtype)
        if key not in cache:
            cache.clear()  # tests run grouped by case: keep one input set alive at a time
            cache[key] = cbn_bench.make_inputs(shape, layout, dtype)
        return cache[key]

    return get
