"""What kinds of arguments cbn takes: ndarray subclasses that are plain memory (np.memmap) as
buffers it writes, no masked arrays (their mask would be ignored), real numbers (not str or
bool) for eps/momentum/count, a bool for unbiased_running_var, finite eps. Refused arguments
raise before anything is written."""
import inspect
import math

import numpy as np
import pytest

import cbn
from cbn import split

N, C, H, W = 3, 4, 5, 5


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (N, C, H, W)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    return x, dy


def _memmap(tmp_path, name, a):
    m = np.memmap(tmp_path / name, dtype=a.dtype, mode="w+", shape=a.shape)
    m[...] = a
    return m


def test_memmap_buffers_are_written_and_returned(tmp_path, data):
    x, dy = data
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y, m, s = cbn.batch_norm_train(x, running_mean=rm, running_var=rv)
    out = _memmap(tmp_path, "y", np.zeros_like(x))
    mrm, mrv = _memmap(tmp_path, "rm", np.zeros(C, np.float32)), _memmap(tmp_path, "rv", np.ones(C, np.float32))
    got = cbn.batch_norm_train(x, running_mean=mrm, running_var=mrv, out=out)
    assert got[0] is out and isinstance(out, np.memmap)
    np.testing.assert_array_equal(out, y)
    np.testing.assert_array_equal(mrm, rm)
    np.testing.assert_array_equal(mrv, rv)

    dx = cbn.batch_norm_backward(dy, x, m, s)[0]
    out = _memmap(tmp_path, "dx", np.zeros_like(x))
    assert cbn.batch_norm_backward(dy, x, m, s, out=out)[0] is out
    np.testing.assert_array_equal(out, dx)

    yi = cbn.batch_norm_infer(x, rm, rv)
    out = _memmap(tmp_path, "yi", np.zeros_like(x))
    assert cbn.batch_norm_infer(x, rm, rv, out=out) is out
    np.testing.assert_array_equal(out, yi)

    mean, inv = m.astype(np.float64), s.astype(np.float64)
    yn = split.batch_norm_normalize(x, mean, inv)
    out = _memmap(tmp_path, "yn", np.zeros_like(x))
    assert split.batch_norm_normalize(x, mean, inv, out=out) is out
    np.testing.assert_array_equal(out, yn)

    sums = split.batch_norm_backward_reduce(dy, x, m)
    dxs = split.batch_norm_backward_dx(dy, x, m, s, *sums, N * H * W)
    out = _memmap(tmp_path, "dxs", np.zeros_like(x))
    assert split.batch_norm_backward_dx(dy, x, m, s, *sums, N * H * W, out=out) is out
    np.testing.assert_array_equal(out, dxs)


def test_memmap_inputs_are_read(tmp_path, data):
    x, _ = data
    mx = _memmap(tmp_path, "x", x)
    np.testing.assert_array_equal(cbn.batch_norm_train(mx)[0], cbn.batch_norm_train(x)[0])


def _masked(a):
    return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))


def _calls(x, dy):
    """name -> (function, kwargs) with every array argument valid; the tests swap one in."""
    z, o = np.zeros(C, np.float32), np.ones(C, np.float32)
    z64, o64 = np.zeros(C), np.ones(C)
    return {
        "train": (cbn.batch_norm_train, dict(x=x, weight=o, bias=z, running_mean=z.copy(),
                                             running_var=o.copy(), out=np.empty_like(x))),
        "backward": (cbn.batch_norm_backward, dict(dy=dy, x=x, save_mean=z, save_invstd=o,
                                                   weight=o, out=np.empty_like(x))),
        "infer": (cbn.batch_norm_infer, dict(x=x, running_mean=z, running_var=o, weight=o,
                                             bias=z, out=np.empty_like(x))),
        "fold_scale_shift": (cbn.fold_scale_shift, dict(running_mean=z, running_var=o, weight=o,
                                                        bias=z)),
        "batch_stats": (split.batch_stats, dict(x=x)),
        "combine_stats": (split.combine_stats, dict(counts=np.ones(2), means=np.zeros((2, C)),
                                                    m2s=np.ones((2, C)))),
        "normalize": (split.batch_norm_normalize, dict(x=x, mean=z64, invstd=o64, weight=o,
                                                       bias=z, out=np.empty_like(x))),
        "backward_reduce": (split.batch_norm_backward_reduce, dict(dy=dy, x=x, mean=z)),
        "backward_dx": (split.batch_norm_backward_dx, dict(
            dy=dy, x=x, mean=z, invstd=o, sum_dy=z64, sum_dy_xmu=z64, sum_xmu=z64,
            count=float(N * H * W), weight=o, out=np.empty_like(x))),
        "backward_params": (split.batch_norm_backward_params, dict(
            sum_dy=z64, sum_dy_xmu=z64, sum_xmu=z64, count=float(N * H * W), invstd=o)),
    }


def _masked_cases():
    x = np.ones((N, C, H, W), np.float32)
    for name, (f, kw) in _calls(x, x).items():
        for arg, value in kw.items():
            if isinstance(value, np.ndarray):
                yield pytest.param(name, arg, id=f"{name}-{arg}")


@pytest.mark.parametrize("name,arg", list(_masked_cases()))
def test_masked_arrays_are_refused(name, arg, data):
    f, kw = _calls(*data)[name]
    kw[arg] = _masked(kw[arg])
    before = {k: np.array(v) for k, v in kw.items() if isinstance(v, np.ndarray)}
    with pytest.raises(TypeError, match=f"{arg} must not be a masked array"):
        f(**kw)
    for k, v in before.items():
        np.testing.assert_array_equal(np.asarray(kw[k]), v, err_msg=f"{k} was written")


def test_layer_refuses_masked_input(data):
    bn = cbn.BatchNorm(C)
    with pytest.raises(TypeError, match="masked"):
        bn(_masked(data[0]))
    assert bn.num_batches_tracked == 0


# (argument, bad value, exception) for the scalar arguments
BAD_SCALARS = [
    ("eps", "1e-5", TypeError), ("eps", True, TypeError), ("eps", None, TypeError),
    ("eps", np.array([1e-5]), TypeError), ("eps", math.inf, ValueError),
    ("eps", math.nan, ValueError), ("eps", -1e-5, ValueError),
    ("momentum", "0.1", TypeError), ("momentum", True, TypeError), ("momentum", np.True_, TypeError),
    ("momentum", 1.5, ValueError), ("momentum", math.nan, ValueError),
    ("unbiased_running_var", "no", TypeError), ("unbiased_running_var", 1, TypeError),
    ("unbiased_running_var", None, TypeError),
    ("n_threads", True, TypeError), ("n_threads", "2", TypeError), ("n_threads", 2.0, TypeError),
    ("n_threads", 0, ValueError),
    ("count", "75", TypeError), ("count", True, TypeError), ("count", math.nan, ValueError),
]


def _scalar_cases():
    x = np.ones((N, C, H, W), np.float32)
    calls = _calls(x, x)
    for arg, value, exc in BAD_SCALARS:
        for name, (f, kw) in calls.items():
            if arg in inspect.signature(f).parameters:
                yield pytest.param(name, arg, value, exc, id=f"{name}-{arg}-{value!r}")


@pytest.mark.parametrize("name,arg,value,exc", list(_scalar_cases()))
def test_loose_scalars_are_refused(name, arg, value, exc, data):
    f, kw = _calls(*data)[name]
    kw[arg] = value
    before = {k: v.copy() for k, v in kw.items() if isinstance(v, np.ndarray)}
    with pytest.raises(exc, match=arg):
        f(**kw)
    for k, v in before.items():
        np.testing.assert_array_equal(kw[k], v, err_msg=f"{k} was written")


@pytest.mark.parametrize("eps,momentum,unbiased", [
    (np.float32(1e-3), np.float64(0.25), np.True_), (0, 1, False), (np.int64(0), 0, np.False_)])
def test_numpy_and_integer_scalars_are_numbers(data, eps, momentum, unbiased):
    x, _ = data
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    got = cbn.batch_norm_train(x, running_mean=rm, running_var=rv, eps=eps, momentum=momentum,
                               unbiased_running_var=unbiased)
    rm2, rv2 = np.zeros(C, np.float32), np.ones(C, np.float32)
    want = cbn.batch_norm_train(x, running_mean=rm2, running_var=rv2, eps=float(eps),
                                momentum=float(momentum), unbiased_running_var=bool(unbiased))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(rv, rv2)


@pytest.mark.parametrize("kwargs,exc", [
    (dict(n_threads=0), ValueError), (dict(n_threads=True), TypeError),
    (dict(n_threads="all"), TypeError), (dict(eps="1e-5"), TypeError),
    (dict(momentum=True), TypeError), (dict(eps=math.inf), ValueError)])
def test_layer_constructor_checks_its_scalars(kwargs, exc):
    with pytest.raises(exc, match=next(iter(kwargs))):
        cbn.BatchNorm(C, **kwargs)


@pytest.mark.parametrize("which", ["W", "running_mean", "running_var", "weight", "bias"])
def test_fold_linear_refuses_masked_arrays(which):
    arrays = {"W": np.ones((C, 3)), "running_mean": np.zeros(C), "running_var": np.ones(C),
              "weight": np.ones(C), "bias": np.zeros(C)}
    arrays[which] = _masked(arrays[which])
    stats = {k: arrays[k] for k in ("running_mean", "running_var", "weight", "bias")}
    with pytest.raises(TypeError, match=f"{which} must not be a masked array"):
        cbn.fold_linear(arrays["W"], None, stats)
