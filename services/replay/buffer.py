"""The replay buffer: a table composed of parts, the way a Reverb table is.

Parts (each in its own module, with its own tests, none of them touching SQLite):
  * `storage.GameDatabase`: the durable store (SQLite, WAL); every write one transaction.
  * `storage.PriorityStore`: the priorities flushed since records were added, in a second
    SQLite file with its own connection and write lock.
  * `ring.Ring`: where records and positions live: ring counters, slots, record extents,
    which records an add evicts.
  * `selectors`: which positions a sample draws: `PrioritizedSelector` (probability
    priority^alpha / sum, on a sum-tree: O(log C) draws and updates, vectorized over a batch)
    or `UniformSelector` (alpha = 0).
  * `rate_limiter.RateLimiter`: whether a sample may go now (min positions, samples per
    insert) and the waiting when it may not.
  * `targets`: the MuZero targets of gathered windows, array arithmetic over the batch.

What the buffer adds: the position arrays the ring's slots index (observation, action, reward,
to-play, root value, policy, legal mask, positions left in the record, record key, priority),
per-record metadata in the record ring (`key % C`), the ids, the write ordering, the priority
flusher and running statistics.

Locks. `_lock` (with the condition `_changed`, shared with the rate limiter) guards the memory.
`_write_lock` serialises the writers of records (add, update_targets) so that each one's SQLite
transaction and memory update happen in the same order; it is always taken before `_lock`. An
add that the rate limiter holds back (block_inserts) waits on `_changed` with `_write_lock`
released, so nothing else waits behind it; it decides again under `_write_lock` after its wait. A
write commits to SQLite first and updates memory after, so an acknowledged add is on disk and a
crash never leaves memory ahead of disk.

Priorities are the exception: UpdatePriorities changes memory only (the sum-tree at once) and
marks the records dirty; the flusher writes them to the `PriorityStore` every
`priorities_flush_s`. A flush takes neither `_write_lock` nor SQLite's lock of the game
database: it holds `_flush_lock` (flushes and close, one at a time), takes `_lock` only to copy
a chunk of FLUSH_CHUNK_RECORDS records' priorities, and writes them all in one transaction of
its own file with no buffer lock held, so adds, samples and updates go on meanwhile. A flush
that fails marks its records dirty again (the next one retries them).

Sampling holds `_lock` only to wait for the rate limiter, draw B slots from the selector and
copy what it needs of them ([B] arrays: record keys, positions left, metadata; the ring counter
of the oldest draw; the targets epoch). The windows are gathered and the targets computed after
the lock is released, so AddGames is never held up by them. That read is optimistic and checked
after the gather (a sequence lock): the position arrays change only where an add overwrites the
slots of evicted records (the ring's `next_counter` moves past a counter + C first, then the
slots are written) and where UpdateTargets rewrites a record (`_targets_epoch` moves first).
If either happened to a drawn record during the gather, the sample is drawn and gathered again
wholly under the lock (`sample_retries` counts it), so a batch is always one consistent state.

Bounds. Priorities lie in [0, priority_limit] (checked on update, repaired on load), so the
running max, the weights and the importance weights stay finite; a sample is refused before it
allocates more than max_sample_bytes; the database keeps the ids of the newest id_window records
only (docs/replay.md, Limits and Idempotence).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Callable, Sequence

import numpy as np

from services.common.logs import EventLogger
from services.replay.config import MESSAGE_SLACK_BYTES, MIB, ReplayConfig
from services.replay.rate_limiter import RateLimiter
from services.replay.records import (RECORD_HEADER_BYTES, ReplayError, invalid, not_found,
                                     position_bytes, sample_bytes)
from services.replay.ring import Ring
from services.replay.selectors import last_writes, make_selector
from services.replay.storage import GameDatabase, PriorityStore, Reanalysed
from services.replay.targets import off_policy_td_steps, reward_targets, unroll_mask, value_targets
from services.replay.wire import (SAMPLE_GAMES_ORDERS, AddResult, Batch, GameArrays, Stats,
                                  StoredGame, TargetsUpdate)

RECENT_GAMES = 100
MAX_BATCH_SIZE = 1 << 16
MAX_UNROLL_STEPS = 1000
MAX_TD_STEPS = 10_000
# Records loaded from the database per memory update at start-up (bounds the temporaries).
LOAD_CHUNK_POSITIONS = 1 << 16
# Records whose priorities a flush copies per hold of `_lock` (~200 positions each for cartpole:
# a 2 MB copy at most, so that samplers and adds never wait long for the flusher).
FLUSH_CHUNK_RECORDS = 1024


def bounded_priorities(priorities: np.ndarray, limit: float) -> np.ndarray:
    """`priorities` if every one is in [0, limit]; else a float64 copy with NaN and values over
    the limit set to `limit` (so they are drawn soon and get a real priority) and negative ones
    to 0. For priorities loaded from disk, which the API's checks did not always bound."""
    if np.all((priorities >= 0) & (priorities <= limit)):
        return priorities
    return np.where(np.isnan(priorities), limit, np.clip(priorities, 0.0, limit))


def _extents(games: Sequence[GameArrays]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 [R] lengths and [R] first indices of records joined one after another, and
    bool [sum T]: whether each joined position is sampleable."""
    lengths = np.array([g.length for g in games], np.int64)
    starts = np.cumsum(lengths) - lengths
    steps = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
    sampleable = steps < np.repeat(np.array([g.num_sampleable for g in games], np.int64), lengths)
    return lengths, starts, sampleable


def entry_priorities(new: Sequence[tuple[int, GameArrays]], max_priority: float) -> list[np.ndarray]:
    """float32 [T] per new record: `max_priority` at its sampleable positions, 0 at its
    look-ahead context. One array for the whole request, sliced (an agent's add of 32 records
    costs a few NumPy calls, not a few per record)."""
    if not new:
        return []
    lengths, starts, sampleable = _extents([g for _, g in new])
    joined = np.where(sampleable, np.float32(max_priority), np.float32(0.0))
    return [joined[start:start + length] for start, length in zip(starts.tolist(), lengths.tolist())]


def player0_returns(games: Sequence[GameArrays]) -> list[float]:
    """`GameArrays.player0_return` of each record, over the request's positions at once."""
    if len(games) <= 1:
        return [g.player0_return() for g in games]
    _, starts, sampleable = _extents(games)
    rewards = np.concatenate([g.rewards for g in games]).astype(np.float64)
    mover = np.concatenate([g.to_play for g in games]) == 0
    signed = np.where(sampleable, np.where(mover, rewards, -rewards), 0.0)
    return np.add.reduceat(signed, starts).tolist()


@dataclasses.dataclass(frozen=True)
class _Draw:
    """What a sample takes under the lock: the drawn slots and their small per-sample data.

    B = batch size, K = unroll steps.
    """

    slots: np.ndarray  # int64 [B]: position slots drawn
    probability: np.ndarray  # float64 [B]: each draw's probability
    population: int  # N: sampleable positions when drawn
    remaining: np.ndarray  # int64 [B]: T - t, positions of the record from t on
    keys: np.ndarray  # int64 [B]
    positions: np.ndarray  # int32 [B]
    terminated: np.ndarray  # bool [B]
    model_version: np.ndarray  # int64 [B]
    random_actions: np.ndarray  # int32 [B, K]: the actions past a record's end
    oldest_counter: int  # ring counter of the oldest position drawn
    targets_epoch: int  # `_targets_epoch` when drawn
    use_reanalysed: np.ndarray  # bool [B]: whether each sample takes reanalysed targets where any
    reanalysed_stored: bool  # whether any stored position had been reanalysed when drawn
    newest_version: int  # the newest model version seen when drawn


@dataclasses.dataclass(frozen=True)
class _Windows:
    """The gathered windows of a draw (W = K + n + 1 positions from each t)."""

    rewards: np.ndarray  # float32 [B, W]
    values: np.ndarray  # float32 [B, W]
    to_play: np.ndarray  # int8 [B, W]
    policy: np.ndarray  # float32 [B, K+1, A]
    actions: np.ndarray  # int32 [B, K]
    observation: np.ndarray  # [B, *obs] in the stored dtype
    unroll: np.ndarray | None  # [B, K+1, *obs] in the stored dtype, when asked
    # bool [B, W]: where values and policy hold reanalysed targets; None: nowhere
    reanalysed: np.ndarray | None = None
    versions: np.ndarray | None = None  # int64 [B, W]: targets versions, when `reanalysed`


class ReplayBuffer:
    """Stores records durably in `config.data_dir` and samples training targets from memory.

    Thread-safe. On construction the memory is rebuilt from the database (evicting the oldest
    records first if the capacity shrank). `close()` writes the pending priorities and closes
    the database.

    Args:
      config: storage, sampling and rate-limit settings.
      log: where events go (loaded, evicted_at_start, priorities_flush_failed); None: nowhere.
      clock: monotonic seconds (rate-limiter waits).
      on_flush: None, or called after every priority flush that succeeded (empty ones too) with
        its wall time in seconds and the records it wrote (the server's flush metrics).
      on_insert_wait: None, or called (no lock held) with the seconds of every add that the
        rate limiter held back, once it went or failed (the server's insert-wait metrics).
    """

    def __init__(self, config: ReplayConfig, log: EventLogger | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_flush: Callable[[float, int], None] | None = None,
                 on_insert_wait: Callable[[float], None] | None = None) -> None:
        self.config = config
        self.spec = config.spec
        self.log = log
        C, A = config.capacity, config.spec.num_actions
        self._C, self._A = C, A
        self._alpha, self._beta = config.priority_alpha, config.priority_beta
        self._fraction = config.reanalysed_target_fraction
        self._rng = np.random.default_rng(config.seed)
        self._lock = threading.Lock()
        # notified when positions are added (and sampled, while inserters wait)
        self._changed = threading.Condition(self._lock)
        self._write_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time; close waits for it
        self._on_flush = on_flush
        self._on_insert_wait = on_insert_wait
        self._clock = clock
        self._ring = Ring(C)
        self._selector = make_selector(C, config.priority_alpha)
        self._limiter = RateLimiter(self._changed, config.min_positions, config.samples_per_insert,
                                    config.error_buffer, config.waiting_samplers, clock,
                                    block_inserts=config.inserts_may_block,
                                    max_insert_waiters=config.waiting_inserters)
        self.max_waiting_samplers = self._limiter.max_waiters
        self.max_waiting_inserters = self._limiter.max_insert_waiters if config.inserts_may_block else 0
        # Position arrays, indexed by slot (ring counter % C).
        obs_dtype = np.dtype(config.spec.observation_dtype)
        self._obs = np.zeros((C, *config.spec.observation_shape), obs_dtype)
        self._actions = np.zeros(C, np.int32)
        self._rewards = np.zeros(C, np.float32)
        self._to_play = np.zeros(C, np.int8)
        self._values = np.zeros(C, np.float32)  # self-play root values, as added
        self._policies = np.zeros((C, A), np.float32)  # self-play policies, as added
        # Reanalysed targets (UpdateTargets), beside the self-play ones; read only where
        # _targets_version >= 0 (-1: never reanalysed; the slot's other entries hold anything).
        self._re_values = np.zeros(C, np.float32)
        self._re_policies = np.zeros((C, A), np.float32)
        self._targets_version = np.full(C, -1, np.int64)
        self._legal = np.zeros((C, A), bool)
        self._remaining = np.zeros(C, np.int32)  # T - position: slots of the record from here on
        self._position = np.zeros(C, np.int32)
        self._key = np.zeros(C, np.int64)
        self._priority = np.zeros(C, np.float64)  # 0 where not sampleable or not live
        self._sampleable_slot = np.zeros(C, bool)  # live and position < its num_sampleable
        # Record metadata, indexed by record slot (key % C).
        self._g_model_version = np.zeros(C, np.int64)
        # the record's minimum targets version: over its positions, the reanalysis's version
        # where reanalysed, else the record's model_version (SampleGames' oldest_targets_first)
        self._g_targets_version = np.zeros(C, np.int64)
        self._g_priority_sum = np.zeros(C, np.float64)  # sum of the record's priorities (running)
        self._g_reanalysed = np.zeros(C, np.int64)  # positions of the record reanalysed
        self._g_reanalysed_version_sum = np.zeros(C, np.int64)  # sum of their targets versions
        self._g_terminated = np.zeros(C, bool)
        self._g_first_move = np.zeros(C, np.int64)
        self._g_ids: dict[int, tuple[str, str]] = {}  # key -> (id, episode_id), live records
        self._keys_by_id: dict[str, int] = {}  # live records
        self._targets_epoch = 0  # moves before UpdateTargets rewrites a record's arrays
        self._max_priority = 1.0
        self._dirty_priorities: set[int] = set()
        # Live reanalysed positions and the sum of their targets versions (GetStats' mean age).
        self._reanalysed_positions = 0
        self._reanalysed_version_sum = 0
        # The largest model_version of an add or an UpdateTargets (persisted in meta).
        self._newest_version = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=RECENT_GAMES)
        self._games_per_version: collections.Counter[int] = collections.Counter()  # live records
        # Counters since this process started.
        self._games_added = 0
        self._inserts = 0
        self._samples = 0
        self._sample_batches = 0
        self._duplicates = 0
        self._evicted_games = 0
        self.sample_retries = 0  # samples drawn again because a write overlapped their gather
        self._closed = False
        self._db = GameDatabase(config.data_dir, config.spec, config.synchronous)
        self._priorities = PriorityStore(config.data_dir, self._db.identity)
        if self._priorities.damaged or self._priorities.discarded:
            self._log("priorities_discarded", records=self._priorities.discarded,
                      reason=(f"priorities.sqlite could not be read: {self._priorities.damaged}"
                              if self._priorities.damaged else
                              "priorities.sqlite belongs to another replay.sqlite"))
        self._load()
        self._stop_flusher = threading.Event()
        # The running max and first live key the last flush wrote (None: none yet), so that a
        # flush with nothing new writes nothing.
        self._flushed_max: float | None = None
        self._flushed_first: int | None = None
        self._flusher = threading.Thread(target=self._flush_forever, name="replay-priorities",
                                         daemon=True)
        self._flusher.start()

    # --- start-up ----------------------------------------------------------------------------

    def _load(self) -> None:
        started = time.perf_counter()
        lengths = self._db.live_lengths()
        last_key = self._db.last_key()
        keys = np.array([k for k, _ in lengths], np.int64)
        if len(keys) and (keys[-1] != last_key or np.any(np.diff(keys) != 1)):
            raise RuntimeError(f"{self._db.path}: live records are not the newest consecutive keys "
                               f"(keys {keys[0]}..{keys[-1]}, last key {last_key})")
        sizes = np.array([n for _, n in lengths], np.int64)
        evict = 0
        excess = int(sizes.sum()) - self._C
        if excess > 0:
            evict = int(np.searchsorted(np.cumsum(sizes), excess, side="left")) + 1
            self._db.evict(int(keys[0]), int(keys[evict - 1]))
            self._log("evicted_at_start", games=evict, positions=int(sizes[:evict].sum()),
                      capacity=self._C)
        first_key = int(keys[evict]) if evict < len(keys) else last_key + 1
        self._ring.first_key, self._ring.last_key = first_key, first_key - 1
        limit = self.config.priority_limit
        repaired: dict[int, np.ndarray] = {}
        loaded_max = 0.0
        chunk: list[tuple[int, GameArrays, np.ndarray, Reanalysed | None]] = []
        newest = self._db.newest_model_version()
        chunk_positions = 0
        flushed = self._priorities.load(first_key)
        for stored in self._db.load(first_key):
            # the last flush's priorities, where one wrote this record (and the length agrees:
            # keys are never reused, so only a damaged file could disagree)
            found = flushed.pop(stored.key, None)
            loaded = found if found is not None and len(found) == stored.game.length else stored.priorities
            priorities = bounded_priorities(loaded, limit)
            if priorities is not loaded:
                repaired[stored.key] = priorities.astype(np.float32)
            if stored.game.num_sampleable:
                loaded_max = max(loaded_max, float(priorities[:stored.game.num_sampleable].max()))
            chunk.append((stored.key, stored.game, priorities, stored.reanalysed))
            newest = max(newest, stored.game.model_version,
                         int(stored.reanalysed.versions.max()) if stored.reanalysed is not None else 0)
            chunk_positions += stored.game.length
            self._recent.append((stored.game.player0_return(), stored.game.num_sampleable))
            if chunk_positions >= LOAD_CHUNK_POSITIONS:
                self._store(chunk)
                chunk, chunk_positions = [], 0
        self._store(chunk)
        self._ring.first_key = first_key  # when nothing is live: keys go on after the last one
        self._ring.last_key = last_key
        self._newest_version = newest
        stored_max = self._priorities.max_priority()
        if stored_max is None:  # never flushed here: the value as added, or an older server's
            stored_max = self._db.max_priority()
        # The running max only grows from 1.0; one that is not a number in [1, limit] (written
        # before priorities were bounded, or above a lowered limit) would let every new position
        # enter at inf or NaN, so it is repaired here and on disk.
        self._max_priority = min(limit, stored_max if stored_max >= 1.0 else max(1.0, loaded_max))
        if repaired or not self._max_priority == stored_max:
            self._priorities.write(repaired.items(), self._max_priority, forget_below=first_key)
            self._log("priorities_repaired", records=len(repaired), max_priority_was=repr(stored_max),
                      max_priority=self._max_priority, priority_limit=limit)
        removed = self._db.forget_ids(min(last_key - self.config.id_window, first_key - 1))
        if removed:
            self._log("ids_forgotten", records=removed, id_window=self.config.id_window)
        self._limiter.restore(self._ring.sampleable)
        self._log("loaded", games=self.num_games, positions=self._ring.sampleable,
                  stored_positions=self._ring.stored, last_key=last_key,
                  seconds=round(time.perf_counter() - started, 3))

    def _log(self, event: str, **fields) -> None:
        if self.log is not None:
            self.log.info(event, **fields)

    # --- memory updates (hold _lock, or run before the buffer is shared) ---------------------

    def _put(self, column: np.ndarray, first_slot: int, values: np.ndarray) -> None:
        """Writes `values` ([M, ...]) into the M slots from `first_slot` on, wrapping at C:
        two slice copies at most (a new run of positions is contiguous in the ring)."""
        end = first_slot + len(values)
        if end <= self._C:
            column[first_slot:end] = values
        else:
            split = self._C - first_slot
            column[first_slot:] = values[:split]
            column[:end - self._C] = values[split:]

    def _store(self, records: Sequence[tuple[int, GameArrays, np.ndarray, Reanalysed | None]]) -> None:
        """Places new records ((key, game, priorities [T], reanalysed targets or None), keys
        consecutive after the newest) in memory: the ring first (so a sampler gathering outside
        the lock sees its slots taken before they change), then the arrays, then the selector."""
        if not records:
            return
        games = [game for _, game, _, _ in records]
        keys = np.array([key for key, _, _, _ in records], np.int64)
        lengths = np.array([g.length for g in games], np.int64)
        sampleable = np.array([g.num_sampleable for g in games], np.int64)
        starts = self._ring.append(keys, lengths, sampleable)
        total = int(lengths.sum())
        first = int(starts[0] % self._C)
        steps = np.arange(total) - np.repeat(starts - starts[0], lengths)  # position in its record
        # one record (an agent's add of one game) needs no concatenation
        join = (lambda arrays: arrays[0]) if len(records) == 1 else np.concatenate
        put = self._put
        put(self._obs, first, join([g.observations for g in games]))
        put(self._actions, first, join([g.actions for g in games]))
        put(self._rewards, first, join([g.rewards for g in games]))
        put(self._to_play, first, join([g.to_play for g in games]))
        put(self._values, first, join([g.root_values for g in games]))
        put(self._policies, first, join([g.policies for g in games]))
        put(self._legal, first, join([g.legal_actions for g in games]))
        put(self._remaining, first, np.repeat(lengths, lengths) - steps)
        put(self._position, first, steps)
        put(self._key, first, np.repeat(keys, lengths))
        is_sampleable = steps < np.repeat(sampleable, lengths)
        priorities = np.where(is_sampleable, join([p for _, _, p, _ in records]), 0.0)
        put(self._priority, first, priorities)
        put(self._sampleable_slot, first, is_sampleable)
        slots = (first + np.flatnonzero(is_sampleable)) % self._C
        self._selector.insert(slots, priorities[is_sampleable])
        g = self._ring.record_slots(keys)
        versions = np.array([game.model_version for game in games], np.int64)
        self._g_model_version[g] = versions
        self._g_priority_sum[g] = np.add.reduceat(priorities.astype(np.float64), starts - starts[0])
        reanalysed = [r for _, _, _, r in records]
        if all(r is None for r in reanalysed):  # an add: nothing reanalysed yet
            put(self._targets_version, first, np.full(total, -1, np.int64))
            self._g_targets_version[g] = versions
            self._g_reanalysed[g] = 0
            self._g_reanalysed_version_sum[g] = 0
        else:  # loaded records, some reanalysed (a loop over records, at start-up only)
            filled = [r if r is not None else Reanalysed(
                np.zeros(game.length, np.float32), np.zeros_like(game.policies),
                np.full(game.length, -1, np.int64)) for r, game in zip(reanalysed, games)]
            put(self._re_values, first, join([r.root_values for r in filled]))
            put(self._re_policies, first, join([r.policies for r in filled]))
            put(self._targets_version, first, join([r.versions for r in filled]))
            done = [r.versions >= 0 for r in filled]
            self._g_targets_version[g] = [int(np.where(d, r.versions, v).min())
                                          for d, r, v in zip(done, filled, versions.tolist())]
            counts = np.array([int(d.sum()) for d in done], np.int64)
            sums = np.array([int(r.versions[d].sum()) for d, r in zip(done, filled)], np.int64)
            self._g_reanalysed[g] = counts
            self._g_reanalysed_version_sum[g] = sums
            self._reanalysed_positions += int(counts.sum())
            self._reanalysed_version_sum += int(sums.sum())
        self._g_terminated[g] = [game.terminated for game in games]
        self._g_first_move[g] = [game.first_move for game in games]
        for key, game in zip(keys.tolist(), games):
            self._g_ids[key] = (game.id, game.episode_id)
            self._keys_by_id[game.id] = key
        self._games_per_version.update(game.model_version for game in games)

    def _evict_through(self, last: int) -> int:
        """Drops the records with keys <= last (live ones from memory; new ones of the add in
        progress are simply never appended); returns how many live records were dropped."""
        keys, slots = self._ring.evict_through(last)
        if not len(keys):
            return 0
        sampleable = slots[self._sampleable_slot[slots]]
        self._selector.delete(sampleable)
        self._limiter.delete(len(sampleable))
        self._priority[slots] = 0.0
        self._sampleable_slot[slots] = False
        g = self._ring.record_slots(keys)
        self._reanalysed_positions -= int(self._g_reanalysed[g].sum())
        self._reanalysed_version_sum -= int(self._g_reanalysed_version_sum[g].sum())
        versions, counts = np.unique(self._g_model_version[g], return_counts=True)
        for version, count in zip(versions.tolist(), counts.tolist()):
            left = self._games_per_version[version] - count
            if left:
                self._games_per_version[version] = left
            else:
                del self._games_per_version[version]
        for key in keys.tolist():
            game_id, _ = self._g_ids.pop(key)
            del self._keys_by_id[game_id]
            self._dirty_priorities.discard(key)
        return len(keys)

    # --- writes ------------------------------------------------------------------------------

    def add_games(self, games: list[GameArrays], timeout_s: float | None = None) -> AddResult:
        """Stores the records (validated, e.g. by `records.decode_many`) durably, then in memory.

        A record whose id is stored, or remembered (an evicted record among the newest
        `id_window` keys), or that repeats an id of this call, is a duplicate and is not stored
        again. Evicts the oldest records in the same transaction if the capacity would be
        exceeded.

        With `block_inserts` (and samples_per_insert > 0) an add with new records waits while
        the rate limiter does not allow inserts, with no write lock held (samples, priority and
        target updates, reads go on): DEADLINE_EXCEEDED naming the limiter's state after
        `timeout_s` (None: no limit), nothing stored; RESOURCE_EXHAUSTED at once when the most
        inserters allowed already wait; UNAVAILABLE at shutdown. Whether it may go is decided
        under `_write_lock` on the state just before the add (an add that lost the race to
        another one after its wait waits again), and the add then goes in whole. An add of
        duplicates only never waits.
        """
        for i, game in enumerate(games):
            if game.length > self._C:
                raise invalid(f"games[{i}].observations: T = {game.length} positions exceed the "
                              f"capacity {self._C}")
        started = None  # when this add began to wait for the rate limiter (None: it did not)
        try:
            while True:
                if started is not None:  # held back: wait with no write lock held
                    with self._changed:
                        self._limiter.await_can_insert(timeout_s, started)
                with self._write_lock:
                    self._check_open()
                    keys, new = self._new_records(games)
                    if new and self._limiter.block_inserts:
                        with self._lock:
                            allowed = self._limiter.can_insert()
                            if not allowed and started is None:
                                started = self._clock()
                                self._limiter.insert_waited_total += 1
                        if not allowed:
                            continue
                    return self._commit_add(games, keys, new)
        finally:
            if started is not None and self._on_insert_wait is not None:
                self._on_insert_wait(self._clock() - started)

    def _new_records(self, games: list[GameArrays]) -> tuple[list[int], list[tuple[int, GameArrays]]]:
        """Holds `_write_lock`. The key of every record of an add (a stored or remembered one's,
        or the next free ones for new records) and the new records with their keys."""
        existing = self._db.existing_keys([g.id for g in games])
        # Only writers change the ring, and they hold _write_lock: its keys and extents can
        # be read here without _lock.
        ring = self._ring
        keys: list[int] = []
        new: list[tuple[int, GameArrays]] = []
        for game in games:
            key = existing.get(game.id)
            if key is None:
                key = ring.last_key + 1 + len(new)
                existing[game.id] = key
                new.append((key, game))
            keys.append(key)
        return keys, new

    def _commit_add(self, games: list[GameArrays], keys: list[int],
                    new: list[tuple[int, GameArrays]]) -> AddResult:
        """Holds `_write_lock`. Writes the add's new records (and evictions) to SQLite, then to
        memory, and wakes the waiting samplers."""
        ring = self._ring
        duplicates = len(games) - len(new)
        evict = ring.eviction_count(np.array([g.length for _, g in new], np.int64))
        # the live keys and then the new ones are consecutive from first_key
        evict_range = (ring.first_key, ring.first_key + evict - 1) if evict else None
        with self._lock:
            max_priority = self._max_priority
        # only writers change it, and they hold _write_lock
        newest = max([self._newest_version] + [g.model_version for _, g in new])
        records = [(key, game, priorities)
                   for (key, game), priorities in zip(new, entry_priorities(new, max_priority))]
        if new or evict_range:
            # Ids of evicted records older than the newest id_window keys are forgotten in
            # the same transaction: the tombstones stay bounded (docs/replay.md, Idempotence).
            # Below the first live key every row is a tombstone, so the delete reads only
            # the rows it deletes.
            newest_key = new[-1][0] if new else ring.last_key
            first_live = evict_range[1] + 1 if evict_range else ring.first_key
            self._db.add(records, evict_range,
                         forget_through=min(newest_key - self.config.id_window, first_live - 1),
                         newest_model_version=newest if newest > self._newest_version else None)
            # committed: from here on the add is durable
        with self._changed:
            if evict_range:
                self._evict_through(evict_range[1])
            self._newest_version = newest
            kept = [(key, game, priorities, None)
                    for key, game, priorities in records
                    if not evict_range or key > evict_range[1]]
            self._store(kept)
            self._recent.extend(zip(player0_returns([g for _, g in new]),
                                    [g.num_sampleable for _, g in new]))
            if new:
                ring.last_key = max(ring.last_key, new[-1][0])
            inserted = sum(g.num_sampleable for _, g in new)
            self._games_added += len(new)
            self._inserts += inserted
            self._duplicates += duplicates
            self._evicted_games += evict
            # records evicted by their own add count as inserted, and as deleted at once
            self._limiter.delete(inserted - sum(g.num_sampleable for _, g, _, _ in kept))
            self._limiter.insert(inserted)  # wakes the waiting samplers
        return AddResult(added=len(new), duplicates=duplicates, keys=keys, evicted=evict,
                         positions_added=inserted)

    def update_targets(self, game_id: str, positions: np.ndarray, root_values: np.ndarray,
                       policies: np.ndarray, model_version: int) -> TargetsUpdate:
        """Sets the reanalysed root values and policies at `positions` of a stored record
        (reanalyse), beside its self-play ones; returns (updated, skipped). Ordered by version
        per position: a position whose stored reanalysis has a larger model version than
        `model_version` is skipped (the newer one stays); an equal or smaller stored version
        is overwritten, so a retried call changes nothing more. Written to disk before memory.
        NOT_FOUND for a record that is not stored."""
        if not game_id:
            raise invalid("game_id: must be non-empty")
        if model_version < 0:
            raise invalid(f"model_version: must be >= 0, got {model_version}")
        if positions.ndim != 1:
            raise invalid(f"positions: shape {list(positions.shape)}, expected [P]")
        P = len(positions)
        if root_values.shape != (P,):
            raise invalid(f"root_values: shape {list(root_values.shape)}, expected [P] = [{P}]")
        if policies.shape != (P, self._A):
            raise invalid(f"policies: shape {list(policies.shape)}, expected [P, num_actions] = "
                          f"[{P}, {self._A}]")
        if positions.dtype.kind not in "iu":
            raise invalid(f"positions: dtype {positions.dtype} is not an integer dtype")
        if len(np.unique(positions)) != P:
            raise invalid("positions: must be distinct")
        if root_values.dtype.kind not in "iuf" or not np.all(np.isfinite(root_values)):
            raise invalid("root_values: values must be finite numbers")
        if policies.dtype.kind not in "iuf" or not np.all(np.isfinite(policies)):
            raise invalid("policies: values must be finite numbers")
        if np.any(policies < 0):
            raise invalid("policies: values must be >= 0")
        model_version = int(model_version)
        with self._write_lock:
            self._check_open()
            with self._lock:
                key = self._keys_by_id.get(game_id)
                if key is None:
                    raise not_found(f"game_id: no stored record {game_id!r} (never added, or evicted)")
                slots = self._ring.slots(key)
                T = len(slots)
                if P and (positions.min() < 0 or positions.max() >= T):
                    raise invalid(f"positions: must be in [0, T = {T}) for record {game_id!r}, got "
                                  f"{positions[(positions < 0) | (positions >= T)][0]}")
                old_versions = self._targets_version[slots]  # a copy (fancy indexing)
                was = old_versions >= 0
                values = np.where(was, self._re_values[slots], np.float32(0.0))
                new_policies = np.where(was[:, None], self._re_policies[slots], np.float32(0.0))
                played = int(self._g_model_version[key % self._C])
            positions = positions.astype(np.int64)
            applies = old_versions[positions] <= model_version
            chosen = positions[applies]
            updated = len(chosen)
            newest = max(self._newest_version, model_version)  # only writers change it
            grows = newest if newest > self._newest_version else None
            if not updated and grows is None:
                return TargetsUpdate(0, P)
            versions = old_versions.copy()
            versions[chosen] = model_version
            values[chosen] = root_values[applies].astype(np.float32)
            new_policies[chosen] = policies[applies].astype(np.float32)
            done = versions >= 0
            record_min = int(np.where(done, versions, played).min())
            self._db.update_targets(key, Reanalysed(values, new_policies, versions) if updated else None,
                                    record_min, grows)
            with self._lock:  # the record is still live: evictions take the write lock
                self._newest_version = newest
                if updated:
                    self._targets_epoch += 1  # before the arrays change: see "Sampling" above
                    self._re_values[slots] = values
                    self._re_policies[slots] = new_policies
                    self._targets_version[slots] = versions
                    g = key % self._C
                    count, total = int(done.sum()), int(versions[done].sum())
                    self._reanalysed_positions += count - int(self._g_reanalysed[g])
                    self._reanalysed_version_sum += total - int(self._g_reanalysed_version_sum[g])
                    self._g_reanalysed[g] = count
                    self._g_reanalysed_version_sum[g] = total
                    self._g_targets_version[g] = record_min
        return TargetsUpdate(updated, P - updated)

    def update_priorities(self, record_keys: np.ndarray, positions: np.ndarray,
                          priorities: np.ndarray) -> tuple[int, int]:
        """Sets the priorities of (key, position) pairs; returns (updated, skipped): pairs of
        records evicted since they were sampled are skipped. A pair given twice gets the
        priority given last. Persisted lazily (flush thread). O(P log C)."""
        P = len(record_keys) if record_keys.ndim == 1 else -1
        if P < 0:
            raise invalid(f"record_keys: shape {list(record_keys.shape)}, expected [P]")
        for name, array in (("positions", positions), ("priorities", priorities)):
            if array.shape != (P,):
                raise invalid(f"{name}: shape {list(array.shape)}, expected [P] = [{P}] like record_keys")
        if record_keys.dtype.kind not in "iu":
            raise invalid(f"record_keys: dtype {record_keys.dtype} is not an integer dtype")
        if positions.dtype.kind not in "iu":
            raise invalid(f"positions: dtype {positions.dtype} is not an integer dtype")
        if priorities.dtype.kind not in "iuf":
            raise invalid(f"priorities: dtype {priorities.dtype} is not numeric")
        priorities = priorities.astype(np.float64)
        limit = self.config.priority_limit
        # NaN fails every comparison, so "not (0 <= p <= limit)" also refuses it.
        bad = ~((priorities >= 0) & (priorities <= limit))
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            p = float(priorities[i])
            why = ("is not finite" if not np.isfinite(p) else "is negative" if p < 0
                   else f"is over the limit {limit:g} (priority_limit)")
            raise invalid(f"priorities: priorities[{i}] = {p:g} {why}; priorities must be in "
                          f"[0, {limit:g}]")
        keys = record_keys.astype(np.int64)
        positions = positions.astype(np.int64)
        with self._lock:
            ring = self._ring
            never = (keys < 1) | (keys > ring.last_key)
            if np.any(never):
                raise not_found(f"record_keys: key {keys[never][0]} was never issued by this buffer")
            live = keys >= ring.first_key
            g = ring.record_slots(keys[live])
            pos = positions[live]
            sampleable = ring.num_sampleable[g]
            bad = (pos < 0) | (pos >= sampleable)
            if np.any(bad):
                i = int(np.flatnonzero(bad)[0])
                raise invalid(f"positions: position {pos[i]} of record key {keys[live][i]} is not "
                              f"sampleable (must be in [0, {sampleable[i]}))")
            p = priorities[live]
            slots, p_set = last_writes(ring.position_slots(keys[live], pos), p)
            # the records' running sums (SampleGames' prioritized order), by differences: float64,
            # so the drift stays ~1e-16 of the sums per update (clipped at 0 where read)
            np.add.at(self._g_priority_sum, ring.record_slots(self._key[slots]),
                      p_set - self._priority[slots])
            self._priority[slots] = p_set
            self._selector.update(slots, p_set)
            if len(p):  # p <= priority_limit, so the running max stays bounded by it
                self._max_priority = max(self._max_priority, float(p.max()))
            self._dirty_priorities.update(np.unique(keys[live]).tolist())
            updated = int(live.sum())
        return updated, P - updated

    def flush_priorities(self) -> int:
        """Writes the priorities changed since the last flush to the `PriorityStore`, in one
        transaction and without holding `_write_lock` (adds are never held up by it, nor by
        SQLite: the store is another file); returns how many records it wrote.

        The dirty set is taken whole first; each chunk of FLUSH_CHUNK_RECORDS records is copied
        under `_lock` (records evicted meanwhile are skipped), so each record's priorities are
        one state of it; an update after its copy marks it dirty for the next flush. The
        running max is read after the last copy (it only grows), so no stored priority exceeds
        the stored max. On failure the records still live are marked dirty again.
        """
        with self._flush_lock:
            if self._closed:
                return 0
            started = time.perf_counter()
            with self._lock:
                dirty = np.array(sorted(self._dirty_priorities), np.int64)
                self._dirty_priorities.clear()
            rows: list[tuple[int, np.ndarray]] = []
            first_live = 0
            for start in range(0, max(len(dirty), 1), FLUSH_CHUNK_RECORDS):
                chunk = dirty[start:start + FLUSH_CHUNK_RECORDS]
                with self._lock:
                    ring = self._ring
                    first_live = ring.first_key
                    chunk = chunk[chunk >= first_live]  # dirty keys are live when marked
                    values = self._priority[ring.slots_of(chunk)].astype(np.float32)
                    lengths = ring.length[ring.record_slots(chunk)]
                    max_priority = self._max_priority
                ends = np.cumsum(lengths).tolist()  # slices, not np.split: ~10x less per record
                rows.extend((key, values[end - length:end])
                            for key, length, end in zip(chunk.tolist(), lengths.tolist(), ends))
            try:
                # Rows of records evicted before the last copy are deleted (they stay bounded).
                # Nothing new: no transaction (an idle buffer writes nothing every interval).
                if rows or max_priority != self._flushed_max or first_live != self._flushed_first:
                    self._priorities.write(rows, max_priority, forget_below=first_live)
                    self._flushed_max, self._flushed_first = max_priority, first_live
            except BaseException:
                with self._lock:
                    self._dirty_priorities.update(key for key, _ in rows if key >= self._ring.first_key)
                raise
            seconds = time.perf_counter() - started
        if self._on_flush is not None:
            self._on_flush(seconds, len(rows))
        return len(rows)

    def _flush_forever(self) -> None:
        while not self._stop_flusher.wait(self.config.priorities_flush_s):
            try:
                self.flush_priorities()
            except Exception as error:  # keep serving; the next flush retries the new changes
                if self.log is not None:
                    self.log.error("priorities_flush_failed", error=repr(error))

    # --- sampling ----------------------------------------------------------------------------

    def _draw(self, B: int, K: int) -> _Draw:
        """Holds `_lock`. Draws B slots and copies their per-sample data."""
        t, probability = self._selector.sample(B, self._rng)
        keys = self._key[t]
        positions = self._position[t]
        g = self._ring.record_slots(keys)
        random_actions = self._rng.integers(0, self._A, size=(B, K), dtype=np.int32)
        fraction = self._fraction
        stored = self._reanalysed_positions > 0
        if not stored or fraction <= 0.0:
            use = np.zeros(B, bool)
        elif fraction >= 1.0:  # no draw: the random stream is the same as without reanalysis
            use = np.ones(B, bool)
        else:
            use = self._rng.random(B) < fraction
        return _Draw(
            slots=t, probability=probability, population=len(self._selector),
            remaining=self._remaining[t].astype(np.int64), keys=keys, positions=positions,
            terminated=self._g_terminated[g], model_version=self._g_model_version[g],
            random_actions=random_actions,
            oldest_counter=int(self._ring.counters(keys, positions).min()),
            targets_epoch=self._targets_epoch, use_reanalysed=use,
            reanalysed_stored=stored and bool(use.any()), newest_version=self._newest_version)

    def _gather(self, draw: _Draw, K: int, n: int, include_unroll_observations: bool) -> _Windows:
        """The windows of W = K + n + 1 consecutive slots from each draw (modulo C by take's
        "wrap"); entries past a record's end hold anything and are masked by the targets."""
        t = draw.slots
        windows = self._ring.windows(t, K + n + 1)
        values = np.take(self._values, windows, mode="wrap")
        policy = np.take(self._policies, windows[:, :K + 1], axis=0, mode="wrap")
        reanalysed = versions = None
        if draw.reanalysed_stored:
            # Per window position: the reanalysed targets where the sample takes them and the
            # position has been reanalysed, else the self-play ones (vectorized; past a
            # record's end the mask reads other records' entries, which the targets never use).
            versions = np.take(self._targets_version, windows, mode="wrap")
            reanalysed = draw.use_reanalysed[:, None] & (versions >= 0)
            if reanalysed.any():
                values = np.where(reanalysed, np.take(self._re_values, windows, mode="wrap"), values)
                policy = np.where(reanalysed[:, :K + 1, None],
                                  np.take(self._re_policies, windows[:, :K + 1], axis=0, mode="wrap"),
                                  policy)
            else:
                reanalysed = versions = None
        return _Windows(
            rewards=np.take(self._rewards, windows, mode="wrap"),
            values=values,
            to_play=np.take(self._to_play, windows, mode="wrap"),
            policy=policy,
            actions=np.take(self._actions, windows[:, :K], mode="wrap"),
            observation=self._obs[t],
            unroll=(np.take(self._obs, windows[:, :K + 1], axis=0, mode="wrap")
                    if include_unroll_observations else None),
            reanalysed=reanalysed, versions=versions)

    def _intact(self, draw: _Draw) -> bool:
        """Whether no write changed a drawn record since `draw` was taken: no slot from its
        oldest position on was given to a newer position, and no targets were rewritten.
        Reads two ints without the lock: writers move them before they change the arrays."""
        return (not self._ring.overwritten(draw.oldest_counter)
                and self._targets_epoch == draw.targets_epoch)

    def sample(self, batch_size: int, num_unroll_steps: int = 0, td_steps: int = 0,
               discount: float = 0.0, include_unroll_observations: bool = False,
               timeout_s: float | None = None) -> Batch:
        """B positions drawn with probability priority^alpha / sum, and their targets.

        K, n and the discount default (0) to the config's. Waits up to `timeout_s` (None:
        forever) while the rate limiter forbids sampling.
        """
        c = self.config
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise invalid(f"batch_size: must be in [1, {MAX_BATCH_SIZE}], got {batch_size}")
        if not 0 <= num_unroll_steps <= MAX_UNROLL_STEPS:
            raise invalid(f"num_unroll_steps: must be in [0, {MAX_UNROLL_STEPS}] (0: the default "
                          f"{c.num_unroll_steps}), got {num_unroll_steps}")
        if not 0 <= td_steps <= MAX_TD_STEPS:
            raise invalid(f"td_steps: must be in [0, {MAX_TD_STEPS}] (0: the default {c.td_steps}), "
                          f"got {td_steps}")
        if not 0 <= discount <= 1:  # also refuses NaN
            raise invalid(f"discount: must be in (0, 1] (0: the default {c.discount}), got {discount}")
        B = batch_size
        K = num_unroll_steps or c.num_unroll_steps
        n = td_steps or c.td_steps
        gamma = float(discount) or c.discount
        nbytes = sample_bytes(self.spec, B, K, n, include_unroll_observations)
        # Refused before anything is allocated or locked. INVALID_ARGUMENT, not
        # RESOURCE_EXHAUSTED: retrying cannot help, the request must change (clients retry the
        # latter as "busy").
        if nbytes > c.max_sample_bytes:
            raise invalid(
                f"batch_size: B = {B} with K = {K}, n = {n}"
                f"{', unroll observations' if include_unroll_observations else ''} would build "
                f"about {nbytes / MIB:.1f} MiB of arrays, over the limit max_sample_bytes = "
                f"{c.max_sample_bytes} ({c.max_sample_bytes / MIB:g} MiB); ask for fewer "
                f"positions or a smaller K or n")
        if self._limiter.block_inserts and B > 2 * c.error_buffer:
            # E < D < B - E would hold both this sampler and every insert for good.
            raise invalid(
                f"batch_size: B = {B} > 2 x error_buffer = {2 * c.error_buffer:g} while inserts "
                f"wait for the rate limiter (block_inserts): this sampler and the inserts could "
                f"both wait forever; ask for at most {int(2 * c.error_buffer)} positions or "
                f"start the replay with --error-buffer >= {B / 2:g}")
        A = self._A
        with self._changed:
            self._limiter.await_can_sample(B, timeout_s)
            draw = self._draw(B, K)
            self._samples += B
            self._sample_batches += 1
            self._limiter.sample(B)
        windows = self._gather(draw, K, n, include_unroll_observations)  # outside the lock
        if not self._intact(draw):
            # A write reused a drawn record's slots (or rewrote its targets) while they were
            # read: draw again, and gather under the lock this time.
            with self._lock:
                self.sample_retries += 1
                draw = self._draw(B, K)
                windows = self._gather(draw, K, n, include_unroll_observations)
        # Targets, outside the lock.
        # N P(i) underflows to 0 only for a weight below ~1e-308 of the total (drawn with that
        # probability); the floor keeps its weight finite, so the batch's max is never inf.
        weights = np.power(np.maximum(draw.population * draw.probability, np.finfo(np.float64).tiny),
                           -self._beta)
        weights /= weights.max()
        remaining = draw.remaining
        inside = np.arange(K + 1)[None, :] < remaining[:, None]
        policy = windows.policy
        policy_real = inside & (policy.sum(axis=-1) > 0)
        policy = np.where(policy_real[:, :, None], policy, np.float32(1.0 / A))
        actions = np.where(np.arange(K)[None, :] < remaining[:, None], windows.actions,
                           draw.random_actions)
        unroll = windows.unroll
        if unroll is not None:
            unroll = np.where(inside.reshape(inside.shape + (1,) * (unroll.ndim - 2)), unroll, 0)
            unroll = unroll.astype(np.float32)
        # Whose targets: a sample takes a reanalysis where its position t was reanalysed (and
        # its draw chose reanalysed targets). The version behind u's targets: u's reanalysis
        # where it is used, else the model that played the record.
        if windows.reanalysed is not None:
            reanalysed = windows.reanalysed[:, 0].copy()
        else:
            reanalysed = np.zeros(B, bool)
        per_step = c.td_age_versions_per_step
        horizon = None
        if per_step:
            version_u = np.broadcast_to(draw.model_version[:, None], (B, K + 1))
            if windows.reanalysed is not None:
                version_u = np.where(windows.reanalysed[:, :K + 1], windows.versions[:, :K + 1],
                                     version_u)
            horizon = off_policy_td_steps(n, draw.newest_version - version_u, per_step)
        return Batch(
            observation=windows.observation.astype(np.float32),
            actions=actions.astype(np.int32),
            target_value=value_targets(windows.rewards, windows.values, windows.to_play, remaining,
                                       draw.terminated, K, n, gamma, horizon),
            target_reward=reward_targets(windows.rewards, remaining, K, c.value_prefix,
                                         c.value_prefix_horizon),
            target_policy=policy.astype(np.float32, copy=False),
            mask=unroll_mask(remaining, K),
            policy_mask=policy_real.astype(np.float32),
            importance_weight=weights.astype(np.float32),
            record_keys=draw.keys.astype(np.int64),
            positions=draw.positions.astype(np.int32),
            model_version=draw.model_version.astype(np.int64),
            unroll_observations=unroll,
            value_prefix=c.value_prefix, num_unroll_steps=K, td_steps=n, discount=gamma,
            value_prefix_horizon=c.value_prefix_horizon if c.value_prefix else 0,
            reanalysed=reanalysed,
            value_td_steps=(np.full((B, K + 1), n, np.int32) if horizon is None
                            else horizon.astype(np.int32)))

    def release_waiters(self) -> None:
        """Wakes every sampler and inserter waiting on the rate limiter with UNAVAILABLE (at
        shutdown, so that the server's in-flight calls finish promptly); later waits fail the
        same way."""
        with self._changed:
            self._limiter.cancel()

    # --- reads -------------------------------------------------------------------------------

    def _game(self, key: int) -> StoredGame:
        slots = self._ring.slots(key)
        g = key % self._C
        game_id, episode_id = self._g_ids[key]
        versions = self._targets_version[slots]
        done = versions >= 0
        game = GameArrays(
            id=game_id, episode_id=episode_id, first_move=int(self._g_first_move[g]),
            observations=self._obs[slots], actions=self._actions[slots],
            rewards=self._rewards[slots], to_play=self._to_play[slots].astype(np.int32),
            root_values=np.where(done, self._re_values[slots], self._values[slots]),
            policies=np.where(done[:, None], self._re_policies[slots], self._policies[slots]),
            legal_actions=self._legal[slots], model_version=int(self._g_model_version[g]),
            num_sampleable=int(self._ring.num_sampleable[g]), terminated=bool(self._g_terminated[g]))
        return StoredGame(key, game, int(self._g_targets_version[g]), versions)

    def _order_keys(self, order: str, chosen: int) -> np.ndarray:
        """Holds `_lock`. int64 [chosen]: the keys of `chosen` distinct live records in
        `order` (one of SAMPLE_GAMES_ORDERS). uniform and newest_first cost O(chosen);
        oldest_targets_first and prioritized read one number per live record (O(records), not
        O(positions): the per-record minimum targets versions and priority sums are kept
        running by the writers)."""
        ring = self._ring
        count = ring.num_records
        if order == "newest_first":
            return np.arange(ring.last_key, ring.last_key - chosen, -1, dtype=np.int64)
        if order == "uniform":
            return ring.first_key + self._rng.choice(count, chosen, replace=False)
        live = ring.live_keys()
        g = ring.record_slots(live)
        if order == "oldest_targets_first":
            versions = self._g_targets_version[g]
            # the chosen smallest versions, ties by the oldest key: every version below the
            # chosen-th smallest, then the oldest of those equal to it (O(records), no sort of
            # them all), sorted by (version, key)
            kth = np.partition(versions, chosen - 1)[chosen - 1]
            below = np.flatnonzero(versions < kth)
            equal = np.flatnonzero(versions == kth)[:chosen - len(below)]
            picked = np.concatenate([below, equal])
            picked = picked[np.lexsort((picked, versions[picked]))]
            return live[picked]
        # prioritized: without replacement, P(record) proportional to its priority sum: an
        # exponential race (the `chosen` smallest Exp(1) / w, in that order); records whose sum
        # is 0 come after all others, in a uniform order
        weights = self._g_priority_sum[g]
        positive = np.flatnonzero(weights > 0)
        race = self._rng.exponential(size=len(positive)) / weights[positive]
        if chosen < len(positive):
            part = np.argpartition(race, chosen - 1)[:chosen]
            picked = positive[part[np.argsort(race[part], kind="stable")]]
        else:
            zero = np.flatnonzero(~(weights > 0))
            picked = np.concatenate([positive[np.argsort(race, kind="stable")],
                                     self._rng.permutation(zero)[:chosen - len(positive)]])
        return live[picked]

    def sample_games(self, num_games: int, order: str = "uniform") -> list[StoredGame]:
        """Up to `num_games` whole records with their current targets, in `order` (see
        SAMPLE_GAMES_ORDERS and protos/replay.proto's SampleGamesRequest.Order): "uniform" (a
        uniform draw without replacement), "newest_first", "oldest_targets_first" (smallest
        minimum targets version first, ties by the oldest key), "prioritized" (without
        replacement, by each record's sum of priorities). Records are taken in that order while
        their messages fit in `max_sample_bytes` (and the send limit), at least one: a reply may
        hold fewer."""
        if order not in SAMPLE_GAMES_ORDERS:
            raise invalid(f"order: {order!r} is not one of {', '.join(SAMPLE_GAMES_ORDERS)}")
        if num_games < 1:
            raise invalid(f"num_games: must be >= 1, got {num_games}")
        budget = min(self.config.max_sample_bytes, self.config.send_limit - MESSAGE_SLACK_BYTES)
        with self._lock:
            ring = self._ring
            chosen = min(num_games, ring.num_records)
            keys = self._order_keys(order, chosen) if chosen else np.zeros(0, np.int64)
            per_position = position_bytes(self.spec)
            taken: list[StoredGame] = []
            total = 0
            for key in keys.tolist():
                game_id, episode_id = self._g_ids[key]
                size = (int(ring.length[key % self._C]) * per_position + RECORD_HEADER_BYTES
                        + len(game_id.encode()) + len(episode_id.encode()))
                if taken and total + size > budget:
                    break
                if size > self.config.send_limit - MESSAGE_SLACK_BYTES:
                    raise ReplayError("RESOURCE_EXHAUSTED",
                                      f"num_games: record {game_id!r} is {size} bytes, over the "
                                      f"send limit {self.config.send_limit} (max_send_bytes)")
                total += size
                taken.append(self._game(key))
            return taken

    def get_game(self, game_id: str) -> StoredGame:
        """A stored record by id; NOT_FOUND if it is not stored."""
        with self._lock:
            key = self._keys_by_id.get(game_id)
            if key is None:
                raise not_found(f"game_id: no stored record {game_id!r} (never added, or evicted)")
            return self._game(key)

    def priorities(self, game_id: str) -> np.ndarray:
        """float64 [T]: the current priorities of a stored record (0 for look-ahead context)."""
        with self._lock:
            key = self._keys_by_id.get(game_id)
            if key is None:
                raise not_found(f"game_id: no stored record {game_id!r} (never added, or evicted)")
            return self._priority[self._ring.slots(key)]

    @property
    def num_games(self) -> int:
        return len(self._g_ids)

    @property
    def num_positions(self) -> int:
        """Sampleable positions stored."""
        return self._ring.sampleable

    @property
    def stored_positions(self) -> int:
        return self._ring.stored

    @property
    def reanalysed_positions(self) -> int:
        """Stored positions whose targets have been reanalysed."""
        return self._reanalysed_positions

    @property
    def rate_limited_total(self) -> int:
        """Samples that had to wait for the rate limiter, since this process started."""
        return self._limiter.waited_total

    @property
    def inserts_waiting(self) -> int:
        """Adds waiting for the rate limiter now (a read of one int: no lock needed)."""
        return self._limiter.inserts_waiting

    @property
    def insert_rate_limited_total(self) -> int:
        """Adds that the rate limiter did not allow at once, since this process started."""
        return self._limiter.insert_waited_total

    def stats(self) -> Stats:
        """Contents and counters, from running counts (O(model versions + RECENT_GAMES), not
        O(records)); the reanalysed positions and their mean age too."""
        c = self.config
        with self._lock:
            recent = np.array(self._recent, np.float64).reshape(-1, 2)
            return Stats(
                game=c.spec.name, games=len(self._g_ids), positions=self._ring.sampleable,
                stored_positions=self._ring.stored, capacity=self._C,
                games_per_model_version=dict(sorted(self._games_per_version.items())),
                recent_games=len(recent),
                recent_mean_return=float(recent[:, 0].mean()) if len(recent) else 0.0,
                recent_max_return=float(recent[:, 0].max()) if len(recent) else 0.0,
                recent_mean_length=float(recent[:, 1].mean()) if len(recent) else 0.0,
                games_added_total=self._games_added, inserts_total=self._inserts,
                samples_total=self._samples, sample_batches_total=self._sample_batches,
                duplicates_total=self._duplicates, evicted_games_total=self._evicted_games,
                rate_limited_total=self._limiter.waited_total, min_positions=c.min_positions,
                block_inserts=self._limiter.block_inserts,
                inserts_waiting=self._limiter.inserts_waiting,
                insert_rate_limited_total=self._limiter.insert_waited_total,
                samples_per_insert=c.samples_per_insert, error_buffer=c.error_buffer,
                max_priority=self._max_priority, priority_alpha=c.priority_alpha,
                priority_beta=c.priority_beta, reanalysed_positions=self._reanalysed_positions,
                reanalysed_mean_age=(self._newest_version - self._reanalysed_version_sum
                                     / self._reanalysed_positions
                                     if self._reanalysed_positions else 0.0),
                newest_model_version=self._newest_version)

    # --- shutdown ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ReplayError("UNAVAILABLE", "replay buffer is closed (server shutting down)")

    def close(self) -> None:
        """Writes pending priorities, checkpoints and closes the database. Idempotent."""
        self.release_waiters()
        self._stop_flusher.set()
        if self._flusher.is_alive() and threading.current_thread() is not self._flusher:
            self._flusher.join()
        if self._closed:
            return
        self.flush_priorities()
        with self._write_lock, self._flush_lock:
            self._closed = True
            try:
                self._priorities.close()
            finally:
                self._db.close()

    def __enter__(self) -> "ReplayBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
