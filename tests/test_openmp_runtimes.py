"""cbn and PyTorch in one process: each brings an OpenMP runtime (torch's wheel its own
libgomp). Whatever the import order, cbn uses the threads it is asked for, threadpoolctl lists
the runtimes in use and threadpool_limits reaches both libraries' defaults, and results are
the bits cbn gives without torch.

Each case runs tests/openmp_runtimes_worker.py in a fresh process (imports cannot be undone),
for cbn as installed and, where patchelf is at hand, for a copy of it whose libgomp is vendored
under another name as auditwheel does (a source build links the system libgomp.so.1, which
shares its name with torch's copy, so the two libraries then share one runtime; a repaired
wheel's libgomp-<hash> copy is a second runtime).
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import assert_close, assert_identical, make_x

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch"),
    pytest.mark.skipif(importlib.util.find_spec("threadpoolctl") is None,
                       reason="needs threadpoolctl"),
    pytest.mark.skipif(not os.path.isfile("/proc/self/maps"), reason="needs Linux /proc"),
    pytest.mark.skipif(not cbn.openmp_enabled(), reason="cbn is built without OpenMP"),
]

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "openmp_runtimes_worker.py")
SHAPE = (16, 16, 128, 128)
# idle pool threads sleep instead of spinning, so that only working threads use CPU time
ENV = {"OMP_WAIT_POLICY": "passive"}
PROBE = ("import os, sys; import {module}; print('\\n'.join(sorted({{os.path.realpath("
         "l.split()[-1]) for l in open('/proc/self/maps') if os.path.basename("
         "l.split()[-1]).startswith(('libgomp', 'libomp', 'libiomp'))}})))")


def _env(pythonpath=None):
    env = dict(os.environ, **ENV)
    for name in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT"):   # defaults the checks can tell apart
        env.pop(name, None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _runtime_alone(module, pythonpath=None):
    """The OpenMP runtime a process maps when it imports only `module` (and uses it)."""
    code = PROBE.format(module=module)
    if module == "cbn":
        code = code.replace("import cbn;", "import cbn, numpy; cbn.batch_norm_train("
                                           "numpy.ones((2, 2)), n_threads=2);")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=_env(pythonpath))
    assert run.returncode == 0, run.stderr
    libs = run.stdout.split()
    assert len(libs) == 1, f"{module} alone maps {libs}"
    return libs[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    rng = np.random.default_rng(20261124)
    x = make_x(rng, SHAPE, np.float32, loc=1.5)
    dy = make_x(rng, SHAPE, np.float32)
    path = tmp_path_factory.mktemp("omp") / "inputs.npz"
    np.savez(path, x=x, dy=dy)
    return path, x, dy


def _vendored_copy(dest, runtime):
    """A copy of the installed cbn whose extension modules need `runtime` copied to
    cbn.libs/libgomp-cbntest.so.1 under that name (auditwheel's repair, done by hand)."""
    package = os.path.dirname(os.path.abspath(cbn.__file__))
    shutil.copytree(package, dest / "cbn", ignore=shutil.ignore_patterns("__pycache__"))
    libs = dest / "cbn.libs"
    libs.mkdir()
    vendored = "libgomp-cbntest.so.1"
    shutil.copy(runtime, libs / vendored)
    subprocess.run(["patchelf", "--set-soname", vendored, str(libs / vendored)], check=True)
    patched = 0
    for root, _, files in os.walk(dest / "cbn"):
        for name in files:
            if not name.endswith(".so"):
                continue
            so = os.path.join(root, name)
            needed = subprocess.run(["patchelf", "--print-needed", so], capture_output=True,
                                    text=True, check=True).stdout.split()
            for lib in needed:
                if lib.startswith("libgomp"):
                    rpath = os.path.relpath(libs, root)
                    subprocess.run(["patchelf", "--replace-needed", lib, vendored,
                                    "--set-rpath", f"$ORIGIN/{rpath}", so], check=True)
                    patched += 1
    assert patched, "no extension module of cbn needs libgomp"
    return str(dest)


@pytest.fixture(scope="module", params=["as-installed", "vendored-libgomp"])
def packaging(request, tmp_path_factory):
    """(PYTHONPATH for the worker or None, the runtime cbn maps when imported alone)."""
    runtime = _runtime_alone("cbn")
    if request.param == "as-installed":
        return None, runtime
    if shutil.which("patchelf") is None:
        pytest.skip("needs patchelf to vendor libgomp")
    if not os.path.basename(runtime).startswith("libgomp.so"):
        pytest.skip(f"cbn already uses a vendored runtime ({runtime}): the as-installed "
                    "case covers it")
    path = _vendored_copy(tmp_path_factory.mktemp("vendored"), runtime)
    return path, _runtime_alone("cbn", path)


@pytest.fixture(scope="module")
def torch_runtime():
    return _runtime_alone("torch")


@pytest.mark.parametrize("order", ["torch-first", "cbn-first"])
def test_cbn_and_torch_runtimes(tmp_path, inputs, packaging, torch_runtime, order):
    pythonpath, cbn_alone = packaging
    inputs_path, x, dy = inputs
    run = subprocess.run([sys.executable, WORKER, order, str(inputs_path), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=_env(pythonpath))
    assert run.returncode == 0, run.stdout + run.stderr
    with open(tmp_path / "report.json") as f:
        r = json.load(f)
    if pythonpath:
        assert r["cbn_file"].startswith(pythonpath), r["cbn_file"]
    explain = json.dumps(r, indent=1)

    # threadpoolctl lists every OpenMP runtime in the process, and each library calls one of
    # them (the first imported its own; the second its own or, sharing its name or preempted
    # by torch's RTLD_GLOBAL load, the first one's)
    assert sorted(r["threadpoolctl"]) == r["mapped"], explain
    assert r["cbn_runtime"] in r["threadpoolctl"] and r["torch_runtime"] in r["threadpoolctl"]
    first, first_alone = (("torch_runtime", torch_runtime) if order == "torch-first"
                          else ("cbn_runtime", cbn_alone))
    assert r[first] == first_alone, explain
    assert r["cbn_runtime"] in (cbn_alone, torch_runtime), explain
    assert r["torch_runtime"] in (cbn_alone, torch_runtime), explain

    # cbn uses the threads it is asked for, before and after torch ran its own team
    planned = r["n2_planned"]
    cpus = len(os.sched_getaffinity(0))
    assert planned == min(2, cpus), explain
    assert len(r["n2_busy_before_torch"]) == planned, explain
    assert len(r["n2_busy_after_torch"]) == planned, explain
    assert len(r["n1_busy"]) == 1, explain

    # one pool per runtime: cbn's workers are torch's when they share a runtime, others if not
    main = str(r["pid"])
    cbn_workers = set(r["n2_busy_after_torch"]) - {main}
    torch_workers = set(r["torch_busy"]) - {main}
    if cbn_workers and torch_workers:
        if r["cbn_runtime"] == r["torch_runtime"]:
            assert cbn_workers <= torch_workers or torch_workers <= cbn_workers, explain
        else:
            assert not cbn_workers & torch_workers, explain

    # threadpool_limits(1) limits both libraries' defaults (and cbn's calls with the default);
    # an explicit n_threads is still honoured; the defaults come back after the block
    limited = r["limited"]
    assert limited["cbn"] == 1 and limited["torch"] == 1, explain
    assert len(limited["cbn_default_busy"]) == 1, explain
    assert len(limited["n2_busy"]) == limited["n2_planned"] == min(2, cpus), explain
    assert r["after_limits"] == r["default_threads"], explain

    # torch.set_num_threads(1) sets cbn's default too exactly when they share a runtime
    shared = r["cbn_runtime"] == r["torch_runtime"]
    assert r["cbn_after_torch_set_1"] == (1 if shared else r["default_threads"]["cbn"]), explain

    # the bits cbn gives without torch, for 1 and 2 threads; and the right values
    got = np.load(tmp_path / "results.npz")
    y, m, s = cbn.batch_norm_train(x, n_threads=1)
    dx, dw, db = cbn.batch_norm_backward(dy, x, m, s, n_threads=1)
    for n in (1, 2):
        for name, want in (("y", y), ("mean", m), ("invstd", s), ("dx", dx), ("dw", dw),
                           ("db", db)):
            assert_identical(got[f"{name}{n}"], want, f"{name}, n_threads={n}, {order}")
    ey, em, es, _, _ = ref.batch_norm_train(x.astype(np.float64))
    assert_close(y, ey)
    assert_close(m, em)
