"""Build-time probes (scikit-learn's approach): compile, link and *run* a tiny program before
trusting a compiler flag, so a build never ships flags the machine cannot use.

Used by setup.py; importable without setuptools' build machinery running.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

OPENMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+ : n)
        n += 1;
        printf("%d %d\\n", n, omp_get_max_threads());
        /* a team of at least one thread, and no more than OpenMP's default (OMP_THREAD_LIMIT or
           OMP_DYNAMIC may give fewer) */
        return (n >= 1 && n <= omp_get_max_threads()) ? 0 : 1;
    }
""")

PLAIN_PROBE = "int main(void) { return 0; }\n"


def compiler():
    """The C compiler setuptools will use (CC overrides Python's configured one)."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def compiles_and_runs(source, cflags, ldflags=()):
    """True when `source` compiles and links with the flags and its program exits 0."""
    tmp = tempfile.mkdtemp(prefix="cbn_probe_")
    try:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(source)
        cmd = compiler() + list(cflags) + [src, "-o", exe] + list(ldflags)
        build = subprocess.run(cmd, capture_output=True, text=True)
        if build.returncode != 0:
            return False, build.stderr.strip()
        run = subprocess.run([exe], capture_output=True, text=True, timeout=60)
        if run.returncode != 0:
            return False, f"probe program exited {run.returncode}: {run.stdout}{run.stderr}"
        return True, run.stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def openmp_flags():
    """(compile flags, link flags) for OpenMP, or ([], []) when the probe fails.

    With CBN_REQUIRE_OPENMP=1 a failed probe raises instead of falling back to a serial build.
    """
    ok, detail = compiles_and_runs(OPENMP_PROBE, ["-fopenmp"], ["-fopenmp"])
    if ok:
        team, max_threads = (detail.split() + ["?", "?"])[:2]
        print(f"cbn: OpenMP probe passed ({' '.join(compiler())} -fopenmp, team of {team}, "
              f"omp_get_max_threads() = {max_threads}): building with OpenMP", file=sys.stderr)
        return ["-fopenmp"], ["-fopenmp"]
    message = ("cbn: OpenMP probe failed (compile, link and run a program with -fopenmp)."
               f"\n  compiler: {' '.join(compiler())}\n  detail: {detail}")
    if os.environ.get("CBN_REQUIRE_OPENMP") == "1":
        raise RuntimeError(message + "\n  CBN_REQUIRE_OPENMP=1 is set: refusing to build a "
                           "serial library.")
    print("WARNING: " + message + "\n  Building a SERIAL library (every kernel on one thread); "
          "set CBN_REQUIRE_OPENMP=1 to make this an error.", file=sys.stderr)
    # still vectorize the `omp simd` loops when the compiler knows the flag
    ok, _ = compiles_and_runs(PLAIN_PROBE, ["-fopenmp-simd"])
    return (["-fopenmp-simd"] if ok else []), []


def compiles(source, cflags):
    """True when `source` compiles to an object file with the flags (nothing is run: the flags
    may target a CPU other than this one)."""
    tmp = tempfile.mkdtemp(prefix="cbn_probe_")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        cmd = compiler() + list(cflags) + ["-c", src, "-o", os.path.join(tmp, "probe.o")]
        return subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def native_flags():
    """-march=native, or nothing when the compiler refuses it (CBN_NATIVE=1 builds)."""
    ok, _ = compiles_and_runs(PLAIN_PROBE, ["-march=native"])
    return ["-march=native"] if ok else []
