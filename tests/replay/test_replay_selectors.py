"""The selectors and their sum-tree, against brute force: a cumsum sampler fed the same uniform
draws, sequential assignment for batches with repeated slots, a fresh sum after many updates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.replay.selectors import (PrioritizedSelector, SumTree, UniformSelector, last_writes,
                                       make_selector)

CAPACITIES = [1, 2, 3, 7, 1000, 4097]


def tree_of(weights: np.ndarray) -> SumTree:
    tree = SumTree(len(weights))
    tree.set(np.arange(len(weights)), weights)
    return tree


def brute_force(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The sampler the buffer had before the tree: searchsorted on the cumulative sum."""
    return np.searchsorted(np.cumsum(weights), u, side="right")


def draws(total: float, rng: np.random.Generator, count: int) -> np.ndarray:
    return np.minimum(rng.random(count) * total, np.nextafter(total, 0.0))


# --- the sum-tree --------------------------------------------------------------------------------
@pytest.mark.parametrize("capacity", CAPACITIES)
def test_find_gives_the_brute_force_cumsum_index_for_the_same_draws(capacity):
    rng = np.random.default_rng(capacity)
    # multiples of 1/8 below 2^20: every partial sum is exact in float64, in any order, so the
    # two samplers must agree on every draw, boundaries included
    weights = rng.integers(0, 64, capacity) / 8.0
    weights[rng.random(capacity) < 0.3] = 0.0
    weights[-1] = max(weights[-1], 0.125)
    tree = tree_of(weights)
    assert tree.total == weights.sum()
    u = draws(tree.total, rng, 20_000)
    boundaries = np.cumsum(weights)[:-1]  # draws exactly on an interval's edge
    u = np.concatenate([u, [0.0, np.nextafter(tree.total, 0.0)], boundaries[boundaries < tree.total]])
    np.testing.assert_array_equal(tree.find(u), brute_force(weights, u))


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_find_agrees_with_brute_force_on_real_weights(capacity):
    rng = np.random.default_rng(100 + capacity)
    weights = rng.exponential(size=capacity) ** 3
    tree = tree_of(weights)
    u = draws(tree.total, rng, 20_000)
    np.testing.assert_array_equal(tree.find(u), brute_force(weights, u))


def test_zero_weights_are_never_found():
    rng = np.random.default_rng(0)
    weights = np.zeros(5000)
    live = rng.choice(5000, 40, replace=False)
    weights[live] = rng.choice([1e-300, 1e-12, 1.0, 1e6], 40)
    tree = tree_of(weights)
    total = tree.total
    # the draws most exposed to rounding: the ends, and each positive leaf's edges
    edges = np.cumsum(weights)[np.sort(live)]
    u = np.concatenate([draws(total, rng, 50_000), [0.0, np.nextafter(total, 0.0)],
                        np.minimum(edges, np.nextafter(total, 0.0)),
                        np.nextafter(np.minimum(edges, total), 0.0)])
    found = tree.find(u)
    assert np.all(weights[found] > 0)
    assert set(found.tolist()) <= set(live.tolist())


def test_a_draw_that_rounding_sends_into_an_empty_subtree_gets_the_last_positive_leaf():
    # leaves (a, b | c, 0): u = the double below the total is >= a + b, and u - (a + b) rounds
    # up to c itself, so the plain walk goes right at c's parent onto the leaf of weight 0
    a, b, c = 0.06691378807383715, 0.048162737606194855, 0.12833537225835145
    tree = tree_of(np.array([a, b, c, 0.0]))
    u = np.array([np.nextafter(tree.total, 0.0)])
    assert u[0] - (a + b) >= c
    assert tree._descend(u, guarded=False).tolist() == [3]  # what the guard is for
    assert tree.find(u).tolist() == [2] == brute_force(np.array([a, b, c, 0.0]), u).tolist()


def test_a_batch_with_repeated_indices_keeps_the_last_value():
    rng = np.random.default_rng(1)
    tree = SumTree(100)
    expected = np.zeros(100)
    for _ in range(50):
        indices = rng.integers(0, 100, 64)  # many repeats
        values = rng.random(64)
        tree.set(indices, values)
        for i, v in zip(indices, values):  # sequential assignment: the last one stays
            expected[i] = v
        np.testing.assert_array_equal(tree.leaves, expected)
        assert tree.total == tree_of(expected).total


@pytest.mark.parametrize("indices", [
    [3, 4, 5, 6],  # one run of consecutive leaves
    [8, 9, 0, 1, 2],  # one run that wraps past the last leaf
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # every leaf
    [9, 0],
    [2, 5, 6, 7],  # not a run
    [8, 9, 0, 2],  # wraps, then a gap: not a run
])
def test_runs_and_scattered_leaves_leave_the_same_tree(indices):
    rng = np.random.default_rng(len(indices))
    tree = tree_of(rng.random(10))
    values = rng.random(len(indices))
    expected = tree.leaves.copy()
    expected[indices] = values
    tree.set(np.array(indices), values)
    np.testing.assert_array_equal(tree.leaves, expected)
    np.testing.assert_array_equal(tree._nodes, tree_of(expected)._nodes)


def test_last_writes():
    indices, values = last_writes(np.array([3, 1, 3, 2, 1]), np.array([10.0, 20.0, 30.0, 40.0, 50.0]))
    assert dict(zip(indices.tolist(), values.tolist())) == {1: 50.0, 2: 40.0, 3: 30.0}


def test_many_updates_do_not_drift_from_a_fresh_sum():
    rng = np.random.default_rng(2)
    capacity = 10_000
    tree = SumTree(capacity)
    tree.set(np.arange(capacity), rng.random(capacity))
    for _ in range(2000):  # magnitudes over 12 decades, set and reset: drift would show
        indices = rng.integers(0, capacity, 256)
        tree.set(indices, 10.0 ** rng.uniform(-6, 6, 256) * (rng.random(256) < 0.9))
    fresh = tree_of(tree.leaves.copy())
    assert tree.total == fresh.total  # every node is recomputed from its children: exact
    assert tree.total == pytest.approx(math.fsum(tree.leaves), rel=1e-12)
    rebuilt = tree_of(np.zeros(capacity))
    rebuilt._nodes[rebuilt._leaf0:rebuilt._leaf0 + capacity] = tree.leaves
    rebuilt.rebuild()
    np.testing.assert_array_equal(rebuilt._nodes, tree._nodes)


def test_get_and_leaves():
    tree = tree_of(np.array([1.0, 2.0, 0.0, 4.0, 8.0]))
    np.testing.assert_array_equal(tree.get(np.array([4, 0, 2])), [8.0, 1.0, 0.0])
    assert tree.total == 15.0
    with pytest.raises(ValueError):
        tree.leaves[0] = 3.0  # a read-only view


# --- the prioritized selector ---------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_prioritized_frequencies_follow_priority_to_the_alpha(alpha):
    selector = PrioritizedSelector(64, alpha)
    slots = np.array([3, 10, 11, 40, 63])
    priorities = np.array([1.0, 2.0, 3.0, 4.0, 0.5])
    selector.insert(slots, priorities)
    rng = np.random.default_rng(3)
    drawn, probability = selector.sample(200_000, rng)
    expected = priorities ** alpha / np.sum(priorities ** alpha)
    np.testing.assert_allclose(probability, expected[np.searchsorted(slots, drawn)], rtol=1e-12)
    counts = np.array([(drawn == s).sum() for s in slots])
    chi2 = np.sum((counts - expected * len(drawn)) ** 2 / (expected * len(drawn)))
    assert chi2 < 18.47, counts  # chi-square, 4 degrees of freedom, p = 0.001


def test_prioritized_delete_update_and_the_all_zero_fallback():
    selector = PrioritizedSelector(16, 1.0)
    selector.insert(np.array([0, 1, 2, 3]), np.array([1.0, 1.0, 1.0, 1.0]))
    selector.update(np.array([0, 1, 0]), np.array([5.0, 0.0, 0.0]))  # the last 0 wins for slot 0
    selector.delete(np.array([2]))
    assert len(selector) == 3
    drawn, probability = selector.sample(1000, np.random.default_rng(4))
    assert set(drawn.tolist()) == {3} and np.all(probability == 1.0)
    selector.update(np.array([3]), np.array([0.0]))  # every weight 0: uniform over the members
    drawn, probability = selector.sample(3000, np.random.default_rng(5))
    assert set(drawn.tolist()) == {0, 1, 3}
    np.testing.assert_array_equal(probability, 1 / 3)


def test_make_selector():
    assert isinstance(make_selector(10, 0.0), UniformSelector)
    assert isinstance(make_selector(10, 0.6), PrioritizedSelector)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        PrioritizedSelector(10, 0.0)


# --- the uniform selector -------------------------------------------------------------------------
def test_uniform_members_follow_inserts_and_deletes():
    rng = np.random.default_rng(6)
    capacity = 500
    selector = UniformSelector(capacity)
    members: set[int] = set()
    for _ in range(300):
        outside = np.array(sorted(set(range(capacity)) - members), np.int64)
        if len(outside):
            new = rng.choice(outside, min(len(outside), rng.integers(1, 40)), replace=False)
            selector.insert(new)
            members |= set(new.tolist())
        inside = np.array(sorted(members), np.int64)
        gone = rng.choice(inside, rng.integers(0, len(inside) + 1), replace=False)
        selector.delete(gone)
        members -= set(gone.tolist())
        assert len(selector) == len(members)
        assert set(selector.members.tolist()) == members
        assert all((s in selector) == (s in members) for s in range(0, capacity, 7))


def test_uniform_draws_are_uniform_over_the_members():
    selector = UniformSelector(100)
    selector.insert(np.arange(0, 100, 10))
    selector.delete(np.array([30, 70]))
    drawn, probability = selector.sample(80_000, np.random.default_rng(7))
    np.testing.assert_array_equal(probability, 1 / 8)
    slots = [0, 10, 20, 40, 50, 60, 80, 90]
    counts = np.array([(drawn == s).sum() for s in slots])
    assert counts.sum() == len(drawn)
    chi2 = np.sum((counts - 10_000) ** 2 / 10_000)
    assert chi2 < 24.32, counts  # chi-square, 7 degrees of freedom, p = 0.001
