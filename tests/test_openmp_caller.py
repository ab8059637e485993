"""cbn's C kernels called from inside the caller's own OpenMP parallel region (an embedding
framework's worker threads): every call gives the bits of a serial call and never synchronizes
with the caller's team (tests/c/omp_caller.c; built like examples/embed.c)."""
import os
import subprocess

import pytest

import cbn
from test_embed import INCLUDE, _compiler, _extension_flags, _kernel_sources

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c", "omp_caller.c")


def test_calls_from_inside_a_parallel_region(tmp_path):
    if not cbn.openmp_enabled():
        pytest.skip("cbn is built without OpenMP")
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler (CC, cc or gcc) on PATH")
    if not os.path.isfile(PROGRAM) or not _kernel_sources():
        pytest.skip("the C sources are not here (tests run outside the repository)")
    exe = str(tmp_path / "omp_caller")
    cmd = cc + _extension_flags() + [f"-I{INCLUDE}", PROGRAM] + _kernel_sources() + ["-lm", "-o", exe]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0:          # as setup.py does when the CPU flag is refused
        cmd = [a for a in cmd if not a.startswith("-march=")]
        build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"{' '.join(cmd)}\n{build.stderr}"
    try:
        run = subprocess.run([exe], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, OMP_NUM_THREADS="4"))
    except subprocess.TimeoutExpired:
        pytest.fail("a call from inside the caller's parallel region hung (a barrier of cbn's "
                    "bound to the caller's team)")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "ok"
