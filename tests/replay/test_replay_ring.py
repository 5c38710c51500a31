"""The ring's slot arithmetic against a plain model: a list of (key, first counter, length)."""

from __future__ import annotations

import numpy as np
import pytest

from services.replay.ring import Ring


def brute_eviction_count(live_lengths: list[int], new_lengths: list[int], capacity: int) -> int:
    sizes = live_lengths + new_lengths
    excess = sum(sizes) - capacity
    count = 0
    while excess > 0:
        excess -= sizes[count]
        count += 1
    return count


def add(ring: Ring, lengths: list[int], sampleable: list[int] | None = None) -> tuple[list[int], int]:
    """Evicts what must go, then appends; returns (keys appended, records evicted)."""
    new_keys = list(range(ring.last_key + 1, ring.last_key + 1 + len(lengths)))
    evict = ring.eviction_count(np.array(lengths))
    if evict:
        ring.evict_through(ring.first_key + evict - 1)
    kept = [(k, n, s) for k, n, s in zip(new_keys, lengths, sampleable or lengths)
            if k >= ring.first_key]
    if kept:
        keys, ns, ss = map(np.array, zip(*kept))
        ring.append(keys, ns, ss)
    ring.last_key = max(ring.last_key, new_keys[-1])
    return [k for k, _, _ in kept], evict


def test_slots_wrap_and_records_stay_contiguous():
    ring = Ring(10)
    add(ring, [4, 3], [4, 2])
    assert (ring.first_key, ring.last_key, ring.stored, ring.sampleable) == (1, 2, 7, 6)
    np.testing.assert_array_equal(ring.slots(1), [0, 1, 2, 3])
    keys, evicted = add(ring, [5])  # 12 > 10: key 1 goes
    assert (keys, evicted) == ([3], 1)
    np.testing.assert_array_equal(ring.slots(3), [7, 8, 9, 0, 1])  # wraps
    np.testing.assert_array_equal(ring.slots_of(np.array([2, 3])), [4, 5, 6, 7, 8, 9, 0, 1])
    np.testing.assert_array_equal(ring.position_slots(np.array([3, 3, 2]), np.array([0, 4, 1])), [7, 1, 5])
    np.testing.assert_array_equal(ring.counters(np.array([3]), np.array([4])), [11])
    np.testing.assert_array_equal(ring.windows(np.array([8]), 4), [[8, 9, 10, 11]])
    assert ring.live_keys().tolist() == [2, 3]
    assert ring.is_live(np.array([1, 2, 3, 4])).tolist() == [False, True, True, False]


def test_overwritten_follows_the_next_counter():
    ring = Ring(10)
    add(ring, [6])
    assert not ring.overwritten(0)
    add(ring, [4])  # counters 6..9: slots still free
    assert not ring.overwritten(0)
    add(ring, [1])  # counter 10 takes slot 0 (key 1 evicted)
    assert ring.overwritten(0) and not ring.overwritten(1)


def test_an_add_larger_than_the_capacity_keeps_its_newest_records():
    ring = Ring(10)
    add(ring, [4, 4])
    keys, evicted = add(ring, [3, 3, 3, 3])  # keys 3..6; the live two and key 3 go
    assert (keys, evicted) == ([4, 5, 6], 3)
    assert (ring.first_key, ring.last_key, ring.stored) == (4, 6, 9)
    keys, evicted = add(ring, [10])  # everything else goes
    assert (keys, evicted, ring.first_key, ring.num_records) == ([7], 3, 7, 1)


def test_random_adds_against_a_plain_model():
    rng = np.random.default_rng(0)
    capacity = 97
    ring = Ring(capacity)
    model: list[tuple[int, int, int]] = []  # (key, first counter, length), live, oldest first
    counter = 0
    for _ in range(500):
        lengths = rng.integers(1, 30, rng.integers(1, 5)).tolist()
        expected = brute_eviction_count([n for _, _, n in model], lengths, capacity)
        assert ring.eviction_count(np.array(lengths)) == expected
        first_new = ring.last_key + 1
        keys, _ = add(ring, lengths)
        entries = model + [(first_new + i, None, n) for i, n in enumerate(lengths)]
        model = []
        for key, first, n in entries[expected:]:
            if first is None:
                first, counter = counter, counter + n
            model.append((key, first, n))
        if not model:
            assert ring.num_records == 0
            continue
        assert ring.live_keys().tolist() == [k for k, _, _ in model]
        assert ring.stored == sum(n for _, _, n in model) <= capacity
        for key, first, n in model:
            np.testing.assert_array_equal(ring.slots(key), (first + np.arange(n)) % capacity)
        np.testing.assert_array_equal(
            ring.slots_of(ring.live_keys()),
            np.concatenate([(f + np.arange(n)) % capacity for _, f, n in model]))
        # live slots are distinct: no record overlaps another
        assert len(set(ring.slots_of(ring.live_keys()).tolist())) == ring.stored


def test_append_refuses_keys_out_of_order_and_overflow():
    ring = Ring(5)
    with pytest.raises(AssertionError):
        ring.append(np.array([2]), np.array([1]), np.array([1]))
    with pytest.raises(AssertionError):
        ring.append(np.array([1]), np.array([6]), np.array([6]))
