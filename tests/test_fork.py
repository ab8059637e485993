"""cbn in forked processes and under thread requests beyond the machine.

libgomp's thread pool does not survive fork(): a child whose first parallel region reuses the
parent's pool hangs. cbn runs a forked child's calls on one thread (the same bits). Every child
here runs under a time limit, so a regression fails instead of hanging the suite. Thread
requests are clamped to the CPUs offered (or OMP_NUM_THREADS when larger) and OMP_THREAD_LIMIT.
"""
import os
import resource
import subprocess
import sys
import textwrap

import pytest

import cbn
from test_embed import INCLUDE, _compiler, _extension_flags, _kernel_sources

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
needs_openmp = pytest.mark.skipif(not cbn.openmp_enabled(), reason="cbn is built without OpenMP")

# OMP_NUM_THREADS=4: the parent really starts a team of 4, even on a machine with fewer CPUs.
ENV = dict(os.environ, OMP_NUM_THREADS="4")

# Every kernel, run with 4 threads on inputs large enough for several; prints nothing. Defines
# run_all() -> list of result arrays.
KERNELS = textwrap.dedent("""
    import numpy as np, cbn
    from cbn import split
    x = np.random.default_rng(0).normal(3.0, 2.0, (16, 8, 48, 48)).astype(np.float32)
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    def run_all():
        y, m, s = cbn.batch_norm_train(x, n_threads=4)
        yl = cbn.batch_norm_train(xl, layout="NHWC", n_threads=4)[0]
        dx = cbn.batch_norm_backward(x, x, m, s, n_threads=4)
        yi = cbn.batch_norm_infer(x, m, s, n_threads=4)
        cnt, mean, m2 = split.batch_stats(x, n_threads=4)
        yn = split.batch_norm_normalize(x, mean, 1 / np.sqrt(m2 / cnt + 1e-5), n_threads=4)
        return [y, m, s, yl, *dx, yi, mean, m2, yn]
""")


def _run_python(code, timeout=180):
    try:
        return subprocess.run([sys.executable, "-c", KERNELS + textwrap.dedent(code)],
                              capture_output=True, text=True, timeout=timeout, env=ENV)
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child hung (its first multi-threaded call after fork)")


@needs_fork
@needs_openmp
def test_os_fork_child_runs_and_gets_the_parents_bits():
    run = _run_python("""
        import os, signal, pickle
        before = run_all()                       # the parent's team of threads exists now
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)                     # a hang ends the child with SIGALRM
            os.close(r)
            after = run_all()
            same = all(np.array_equal(a, b) for a, b in zip(before, after))
            os.write(w, pickle.dumps((same, cbn.get_num_threads())))
            os._exit(0)
        os.close(w)
        data = b"".join(iter(lambda: os.read(r, 65536), b""))
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            raise SystemExit(f"the forked child was killed by signal {os.WTERMSIG(status)}")
        same, threads = pickle.loads(data)
        assert same, "the forked child got other bits than its parent"
        assert threads == 1, threads
        assert cbn.get_num_threads() == 4        # the parent keeps its threads
        print("ok")
    """)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "ok"


@needs_fork
@needs_openmp
def test_multiprocessing_pool_with_fork_does_not_hang():
    run = _run_python("""
        import multiprocessing as mp
        def work(i):
            return [a.tobytes() for a in run_all()]
        before = [a.tobytes() for a in run_all()]
        with mp.get_context("fork").Pool(2) as pool:
            results = pool.map_async(work, range(4)).get(timeout=120)
        assert all(r == before for r in results), "a worker got other bits than its parent"
        print("ok")
    """)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "ok"


@needs_fork
@needs_openmp
def test_c_api_forked_child(tmp_path):
    """The C library on its own (no Python) protects a forked child the same way."""
    program = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c", "fork_child.c")
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler (CC, cc or gcc) on PATH")
    if not os.path.isfile(program) or not _kernel_sources():
        pytest.skip("the C sources are not here (tests run outside the repository)")
    exe = str(tmp_path / "fork_child")
    cmd = cc + _extension_flags() + [f"-I{INCLUDE}", program] + _kernel_sources() + ["-lm", "-o", exe]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0:          # as setup.py does when the CPU flag is refused
        cmd = [a for a in cmd if not a.startswith("-march=")]
        build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"{' '.join(cmd)}\n{build.stderr}"
    try:
        run = subprocess.run([exe], capture_output=True, text=True, timeout=120, env=ENV)
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child of a C program hung")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "ok"


def _threads_now():
    return len(os.listdir("/proc/self/task"))


@needs_openmp
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_huge_thread_request_starts_no_more_threads_than_offered():
    """n_threads=10**9 on (32, 64, 56, 56) used to start 392 OS threads on a 2-CPU machine."""
    code = """
        import os
        offered = max(len(os.sched_getaffinity(0)), 4)       # OMP_NUM_THREADS=4 in ENV
        x = np.ones((32, 64, 56, 56), np.float32)
        x[0] = 0
        before = len(os.listdir("/proc/self/task"))
        y = cbn.batch_norm_infer(x, np.zeros(64, np.float32), np.ones(64, np.float32),
                                 n_threads=10**9)
        cbn.batch_norm_train(x, n_threads=10**9)
        started = len(os.listdir("/proc/self/task")) - before
        assert started <= offered - 1, f"{started} threads started, {offered} CPUs offered"
        print("ok")
    """
    run = _run_python(code)
    assert run.returncode == 0, run.stdout + run.stderr


@needs_openmp
@pytest.mark.skipif(not os.path.isfile("/proc/self/status"), reason="needs Linux /proc")
def test_huge_thread_request_under_an_address_space_limit():
    """With room for the offered threads' stacks but not for hundreds, a request for 10**9
    threads runs (libgomp ends the process when it cannot create a thread)."""
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    if stack == resource.RLIM_INFINITY or stack <= 0:
        pytest.skip("unlimited stack size: libgomp's thread stacks have another size")
    code = f"""
        import os, resource
        offered = max(len(os.sched_getaffinity(0)), 4)
        x = np.ones((32, 64, 56, 56), np.float32)
        x[0] = 0
        rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
        y = np.empty_like(x)
        vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                  if l.startswith("VmSize"))
        room = offered * {stack} + (64 << 20)
        if 300 * {stack} < room:
            raise SystemExit("skip")
        resource.setrlimit(resource.RLIMIT_AS, (vm + room, resource.RLIM_INFINITY))
        cbn.batch_norm_infer(x, rm, rv, out=y, n_threads=10**9)
        print("ok")
    """
    run = _run_python(code)
    if run.returncode != 0 and "skip" in run.stderr:
        pytest.skip("this machine offers too many CPUs for the test's margin")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "ok"


@needs_openmp
def test_get_num_threads_is_clamped_to_the_cpus():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cbn.set_num_threads(None)
    offered = max(cpus, cbn.get_num_threads())
    try:
        cbn.set_num_threads(10**9)
        assert cbn.get_num_threads() == offered
    finally:
        cbn.set_num_threads(None)


def test_thread_limit_env_is_honoured():
    run = subprocess.run(
        [sys.executable, "-c", "import cbn; cbn.set_num_threads(64); print(cbn.get_num_threads())"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, OMP_THREAD_LIMIT="1"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "1"
