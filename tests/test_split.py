"""The split kernels (cbn.split), the phases that data-parallel training combines across
processes: on one process, or with the batch cut into uneven parts and recombined, they must
reproduce batch_norm_train / batch_norm_backward and the float64 reference."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from cbn import split
from conftest import (ALL_CASES, DTYPES, STATS_RTOL, assert_close, assert_identical,
                      backward_truth, case_arrays, case_id, f64, make_params, make_x,
                      n_channels)

EPS = 1e-5


def parts_along_batch(a, sizes):
    """Cut a along axis 0 into consecutive parts of the given sizes (0 allowed)."""
    bounds = np.cumsum([0] + list(sizes))
    return [a[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]


def split_forward(x, w, b, layout, sizes, activation=None):
    stats = [split.batch_stats(p, layout=layout) for p in parts_along_batch(x, sizes)]
    count, mean, m2 = split.combine_stats([s[0] for s in stats], [s[1] for s in stats],
                                          [s[2] for s in stats])
    invstd = 1.0 / np.sqrt(m2 / count + EPS)
    ys = [split.batch_norm_normalize(p, mean, invstd, w, b, layout=layout, activation=activation)
          for p in parts_along_batch(x, sizes)]
    return np.concatenate(ys, axis=0), count, mean, m2, invstd


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_split_forward_and_backward_match_reference(case, dtype, rng):
    layout, shape, _, x, dy, w, b, _, _ = case_arrays(rng, case, dtype)
    N = shape[0]
    sizes = [N // 3, 0, N - N // 3] if N > 1 else [N, 0]
    y, count, mean, m2, invstd = split_forward(x, w, b, layout, sizes)
    r_y, r_mean, r_invstd, _, _ = ref.batch_norm_train(f64(x), f64(w), f64(b), layout=layout,
                                                        eps=EPS)
    assert count == x.size // n_channels(shape, layout)
    assert_close(y, r_y)
    # float64 outputs, as exact as the kernel's sums (float32: float blocks)
    rt = STATS_RTOL[np.dtype(dtype)]
    assert_close(mean, r_mean, dtype=np.float64, rtol=rt, atol=rt)
    assert_close(invstd, r_invstd, dtype=np.float64, rtol=max(rt, 1e-9), atol=1e-12)
    # backward from the forward's (rounded) save_mean / save_invstd, as the layer would
    save_mean, save_invstd = mean.astype(dtype), invstd.astype(dtype)
    parts = [split.batch_norm_backward_reduce(g, p, save_mean, layout=layout)
             for g, p in zip(parts_along_batch(dy, sizes), parts_along_batch(x, sizes))]
    sums = [np.sum([s[i] for s in parts], axis=0) for i in range(3)]   # the all-reduce
    dx = np.concatenate([split.batch_norm_backward_dx(g, p, save_mean, save_invstd, *sums,
                                                      count, w, layout=layout)
                         for g, p in zip(parts_along_batch(dy, sizes),
                                         parts_along_batch(x, sizes))], axis=0)
    dw, db = split.batch_norm_backward_params(*sums, count, save_invstd)
    assert dw.dtype == db.dtype == dtype
    r_dx, r_dw, r_db = backward_truth(dy, x, w, layout, invstd=save_invstd)
    assert_close(dx, r_dx)
    assert_close(dw, r_dw)
    assert_close(db, r_db)


@pytest.mark.parametrize("layout,shape", [("NCHW", (6, 5, 9, 11)), ("NHWC", (7, 4, 6, 5))])
def test_split_matches_fused_kernels_on_one_process(layout, shape, rng):
    x = make_x(rng, shape, np.float64, layout)
    dy = rng.standard_normal(shape)
    w, b = make_params(rng, n_channels(shape, layout), np.float64)
    y, mean, invstd = cbn.batch_norm_train(x, w, b, layout=layout, eps=EPS, activation="relu")
    s_y, count, s_mean, s_m2, s_invstd = split_forward(x, w, b, layout, [shape[0]], "relu")
    np.testing.assert_allclose(s_y, y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(s_mean, mean, rtol=1e-14, atol=1e-14)
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, w, layout=layout, y=y,
                                         activation="relu")
    sums = split.batch_norm_backward_reduce(dy, x, mean, y=y, activation="relu", layout=layout)
    s_dx = split.batch_norm_backward_dx(dy, x, mean, invstd, *sums, count, w, y=y,
                                        activation="relu", layout=layout)
    s_dw, s_db = split.batch_norm_backward_params(*sums, count, invstd)
    # the same reductions and formulas as the fused kernel: the same bits
    assert_identical(s_dx, dx)
    assert_identical(s_dw, dw)
    assert_identical(s_db, db)


def test_combine_stats_is_exact_for_uneven_parts(rng):
    data = [rng.normal(1e6, 1.0, (n, 3)) for n in (1, 7, 100, 2)]
    counts = [len(d) for d in data]
    count, mean, m2 = split.combine_stats(counts, [d.mean(0) for d in data],
                                          [((d - d.mean(0)) ** 2).sum(0) for d in data])
    whole = np.concatenate(data)
    assert count == len(whole)
    np.testing.assert_allclose(mean, whole.mean(0), rtol=1e-15)
    np.testing.assert_allclose(m2, ((whole - whole.mean(0)) ** 2).sum(0), rtol=1e-9)


def test_empty_part_is_neutral():
    x = np.arange(12.0).reshape(4, 3)
    count, mean, m2 = split.batch_stats(x[:0], layout="NHWC")
    assert count == 0 and (mean == 0).all() and (m2 == 0).all()


def test_split_bit_identical_across_threads(rng):
    x = make_x(rng, (3, 2, 30001), np.float32, "NCHW")
    a = split.batch_stats(x, n_threads=1)
    for n in (2, 3):
        b = split.batch_stats(x, n_threads=n)
        assert a[0] == b[0] and a[1].tobytes() == b[1].tobytes() and a[2].tobytes() == b[2].tobytes()


def test_split_errors():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="count"):
        split.batch_norm_backward_dx(x, x, np.zeros(3), np.ones(3), np.zeros(3), np.zeros(3),
                                     np.zeros(3), 0)
    with pytest.raises(ValueError, match="sum_xmu"):
        split.batch_norm_backward_dx(x, x, np.zeros(3), np.ones(3), np.zeros(3), np.zeros(3),
                                     np.zeros(2), 4)
    with pytest.raises(ValueError, match="count"):
        split.batch_norm_backward_params(np.zeros(3), np.zeros(3), np.zeros(3), 0, np.ones(3))
    with pytest.raises(ValueError, match="shape"):
        split.combine_stats([1, 2], np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="mean"):
        split.batch_norm_normalize(x, np.zeros(2), np.ones(3))
    out = np.full_like(x, 5.0)
    with pytest.raises(ValueError, match="needs y"):
        split.batch_norm_backward_dx(x, x, np.zeros(3), np.ones(3), np.zeros(3), np.zeros(3),
                                     np.zeros(3), 4, activation="relu", out=out)
    assert (out == 5.0).all()
