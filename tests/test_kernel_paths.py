"""The tagged test cases (conftest: MEDIUM_CASES, THREAD_CASES, STREAM_CASES, PLACEMENT_CASES)
take the kernel path each is meant to reach, asked of the kernels' own plan: a change of a
threshold (group bytes, column runs, tile width, streaming size) that moves a case to another
path fails here instead of silently leaving that path untested."""
import pytest

from cbn import _core
from cbn._layout import canonical_view
from conftest import CASE_PATHS, PATH_THREADS, case_id

ALL_PATHS = {"cf-ranges", "cf-groups", "cf-columns", "cl-blocks", "cl-whole-tiles"}


def path_of(case, op="train", f32=True, n_threads=PATH_THREADS):
    """The path name of `op` on case, "+stream" appended when it streams its output."""
    layout, shape = case
    cl, N, C, S = canonical_view(shape, layout)
    got = _core.plan_path(N, C, S, cl, f32, op, n_threads)
    return got["path"] + ("+stream" if got["stream"] else "")


@pytest.mark.parametrize("case", sorted(CASE_PATHS), ids=case_id)
def test_tagged_case_takes_its_path(many_threads, case):
    assert path_of(case) == CASE_PATHS[case]


def test_every_path_has_a_case():
    tags = set(CASE_PATHS.values())
    assert {t.split("+")[0] for t in tags} == ALL_PATHS
    assert {"cf-ranges+stream", "cf-columns+stream", "cl-blocks+stream"} <= tags


def test_plan_path_answers_what_the_kernels_decide(many_threads):
    """The query itself: inference has no reduce (channels-first is one pass), every op with
    few rows takes whole tiles and with many rows row blocks, more threads turn channel groups
    into ranges, float64 streams from half the values."""
    assert path_of(("NCHW", (4, 3, 5, 7)), "infer") == "cf-apply"
    assert path_of(("NHWC", (3, 7, 5)), "backward") == "cl-whole-tiles"
    assert path_of(("NHWC", (3, 7, 5)), "infer") == "cl-whole-tiles"
    assert path_of(("NHWC", (2, 1000, 600)), "backward") == "cl-blocks"
    assert path_of(("NCHW", (8, 96, 32, 32)), n_threads=1) == "cf-groups"
    assert path_of(("NCHW", (8, 96, 32, 32)), n_threads=5) == "cf-ranges"
    assert path_of(("NCHW", (2, 3, 600, 700)), f32=True) == "cf-ranges"
    assert path_of(("NCHW", (2, 3, 600, 700)), f32=False) == "cf-ranges+stream"
    assert _core.plan_path(4, 3, 35, False, True, "train", 16)["n_threads"] == 1
    # backward goes by runs from shorter runs than training (plan.h: CBN_BACKWARD_COLUMN_MAX_S)
    assert path_of(("NCHW", (8, 64, 8, 8)), "train") == "cf-columns"
    assert path_of(("NCHW", (8, 64, 8, 8)), "backward") in {"cf-groups", "cf-ranges"}
    assert path_of(("NCHW", (32, 64, 7, 7)), "backward") == "cf-columns"


def test_column_mode_streams_from_half_the_size():
    """plan.h: CBN_COLUMN_STREAM_MIN_BYTES. Column-mode training and backward stream their
    output from 8 MiB (float32 32x2048x7x7: 12.8 MB), other paths from 16 MiB; inference of the
    same tensor is not a column-mode call and keeps its output in cache."""
    big, small = ("NCHW", (32, 2048, 7, 7)), ("NCHW", (16, 2048, 7, 7))   # 12.8 MB, 6.4 MB
    assert path_of(big, "train") == "cf-columns+stream"
    assert path_of(big, "backward") == "cf-columns+stream"
    assert path_of(small, "train") == "cf-columns"
    assert path_of(big, "infer") == "cf-apply"
    assert path_of(("NCHW", (32, 64, 40, 40)), "train") in {"cf-groups", "cf-ranges"}  # 13 MB
