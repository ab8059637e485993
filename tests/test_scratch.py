"""The kernels' kept scratch block (src/cbn/csrc/scratch.c) under concurrent use: 16 threads
acquire and release blocks of varying sizes while some free the kept one, in a program built
with AddressSanitizer (tests/c/scratch_threads.c), so a use after free or a double free fails."""
import os
import subprocess

import pytest

from test_embed import INCLUDE, KERNEL_DIR, _compiler

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c", "scratch_threads.c")


def test_concurrent_acquire_and_release_is_clean_under_asan(tmp_path):
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler (CC, cc or gcc) on PATH")
    exe = str(tmp_path / "scratch_threads")
    cmd = cc + ["-std=c99", "-O1", "-g", "-fsanitize=address", "-pthread", f"-I{INCLUDE}",
                f"-I{KERNEL_DIR}", PROGRAM, os.path.join(KERNEL_DIR, "scratch.c"), "-o", exe]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip("cannot build with -fsanitize=address here: " + build.stderr[-300:])
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    env.pop("LD_PRELOAD", None)
    run = subprocess.run([exe], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr[-2000:]
