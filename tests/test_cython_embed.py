"""Downstream Cython code cimports cbn's kernels from cbn/cbn.pxd and calls them `nogil`.

A tiny extension is built in a temporary directory against the cbn that is imported (the
installed package in CI, src/ in a development checkout): Cython finds cbn/cbn.pxd through the
directory that holds the cbn package, the C compiler finds cbn.h at cbn.get_include(), and the
kernels are compiled into the extension from the C sources the package ships in cbn/csrc/
(cbn._core does not export its C symbols to other extensions).
"""
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest

import cbn

PACKAGE_DIR = os.path.dirname(os.path.abspath(cbn.__file__))
PXD = os.path.join(PACKAGE_DIR, "cbn.pxd")

DEMO_PYX = """
# cython: language_level=3, boundscheck=False, wraparound=False
from libc.stdint cimport int64_t
from cbn.cbn cimport (cbn_infer_f32, cbn_layout, cbn_activation, CBN_CHANNELS_FIRST,
                      CBN_CHANNELS_LAST, CBN_ACTIVATION_NONE, CBN_ACTIVATION_RELU)
cimport cbn.cbn as ck


def infer_f32(const float[::1] x, float[::1] y, int64_t N, int64_t C, int64_t S,
              bint channels_last, const float[::1] running_mean, const float[::1] running_var,
              const float[::1] weight, const float[::1] bias, double eps, bint relu,
              int n_threads):
    cdef cbn_layout layout = CBN_CHANNELS_LAST if channels_last else CBN_CHANNELS_FIRST
    cdef cbn_activation act = CBN_ACTIVATION_RELU if relu else CBN_ACTIVATION_NONE
    cdef int rc
    with nogil:
        rc = cbn_infer_f32(&x[0], &y[0], N, C, S, layout, &running_mean[0], &running_var[0],
                           &weight[0], &bias[0], eps, act, n_threads)
    return rc


def train_f64(const double[::1] x, double[::1] y, int64_t N, int64_t C, int64_t S,
              double[::1] save_mean, double[::1] save_invstd, double eps, int n_threads):
    cdef int rc
    with nogil:
        rc = ck.cbn_train_forward_f64(&x[0], &y[0], N, C, S, ck.CBN_CHANNELS_FIRST, NULL, NULL,
                                      NULL, NULL, 0.1, eps, 1, &save_mean[0], &save_invstd[0],
                                      ck.CBN_ACTIVATION_NONE, n_threads)
    return rc


def error_text(int code):
    return ck.cbn_error_string(code).decode()


def codes():
    return (ck.CBN_OK, ck.CBN_ERR_ARGUMENT, ck.CBN_ERR_TOO_FEW_VALUES, ck.CBN_ERR_NO_MEMORY)


def max_threads():
    cdef int n
    with nogil:
        n = ck.cbn_max_threads()
    return n
"""

BUILD_PY = """
import sys
from Cython.Build import cythonize
from setuptools import Distribution, Extension

ext = Extension({name!r}, [{pyx!r}] + {kernels!r}, include_dirs=[{include!r}],
                extra_compile_args={cflags!r}, extra_link_args={ldflags!r})
modules = cythonize([ext], include_path=[{pxd_root!r}], quiet=True,
                    compiler_directives={{"language_level": 3}})
dist = Distribution({{"name": {name!r}, "ext_modules": modules}})
cmd = dist.get_command_obj("build_ext")
cmd.build_lib = {out!r}
cmd.build_temp = {tmp!r}
dist.run_command("build_ext")
print(cmd.get_ext_fullpath({name!r}))
"""


def _c_compiler():
    for cand in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc"):
        if cand and shutil.which(cand.split()[0]):
            return cand
    return None


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The built downstream extension, imported."""
    pytest.importorskip("Cython", reason="Cython is needed to build a module that cimports cbn")
    pytest.importorskip("setuptools", reason="setuptools is needed to build the extension")
    if _c_compiler() is None:
        pytest.skip("no C compiler (CC, cc or gcc) on PATH")
    assert os.path.isfile(PXD), f"cbn.pxd is not installed with the package ({PACKAGE_DIR})"
    kernels = sorted(glob.glob(os.path.join(PACKAGE_DIR, "csrc", "*.c")))
    assert kernels, f"the kernel sources are not installed with the package ({PACKAGE_DIR})"

    work = tmp_path_factory.mktemp("cimport_demo")
    name = "cbn_cimport_demo"
    pyx = work / f"{name}.pyx"
    pyx.write_text(textwrap.dedent(DEMO_PYX))
    omp = ["-fopenmp"] if cbn.openmp_enabled() else []
    script = work / "build_demo.py"
    script.write_text(BUILD_PY.format(
        name=name, pyx=str(pyx), kernels=kernels, include=cbn.get_include(),
        cflags=["-O2", "-std=c99", "-ffp-contract=off"] + omp, ldflags=omp,
        pxd_root=os.path.dirname(PACKAGE_DIR), out=str(work / "lib"), tmp=str(work / "tmp")))
    build = subprocess.run([sys.executable, str(script)], cwd=work, capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, \
        f"building the cimport demo failed:\n{build.stdout}\n{build.stderr}"
    path = build.stdout.strip().splitlines()[-1]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_get_include_holds_the_header():
    include = cbn.get_include()
    assert os.path.isfile(os.path.join(include, "cbn.h")), include
    if os.path.basename(os.path.dirname(PACKAGE_DIR)) != "src":       # an installed package
        assert include == os.path.join(PACKAGE_DIR, "include")


def _strip_comments(text, line_comment):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S) if line_comment == "//" else text
    return "\n".join(line.split(line_comment)[0] for line in text.splitlines())


def test_pxd_declares_every_function_of_the_header():
    """Nothing in cbn.h is missing from cbn.pxd (and nothing extra is declared there)."""
    with open(os.path.join(cbn.get_include(), "cbn.h")) as f:
        header = _strip_comments(f.read(), "//")
    with open(PXD) as f:
        pxd = _strip_comments(f.read(), "#")
    in_header = set(re.findall(r"\b(cbn_\w+)\s*\(", header))
    in_pxd = set(re.findall(r"\b(cbn_\w+)\s*\(", pxd))
    assert in_header and in_header == in_pxd, (
        f"only in cbn.h: {sorted(in_header - in_pxd)}; "
        f"only in cbn.pxd: {sorted(in_pxd - in_header)}")
    for constant in re.findall(r"\b(CBN_[A-Z_]+)\s*=", header):
        assert re.search(rf"^\s+{constant}\s*$", pxd, re.M), f"{constant} missing from cbn.pxd"


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("relu", [False, True])
def test_cimported_infer_matches_batch_norm_infer(demo, layout, relu):
    rng = np.random.default_rng(7)
    shape = (3, 5, 4, 6) if layout == "NCHW" else (3, 4, 6, 5)
    C = 5
    x = rng.normal(1.0, 2.0, shape).astype(np.float32)
    mean = rng.normal(size=C).astype(np.float32)
    var = rng.uniform(0.5, 2.0, C).astype(np.float32)
    weight = rng.uniform(0.5, 1.5, C).astype(np.float32)
    bias = rng.normal(size=C).astype(np.float32)
    N, S = shape[0], 24
    y = np.empty_like(x)
    rc = demo.infer_f32(x.ravel(), y.ravel(), N, C, S, layout == "NHWC", mean, var, weight, bias,
                        1e-5, relu, 2)
    assert rc == 0, demo.error_text(rc)
    expected = cbn.batch_norm_infer(x, mean, var, weight, bias, eps=1e-5, layout=layout,
                                    activation="relu" if relu else None)
    # elementwise (no reduction), -ffp-contract=off in both builds: the same bits
    np.testing.assert_array_equal(y, expected)


def test_cimported_train_matches_batch_norm_train(demo):
    rng = np.random.default_rng(8)
    x = rng.normal(3.0, 2.0, (4, 3, 7, 5))
    y = np.empty_like(x)
    save_mean, save_invstd = np.empty(3), np.empty(3)
    rc = demo.train_f64(x.ravel(), y.ravel(), 4, 3, 35, save_mean, save_invstd, 1e-5,
                        demo.max_threads())
    assert rc == 0, demo.error_text(rc)
    y_ref, mean_ref, invstd_ref = cbn.batch_norm_train(x, eps=1e-5)
    # same kernels, compiled without -march (no FMA) unlike the v3/v4 levels: last bits only
    np.testing.assert_allclose(y, y_ref, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(save_mean, mean_ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(save_invstd, invstd_ref, rtol=1e-14)


def test_cimported_status_codes(demo):
    assert demo.codes() == (0, -1, -2, -3)
    x = np.zeros(2)
    rc = demo.train_f64(x, np.empty(2), 1, 2, 1, np.empty(2), np.empty(2), 1e-5, 1)
    assert rc == -2
    assert demo.error_text(rc) == "expected more than 1 value per channel when training"
