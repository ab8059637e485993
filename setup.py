"""Build of the cbn extensions: the C kernels in src/cbn/csrc plus the Cython bridge (cbn._core),
the benchmark's copy yardstick (cbn.bench._copy), built with the same flags, and the reuse of
large outputs' memory (cbn._output_cache).

By default the kernel files (csrc/cbn_<type>.c) are compiled once per x86-64 level (v2, v3, v4,
tools/cpu_levels.py) and the level that runs is chosen at import (csrc/dispatch.c): one binary,
safe and fast on every x86-64 CPU.

Environment:
  CBN_REQUIRE_OPENMP=1  fail the build when the OpenMP probe fails (CI sets it)
  CBN_NATIVE=1          one level, -march=native: for the building CPU only
  CBN_PORTABLE=1        one level, no -march flag: any CPU of the architecture, slowest
"""
import glob
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.modified import newer_group
except ImportError:                     # setuptools < 69
    from setuptools.dep_util import newer_group

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools"))
from cpu_levels import (LEVEL_FLAGS, SINGLE_LEVEL_FLAGS, build_mode,  # noqa: E402
                        kernel_sources, other_sources)
from openmp_probe import compiles, native_flags, openmp_flags  # noqa: E402

CSRC = "src/cbn/csrc"
omp_compile, omp_link = openmp_flags()
# -ffp-contract=off: a*b+c is never fused behind our back, so every build of the same source
# rounds the same way (and every level: only the explicit fma() of MULADD fuses, where the level
# has FMA). Never -ffast-math: it would reorder the fixed-order reductions.
# -fno-trapping-math: selects such as the ReLU gradient's (y > 0 ? dy : 0) may be computed as
# vector blends; cbn never reads floating-point exception flags, and no value changes.
cflags = (["-O3", "-std=c99", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
          + omp_compile)

mode = build_mode()
if mode == "dispatch":
    for level, flags in LEVEL_FLAGS.items():
        if not compiles("int main(void) { return 0; }\n", flags):
            raise RuntimeError(
                f"cbn: the compiler refuses {' '.join(flags)} (level {level}; GCC >= 11 or "
                "clang >= 12 know the x86-64-vN levels). Use a newer compiler, or build one "
                "level: CBN_NATIVE=1 (this CPU only) or CBN_PORTABLE=1 (any CPU, slower).")
    sources = other_sources(CSRC)
    macros = [("CBN_DISPATCH", None)]
    arch = []
    print("cbn: dispatched build: kernels at " + ", ".join(
        f"{lv} ({' '.join(fl)})" for lv, fl in LEVEL_FLAGS.items()), file=sys.stderr)
else:
    sources = kernel_sources(CSRC) + other_sources(CSRC)
    macros = [("CBN_BUILD_LEVEL", mode)]
    arch = native_flags() if mode == "native" else SINGLE_LEVEL_FLAGS[mode]
    print(f"cbn: single-level build ({mode})", file=sys.stderr)

print("cbn: C flags: " + " ".join(cflags + arch), file=sys.stderr)


# Extension name -> the sources it compiles once per level (the dispatched build only).
LEVELED_SOURCES = {"cbn._core": kernel_sources(CSRC)} if mode == "dispatch" else {}


class BuildLevels(build_ext):
    """build_ext that first compiles an extension's LEVELED_SOURCES once per level, each with
    the common flags, the level's flags and CBN_KERNEL_LEVEL=<level> (which suffixes the names
    they define), into build_temp/<level>/, and links those objects in. Works from a checkout,
    an sdist and `python -m build` alike: the sources and this file are all it needs."""

    def build_extensions(self):
        # build/ is reused between builds: after a change of CBN_NATIVE, CBN_PORTABLE, CC or
        # the flags, objects and libraries built the other way must not be taken as up to date
        stamp = os.path.join(self.build_temp, "cbn_build_flags.txt")
        flags = repr((mode, cflags, arch, LEVEL_FLAGS, os.environ.get("CC"),
                      os.environ.get("CFLAGS")))
        if not os.path.isfile(stamp):
            self.force = True
        else:
            with open(stamp) as f:
                self.force = self.force or f.read() != flags
        super().build_extensions()
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(flags)

    def build_extension(self, ext):
        kernels = LEVELED_SOURCES.get(ext.name)
        if kernels and (self.force or newer_group(ext.sources + kernels + ext.depends,
                                                  self.get_ext_fullpath(ext.name), "newer")):
            def compile_one(job):
                level, src = job
                return self.compiler.compile(
                    [src], output_dir=os.path.join(self.build_temp, level),
                    macros=ext.define_macros + [("CBN_KERNEL_LEVEL", level)],
                    include_dirs=ext.include_dirs, extra_postargs=cflags + LEVEL_FLAGS[level],
                    depends=ext.depends)

            jobs = [(level, src) for level in LEVEL_FLAGS for src in kernels]
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                objects = [o for objs in pool.map(compile_one, jobs) for o in objs]
            ext.extra_objects = [o for o in ext.extra_objects if o not in objects] + objects
        super().build_extension(ext)


extension = Extension(
    "cbn._core",
    sources=["src/cbn/_core.pyx"] + sources,
    include_dirs=["include", CSRC, numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")] + macros,
    extra_compile_args=cflags + arch,
    extra_link_args=omp_link,
    # rebuild when these change, and ship them in the sdist (a wheel built from the sdist needs
    # the probe modules imported above as much as the headers)
    depends=(["include/cbn.h", "tools/openmp_probe.py", "tools/cpu_levels.py"]
             + sorted(glob.glob(CSRC + "/*.h"))
             + (kernel_sources(CSRC) if mode == "dispatch" else [])),
)
# The benchmark's yardstick: a plain copy at the kernels' thread count, compiled like them. It is
# kept out of csrc/ so that embedders who compile csrc/*.c do not get it.
copy_yardstick = Extension(
    "cbn.bench._copy",
    sources=["src/cbn/bench/_copy.pyx", "src/cbn/bench/copy_yardstick.c"],
    include_dirs=["src/cbn/bench", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=cflags + arch,
    extra_link_args=omp_link,
    depends=["src/cbn/bench/copy_yardstick.h", "tools/openmp_probe.py"],
)

# Reuse of the memory of large new outputs (cbn._alloc); NumPy's C API only, no kernels.
output_cache = Extension(
    "cbn._output_cache",
    sources=["src/cbn/_output_cache.pyx"],
    include_dirs=[numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=["-O2"],
)

setup(
    cmdclass={"build_ext": BuildLevels},
    ext_modules=cythonize(
        [extension, copy_yardstick, output_cache],
        include_path=["src"],          # cbn/cbn.pxd, the one declaration of the C API
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False,
                             "cdivision": True},
    ),
)
