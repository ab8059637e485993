"""cbn.BatchNorm after a forward that raises: running statistics, num_batches_tracked, weights
and the batch saved for backward are exactly as before the call, so the next good batch is
treated as if the failed one never happened (with momentum=None a miscounted
num_batches_tracked would move the running mean by the wrong fraction)."""
import numpy as np
import pytest

import cbn
from cbn import reference as ref
from conftest import DTYPES, assert_close, f64

C = 3


def _bad_inputs(layout, dtype):
    """(what, x, expected exception) for calls that must fail."""
    other = np.float64 if np.dtype(dtype) == np.float32 else np.float32
    good = (4, C, 5) if layout == "NCHW" else (4, 5, C)
    wrong_c = (4, C + 1, 5) if layout == "NCHW" else (4, 5, C + 1)
    one_value = (1, C, 1) if layout == "NCHW" else (1, 1, C)   # M == 1: training needs M > 1
    return [
        ("dtype", np.ones(good, other), TypeError),
        ("int", np.ones(good, np.int32), TypeError),
        ("channels", np.ones(wrong_c, dtype), ValueError),
        ("ndim", np.ones(C, dtype), ValueError),
        ("M==1", np.ones(one_value, dtype), ValueError),
        ("M==1, 2-D", np.ones((1, C), dtype), ValueError),
    ]


def _state(bn):
    """Everything a failed forward must leave alone, as bytes."""
    s = {k: np.asarray(v).tobytes() for k, v in bn.state_dict().items()}
    s["num_batches_tracked"] = bn.num_batches_tracked
    return s


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_failed_forward_changes_nothing(rng, layout, momentum, dtype):
    bn = cbn.BatchNorm(C, momentum=momentum, layout=layout, dtype=dtype)
    bn.weight[...] = rng.uniform(0.5, 2.0, C)
    bn.bias[...] = rng.standard_normal(C)
    shape = (6, C, 4) if layout == "NCHW" else (6, 4, C)
    x1 = (3.0 + rng.standard_normal(shape)).astype(dtype)
    bn(x1)
    dy = rng.standard_normal(shape).astype(dtype)
    dx_before = bn.backward(dy)
    before = _state(bn)

    for what, bad, exc in _bad_inputs(layout, dtype):
        for mode in ("train", "eval"):
            if what.startswith("M==1") and mode == "eval":
                continue                     # one value per channel is fine in eval mode
            bn.train(mode == "train")
            with pytest.raises(exc):
                bn(bad)
            assert _state(bn) == before, f"{what} ({mode}) changed the layer"
    bn.train()
    # the batch saved for backward is still the last good one
    np.testing.assert_array_equal(bn.backward(dy), dx_before)

    # the next good batch: as if the failed calls never happened (second batch: factor 1/2 for
    # momentum=None)
    x2 = (-1.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    bn(x2)
    assert bn.num_batches_tracked == 2
    rm, rv = np.zeros(C), np.ones(C)
    for step, x in enumerate((x1, x2), 1):
        m = 1.0 / step if momentum is None else momentum
        _, _, _, rm, rv = ref.batch_norm_train(f64(x), f64(bn.weight), f64(bn.bias),
                                               running_mean=rm, running_var=rv, momentum=m,
                                               layout=layout)
    assert_close(bn.running_mean, rm)
    assert_close(bn.running_var, rv)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
def test_failed_first_forward_leaves_a_fresh_layer(rng, momentum):
    """A failure on the very first call: the layer is still fresh (zeros, ones, 0 batches)."""
    bn = cbn.BatchNorm(C, momentum=momentum)
    fresh = _state(bn)
    with pytest.raises(ValueError):
        bn(np.ones((1, C), np.float32))
    assert _state(bn) == fresh
    with pytest.raises(RuntimeError):        # nothing saved for backward either
        bn.backward(np.ones((1, C), np.float32))
    x = rng.standard_normal((8, C)).astype(np.float32)
    bn(x)
    _, _, _, rm, rv = ref.batch_norm_train(f64(x), running_mean=np.zeros(C),
                                           running_var=np.ones(C),
                                           momentum=1.0 if momentum is None else momentum)
    assert_close(bn.running_mean, rm)
    assert_close(bn.running_var, rv)
