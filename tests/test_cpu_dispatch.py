"""Runtime CPU dispatch (src/cbn/csrc/dispatch.c): the kernels compiled once per x86-64 level,
one level chosen at import (CBN_CPU_LEVEL forces one).

* cbn.cpu_level() names the level; by default the best this CPU supports; CBN_CPU_LEVEL picks
  each supported level, and a bad or unsupported value fails the import with a message naming
  it and what the CPU supports.
* Which levels the CPU supports agrees with libgcc's __builtin_cpu_supports("x86-64-vN") (an
  independent implementation of the same cpuid + XCR0 checks).
* Bits: every kernel, both dtypes, over shapes that reach every kernel path, in a subprocess per
  supported level (tests/cpu_level_worker.py): the levels with FMA (v3, v4) give the same bits;
  v2 (no FMA) agrees with v3 to a few units in the last place and with the float64 reference.
* Every kernel that include/cbn.h declares is one that the dispatched build forwards
  (csrc/kernel_list.h), so a new entry point cannot be left out of the table.
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import cbn
from cbn import _core
from conftest import assert_close

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "cpu_level_worker.py")
LEVELS = ("v2", "v3", "v4")
SUPPORTED = [lv for lv in LEVELS if _core.cpu_supports_level(lv)]
dispatched = pytest.mark.skipif(not _core.cpu_dispatched(),
                                reason="a single-level build (CBN_NATIVE, CBN_PORTABLE, not x86-64)")

sys.path.insert(0, HERE)
from cpu_level_worker import CASES  # noqa: E402


def run_python(code, level=None, **kwargs):
    env = dict(os.environ)
    env.pop("CBN_CPU_LEVEL", None)
    if level is not None:
        env["CBN_CPU_LEVEL"] = level
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=600, cwd=HERE, **kwargs)


def test_cpu_level_names_a_level():
    level = cbn.cpu_level()
    if _core.cpu_dispatched():
        assert level in SUPPORTED
    else:
        assert level in ("native", "generic")
    assert "cpu_level" in cbn.__all__


@dispatched
def test_default_is_the_best_supported_level():
    run = run_python("import cbn; print(cbn.cpu_level())")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == SUPPORTED[-1]


@dispatched
@pytest.mark.parametrize("level", LEVELS)
def test_forced_level_runs(level):
    if level not in SUPPORTED:
        pytest.skip(f"this CPU lacks {level}")
    run = run_python("import cbn, numpy as np; "
                     "y, m, s = cbn.batch_norm_train(np.arange(12.0).reshape(3, 4)); "
                     "print(cbn.cpu_level(), float(m[0]))", level=level)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [level, "4.0"]


@pytest.mark.parametrize("value", ["v5", "V3", "avx2", "x86-64-v3"])
def test_unknown_level_fails_the_import(value):
    run = run_python("import cbn", level=value)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ") and f"CBN_CPU_LEVEL={value!r}" in last, last
    if _core.cpu_dispatched():
        assert "expected one of v2, v3, v4" in last
        assert "this CPU supports " + ", ".join(SUPPORTED) in last


@dispatched
@pytest.mark.parametrize("level", LEVELS)
def test_unsupported_level_fails_the_import(level):
    if level in SUPPORTED:
        pytest.skip(f"this CPU has {level}")
    run = run_python("import cbn", level=level)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode != 0 and "does not support level " + level in last, last


def test_unsupported_level_message(monkeypatch):
    """The message for a level the CPU lacks, on a CPU that is made to lack v4 (the C query is
    replaced; the real one runs in test_unsupported_level_fails_the_import on such CPUs)."""
    from cbn import _cpu

    class FakeCore:
        cpu_dispatched = staticmethod(lambda: True)
        cpu_level = staticmethod(lambda: "v3")
        cpu_supports_level = staticmethod(lambda lv: lv in ("v2", "v3"))
        select_cpu_level = staticmethod(lambda lv: 0 if lv in ("", "v2", "v3") else -1)

    monkeypatch.setattr(_cpu, "_core", FakeCore)
    _cpu._select_at_import({"CBN_CPU_LEVEL": "v3"})
    _cpu._select_at_import({})
    with pytest.raises(ImportError, match=r"CBN_CPU_LEVEL='v4': this CPU \(or its OS\) does "
                                          r"not support level v4; it supports v2, v3"):
        _cpu._select_at_import({"CBN_CPU_LEVEL": "v4"})


def test_single_level_build_refuses_other_levels(monkeypatch):
    from cbn import _cpu

    class FakeCore:
        cpu_dispatched = staticmethod(lambda: False)
        cpu_level = staticmethod(lambda: "native")
        cpu_supports_level = staticmethod(lambda lv: True)
        select_cpu_level = staticmethod(lambda lv: 0 if lv in ("", "native") else -1)

    monkeypatch.setattr(_cpu, "_core", FakeCore)
    _cpu._select_at_import({"CBN_CPU_LEVEL": "native"})
    with pytest.raises(ImportError, match="built for one level, 'native'"):
        _cpu._select_at_import({"CBN_CPU_LEVEL": "v2"})


def test_select_refuses_without_changing_the_level():
    before = cbn.cpu_level()
    assert _core.select_cpu_level("v9") == -1
    assert cbn.cpu_level() == before
    assert _core.select_cpu_level(before) == 0      # the level in use is always accepted
    assert cbn.cpu_level() == before


def _compiler():
    for cand in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc"):
        if cand and shutil.which(cand.split()[0]):
            return cand.split()
    return None


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 levels")
def test_detection_agrees_with_libgcc(tmp_path):
    """cpu_features.c's own cpuid/XCR0 checks against __builtin_cpu_supports (GCC >= 12)."""
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "levels.c"
    src.write_text('#include <stdio.h>\nint main(void) {\n    __builtin_cpu_init();\n'
                   '    printf("%d %d %d\\n", !!__builtin_cpu_supports("x86-64-v2"),\n'
                   '           !!__builtin_cpu_supports("x86-64-v3"),\n'
                   '           !!__builtin_cpu_supports("x86-64-v4"));\n    return 0;\n}\n')
    exe = tmp_path / "levels"
    build = subprocess.run(cc + [str(src), "-o", str(exe)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip("the compiler does not know __builtin_cpu_supports(\"x86-64-vN\") "
                    "(GCC < 12 or clang)")
    got = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert [bool(int(v)) for v in got] == [_core.cpu_supports_level(lv) for lv in LEVELS]


def test_every_kernel_of_the_header_is_dispatched():
    """Each function of include/cbn.h with an element-type suffix is in kernel_list.h, and the
    list names nothing else but the internal path query."""
    header = os.path.join(cbn.get_include(), "cbn.h")
    with open(header) as f:
        text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    declared = set(re.findall(r"\b(cbn_\w+_(?:f32|f64|f16|bf16))\s*\(", text))
    assert {"cbn_train_forward_f32", "cbn_backward_dx_f64"} <= declared   # the parse works
    listed = _core.dispatched_kernels()
    assert len(listed) == len(set(listed))
    assert declared - set(listed) == set(), "kernels missing from csrc/kernel_list.h"
    assert {n for n in listed if not n.startswith("cbn_plan_path_")} == declared


@pytest.fixture(scope="module")
def level_outputs(tmp_path_factory):
    """{level: outputs saved by cpu_level_worker.py run at that level}, for each supported."""
    if not _core.cpu_dispatched():
        pytest.skip("a single-level build has one level")
    out = {}
    tmp = tmp_path_factory.mktemp("levels")
    for level in SUPPORTED:
        path = str(tmp / f"{level}.npz")
        argv = ["w", path] + (["--reference"] if level == "v2" else [])
        run = run_python(f"import runpy, sys; sys.argv = {argv!r}; "
                         f"runpy.run_path({WORKER!r}, run_name='__main__')", level=level)
        assert run.returncode == 0, run.stderr[-3000:]
        with np.load(path) as f:
            out[level] = {k: f[k] for k in f.files}
        assert str(out[level]["level"]) == level
    return out


def _names(saved):
    return sorted(k[:-4] for k in saved if k.endswith("#sha"))


def test_fma_levels_bit_identical(level_outputs):
    fma = [lv for lv in ("v3", "v4") if lv in level_outputs]
    if len(fma) < 2:
        pytest.skip("this CPU has fewer than two levels with FMA")
    a, b = (level_outputs[lv] for lv in fma)
    names = _names(a)
    assert len(names) == len(CASES) * 2 * 27
    differ = [n for n in names if str(a[n + "#sha"]) != str(b[n + "#sha"])]
    assert differ == [], f"{len(differ)} outputs differ between v3 and v4: {differ[:8]}"


def test_v2_close_to_v3(level_outputs):
    """Without FMA the sums of squares and products round twice: last bits only (within
    64 eps of each output's largest (sampled) value; measured up to about 14). The eps is the
    kernel's type's: a float32 kernel's float64 outputs (the split sums) carry its float
    blocks' roundings."""
    if not {"v2", "v3"} <= set(level_outputs):
        pytest.skip("needs v2 and v3")
    a, b = level_outputs["v2"], level_outputs["v3"]
    names = _names(a)
    for n in names:
        x, y = a[n + "#sample"], b[n + "#sample"]
        eps = np.finfo(np.float32 if "/float32/" in n else y.dtype).eps
        scale = max(1.0, float(np.abs(y).max()))
        np.testing.assert_allclose(x, y, rtol=0, atol=64 * eps * scale, err_msg=n)
    # and the levels really ran different code: FMA changes some float64 sums
    assert any(str(a[n + "#sha"]) != str(b[n + "#sha"]) for n in names if "/float64/" in n)


def test_v2_matches_the_reference(level_outputs):
    """v2's training, backward and inference outputs against the float64 NumPy reference
    (computed by the worker from the same inputs)."""
    if "v2" not in level_outputs:
        pytest.skip("needs v2")
    got = level_outputs["v2"]
    refs = sorted(k for k in got if "/reference/" in k)
    assert len(refs) == len(CASES) * 2 * 7
    for key in refs:
        case_dtype, name = key.split("/reference/")
        dtype = np.dtype(case_dtype.rsplit("/", 1)[1])
        assert_close(got[case_dtype + "/" + name], got[key], dtype=dtype, err_msg=key)
