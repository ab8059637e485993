"""How setup.py compiles the kernels for the CPU: the default dispatched build (the kernel files
compiled once per x86-64 level, one level chosen at import, src/cbn/csrc/dispatch.c) or a
single-level build.

Environment (read at build time):
  CBN_NATIVE=1    one level, -march=native: fastest on the building CPU, unsafe on any other
  CBN_PORTABLE=1  one level, no -march flag: runs on any CPU of the architecture (x86-64 v1
                  included), no FMA, slowest
Off x86-64 (aarch64, ...) the build is single-level without -march ("generic").

Importable without setuptools (the tests read LEVEL_FLAGS to compile C programs like cbn).
"""
import glob
import os
import platform

# -march=x86-64-vN (GCC >= 11, clang >= 12) with its default tuning (-mtune=generic).
LEVEL_FLAGS = {
    "v2": ["-march=x86-64-v2"],
    "v3": ["-march=x86-64-v3"],
    "v4": ["-march=x86-64-v4"],
}
SINGLE_LEVEL_FLAGS = {"native": ["-march=native"], "generic": []}


def is_x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


def build_mode():
    """"dispatch", or the name of a single-level build: "native" or "generic"."""
    native = os.environ.get("CBN_NATIVE") == "1"
    portable = os.environ.get("CBN_PORTABLE") == "1"
    if native and portable:
        raise RuntimeError("cbn: CBN_NATIVE=1 and CBN_PORTABLE=1 contradict each other; set one")
    if native:
        return "native"
    if portable or not is_x86_64():
        return "generic"
    return "dispatch"


def kernel_sources(csrc):
    """The per-type instantiation files (cbn_f32.c, cbn_f64.c, ...): the sources compiled once
    per level. Every other .c file of csrc is compiled once."""
    return sorted(glob.glob(os.path.join(csrc, "cbn_*.c")))


def other_sources(csrc):
    kernels = set(kernel_sources(csrc))
    return sorted(f for f in glob.glob(os.path.join(csrc, "*.c")) if f not in kernels)
