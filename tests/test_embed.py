"""examples/embed.c: the C kernels built with only a C compiler (no Python) give the numbers of
the Python API.

The program is compiled twice from the repository's sources:

* with the flags setup.py gives the kernels that the installed cbn runs (same compiler, -O3
  -std=c99 -ffp-contract=off -fno-math-errno -fno-trapping-math, the -march of cbn.cpu_level():
  -march=x86-64-vN for a dispatched build's level, -march=native for CBN_NATIVE=1, none for
  CBN_PORTABLE=1; -fopenmp when cbn has OpenMP, else -fopenmp-simd). That is the same machine
  code for the kernels, so every output must be bit-identical to what cbn.batch_norm_train /
  batch_norm_backward / batch_norm_infer return on the same input. The thread count does not
  matter (results are bit-identical for every n_threads), and -ffp-contract=off rules out fused
  multiply-adds the compiler could choose differently.
* with -march=native when cbn runs a level with FMA (v3, v4): another vector width and tuning,
  the same lanes and the same fused multiply-adds, so again the same bits.
* with the plain command documented in the README. The sums' order is fixed by the source (32
  lanes), but without -march=native the compiler has no FMA instruction, so the sums of squares
  and products round each a*b + c twice instead of once: outputs then agree to a few units in
  the last place, not to the bit (up to about 8 * eps * max|output| in float64; float32 outputs,
  rounded from double sums, rarely move).
"""
import math
import os
import shutil
import subprocess
import sysconfig

import numpy as np
import pytest

import cbn

try:
    import ml_dtypes
except ImportError:         # the bfloat16 case is left out of the report
    ml_dtypes = None

# the bfloat16 case: these arrays are bfloat16, the per-channel ones float32
TENSORS = ("x", "dy", "y", "dx", "y_infer")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "embed.c")
# The C sources and header of the cbn under test, as it ships them (cbn/csrc, cbn.get_include()):
# the same files as src/cbn/csrc and include/ in a checkout, and also there when the tests run
# against an installed wheel outside the source tree (tools/build_wheel.sh).
KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(cbn.__file__)), "csrc")
INCLUDE = cbn.get_include()

# The README's command (run there from the repository root; here on the package's copies).
README_FLAGS = ["-O3", "-std=c99", "-ffp-contract=off", "-fopenmp"]


def _compiler():
    """The compiler setuptools builds the extension with (CC, else Python's configured one),
    else cc or gcc from PATH; None when there is none."""
    for cand in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc"):
        if cand and shutil.which(cand.split()[0]):
            return cand.split()
    return None


def _kernel_sources():
    if not os.path.isdir(KERNEL_DIR):
        return []
    return sorted(os.path.join(KERNEL_DIR, f) for f in os.listdir(KERNEL_DIR) if f.endswith(".c"))


def _level_flags(level):
    """The -march flags of a level as setup.py compiles it (tools/cpu_levels.py)."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        from cpu_levels import LEVEL_FLAGS, SINGLE_LEVEL_FLAGS
    finally:
        sys.path.pop(0)
    return {**LEVEL_FLAGS, **SINGLE_LEVEL_FLAGS}[level]


def _extension_flags(level=None):
    """setup.py's flags for the kernels at `level` (default: the one the installed cbn runs,
    cbn.cpu_level()): -fopenmp, or -fopenmp-simd for a serial build, so that the `omp simd`
    loops are vectorized the same way."""
    flags = ["-O3", "-std=c99", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
    flags += _level_flags(level or cbn.cpu_level())
    flags.append("-fopenmp" if cbn.openmp_enabled() else "-fopenmp-simd")
    return flags


def _optional(flag):
    """Flags setup.py drops when the compiler refuses them (its probes)."""
    return flag.startswith("-march=") or flag == "-fopenmp-simd"


def _build_and_run(tmp_path, flags):
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler (CC, cc or gcc) on PATH")
    if not (os.path.isfile(EXAMPLE) and os.path.isdir(KERNEL_DIR)):
        pytest.skip("examples/embed.c or the package's csrc/ is not here")
    exe = str(tmp_path / "embed")
    cmd = cc + flags + [f"-I{INCLUDE}", EXAMPLE] + _kernel_sources() + ["-lm", "-o", exe]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0 and any(map(_optional, flags)):   # as setup.py does
        flags = [f for f in flags if not _optional(f)]
        cmd = cc + flags + [f"-I{INCLUDE}", EXAMPLE] + _kernel_sources() + ["-lm", "-o", exe]
        build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"{' '.join(cmd)}\n{build.stderr}"
    report = str(tmp_path / "embed.txt")
    run = subprocess.run([exe, report], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with open(report) as f:
        return parse(f.read())


def parse(text):
    """{"openmp": (enabled, threads), "error": (code, message), "cases": [case, ...]}; a case is
    a dict with dtype, layout, shape, activation, momentum, eps and "arrays" {name: ndarray}
    (flat, in storage order). The bfloat16 case is left out without ml_dtypes."""
    out = {"cases": []}
    cases = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "openmp":
            enabled, threads = rest.split()
            out["openmp"] = (int(enabled), int(threads))
        elif kind == "case":
            cid, dtype, layout, N, C, H, W, act, momentum, eps = rest.split()
            N, C, H, W = int(N), int(C), int(H), int(W)
            if dtype == "bf16" and ml_dtypes is None:
                cases[cid] = None
                continue
            types = {"f32": np.float32, "f64": np.float64,
                     "bf16": ml_dtypes.bfloat16 if ml_dtypes else None}
            case = {
                "id": cid, "dtype": np.dtype(types[dtype]),
                "layout": layout, "C": C,
                "shape": (N, C, H, W) if layout == "NCHW" else (N, H, W, C),
                "activation": None if act == "none" else act,
                "momentum": float(momentum), "eps": float(eps), "arrays": {},
            }
            cases[cid] = case
            out["cases"].append(case)
        elif kind == "array":
            cid, name, count, *values = rest.split()
            case = cases[cid]
            if case is None:
                continue
            dtype = case["dtype"]
            if dtype.itemsize == 2 and name not in TENSORS:
                dtype = np.dtype(np.float32)        # a bfloat16 case's per-channel arrays
            # %.9g/%.17g: exact; bfloat16 values through float32, which holds them exactly
            wide = np.float32 if dtype.itemsize == 2 else dtype
            a = np.array([float(v) for v in values], dtype=wide).astype(dtype)
            assert a.size == int(count), (cid, name)
            case["arrays"][name] = a
        elif kind == "error":
            code, _, message = rest.partition(" ")
            out["error"] = (int(code), message)
        else:
            raise AssertionError(f"unexpected line in embed's report: {line[:80]!r}")
    return out


def python_results(case):
    """The same three calls through the Python API, from the inputs embed printed."""
    a, shape, layout, act = case["arrays"], case["shape"], case["layout"], case["activation"]
    x, dy = a["x"].reshape(shape), a["dy"].reshape(shape)
    weight, bias = a["weight"], a["bias"]
    running_mean, running_var = a["running_mean0"].copy(), a["running_var0"].copy()
    y, save_mean, save_invstd = cbn.batch_norm_train(
        x, weight, bias, running_mean=running_mean, running_var=running_var,
        momentum=case["momentum"], eps=case["eps"], layout=layout, activation=act)
    dx, dweight, dbias = cbn.batch_norm_backward(
        dy, x, save_mean, save_invstd, weight, layout=layout, y=y if act else None,
        activation=act)
    y_infer = cbn.batch_norm_infer(x, running_mean, running_var, weight, bias, eps=case["eps"],
                                   layout=layout, activation=act)
    return {"y": y, "save_mean": save_mean, "save_invstd": save_invstd,
            "running_mean": running_mean, "running_var": running_var, "dx": dx,
            "dweight": dweight, "dbias": dbias, "y_infer": y_infer}


OUTPUTS = ("y", "save_mean", "save_invstd", "running_mean", "running_var", "dx", "dweight",
           "dbias", "y_infer")


@pytest.fixture(scope="module")
def report_same_flags(tmp_path_factory):
    return _build_and_run(tmp_path_factory.mktemp("embed_ext_flags"), _extension_flags())


@pytest.fixture(scope="module")
def report_native(tmp_path_factory):
    if cbn.cpu_level() not in ("v3", "v4"):
        pytest.skip(f"cbn runs level {cbn.cpu_level()!r}: no FMA level to compare with native")
    return _build_and_run(tmp_path_factory.mktemp("embed_native"), _extension_flags("native"))


@pytest.fixture(scope="module")
def report_readme(tmp_path_factory):
    flags = README_FLAGS if cbn.openmp_enabled() else README_FLAGS[:-1]
    return _build_and_run(tmp_path_factory.mktemp("embed_readme"), flags)


def test_report_is_complete(report_same_flags):
    rep = report_same_flags
    assert rep["openmp"][0] == int(cbn.openmp_enabled())
    assert rep["error"] == (-2, "expected more than 1 value per channel when training")
    kinds = {(c["dtype"].name, c["layout"]) for c in rep["cases"]}
    want = {(d, lay) for d in ("float32", "float64") for lay in ("NCHW", "NHWC")}
    assert kinds == want | ({("bfloat16", "NCHW")} if ml_dtypes else set())
    assert any(c["activation"] == "relu" for c in rep["cases"])
    for case in rep["cases"]:
        total = math.prod(case["shape"])
        for name in ("x", "dy", "y", "dx", "y_infer"):
            assert case["arrays"][name].size == total, (case["id"], name)
        for name in ("weight", "bias", "running_mean0", "running_var0", "save_mean",
                     "save_invstd", "running_mean", "running_var", "dweight", "dbias"):
            assert case["arrays"][name].size == case["C"], (case["id"], name)
        assert np.all(np.isfinite(case["arrays"]["dx"]))


def test_same_flags_bit_identical(report_same_flags):
    """Same compiler, same flags, same sources: the C program and the extension agree to the
    last bit on every output of every case."""
    for case in report_same_flags["cases"]:
        expected = python_results(case)
        for name in OUTPUTS:
            got = case["arrays"][name]
            want = np.ascontiguousarray(expected[name]).ravel()
            assert got.dtype == want.dtype
            if got.tobytes() != want.tobytes():
                diff = np.flatnonzero(got != want)
                raise AssertionError(
                    f"case {case['id']} ({case['dtype'].name} {case['layout']}) {name}: "
                    f"{diff.size} of {got.size} values differ from the Python API (first at "
                    f"{diff[:3]}: {got[diff[:3]].tolist()} vs {want[diff[:3]].tolist()}). "
                    f"Was the installed cbn built with another compiler or other flags (CC, "
                    f"CBN_NATIVE, CBN_PORTABLE)?")


def test_native_build_bit_identical(report_native):
    """A -march=native build (other vector width and tuning) against the FMA level cbn runs:
    the lanes and the fused multiply-adds are fixed by the source, so the same bits."""
    test_same_flags_bit_identical(report_native)


def test_readme_command_close(report_readme):
    """The README's plain command (no -march=native, no -fno-math-errno): the same formulas,
    with sums possibly vectorized at another width. Agreement to a few units in the last place
    of each array's largest value (64 eps: a sum of M <= 640 terms reordered moves by about
    sqrt(M) eps, at most M eps)."""
    for case in report_readme["cases"]:
        expected = python_results(case)
        eps = float((ml_dtypes.finfo if case["dtype"].itemsize == 2 else np.finfo)(
            case["dtype"]).eps)
        for name in OUTPUTS:
            got = case["arrays"][name].astype(np.float64)
            want = np.ascontiguousarray(expected[name]).ravel().astype(np.float64)
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got, want, rtol=4 * eps, atol=64 * eps * scale,
                                       err_msg=f"case {case['id']} {name}")


def test_layouts_hold_the_same_tensor(report_same_flags):
    """embed generates each tensor in logical order: its NCHW and NHWC cases of the same shape
    normalize the same values, so their outputs agree (up to the summation order)."""
    cases = {(c["dtype"].name, c["layout"]): c for c in report_same_flags["cases"]
             if c["shape"] in ((4, 3, 5, 7), (4, 5, 7, 3))}
    for dtype in ("float32", "float64"):
        first, last = cases[(dtype, "NCHW")], cases[(dtype, "NHWC")]
        x_first = first["arrays"]["x"].reshape(first["shape"])
        x_last = last["arrays"]["x"].reshape(last["shape"])
        np.testing.assert_array_equal(np.moveaxis(x_last, -1, 1), x_first)
        eps = np.finfo(dtype).eps
        for name in OUTPUTS:
            a, b = first["arrays"][name], last["arrays"][name]
            if a.size == x_first.size:
                b = np.moveaxis(b.reshape(last["shape"]), -1, 1).ravel()
            scale = max(1.0, float(np.abs(a).max()))
            np.testing.assert_allclose(b, a, rtol=8 * eps, atol=16 * eps * scale,
                                       err_msg=f"{dtype} {name}")
