"""cbn.split.combine_stats merges parts in the order given (Chan et al.'s pairwise update), so
every process that combines the same gathered parts gets the same bits. Checked byte for byte
against that left fold written here in Python, not only to a tolerance: merging in another order
gives other last bits."""
import numpy as np
import pytest

from cbn import split

COUNTS = [1, 7, 100, 2, 33]
C = 6


def _parts(rng, counts, offset=1e6):
    """Per-part (count, mean, M2) of data at `offset` with unit spread (C channels each)."""
    means, m2s = [], []
    for n in counts:
        x = offset + rng.uniform(-2, 2, C) + rng.standard_normal((n, C))
        mean = x.mean(axis=0) if n else np.zeros(C)
        means.append(mean)
        m2s.append(((x - mean) ** 2).sum(axis=0) if n else np.zeros(C))
    return np.array(counts, np.float64), np.array(means), np.array(m2s)


def _chan_left_fold(counts, means, m2s):
    """The documented combination: merge part p into the running (n, mean, M2), p = 0, 1, ...,
    skipping empty parts; written with cbn_combine_stats's operations in their order."""
    n, mean, m2 = 0.0, np.zeros(means.shape[1]), np.zeros(means.shape[1])
    for nb, mb, qb in zip(counts, means, m2s):
        if nb == 0.0:
            continue
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + (qb + delta * delta * (n * nb / total))
        n = total
    return n, mean, m2


def _assert_same_bits(got, want):
    (n1, mean1, m21), (n2, mean2, m22) = got, want
    assert n1 == n2
    assert mean1.tobytes() == mean2.tobytes(), (mean1 - mean2)
    assert m21.tobytes() == m22.tobytes(), (m21 - m22)


@pytest.mark.parametrize("counts", [COUNTS, [0] + COUNTS[:2] + [0] + COUNTS[2:]],
                         ids=["five-parts", "with-empty-parts"])
def test_combine_is_the_left_fold_bit_for_bit(rng, counts):
    parts = _parts(rng, counts)
    got = split.combine_stats(*parts)
    _assert_same_bits(got, _chan_left_fold(*parts))
    assert got[0] == sum(counts)


def test_order_matters_so_the_check_above_can_fail(rng):
    """The same parts reversed give different bits here: the test above pins the order."""
    counts, means, m2s = _parts(rng, COUNTS)
    forward = split.combine_stats(counts, means, m2s)
    backward = split.combine_stats(counts[::-1], means[::-1], m2s[::-1])
    assert forward[1].tobytes() != backward[1].tobytes() or \
        forward[2].tobytes() != backward[2].tobytes()
    np.testing.assert_allclose(backward[1], forward[1], rtol=1e-15)   # equal to rounding


def test_combining_the_prefix_first_gives_the_same_bits(rng):
    """combine(parts) == combine([combine(parts[:-1]), parts[-1]]): the fold's state after
    P - 1 parts is a part itself."""
    counts, means, m2s = _parts(rng, COUNTS)
    whole = split.combine_stats(counts, means, m2s)
    n0, mean0, m20 = split.combine_stats(counts[:-1], means[:-1], m2s[:-1])
    two = split.combine_stats([n0, counts[-1]], np.stack([mean0, means[-1]]),
                              np.stack([m20, m2s[-1]]))
    _assert_same_bits(two, whole)


def test_one_part_is_returned_unchanged(rng):
    counts, means, m2s = _parts(rng, [37])
    n, mean, m2 = split.combine_stats(counts, means, m2s)
    assert n == 37
    assert mean.tobytes() == means[0].tobytes() and m2.tobytes() == m2s[0].tobytes()


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="counts"):
        split.combine_stats([3, -1], np.zeros((2, C)), np.zeros((2, C)))
