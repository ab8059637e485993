"""Buffers cbn writes must not share memory with what it reads or with each other.

A table generated from the argument lists of the public functions: for every buffer a function
writes and every other array argument, the two are made to share memory (same start, and an
overlap of only the written buffer's last 8 bytes). The call raises ValueError naming both
and writes nothing; the overlaps that are safe by construction (out with x, dy or y: the kernels
work in place, and a partial overlap is copied apart) give the result of separate arrays.
"""
import inspect

import numpy as np
import pytest

import cbn
from cbn import split

PUBLIC = {f.__name__: f for f in (
    cbn.batch_norm_train, cbn.batch_norm_backward, cbn.batch_norm_infer,
    cbn.batch_norm_infer_backward, cbn.fold_scale_shift,
    cbn.fold_linear, cbn.fold_conv, split.batch_stats, split.combine_stats,
    split.batch_norm_normalize, split.batch_norm_backward_reduce, split.batch_norm_backward_dx)}

# Buffers each function writes in place (besides the ones it allocates and returns).
WRITTEN = {"batch_norm_train": ("out", "running_mean", "running_var")}
# Safe by construction: in place, or copied apart by cbn.
ALLOWED = {("out", "x"), ("out", "dy"), ("out", "y"), ("out", "residual")}

N, C, H, W = 2, 4, 3, 3
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
LARGE = {"x", "dy", "y", "out", "residual"}           # (N, C, H, W); the others are (C,)
# The dtype each array argument has in the kernel call (other dtypes would be cast, i.e.
# copied, and then could not alias anything).
F64_ARGS = {"sum_dy", "sum_dy_xmu", "sum_xmu"}
F64_ARGS_OF = {"batch_norm_normalize": {"mean", "invstd"}}


def written(name):
    params = inspect.signature(PUBLIC[name]).parameters
    return WRITTEN.get(name, ("out",) if "out" in params else ())


def array_args(name):
    """(argument name, shape, dtype) of every array argument of the function."""
    out = []
    for arg, param in inspect.signature(PUBLIC[name]).parameters.items():
        if arg in ("layout", "activation", "n_threads", "eps", "momentum", "count",
                   "unbiased_running_var"):
            continue
        if param.default is False:                    # a flag (backward's residual=)
            continue
        dtype = F64 if arg in F64_ARGS or arg in F64_ARGS_OF.get(name, ()) else F32
        out.append((arg, (N, C, H, W) if arg in LARGE else (C,), dtype))
    return out


def valid_kwargs(name, rng):
    kw = {}
    for arg, shape, dtype in array_args(name):
        if arg != "out":
            kw[arg] = (rng.random(shape) + 0.5).astype(dtype)
    params = inspect.signature(PUBLIC[name]).parameters
    if "y" in params:
        kw["activation"] = "relu"                     # y is read only with a fused ReLU
    if "count" in params:
        kw["count"] = N * H * W
    return kw


def cases():
    for name in PUBLIC:
        args = {a: (shape, dtype) for a, shape, dtype in array_args(name)}
        for w in written(name):
            for r in args:
                if r == w:
                    continue
                for where in ("start", "end"):
                    yield pytest.param(name, w, r, where, id=f"{name}-{w}-{r}-{where}")


def test_the_table_covers_every_written_buffer():
    """Every public function that takes an out= (or running statistics) is in the table."""
    ids = {(c.values[0], c.values[1]) for c in cases()}
    for name, f in PUBLIC.items():
        params = inspect.signature(f).parameters
        for buf in ("out", "running_mean", "running_var"):
            if buf in params and (buf == "out" or name == "batch_norm_train"):
                assert (name, buf) in ids


def _shared(w_shape, w_dtype, r_shape, r_dtype, where, rng):
    """Views w and r of one buffer: r starting where w starts, or at w's last 8 bytes."""
    w_bytes = int(np.prod(w_shape)) * w_dtype.itemsize
    r_bytes = int(np.prod(r_shape)) * r_dtype.itemsize
    offset = 0 if where == "start" else w_bytes - 8
    base = np.empty(max(w_bytes, offset + r_bytes) // 4, np.float32)
    base[:] = rng.random(base.size) + 0.5
    raw = base.view(np.uint8)
    w = raw[:w_bytes].view(w_dtype).reshape(w_shape)
    r = raw[offset:offset + r_bytes].view(r_dtype).reshape(r_shape)
    return base, w, r


@pytest.mark.parametrize("name,w,r,where", list(cases()))
def test_written_buffer_aliasing_another_argument(name, w, r, where):
    rng = np.random.default_rng(0)
    f = PUBLIC[name]
    args = {a: (shape, dtype) for a, shape, dtype in array_args(name)}
    kw = valid_kwargs(name, rng)
    base, kw[w], kw[r] = _shared(*args[w], *args[r], where, rng)
    for buf in written(name):                          # the other written buffers: separate
        if buf not in (w, r):
            kw[buf] = np.full(*args[buf][:1], 7.0, args[buf][1])
    if (w, r) in ALLOWED:
        expected = f(**{k: v.copy() if isinstance(v, np.ndarray) else v
                        for k, v in kw.items() if k != w})
        got = f(**kw)
        got_y = got[0] if isinstance(got, tuple) else got
        want_y = expected[0] if isinstance(expected, tuple) else expected
        assert got_y is kw[w]
        np.testing.assert_array_equal(got_y, want_y)
        return
    snapshot = {k: v.copy() for k, v in kw.items() if isinstance(v, np.ndarray)}
    base_before = base.copy()
    with pytest.raises(ValueError) as info:
        f(**kw)
    message = str(info.value)
    assert w in message and r in message, message
    np.testing.assert_array_equal(base, base_before)   # nothing written
    for k, v in snapshot.items():
        np.testing.assert_array_equal(kw[k], v, err_msg=f"{k} was written")


def test_layer_buffers_aliasing_its_input():
    """cbn.BatchNorm passes its running statistics as written buffers: an input that is a view
    of them is refused, and the layer is unchanged."""
    bn = cbn.BatchNorm(C)
    x = np.random.default_rng(1).random((N, C, H, W)).astype(np.float32)
    bn.running_mean = x.reshape(-1)[:C]
    before = x.copy()
    with pytest.raises(ValueError, match="running_mean must not share memory with x"):
        bn(x)
    np.testing.assert_array_equal(x, before)
    assert bn.num_batches_tracked == 0


def test_same_array_as_both_running_statistics():
    x = np.random.default_rng(2).random((N, C, H, W))
    r = np.ones(C)
    with pytest.raises(ValueError, match="running_mean and running_var must not share memory"):
        cbn.batch_norm_train(x, running_mean=r, running_var=r)
    np.testing.assert_array_equal(r, np.ones(C))


def test_disjoint_views_of_one_buffer_are_fine():
    """Neighbouring, non-overlapping views of one array (a common way to keep all state in one
    allocation) are accepted and give the result of separate arrays."""
    x = np.random.default_rng(3).random((N, C, H, W))
    state = np.zeros(2 * C)
    state[C:] = 1.0
    y = cbn.batch_norm_train(x, running_mean=state[:C], running_var=state[C:])[0]
    rm, rv = np.zeros(C), np.ones(C)
    y_sep = cbn.batch_norm_train(x, running_mean=rm, running_var=rv)[0]
    np.testing.assert_array_equal(y, y_sep)
    np.testing.assert_array_equal(state, np.concatenate([rm, rv]))
