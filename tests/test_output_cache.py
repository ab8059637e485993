"""The memory of large new outputs is kept when they go and handed to the next output of the
same size (cbn._output_cache, cbn.set_output_cache): reused only when no array uses it, never
for a different size, within the limit, freed by release_memory(), and every value of a reused
output is written anew."""
import gc

import numpy as np
import pytest

import cbn
from cbn import _alloc, _core, _output_cache

# (32, 64, 16, 16) float32: 2 MiB, above APART_MIN_BYTES; (2, 100_000): per-channel outputs of
# 400 KB, also above it
SHAPE = (32, 64, 16, 16)
WIDE = (2, 100_000)


@pytest.fixture(autouse=True)
def empty_cache():
    """Each test starts with nothing held and the default limit, and leaves it so (outputs
    of earlier tests kept in reference cycles are collected first, not in the middle)."""
    gc.collect()
    cbn.release_memory()
    previous = cbn.set_output_cache(_output_cache.DEFAULT_LIMIT)
    yield
    gc.collect()
    cbn.set_output_cache(previous)
    cbn.release_memory()


def held():
    blocks, nbytes, _ = _output_cache.state()
    return blocks, nbytes


def block_of(a):
    """(address, bytes) of the block under a new output: the last ndarray of its base chain."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return _core.address(a), a.nbytes


def infer(x, **kw):
    C = x.shape[1]
    return cbn.batch_norm_infer(x, np.zeros(C, x.dtype), np.ones(C, x.dtype), **kw)


def test_a_gone_output_is_reused_by_the_next_of_its_size_and_fully_rewritten(rng):
    x1 = rng.standard_normal(SHAPE).astype(np.float32)
    x2 = rng.standard_normal(SHAPE).astype(np.float32) * 3 + 1
    y1 = infer(x1)
    block = block_of(y1)
    assert block[1] == x1.nbytes + _alloc.PAGE
    del y1
    assert held() == (1, x1.nbytes + _alloc.PAGE)
    y2 = infer(x2)
    assert held() == (0, 0)
    assert block_of(y2) == block       # placed apart from x2 within the same block
    expected = np.empty_like(x2)
    infer(x2, out=expected)
    np.testing.assert_array_equal(y2, expected)


def test_memory_in_use_is_never_handed_out(rng):
    x = rng.standard_normal(SHAPE).astype(np.float32)
    outputs = [cbn.batch_norm_train(x)[0] for _ in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.shares_memory(outputs[i], outputs[j])
    assert held() == (0, 0)
    y_ref = outputs[0].copy()
    del outputs[1:]
    assert held()[0] == 3
    again = [cbn.batch_norm_train(x)[0] for _ in range(3)]
    assert held() == (0, 0)
    for y in again:
        assert not np.shares_memory(y, outputs[0])
        np.testing.assert_array_equal(y, y_ref)


def test_per_channel_outputs_and_gradients_reuse_memory_too(rng):
    x = rng.standard_normal(WIDE).astype(np.float32)
    dy = rng.standard_normal(WIDE).astype(np.float32)
    y, mean, invstd = cbn.batch_norm_train(x)
    expected = cbn.batch_norm_backward(dy, x, mean, invstd)
    blocks = sorted(block_of(a) for a in expected)
    del expected
    assert held() == (3, sum(n for _, n in blocks))
    got = cbn.batch_norm_backward(dy, x, mean, invstd)
    assert held() == (0, 0)
    assert sorted(block_of(a) for a in got) == blocks
    dx, dweight, dbias = got
    ref_dx = np.empty_like(dx)
    _, ref_dw, ref_db = cbn.batch_norm_backward(dy, x, mean, invstd, out=ref_dx)
    np.testing.assert_array_equal(dx, ref_dx)
    np.testing.assert_array_equal(dweight, ref_dw)
    np.testing.assert_array_equal(dbias, ref_db)


def test_a_block_is_reused_only_for_its_own_size(rng):
    small = rng.standard_normal((16, 64, 16, 16)).astype(np.float32)
    del_me = infer(rng.standard_normal(SHAPE).astype(np.float32))
    del del_me
    blocks, nbytes = held()
    assert blocks == 1
    y = infer(small)                                   # a different size: a new block
    assert held() == (blocks, nbytes)
    del y
    assert held()[0] == 2


def test_small_outputs_are_not_kept(rng):
    x = rng.standard_normal((4, 8, 5, 5)).astype(np.float32)
    y, mean, invstd = cbn.batch_norm_train(x)
    del y, mean, invstd
    assert held() == (0, 0)


def test_the_oldest_blocks_go_first_and_the_limits_hold(rng):
    # nine outputs of different sizes, dropped oldest first: the first one goes (8 blocks)
    sizes = [(8 + i, 64, 16, 16) for i in range(9)]
    outputs = [infer(np.ones(s, np.float32)) for s in sizes]
    nbytes = [int(np.prod(s)) * 4 + _alloc.PAGE for s in sizes]
    for i in range(9):
        outputs[i] = None
    assert held() == (8, sum(nbytes[1:]))
    # a limit of three of the largest: the oldest go until the rest fit
    limit = 3 * nbytes[-1]
    cbn.set_output_cache(limit)
    assert held() == (3, sum(nbytes[6:]))
    # blocks freed under a limit of two and a half: the third pushes the oldest out
    cbn.release_memory()
    cbn.set_output_cache(2 * nbytes[-1] + nbytes[-1] // 2)
    outputs = [infer(np.ones(sizes[-1], np.float32)) for _ in range(3)]
    outputs.clear()
    assert held() == (2, 2 * nbytes[-1])
    # a block larger than the whole limit is freed, not kept
    cbn.set_output_cache(nbytes[0] - 1)
    big = infer(np.ones(sizes[-1], np.float32))
    del big
    assert held() == (0, 0)


def test_a_limit_of_zero_keeps_nothing_and_returns_the_previous(rng):
    assert cbn.set_output_cache(0) == _output_cache.DEFAULT_LIMIT
    y = infer(rng.standard_normal(SHAPE).astype(np.float32))
    del y
    assert held() == (0, 0)
    assert cbn.set_output_cache(1 << 20) == 0


def test_release_memory_frees_what_is_kept(rng):
    y = infer(rng.standard_normal(SHAPE).astype(np.float32))
    del y
    assert held()[0] == 1
    cbn.release_memory()
    assert held() == (0, 0)


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (2 ** 64, ValueError), ("1", TypeError),
                                        (True, TypeError), (1.5, TypeError), (None, TypeError)])
def test_set_output_cache_refuses_what_is_not_a_byte_count(bad, error):
    before = _output_cache.state()
    with pytest.raises(error, match="max_bytes"):
        cbn.set_output_cache(bad)
    assert _output_cache.state() == before


@pytest.mark.parametrize("keep", [lambda y: y[3:5],
                                  lambda y: np.frombuffer(memoryview(y.reshape(-1)), np.uint8),
                                  memoryview])
def test_a_block_stays_in_use_while_any_view_of_it_lives(rng, keep):
    x = rng.standard_normal(SHAPE).astype(np.float32)
    y = infer(x)
    block = block_of(y)
    keeper = keep(y)
    del y
    assert held() == (0, 0)
    z = infer(x)                                  # a new block: the first is still in use
    assert block_of(z) != block
    del z                                         # z's block is now held
    cbn.release_memory()
    del keeper
    assert held() == (1, block[1])               # the view gone: the first block held


def test_a_block_of_exactly_the_limit_is_kept_and_one_byte_more_is_not():
    n = 1 << 20
    cbn.set_output_cache(n)
    a = _output_cache.empty_bytes(n)
    del a
    assert held() == (1, n)
    cbn.release_memory()
    cbn.set_output_cache(n - 1)
    a = _output_cache.empty_bytes(n)
    del a
    assert held() == (0, 0)


def test_zero_bytes_is_refused():
    with pytest.raises(ValueError):
        _output_cache.empty_bytes(0)
    assert held() == (0, 0)
