"""Type annotations for users' editors and checkers: mypy on the installed package (py.typed).

* a user's program that calls the API correctly passes ``mypy --strict``, and runs;
* the types mypy infers for the results are the precise ones (tuples of arrays of the right
  length, the residual's gradient only when asked for);
* a program with type errors (a misspelt layout, an unknown activation, unpacking three
  gradients where there are four, ...) fails with the messages expected, line by line;
* the package's own modules, as installed, pass ``mypy --strict`` (the benchmark excepted),
  and the compiled bridge's stub (cbn/_core.pyi) matches the built module (mypy's stubtest).

Skipped when mypy is not installed (it is in the ``test`` extra).
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

import cbn

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                                reason="mypy is not installed")

PACKAGE = os.path.dirname(os.path.abspath(cbn.__file__))

# the benchmark (python -m cbn.bench) is a tool, not API: not held to --strict; mpi4py is an
# optional extra
CONFIG = """\
[mypy]
strict = True
[mypy-cbn.bench.*]
ignore_errors = True
[mypy-mpi4py.*]
ignore_missing_imports = True
"""

GOOD = """\
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

import cbn
from cbn import reference, split

Array = NDArray[np.floating[Any]]


def train_step(x: Array, w: Array, b: Array, rm: Array, rv: Array) -> tuple[Array, Array]:
    y, mean, invstd = cbn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv,
                                           momentum=0.1, eps=1e-5, layout="NCHW",
                                           activation="relu", n_threads=2)
    dx, dw, db = cbn.batch_norm_backward(np.ones_like(y), x, mean, invstd, w, y=y,
                                         activation="relu")
    dx2, dw2, db2, dres = cbn.batch_norm_backward(np.ones_like(y), x, mean, invstd, w,
                                                  residual=True, layout="NCHW")
    return dx + dx2 + dres, dw + db + dw2 + db2


rng = np.random.default_rng(0)
x = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
dx, grads = train_step(x, w, b, rm, rv)
y_list, _, _ = cbn.batch_norm_train([[1.0, 2.0], [3.0, 5.0]])        # lists are accepted
y_cl, _, _ = cbn.batch_norm_train(x.transpose(0, 2, 3, 1), layout="channels_last")
y_inf: Array = cbn.batch_norm_infer(x, rm, rv, w, b, eps=1e-3, residual=x, n_threads=None)
y32: NDArray[np.float32] = cbn.batch_norm_infer(x, rm, rv)     # code typed with float32 arrays
dxi, dwi, dbi = cbn.batch_norm_infer_backward(np.ones_like(x), x, rm, rv, w)
scale, shift = cbn.fold_scale_shift(rm, rv, w, b, 1e-5)
W2, b2 = cbn.fold_linear(np.ones((3, 7)), None, (rm, rv))
Wc, bc = cbn.fold_conv(np.ones((3, 2, 3, 3)), np.zeros(3), {"running_mean": rm,
                                                            "running_var": rv})

bn = cbn.BatchNorm2d(3, momentum=None, layout="NCHW", dtype=np.float32, activation="relu")
y_bn: Array = bn(x)
dx_bn = bn.backward(np.ones_like(y_bn))
shape: tuple[int, ...] = dx_bn.shape
y_res = bn(x, residual=x)
dx_r, d_res = bn.backward(np.ones_like(y_res))       # (dx, d_residual) after a residual
bn = bn.eval().train(False)
state = bn.state_dict()
missing, unexpected = bn.load_state_dict(state, strict=True)
assert missing == [] and unexpected == []
fold_w, fold_b = cbn.fold_linear(np.ones((3, 4), np.float32), None, bn)
layer1d: cbn.BatchNorm = cbn.BatchNorm1d(3, 1e-3, 0.2, True, False, bias=False)

cbn.set_num_threads(2)
cbn.set_num_threads(np.int64(1))
cbn.set_num_threads(None)
n: int = cbn.get_num_threads()
on: bool = cbn.openmp_enabled()
cbn.release_memory()
previous_limit: int = cbn.set_output_cache(cbn.set_output_cache(0))
include: str = cbn.get_include()
version: str = cbn.__version__

count, m, m2 = split.batch_stats(x, layout="NCHW")
total, gm, gm2 = split.combine_stats([count], m[None], m2[None])
yn = split.batch_norm_normalize(x, gm, 1.0 / np.sqrt(gm2 / total + 1e-5), w, b)
ref_y, ref_mean, ref_invstd, ref_rm, ref_rv = reference.batch_norm_train(x, w, b)
ref_dx, ref_dw, ref_db = reference.batch_norm_backward(np.ones_like(x), x, ref_mean,
                                                       ref_invstd, dtype=np.float32)
print("ran")
"""

REVEAL = """\
import numpy as np
import cbn

x = np.ones((4, 3, 5), np.float32)
m, s = np.zeros(3, np.float32), np.ones(3, np.float32)
reveal_type(cbn.batch_norm_train(x))
reveal_type(cbn.batch_norm_backward(x, x, m, s))
reveal_type(cbn.batch_norm_backward(x, x, m, s, residual=True))
reveal_type(cbn.batch_norm_infer_backward(x, x, m, s, residual=False))
reveal_type(cbn.batch_norm_infer(x, m, s))
reveal_type(cbn.BatchNorm(3).eval())
reveal_type(cbn.BatchNorm3d(3).train())
reveal_type(cbn.get_num_threads())
"""

# an ndarray of floats, whatever shape type this NumPy's stubs give it
_ARRAY = r"numpy\.ndarray\[(?:(?!numpy\.ndarray).)*?numpy\.dtype\[numpy\.floating\[Any\]\]\]"
_TUPLE = r"(?:builtins\.)?tuple"
REVEALED = [  # one pattern per reveal_type line, in order
    rf"{_TUPLE}\[{_ARRAY}, {_ARRAY}, {_ARRAY}\]",
    rf"{_TUPLE}\[{_ARRAY}, {_ARRAY}, {_ARRAY}\]",
    rf"{_TUPLE}\[{_ARRAY}, {_ARRAY}, {_ARRAY}, {_ARRAY}\]",
    rf"{_TUPLE}\[{_ARRAY}, {_ARRAY}, {_ARRAY}\]",
    _ARRAY,
    r"cbn\.layer\.BatchNorm",
    r"cbn\.layer\.BatchNorm3d",
    r"(?:builtins\.)?int",
]

# each line with an error and the message mypy must give for it
BAD = [
    ('y, m, s = cbn.batch_norm_train(x, layout="NHCW")',
     r'Argument "layout" to "batch_norm_train" has incompatible type "Literal\[\'NHCW\'\]"'),
    ('y = cbn.batch_norm_infer(x, m, s, activation="gelu")',
     r'Argument "activation" to "batch_norm_infer" has incompatible type "Literal\[\'gelu\'\]"'),
    ("dx, dw, db = cbn.batch_norm_backward(x, x, m, s, residual=True)",
     r"Too many values to unpack \(3 expected, 4 provided\)"),
    ("y, m = cbn.batch_norm_train(x)",
     r"Too many values to unpack \(2 expected, 3 provided\)"),
    ('cbn.set_num_threads("4")',
     r'Argument 1 to "set_num_threads" has incompatible type "str"'),
    ("cbn.batch_norm_train(x, running_mean=[0.0, 0.0, 0.0], running_var=s)",
     r'Argument "running_mean" to "batch_norm_train" has incompatible type "list\[float\]"'),
    ("count: str = cbn.get_num_threads()",
     r'Incompatible types in assignment \(expression has type "int", variable has type "str"\)'),
    ("bn = cbn.BatchNorm2d(3, momentum=None, layout='NWHC')",
     r'Argument "layout" to "BatchNorm2d" has incompatible type "Literal\[\'NWHC\'\]"'),
    ("cbn.batch_norm_infer(x)",
     r'Missing positional arguments "running_mean", "running_var" in call to "batch_norm_infer"'),
]


def _mypy(tmp_path, *args, cwd=None):
    """Runs mypy (this interpreter's, so it sees the installed cbn) with CONFIG and a cache in
    tmp_path, from tmp_path: not the source tree, whose src/cbn it must not pick up."""
    config = tmp_path / "mypy.ini"
    config.write_text(CONFIG)
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
           str(tmp_path / ".mypy_cache"), "--no-error-summary", "--show-error-codes",
           "--no-color-output", *args]
    return subprocess.run(cmd, cwd=cwd or tmp_path, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, MYPYPATH=""))


def test_package_is_marked_typed():
    assert os.path.isfile(os.path.join(PACKAGE, "py.typed")), "py.typed is not installed"
    assert os.path.isfile(os.path.join(PACKAGE, "_core.pyi")), "_core.pyi is not installed"


def test_correct_user_code_passes_strict_and_runs(tmp_path):
    sample = tmp_path / "good.py"
    sample.write_text(GOOD)
    run = _mypy(tmp_path, str(sample))
    assert run.returncode == 0, run.stdout + run.stderr
    # the sample is correct code, not only well-typed code
    ran = subprocess.run([sys.executable, str(sample)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 0 and ran.stdout.strip() == "ran", ran.stdout + ran.stderr


def test_results_have_precise_types(tmp_path):
    sample = tmp_path / "reveal.py"
    sample.write_text(REVEAL)
    run = _mypy(tmp_path, str(sample))
    revealed = re.findall(r'Revealed type is "(.*)"', run.stdout)
    assert len(revealed) == len(REVEALED), run.stdout + run.stderr
    for got, want in zip(revealed, REVEALED):
        assert re.fullmatch(want, got), f"revealed {got!r}, expected {want!r}"


def test_type_errors_are_reported(tmp_path):
    header = textwrap.dedent("""\
        import numpy as np
        import cbn

        x = np.ones((4, 3, 5), np.float32)
        m, s = np.zeros(3, np.float32), np.ones(3, np.float32)
        """)
    first = header.count("\n") + 1
    sample = tmp_path / "bad.py"
    sample.write_text(header + "\n".join(line for line, _ in BAD) + "\n")
    run = _mypy(tmp_path, str(sample))
    assert run.returncode == 1, run.stdout + run.stderr
    errors = {}
    for line in run.stdout.splitlines():
        found = re.match(r"bad\.py:(\d+): error: (.*)", line)
        if found:
            errors.setdefault(int(found.group(1)), []).append(found.group(2))
    for i, (code, message) in enumerate(BAD):
        got = errors.get(first + i, [])
        assert any(re.search(message, e) for e in got), (
            f"line {first + i} ({code}): expected an error matching {message!r}, got {got}")
    assert sorted(errors) == list(range(first, first + len(BAD))), run.stdout


def test_installed_package_passes_strict(tmp_path):
    """mypy --strict on a copy of the installed package's sources and stubs (as files of their
    own: mypy keeps quiet about errors in site-packages); an error planted in a second copy
    must be reported, so a silent pass cannot hide a check that checks nothing."""
    def copy(dest):
        shutil.copytree(PACKAGE, dest / "cbn",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.c",
                                                      "*.h", "*.pyx", "*.pxd"))
        return dest / "cbn"

    clean = copy(tmp_path / "clean")
    run = _mypy(tmp_path, "-p", "cbn", cwd=clean.parent)
    assert run.returncode == 0, run.stdout + run.stderr

    planted = copy(tmp_path / "planted")
    with open(planted / "_threads.py", "a") as f:
        f.write("\n\ndef _planted() -> int:\n    return get_num_threads() + 'x'\n")
    run = _mypy(tmp_path, "-p", "cbn", cwd=planted.parent)
    assert run.returncode == 1 and "_threads.py" in run.stdout and "[operator]" in run.stdout, (
        run.stdout + run.stderr)


def test_core_stub_matches_the_built_module(tmp_path):
    if importlib.util.find_spec("mypy.stubtest") is None:
        pytest.skip("this mypy has no stubtest")
    allow = tmp_path / "allow.txt"
    allow.write_text("cbn._core.__test__\n")   # Cython's doctest dict, not API
    run = subprocess.run([sys.executable, "-m", "mypy.stubtest", "--allowlist", str(allow),
                          "cbn._core"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, MYPYPATH=""))
    assert run.returncode == 0, run.stdout + run.stderr
