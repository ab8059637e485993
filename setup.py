"""Build of the cbn extensions: the C kernels in src/cbn/csrc plus the Cython bridge (cbn._core),
and the benchmark's copy yardstick (cbn.bench._copy), built with the same flags.

Environment:
  CBN_REQUIRE_OPENMP=1  fail the build when the OpenMP probe fails (CI sets it)
  CBN_PORTABLE=1        no -march=native: a binary that runs on any x86-64 / aarch64 CPU
"""
import glob
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools"))
from openmp_probe import arch_flags, openmp_flags  # noqa: E402

omp_compile, omp_link = openmp_flags()
# -ffp-contract=off: a*b+c is never fused behind our back, so every build of the same source
# rounds the same way. Never -ffast-math: it would reorder the fixed-order reductions.
# -fno-trapping-math: selects such as the ReLU gradient's (y > 0 ? dy : 0) may be computed as
# vector blends; cbn never reads floating-point exception flags, and no value changes.
cflags = (["-O3", "-std=c99", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
          + arch_flags() + omp_compile)

print("cbn: C flags: " + " ".join(cflags), file=sys.stderr)

extension = Extension(
    "cbn._core",
    sources=["src/cbn/_core.pyx"] + sorted(glob.glob("src/cbn/csrc/*.c")),
    include_dirs=["include", "src/cbn/csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=cflags,
    extra_link_args=omp_link,
    # rebuild when these change, and ship them in the sdist (a wheel built from the sdist needs
    # the probe module imported above as much as the headers)
    depends=(["include/cbn.h", "tools/openmp_probe.py"]
             + sorted(glob.glob("src/cbn/csrc/*.h"))),
)

# The benchmark's yardstick: a plain copy at the kernels' thread count, compiled like them. It is
# kept out of csrc/ so that embedders who compile csrc/*.c do not get it.
copy_yardstick = Extension(
    "cbn.bench._copy",
    sources=["src/cbn/bench/_copy.pyx", "src/cbn/bench/copy_yardstick.c"],
    include_dirs=["src/cbn/bench", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=cflags,
    extra_link_args=omp_link,
    depends=["src/cbn/bench/copy_yardstick.h", "tools/openmp_probe.py"],
)

setup(
    ext_modules=cythonize(
        [extension, copy_yardstick],
        include_path=["src"],          # cbn/cbn.pxd, the one declaration of the C API
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False,
                             "cdivision": True},
    ),
)
