"""cbn.distributed.SyncBatchNorm over MPI: ranks holding uneven parts of a batch (one of them
none) must together reproduce single-process batch_norm_train / batch_norm_backward on the whole
batch, with running statistics and parameter gradients bit-identical on every rank.

The MPI part runs in two launches, ``mpiexec -n 2`` and ``mpiexec -n 3`` of tests/mpi_worker.py,
each doing every case (MPI startup costs about a second per launch); this process compares the
.npz files the ranks write. Skipped with the reason when mpi4py or mpiexec is missing
(``pip install ".[mpi]"`` provides both).
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import cbn
from conftest import assert_identical, backward_truth
from mpi_worker import case_data, layer_kwargs, slices

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mpi_worker.py")
LAUNCH_TIMEOUT_S = 180


def find_mpiexec():
    """mpiexec next to this Python first (where MPICH's wheel puts it, also in a venv), then
    on PATH."""
    for d in (os.path.dirname(sys.executable), os.path.join(sys.prefix, "bin")):
        path = os.path.join(d, "mpiexec")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which("mpiexec")


MPIEXEC = find_mpiexec()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    not (MPIEXEC and HAVE_MPI4PY),
    reason=("mpi4py is not installed" if not HAVE_MPI4PY else "mpiexec not found")
    + ': pip install ".[mpi]" (mpi4py + MPICH) to run the MPI tests')


def worker_env():
    """The workers import the cbn this process imported, one OpenMP thread each (2 cores)."""
    env = dict(os.environ)
    cbn_parent = os.path.dirname(os.path.dirname(os.path.abspath(cbn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (cbn_parent, HERE, env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    # Open MPI only (MPICH ignores them): run as root in CI containers, more ranks than cores
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    env.setdefault("PRTE_MCA_rmaps_default_mapping_policy", ":oversubscribe")
    return env


def launch(size, cases, tmp_dir):
    """Run every case on `size` ranks in one mpiexec; {case name: [per-rank dict]}."""
    os.makedirs(tmp_dir, exist_ok=True)
    plan = os.path.join(tmp_dir, "plan.json")
    with open(plan, "w") as f:
        json.dump({"size": size, "cases": cases}, f)
    cmd = [MPIEXEC, "-n", str(size), sys.executable, WORKER, plan, tmp_dir]
    proc = subprocess.Popen(cmd, env=worker_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {LAUNCH_TIMEOUT_S} s:\n{output}")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited with {proc.returncode}:\n{output}")
    results = {}
    for case in cases:
        per_rank = []
        for r in range(size):
            with np.load(os.path.join(tmp_dir, f"{case['name']}_rank{r}.npz")) as f:
                per_rank.append(dict(f))
        results[case["name"]] = per_rank
    return results


# -- the cases ---------------------------------------------------------------------------------

SIZES = {2: [[3, 5], [0, 4], [6, 1], [2, 2]], 3: [[2, 0, 5], [1, 4, 2], [3, 3, 0], [1, 1, 1]]}
SAMPLE_SHAPES = {"NCHW": [(5, 4, 3), (3, 7)], "NHWC": [(4, 3, 5), (6, 3)]}


def make_cases(P):
    cases = []
    i = 0
    for layout in ("NCHW", "NHWC"):
        for dtype in ("float32", "float64"):
            for activation in (None, "relu"):
                sample = SAMPLE_SHAPES[layout][i % 2]
                C = sample[0] if layout == "NCHW" else sample[-1]
                name = f"{layout}-{dtype}-{activation or 'none'}"
                cases.append(dict(name=name, layout=layout, dtype=dtype, activation=activation,
                                  sample_shape=sample, C=C, sizes=SIZES[P][i % len(SIZES[P])],
                                  steps=3, lr=0.1, seed=1000 * P + i))
                i += 1
    extra = [
        dict(name="mlp-2d-cumulative", layout="NHWC", dtype="float64", sample_shape=(33,), C=33,
             sizes={2: [7, 9], 3: [7, 0, 9]}[P], momentum=None),
        dict(name="5d-eps-momentum", layout="NCHW", dtype="float32", sample_shape=(3, 2, 3, 4),
             C=3, sizes=SIZES[P][1], eps=1e-3, momentum=0.3),
        dict(name="no-affine", layout="NCHW", dtype="float64", sample_shape=(4, 6), C=4,
             sizes=SIZES[P][0], affine=False, activation="relu"),
        # eval then uses each rank's own batch statistics: every rank needs some values
        dict(name="no-running-stats", layout="NHWC", dtype="float32", sample_shape=(5, 2),
             C=2, sizes=SIZES[P][3], track_running_stats=False),
        dict(name="no-bias", layout="NCHW", dtype="float64", sample_shape=(3, 4), C=3,
             sizes=SIZES[P][1], bias=False),
        # every rank empty: empty outputs, zero gradients, running statistics kept, batch counted
        dict(name="all-empty", layout="NCHW", dtype="float32", sample_shape=(3, 2, 2), C=3,
             sizes=[0] * P, activation="relu"),
        dict(name="all-empty-cumulative", layout="NHWC", dtype="float64", sample_shape=(4,),
             C=4, sizes=[0] * P, momentum=None, eps=0.0),
        # far from zero: backward corrects for save_mean's rounding (test_sync_backward_exact)
        dict(name="offset-f32", layout="NCHW", dtype="float32", sample_shape=(4, 6), C=4,
             sizes=SIZES[P][1], loc=1e6, activation="relu"),
        dict(name="offset-f32-nhwc", layout="NHWC", dtype="float32", sample_shape=(5, 3), C=3,
             sizes=SIZES[P][0], loc=1e6),
    ]
    for j, case in enumerate(extra):
        cases.append(dict(dict(steps=3, lr=0.05, seed=1000 * P + 100 + j), **case))
    cases.append(dict(name="errors", kind="errors", layout="NCHW", dtype="float32",
                      sample_shape=(3, 5), C=3, sizes=SIZES[P][0], steps=1, seed=7 + P))
    return cases


CASES = {P: make_cases(P) for P in (2, 3)}
MATCH_CASES = [(P, c) for P in (2, 3) for c in CASES[P] if c.get("kind") != "errors"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Both launches, once for the module: {P: {case name: [per-rank dict]}}."""
    return {P: launch(P, CASES[P], str(tmp_path_factory.mktemp(f"mpi{P}"))) for P in (2, 3)}


# -- the single-process reference ---------------------------------------------------------------

def reference(case):
    """The same steps on one process with the fused kernels on the whole batches."""
    steps, x_eval, (w, b) = case_data(case)
    kw = layer_kwargs(case)
    dtype, layout, act, eps = kw["dtype"], kw["layout"], kw["activation"], kw["eps"]
    C = case["C"]
    if not kw["affine"]:
        w = b = None
    if not kw["bias"]:
        b = None
    track = kw["track_running_stats"]
    rm, rv = (np.zeros(C, dtype), np.ones(C, dtype)) if track else (None, None)
    nbt = 0
    out = {}
    for i, (x, dy) in enumerate(steps):
        momentum = kw["momentum"] if kw["momentum"] is not None else 1.0 / (nbt + 1)
        y, mean, invstd = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv,
                                               momentum=momentum, eps=eps, layout=layout,
                                               activation=act)
        nbt += track
        dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, w, layout=layout, y=y,
                                             activation=act)
        out[f"y{i}"], out[f"dx{i}"] = y, dx
        if w is not None:
            out[f"dw{i}"] = dw
            w = w - np.asarray(case["lr"], dtype) * dw
        if b is not None:
            out[f"db{i}"] = db
            b = b - np.asarray(case["lr"], dtype) * db
    if w is not None:
        out["state_weight"] = w
    if b is not None:
        out["state_bias"] = b
    if track:
        out["state_running_mean"], out["state_running_var"] = rm, rv
        out["state_num_batches_tracked"] = np.asarray(nbt)
        out["y_eval"] = cbn.batch_norm_infer(x_eval, rm, rv, w, b, eps=eps, layout=layout,
                                             activation=act)
    else:  # each rank normalizes its own part with its own statistics (as PyTorch does)
        out["y_eval"] = np.concatenate([
            cbn.batch_norm_train(x_eval[lo:hi], w, b, eps=eps, layout=layout, activation=act)[0]
            for lo, hi in slices(case["sizes"])])
    return out


def assert_rel(actual, expected, dtype, what):
    """float64 to 1e-12 and float32 to 1e-5, relative to the largest expected magnitude."""
    tol = 1e-12 if np.dtype(dtype) == np.float64 else 1e-5
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == np.dtype(dtype), (what, actual.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


PER_RANK_SLICES = ("y", "dx")     # each rank holds its rows; the rest is the same on every rank


@needs_mpi
@pytest.mark.parametrize("P,case", MATCH_CASES, ids=[f"n{P}-{c['name']}" for P, c in MATCH_CASES])
def test_sync_matches_single_process_on_whole_batch(results, P, case):
    ranks = results[P][case["name"]]
    for r in range(P):   # save() / load() into a fresh layer gave the same state and outputs
        assert ranks[r].pop("roundtrip_equal"), f"state round trip differs on rank {r}"
    ref = reference(case)
    dtype = np.dtype(case["dtype"])
    for key, expected in ref.items():
        if key.startswith(PER_RANK_SLICES) or key == "y_eval":
            got = np.concatenate([r[key] for r in ranks], axis=0)
            for r, (lo, hi) in enumerate(slices(case["sizes"])):
                assert ranks[r][key].shape[0] == hi - lo, (key, r)
        else:
            got = ranks[0][key]
            for r in range(1, P):      # identical bits on every rank: nothing drifts apart
                assert_identical(ranks[r][key], got, err_msg=f"{key} on rank {r} vs rank 0")
        if key == "state_num_batches_tracked":
            assert int(got) == int(expected)
        else:
            assert_rel(got, expected, dtype, key)
    assert set(ranks[0]) == set(ref), (sorted(ranks[0]), sorted(ref))


OFFSET_CASES = [(P, c) for P, c in MATCH_CASES if "loc" in c]
# (dweight rtol, dx atol relative to max|dx|) per dtype
OFFSET_TOL = {np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-9, 1e-12)}


@needs_mpi
@pytest.mark.parametrize("P,case", OFFSET_CASES,
                         ids=[f"n{P}-{c['name']}" for P, c in OFFSET_CASES])
def test_sync_backward_exact_at_offset(results, P, case):
    """The first step's gradients match the float64 truth around the batch's exact mean, not
    the save_mean rounded to the dtype (the sums all-reduced include sum(x - save_mean))."""
    ranks = results[P][case["name"]]
    steps, _, (w, _) = case_data(case)
    x, dy = steps[0]
    kw = layer_kwargs(case)
    y = np.concatenate([r["y0"] for r in ranks]) if kw["activation"] else None
    e_dx, e_dw, _ = backward_truth(dy, x, w, kw["layout"], eps=kw["eps"], y=y)
    dw_rtol, dx_rtol = OFFSET_TOL[kw["dtype"]]
    dw = ranks[0]["dw0"].astype(np.float64)
    assert np.all(np.abs(dw - e_dw) <= dw_rtol * np.abs(e_dw)), np.abs(dw / e_dw - 1).max()
    dx = np.concatenate([r["dx0"] for r in ranks]).astype(np.float64)
    assert np.abs(dx - e_dx).max() <= dx_rtol * np.abs(e_dx).max()


@needs_mpi
@pytest.mark.parametrize("P", (2, 3))
def test_error_on_one_rank_raises_everywhere_without_hanging(results, P):
    ranks = results[P]["errors"]
    last = P - 1
    for r, out in enumerate(ranks):
        seen = list(out["seen"])
        # 1. forward: the last rank's x has a wrong channel count
        if r == last:
            assert seen[0].startswith("ValueError") and "channels" in seen[0], seen[0]
        else:
            assert seen[0].startswith("RuntimeError") and f"rank(s) {last}" in seen[0], seen[0]
        # nothing was updated by the failed step
        assert int(out["before_nbt"]) == 0 and (out["before_running_mean"] == 0).all()
        # 2. backward without a training forward: a local error, the same on every rank
        assert "forward" in seen[1] and not seen[1].startswith("RuntimeError: SyncBatchNorm")
        # 3-5. good forward; backward with a bad dy on rank 0; a good backward still works
        assert seen[2] == "ok"
        if r == 0:
            assert seen[3].startswith("ValueError") and "dy" in seen[3], seen[3]
        else:
            assert seen[3].startswith("RuntimeError") and "1 other rank(s)" in seen[3], seen[3]
        assert seen[4] == "ok"
        assert int(out["state_num_batches_tracked"]) == 1
        # 6. one value per channel over all ranks: the same ValueError everywhere, no update
        assert seen[5].startswith("ValueError") and "more than 1 value" in seen[5], seen[5]
        assert int(out["bn2_nbt"]) == 0
        # 7. comm must be an mpi4py communicator
        assert seen[6].startswith("TypeError") and "mpi4py" in seen[6], seen[6]


# -- without MPI ----------------------------------------------------------------------------------

def run_python(code):
    env = dict(os.environ)
    cbn_parent = os.path.dirname(os.path.dirname(os.path.abspath(cbn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (cbn_parent, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)


def test_import_cbn_does_not_need_mpi4py():
    # mpi4py made unimportable: cbn and its split API import; cbn.distributed names the extra
    r = run_python(
        "import sys; sys.modules['mpi4py'] = None\n"
        "import cbn, cbn.split\n"
        "assert not any(m.startswith('mpi4py') for m in sys.modules if sys.modules[m])\n"
        "try:\n"
        "    import cbn.distributed\n"
        "except ImportError as e:\n"
        "    print('IMPORTERROR', e)\n")
    assert r.returncode == 0, r.stderr
    assert 'IMPORTERROR' in r.stdout and 'pip install "cbn[mpi]"' in r.stdout, r.stdout


EXAMPLE = os.path.join(os.path.dirname(HERE), "examples", "sync_bn.py")


@needs_mpi
@pytest.mark.skipif(not os.path.isfile(EXAMPLE), reason="examples/sync_bn.py not in this tree")
def test_readme_example_runs_on_two_ranks():
    r = subprocess.run([MPIEXEC, "-n", "2", sys.executable, EXAMPLE], env=worker_env(),
                       capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert r.returncode == 0, r.stdout + r.stderr
    diff = r.stdout.split("max |y - single-process y| = ")[1].split(";")[0]
    assert float(diff) < 1e-5, r.stdout
    assert "identical on every rank: True" in r.stdout, r.stdout
