"""Thread counts: bit-identical results for any n_threads, thread-count resolution, concurrency."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import cbn
from conftest import (DTYPES, THREAD_CASES, assert_close, assert_identical, case_arrays, case_id,
                      f64, make_running, make_x)
from cbn import reference as ref

THREAD_COUNTS = [1, 2, 3, 5, None, -1]


def cpus_offered():
    """Most threads a cbn call may use here: the CPUs available to the process, or
    OMP_NUM_THREADS when that is larger (1 without OpenMP)."""
    if not cbn.openmp_enabled():
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cbn.set_num_threads(None)
    return max(cpus, cbn.get_num_threads())


@pytest.fixture(autouse=True)
def _restore_default_threads():
    yield
    cbn.set_num_threads(None)


def _train_all(x, w, b, rm, rv, layout, n):
    rm, rv = rm.copy(), rv.copy()
    y, m, s = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, layout=layout,
                                   n_threads=n)
    return y, m, s, rm, rv


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", THREAD_CASES, ids=case_id)
def test_bit_identical_for_every_thread_count(rng, many_threads, case, dtype):
    layout, shape, C, x, dy, w, b, rm, rv = case_arrays(rng, case, dtype, loc=0.3)
    rm2, rv2 = make_running(rng, C, dtype)

    base_train = _train_all(x, w, b, rm, rv, layout, 1)
    _, m, s = base_train[:3]
    base_back = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout, n_threads=1)
    base_infer = cbn.batch_norm_infer(x, rm2, rv2, w, b, layout=layout, n_threads=1)
    # the single-thread result is right (so identical results are not identically wrong)
    ey, em, es, _, _ = ref.batch_norm_train(f64(x), f64(w), f64(b), layout=layout)
    assert_close(base_train[0], ey)
    assert_close(base_train[1], em)

    for n in THREAD_COUNTS[1:]:
        for got, want, name in zip(_train_all(x, w, b, rm, rv, layout, n), base_train,
                                   ["y", "save_mean", "save_invstd", "running_mean",
                                    "running_var"]):
            assert_identical(got, want, f"train {name}, n_threads={n}")
        got = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout, n_threads=n)
        for g, want, name in zip(got, base_back, ["dx", "dweight", "dbias"]):
            assert_identical(g, want, f"backward {name}, n_threads={n}")
        got = cbn.batch_norm_infer(x, rm2, rv2, w, b, layout=layout, n_threads=n)
        assert_identical(got, base_infer, f"infer, n_threads={n}")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_bit_identical_without_affine_and_in_place(rng, many_threads, layout):
    shape = (6, 1000, 24) if layout == "NHWC" else (6, 24, 1000)
    x = make_x(rng, shape, np.float32, layout)
    dy = make_x(rng, shape, np.float32, layout)
    results = []
    for n in (1, 2, 4):
        xi, dyi = x.copy(), dy.copy()
        y, m, s = cbn.batch_norm_train(xi, layout=layout, out=xi, n_threads=n)
        dx, dw, db = cbn.batch_norm_backward(dyi, x, m, s, layout=layout, out=dyi, n_threads=n)
        results.append((y, m, s, dx, dw, db))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_identical(a, b)


def test_set_num_threads_is_used_and_identical(rng):
    x = make_x(rng, (12, 8, 33, 31), np.float64)
    y1, m1, s1 = cbn.batch_norm_train(x, n_threads=1)
    cbn.set_num_threads(2)
    assert cbn.get_num_threads() == 2
    y2, m2, s2 = cbn.batch_norm_train(x)
    assert_identical(y1, y2)
    assert_identical(s1, s2)


@pytest.mark.parametrize("func", ["train", "backward", "infer"])
def test_zero_threads_is_an_error(func):
    x = np.ones((4, 3, 5), np.float32)
    x[0] = 0
    with pytest.raises(ValueError, match="n_threads"):
        if func == "train":
            cbn.batch_norm_train(x, n_threads=0)
        elif func == "backward":
            cbn.batch_norm_backward(x, x, np.zeros(3), np.ones(3), n_threads=0)
        else:
            cbn.batch_norm_infer(x, np.zeros(3), np.ones(3), n_threads=0)


@pytest.mark.parametrize("n", [-1, -2, -1000])
def test_negative_counts_back_from_the_maximum(rng, n):
    x = make_x(rng, (4, 3, 5), np.float32)
    y1, _, _ = cbn.batch_norm_train(x, n_threads=1)
    yn, _, _ = cbn.batch_norm_train(x, n_threads=n)
    assert_identical(y1, yn)
    cbn.set_num_threads(None)
    maximum = cbn.get_num_threads()
    cbn.set_num_threads(n)
    assert cbn.get_num_threads() == max(1, maximum + 1 + n)


def test_set_get_num_threads():
    cbn.set_num_threads(None)
    default = cbn.get_num_threads()
    assert isinstance(default, int) and default >= 1
    if not cbn.openmp_enabled():
        assert default == 1
    cbn.set_num_threads(3)
    assert cbn.get_num_threads() == min(3, cpus_offered())     # clamped to the machine
    cbn.set_num_threads(1)
    assert cbn.get_num_threads() == 1
    cbn.set_num_threads(-1)
    assert cbn.get_num_threads() == default
    with pytest.raises(ValueError):
        cbn.set_num_threads(0)
    assert cbn.get_num_threads() == default  # a failed set changes nothing
    cbn.set_num_threads(None)
    assert cbn.get_num_threads() == default


def test_openmp_enabled_and_version():
    assert isinstance(cbn.openmp_enabled(), bool)
    assert isinstance(cbn.__version__, str) and cbn.__version__[:1].isdigit()


def _run_python(code, **env):
    full_env = dict(os.environ, **env)
    src = os.path.dirname(os.path.dirname(cbn.__file__))
    full_env["PYTHONPATH"] = src + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=120)


def test_omp_num_threads_is_honoured():
    r = _run_python("import cbn; print(cbn.get_num_threads(), cbn.openmp_enabled())",
                    OMP_NUM_THREADS="3")
    assert r.returncode == 0, r.stderr
    count, enabled = r.stdout.split()
    assert int(count) == (3 if enabled == "True" else 1)


def test_threadpoolctl_limits_are_honoured():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not cbn.openmp_enabled():
        pytest.skip("built without OpenMP")
    cbn.batch_norm_train(np.ones((2, 2)))  # make sure the OpenMP runtime is loaded
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert cbn.get_num_threads() == 1


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_concurrent_calls_from_python_threads(rng, layout):
    """Kernels release the GIL; calls from several Python threads at once give the serial
    results (each with its own inputs and running statistics)."""
    shape = (8, 16, 24, 25) if layout == "NCHW" else (8, 24, 25, 16)
    xs = [make_x(rng, shape, np.float32, layout, loc=i) for i in range(6)]
    dys = [make_x(rng, shape, np.float32, layout) for _ in range(6)]

    def work(i):
        rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
        y, m, s = cbn.batch_norm_train(xs[i], running_mean=rm, running_var=rv, layout=layout,
                                       n_threads=2)
        dx, dw, db = cbn.batch_norm_backward(dys[i], xs[i], m, s, layout=layout, n_threads=2)
        yi = cbn.batch_norm_infer(xs[i], rm, rv, layout=layout, n_threads=2)
        return y, m, s, rm, rv, dx, dw, db, yi

    serial = [work(i) for i in range(6)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(work, range(6)))
    for a, b in zip(serial, parallel):
        for u, v in zip(a, b):
            assert_identical(u, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [("NCHW", (16, 6, 81, 79)), ("NHWC", (16, 81, 79, 6)),
                                  ("NHWC", (9, 37, 41, 50))], ids=case_id)
def test_bit_identical_many_threads(rng, many_threads, case, dtype):
    """Arrays big enough for a dozen threads: 1, 7 and 16 threads agree bit for bit."""
    layout, shape, C, x, dy, w, b, rm, rv = case_arrays(rng, case, dtype, loc=2.0)
    results = []
    for n in (1, 7, 16):
        y, m, s, rm_n, rv_n = _train_all(x, w, b, rm, rv, layout, n)
        back = cbn.batch_norm_backward(dy, x, m, s, w, layout=layout, n_threads=n)
        yi = cbn.batch_norm_infer(x, rm, rv, w, b, layout=layout, n_threads=n)
        results.append((y, m, s, rm_n, rv_n) + tuple(back) + (yi,))
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert_identical(a, b_)
