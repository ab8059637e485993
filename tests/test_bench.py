"""The benchmark (cbn.bench) runs and measures what it says: quick runs on tiny shapes."""
import json

import numpy as np
import pytest

from cbn import bench, reference
from cbn.bench import __main__ as cli
from cbn.bench import storage
from cbn.bench.arrays import PlacedBuffer, page_offset
from cbn.bench.sweep import LINE_OFFSETS, placements


def _run(tmp_path, *argv):
    path = tmp_path / "out.json"
    assert cli.main(list(argv) + ["--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_kernel_table_covers_every_op_and_matches_the_public_call():
    assert set(bench.KERNEL_CALLS) == set(bench.OPS)
    for layout in bench.LAYOUTS:
        for dtype in (np.float32, np.float64):
            inputs = bench.make_inputs(bench.layout_shape((3, 5, 4, 2), layout), layout, dtype)
            for op, build in bench.KERNEL_CALLS.items():
                kernel_out = np.full_like(inputs["x"], np.nan)
                build(inputs, kernel_out, 2)()
                public = bench.make_candidates(op, inputs, 2, ["cbn"])["cbn"]()
                np.testing.assert_array_equal(kernel_out, public)


def test_placed_buffer_puts_views_where_asked():
    buf = PlacedBuffer((3, 7), np.float32, np.random.default_rng(0))
    for off in (0, 16, 48, 1040, 4092):
        a = buf.at(off)
        assert page_offset(a) == off and a.shape == (3, 7) and np.isfinite(a).all()
    with pytest.raises(ValueError):
        buf.at(2)


def test_sweep_places_every_array_at_every_16_byte_offset():
    for op in bench.OPS:
        ps = placements(op)
        assert len(set(ps)) == len(ps)
        for role in ((0, 1, 2) if op == "backward" else (0, 2)):
            assert {p[role] % 64 for p in ps} == set(LINE_OFFSETS)
        assert any(p[2] % 4096 == p[0] % 4096 for p in ps)  # out aliasing x modulo 4 KiB


def test_align_sweep_reports_every_op_and_layout(tmp_path):
    d = _run(tmp_path, "--align-sweep", "--shapes", "2x8x4x4", "--repeat", "1", "--threads", "2")
    rows = d["align_sweep"]
    assert sorted((r["op"], r["layout"]) for r in rows) == sorted(
        (op, lay) for op in bench.OPS for lay in bench.LAYOUTS)
    for r in rows:
        assert r["placements"] == len(placements(r["op"])) == len(r["times_s"])
        assert 0 < r["best_s"] <= r["worst_s"]
        assert r["worst_over_best"] == pytest.approx(r["worst_s"] / r["best_s"])
        assert r["times_s"][r["worst_placement"]] == r["worst_s"]


def test_report_runs_and_peers_agree(tmp_path):
    d = _run(tmp_path, "--quick", "--shapes", "4x8x3x3,6x5", "--no-jax", "--no-ort",
             "--threads", "2")
    assert d["meta"]["allocation"] == "numpy default"
    assert len(d["cases"]) == 2 * 2 * len(bench.OPS)
    for c in d["cases"]:
        assert {"cbn", "cbn_alloc", "copy"} <= set(c["results"])
        assert all(e < 1e-3 for e in c["max_rel_error"].values()), c["max_rel_error"]
        assert c["copy_ratio"] > 0
    assert {r["op"] for r in d["overhead"]} == set(bench.OPS)
    assert d["summary"]["speedup_vs_numpy_geomean"] > 0


def test_storage_section_times_every_16_bit_dtype_against_float32(tmp_path):
    d = _run(tmp_path, "--quick", "--shapes", "4x8x3x3", "--no-numpy", "--no-jax", "--no-ort",
             "--no-overhead", "--threads", "2")
    names = set(storage.storage_dtypes())
    assert "float16" in names
    rows = d["storage"]
    assert sorted((r["op"], r["layout"]) for r in rows) == sorted(
        (op, lay) for op in storage.STORAGE_OPS for lay in bench.LAYOUTS)
    for r in rows:
        for n in names:
            assert r[f"{n}_over_float32"] > 0
            assert f"cbn_alloc_{n}" in r["results"]
        for n, err in r["torch_max_rel_error"].items():  # PyTorch, when installed, agrees
            assert err < (2e-3 if n == "float16" else 2e-2), (r["op"], r["layout"], n, err)


def test_default_shapes_include_a_dram_resident_tensor():
    big = [s for s in bench.DEFAULT_SHAPES if np.prod(s) * 4 > 50e6]
    assert bench.DRAM_SHAPE in big


def test_isolated_peer_runs_in_its_own_process(tmp_path):
    pytest.importorskip("torch")
    d = _run(tmp_path, "--quick", "--isolated", "--shapes", "4x8x3x3", "--layout", "NHWC",
             "--no-numpy", "--no-jax", "--no-ort", "--no-overhead", "--threads", "1")
    assert d["meta"]["own_process"] == ["torch"]
    for c in d["cases"]:
        assert "torch" in c["results"] and c["max_rel_error"]["torch"] < 1e-3


def test_busy_runs_a_spinner_and_reports_contention(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.measure, "CONTENTION_SHAPE", (2, 8, 4, 4))
    d = _run(tmp_path, "--quick", "--busy", "--shapes", "4x8", "--layout", "NCHW", "--no-numpy",
             "--no-torch", "--no-jax", "--no-ort", "--no-overhead", "--threads", "2")
    assert d["meta"]["busy"] and d["meta"]["busy_pid"]
    (row,) = d["contention"]
    assert row["busy_n_over_idle_1"] > 0 and set(row["results"]) == {"idle_1", "idle_n", "busy_n"}


def test_reference_computes_in_the_dtype_asked():
    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    y32 = reference.batch_norm_train(x, dtype=np.float32)[0]
    y64 = reference.batch_norm_train(x)[0]
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    np.testing.assert_allclose(y32, y64, rtol=0, atol=1e-5)
