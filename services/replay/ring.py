"""Where the buffer's records and positions live: the slot arithmetic of its two rings.

Positions. Every stored position has a ring counter (0, 1, 2, ... in the order positions were
stored, never reused) and lives in slot `counter % C` of the buffer's position arrays (C = the
capacity). Records occupy consecutive counters in the order they were added and leave oldest
first, so the live positions are one contiguous run of counters and a new record always lands
on free or just-evicted slots. The slot of counter c is overwritten once `next_counter`, the
counter of the next position to store, passes c + C.

Records. Record keys are consecutive integers and the live records are always the keys
[first_key, last_key], so per-record metadata sits in a second ring indexed by `key % C` (at
most C records are live: each has a position), and a (key, position) pair maps to its slot with
array arithmetic.

`Ring` holds only this bookkeeping (per record: first counter, length, sampleable positions);
the buffer keeps the arrays the slots index. Not thread-safe: the buffer calls it under its lock.
"""

from __future__ import annotations

import numpy as np


class Ring:
    """The counters, keys and record extents of a buffer of `capacity` positions.

    Attributes:
      capacity: C, positions (and records) the rings hold.
      first_key, last_key: the live records are the keys [first_key, last_key] (none when
        first_key > last_key); keys are never reused.
      next_counter: ring counter of the next position to store.
      stored: live positions (look-ahead context included); at most C.
      sampleable: live sampleable positions.
      start, length, num_sampleable: int64 [C], per record slot `key % C`: the counter of the
        record's first position, its positions, its sampleable positions.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"Ring capacity must be >= 1, got {capacity}")
        C = capacity
        self.capacity = C
        self.first_key = 1
        self.last_key = 0
        self.next_counter = 0
        self.stored = 0
        self.sampleable = 0
        self.start = np.zeros(C, np.int64)
        self.length = np.zeros(C, np.int64)
        self.num_sampleable = np.zeros(C, np.int64)

    # --- records -----------------------------------------------------------------------------

    @property
    def num_records(self) -> int:
        return max(0, self.last_key - self.first_key + 1)

    def live_keys(self) -> np.ndarray:
        """int64 [R]: the live keys, oldest first."""
        return np.arange(self.first_key, self.last_key + 1, dtype=np.int64)

    def is_live(self, keys: np.ndarray) -> np.ndarray:
        """bool [P]."""
        return (keys >= self.first_key) & (keys <= self.last_key)

    def record_slots(self, keys: np.ndarray) -> np.ndarray:
        """int64 [P]: slots of live `keys` in the record ring."""
        return np.asarray(keys, np.int64) % self.capacity

    # --- positions ---------------------------------------------------------------------------

    def slots(self, key: int) -> np.ndarray:
        """int64 [T]: the position slots of a live record, in order."""
        g = key % self.capacity
        return (self.start[g] + np.arange(self.length[g])) % self.capacity

    def slots_of(self, keys: np.ndarray) -> np.ndarray:
        """int64 [sum of T]: the position slots of live `keys` ([R] int64), record after record."""
        g = self.record_slots(keys)
        lengths = self.length[g]
        # position i of the concatenation belongs to record r(i) = repeat(arange(R), lengths)
        # and sits at start[r] + (i - offset[r]).
        offsets = np.cumsum(lengths) - lengths
        counters = np.repeat(self.start[g] - offsets, lengths) + np.arange(int(lengths.sum()))
        return counters % self.capacity

    def position_slots(self, keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """int64 [P]: the slots of positions `positions` of live records `keys`."""
        return (self.start[self.record_slots(keys)] + positions) % self.capacity

    def counters(self, keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """int64 [P]: the ring counters of positions of live records."""
        return self.start[self.record_slots(keys)] + positions

    def overwritten(self, counter: int) -> bool:
        """Whether the slot that held `counter` has been given to a newer position since."""
        return self.next_counter > counter + self.capacity

    @staticmethod
    def windows(slots: np.ndarray, width: int) -> np.ndarray:
        """int64 [B, W]: the slots of W consecutive positions from each of `slots`, before the
        modulo (gather them with `np.take(..., mode="wrap")`)."""
        return slots[:, None] + np.arange(width)[None, :]

    # --- changes -----------------------------------------------------------------------------

    def eviction_count(self, new_lengths: np.ndarray) -> int:
        """How many records, the oldest live ones first and then the oldest of the new ones
        (`new_lengths` [N], about to be added), must go so that the rest fits the capacity.
        Reads only as many live records as positions must go (each has at least one), so the
        cost follows the add, not the buffer."""
        new_lengths = np.asarray(new_lengths, np.int64)
        excess = self.stored + int(new_lengths.sum()) - self.capacity
        if excess <= 0:
            return 0
        oldest = np.arange(self.first_key, min(self.last_key, self.first_key + excess - 1) + 1)
        sizes = np.concatenate([self.length[self.record_slots(oldest)], new_lengths])
        return int(np.searchsorted(np.cumsum(sizes), excess, side="left")) + 1

    def evict_through(self, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Drops the records with keys <= `last` (live ones; keys past `last_key` are new ones of
        the add in progress, which are then simply never appended). Returns (the dropped live
        keys [R] int64, the slots their positions held [M] int64)."""
        if last < self.first_key:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = np.arange(self.first_key, min(last, self.last_key) + 1, dtype=np.int64)
        self.first_key = last + 1
        self.last_key = max(self.last_key, last)
        if not len(keys):
            return keys, np.zeros(0, np.int64)
        g = self.record_slots(keys)
        count = int(self.length[g].sum())
        slots = (self.start[g[0]] + np.arange(count)) % self.capacity
        self.stored -= count
        self.sampleable -= int(self.num_sampleable[g].sum())
        return keys, slots

    def append(self, keys: np.ndarray, lengths: np.ndarray, sampleable: np.ndarray) -> np.ndarray:
        """Places new records (`keys` [R], consecutive from last_key + 1, with their lengths and
        sampleable positions [R]) after the newest; returns the counter of each one's first
        position [R] int64. The caller evicts first, so that they fit."""
        keys = np.asarray(keys, np.int64)
        lengths = np.asarray(lengths, np.int64)
        if not len(keys):
            return np.zeros(0, np.int64)
        assert keys[0] == self.last_key + 1 and np.all(np.diff(keys) == 1), keys
        total = int(lengths.sum())
        assert self.stored + total <= self.capacity, (self.stored, total, self.capacity)
        starts = self.next_counter + np.cumsum(lengths) - lengths
        g = self.record_slots(keys)
        self.start[g] = starts
        self.length[g] = lengths
        self.num_sampleable[g] = sampleable
        if self.num_records == 0:
            self.first_key = int(keys[0])
        self.last_key = int(keys[-1])
        self.next_counter += total
        self.stored += total
        self.sampleable += int(np.sum(sampleable))
        return starts
