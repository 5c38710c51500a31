"""The replay buffer: durable records (SQLite) mirrored in NumPy ring arrays for fast sampling.

Memory layout. Every stored position lives in one slot of ring arrays of `capacity` slots
(observation, action, reward, to-play, root value, policy, legal mask, positions left in its
record, its record's key, priority). Records occupy consecutive slots (modulo capacity) in the
order they were added and leave oldest first, so the live slots are one contiguous run and a
new record always lands on free or just-evicted slots. Record keys are consecutive integers and
the live records are always the keys [first_key, last_key], so per-record metadata sits in a
second ring indexed by `key % capacity`, and a (key, position) pair maps to its slot with array
arithmetic.

Locks. `_lock` (with the condition `_changed`) guards the memory; sampling holds it only while
it draws indices and gathers windows, the target arithmetic runs outside. `_write_lock`
serialises the writers (add, update_targets, the priority flush) so that each one's SQLite
transaction and memory update happen in the same order; it is always taken before `_lock`.
A write commits to SQLite first and updates memory after, so an acknowledged add is on disk and
a crash never leaves memory ahead of disk.

Bounds. Priorities lie in [0, priority_limit] (checked on update, repaired on load), so the
running max, the weights and the importance weights stay finite; a sample is refused before it
allocates more than max_sample_bytes; the database keeps the ids of the newest id_window records
only (docs/replay.md, Limits and Idempotence).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

import numpy as np

from services.common.logs import EventLogger
from services.replay.config import MESSAGE_SLACK_BYTES, MIB, ReplayConfig
from services.replay.records import (RECORD_HEADER_BYTES, ReplayError, invalid, not_found,
                                     position_bytes, sample_bytes)
from services.replay.storage import GameDatabase
from services.replay.targets import reward_targets, unroll_mask, value_targets
from services.replay.wire import AddResult, Batch, GameArrays, Stats, StoredGame

RECENT_GAMES = 100
MAX_BATCH_SIZE = 1 << 16
MAX_UNROLL_STEPS = 1000
MAX_TD_STEPS = 10_000


def bounded_priorities(priorities: np.ndarray, limit: float) -> np.ndarray:
    """`priorities` if every one is in [0, limit]; else a float64 copy with NaN and values over
    the limit set to `limit` (so they are drawn soon and get a real priority) and negative ones
    to 0. For priorities loaded from disk, which the API's checks did not always bound."""
    if np.all((priorities >= 0) & (priorities <= limit)):
        return priorities
    return np.where(np.isnan(priorities), limit, np.clip(priorities, 0.0, limit))


class ReplayBuffer:
    """Stores records durably in `config.data_dir` and samples training targets from memory.

    Thread-safe. On construction the memory is rebuilt from the database (evicting the oldest
    records first if the capacity shrank). `close()` writes the pending priorities and closes
    the database.

    Args:
      config: storage, sampling and rate-limit settings.
      log: where events go (loaded, evicted_at_start, priorities_flush_failed); None: nowhere.
      clock: monotonic seconds (rate-limiter waits).
    """

    def __init__(self, config: ReplayConfig, log: EventLogger | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.spec = config.spec
        self.log = log
        self._clock = clock
        C, A = config.capacity, config.spec.num_actions
        self._C, self._A = C, A
        self._alpha, self._beta = config.priority_alpha, config.priority_beta
        self._rng = np.random.default_rng(config.seed)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when positions are added
        self._write_lock = threading.Lock()
        # Position ring: slot = ring counter % C.
        obs_dtype = np.dtype(config.spec.observation_dtype)
        self._obs = np.zeros((C, *config.spec.observation_shape), obs_dtype)
        self._actions = np.zeros(C, np.int32)
        self._rewards = np.zeros(C, np.float32)
        self._to_play = np.zeros(C, np.int8)
        self._values = np.zeros(C, np.float32)
        self._policies = np.zeros((C, A), np.float32)
        self._legal = np.zeros((C, A), bool)
        self._remaining = np.zeros(C, np.int32)  # T - position: slots of the record from here on
        self._position = np.zeros(C, np.int32)
        self._key = np.zeros(C, np.int64)
        self._priority = np.zeros(C, np.float64)
        self._weight = np.zeros(C, np.float64)  # priority ** alpha where sampleable and live, else 0
        self._sampleable_slot = np.zeros(C, bool)  # live and position < its num_sampleable
        self._cumulative: np.ndarray | None = None  # cumsum of _weight, rebuilt lazily
        # Record ring: slot = key % C (live keys span at most C consecutive integers).
        self._g_start = np.zeros(C, np.int64)  # ring counter of the record's first position
        self._g_length = np.zeros(C, np.int64)
        self._g_sampleable = np.zeros(C, np.int64)
        self._g_model_version = np.zeros(C, np.int64)
        self._g_targets_version = np.zeros(C, np.int64)
        self._g_terminated = np.zeros(C, bool)
        self._g_first_move = np.zeros(C, np.int64)
        self._g_ids: dict[int, tuple[str, str]] = {}  # key -> (id, episode_id), live records
        self._keys_by_id: dict[str, int] = {}  # live records
        self._next_counter = 0  # ring counter of the next position to store
        self._first_key = 1  # live records are keys [first_key, last_key]
        self._last_key = 0
        self._stored = 0  # live positions, context included
        self._sampleable = 0  # live sampleable positions
        self._max_priority = 1.0
        self._dirty_priorities: set[int] = set()
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=RECENT_GAMES)
        # Counters since this process started.
        self._games_added = 0
        self._inserts = 0
        self._samples = 0
        self._sample_batches = 0
        self._duplicates = 0
        self._evicted_games = 0
        self._rate_limited = 0
        # Rate limiter: positions inserted and sampled, as the limiter counts them.
        self._limit_inserts = 0.0
        self._limit_samples = 0.0
        self._waiters_released = False
        self._waiting = 0  # samplers waiting on the rate limiter
        self.max_waiting_samplers = max(1, config.max_workers // 2)
        self._closed = False
        self._db = GameDatabase(config.data_dir, config.spec, config.synchronous)
        self._load()
        self._stop_flusher = threading.Event()
        self._flusher = threading.Thread(target=self._flush_forever, name="replay-priorities",
                                         daemon=True)
        self._flusher.start()

    # --- start-up ----------------------------------------------------------------------------

    def _load(self) -> None:
        started = time.perf_counter()
        lengths = self._db.live_lengths()
        self._last_key = self._db.last_key()
        keys = np.array([k for k, _ in lengths], np.int64)
        if len(keys) and (keys[-1] != self._last_key or np.any(np.diff(keys) != 1)):
            raise RuntimeError(f"{self._db.path}: live records are not the newest consecutive keys "
                               f"(keys {keys[0]}..{keys[-1]}, last key {self._last_key})")
        sizes = np.array([n for _, n in lengths], np.int64)
        evict = self._eviction_count(sizes, 0)
        if evict:
            self._db.evict(int(keys[0]), int(keys[evict - 1]))
            self._log("evicted_at_start", games=evict, positions=int(sizes[:evict].sum()),
                      capacity=self._C)
        self._first_key = int(keys[evict]) if evict < len(keys) else self._last_key + 1
        limit = self.config.priority_limit
        repaired: dict[int, np.ndarray] = {}
        loaded_max = 0.0
        for stored in self._db.load(self._first_key):
            priorities = bounded_priorities(stored.priorities, limit)
            if priorities is not stored.priorities:
                repaired[stored.key] = priorities.astype(np.float32)
            if stored.game.num_sampleable:
                loaded_max = max(loaded_max, float(priorities[:stored.game.num_sampleable].max()))
            self._append(stored.key, stored.game, priorities, stored.targets_model_version)
            self._recent.append((stored.game.player0_return(), stored.game.num_sampleable))
        stored_max = self._db.max_priority()
        # The running max only grows from 1.0; one that is not a number in [1, limit] (written
        # before priorities were bounded, or above a lowered limit) would let every new position
        # enter at inf or NaN, so it is repaired here and on disk.
        self._max_priority = min(limit, stored_max if stored_max >= 1.0 else max(1.0, loaded_max))
        if repaired or not self._max_priority == stored_max:
            self._db.update_priorities(repaired, self._max_priority)
            self._log("priorities_repaired", records=len(repaired), max_priority_was=repr(stored_max),
                      max_priority=self._max_priority, priority_limit=limit)
        removed = self._db.forget_ids(min(self._last_key - self.config.id_window, self._first_key - 1))
        if removed:
            self._log("ids_forgotten", records=removed, id_window=self.config.id_window)
        # The limiter starts balanced: loaded positions count as inserted and as already sampled
        # at the target ratio, so a restarted trainer neither waits for min_positions new
        # positions nor replays a burst of old ones.
        self._limit_inserts = float(self._sampleable)
        self._limit_samples = max(0.0, self.config.samples_per_insert
                                  * (self._sampleable - self.config.min_positions))
        self._log("loaded", games=self.num_games, positions=self._sampleable,
                  stored_positions=self._stored, last_key=self._last_key,
                  seconds=round(time.perf_counter() - started, 3))

    def _log(self, event: str, **fields) -> None:
        if self.log is not None:
            self.log.info(event, **fields)

    def _eviction_count(self, sizes: np.ndarray, stored: int) -> int:
        """How many of the oldest of `sizes` (live records then new ones, oldest first) must go
        so that the rest fits the capacity; `stored` counts positions not in `sizes`."""
        excess = stored + int(sizes.sum()) - self._C
        if excess <= 0:
            return 0
        return int(np.searchsorted(np.cumsum(sizes), excess, side="left")) + 1

    # --- memory updates (hold _lock) ---------------------------------------------------------

    def _slots(self, key: int) -> np.ndarray:
        g = key % self._C
        return (self._g_start[g] + np.arange(self._g_length[g])) % self._C

    def _append(self, key: int, game: GameArrays, priorities: np.ndarray, targets_version: int) -> None:
        T, ns = game.length, game.num_sampleable
        steps = np.arange(T)
        slots = (self._next_counter + steps) % self._C
        self._obs[slots] = game.observations
        self._actions[slots] = game.actions
        self._rewards[slots] = game.rewards
        self._to_play[slots] = game.to_play
        self._values[slots] = game.root_values
        self._policies[slots] = game.policies
        self._legal[slots] = game.legal_actions
        self._remaining[slots] = T - steps
        self._position[slots] = steps
        self._key[slots] = key
        sampleable = steps < ns
        priorities = np.where(sampleable, np.asarray(priorities, np.float64), 0.0)
        self._priority[slots] = priorities
        self._weight[slots] = np.where(sampleable, np.power(priorities, self._alpha), 0.0)
        self._sampleable_slot[slots] = sampleable
        g = key % self._C
        self._g_start[g] = self._next_counter
        self._g_length[g] = T
        self._g_sampleable[g] = ns
        self._g_model_version[g] = game.model_version
        self._g_targets_version[g] = targets_version
        self._g_terminated[g] = game.terminated
        self._g_first_move[g] = game.first_move
        self._g_ids[key] = (game.id, game.episode_id)
        self._keys_by_id[game.id] = key
        self._next_counter += T
        self._stored += T
        self._sampleable += ns
        self._cumulative = None

    def _evict_through(self, last: int) -> int:
        """Drops the records with keys <= last (live ones from memory; new ones of the add in
        progress are simply never appended); returns how many live records were dropped."""
        if last < self._first_key:
            return 0
        keys = np.arange(self._first_key, min(last, self._last_key) + 1)
        self._first_key = last + 1
        self._cumulative = None
        if not len(keys):
            return 0
        g = keys % self._C
        count = int(self._g_length[g].sum())
        slots = (self._g_start[keys[0] % self._C] + np.arange(count)) % self._C
        self._weight[slots] = 0.0
        self._priority[slots] = 0.0
        self._sampleable_slot[slots] = False
        self._stored -= count
        self._sampleable -= int(self._g_sampleable[g].sum())
        for key in keys.tolist():
            game_id, _ = self._g_ids.pop(key)
            del self._keys_by_id[game_id]
            self._dirty_priorities.discard(key)
        return len(keys)

    # --- writes ------------------------------------------------------------------------------

    def add_games(self, games: list[GameArrays]) -> AddResult:
        """Stores the records (validated, e.g. by `records.decode_many`) durably, then in memory.

        A record whose id is stored, or remembered (an evicted record among the newest
        `id_window` keys), or that repeats an id of this call, is a duplicate and is not stored
        again. Evicts the oldest records in the same transaction if the capacity would be
        exceeded.
        """
        for i, game in enumerate(games):
            if game.length > self._C:
                raise invalid(f"games[{i}].observations: T = {game.length} positions exceed the "
                              f"capacity {self._C}")
        with self._write_lock:
            self._check_open()
            existing = self._db.existing_keys([g.id for g in games])
            keys: list[int] = []
            new: list[tuple[int, GameArrays]] = []
            for game in games:
                key = existing.get(game.id)
                if key is None:
                    key = self._last_key + 1 + len(new)
                    existing[game.id] = key
                    new.append((key, game))
                keys.append(key)
            duplicates = len(games) - len(new)
            with self._lock:
                live = np.arange(self._first_key, self._last_key + 1)
                sizes = np.concatenate([self._g_length[live % self._C],
                                        np.array([g.length for _, g in new], np.int64)])
                max_priority = self._max_priority
            evict = self._eviction_count(sizes, 0)
            all_keys = np.concatenate([live, np.array([k for k, _ in new], np.int64)])
            evict_range = (int(all_keys[0]), int(all_keys[evict - 1])) if evict else None
            records = [(key, game, np.where(np.arange(game.length) < game.num_sampleable,
                                            max_priority, 0.0).astype(np.float32))
                       for key, game in new]
            if new or evict_range:
                # Ids of evicted records older than the newest id_window keys are forgotten in
                # the same transaction: the tombstones stay bounded (docs/replay.md, Idempotence).
                # Below the first live key every row is a tombstone, so the delete reads only
                # the rows it deletes.
                newest = new[-1][0] if new else self._last_key
                first_live = evict_range[1] + 1 if evict_range else self._first_key
                self._db.add(records, evict_range,
                             forget_through=min(newest - self.config.id_window, first_live - 1))
                # committed: from here on the add is durable
            with self._changed:
                if evict_range:
                    self._evict_through(evict_range[1])
                for key, game, priorities in records:
                    if not evict_range or key > evict_range[1]:
                        self._append(key, game, priorities, game.model_version)
                    self._recent.append((game.player0_return(), game.num_sampleable))
                if new:
                    self._last_key = new[-1][0]
                inserted = sum(g.num_sampleable for _, g in new)
                self._games_added += len(new)
                self._inserts += inserted
                self._limit_inserts += inserted
                self._duplicates += duplicates
                self._evicted_games += evict
                self._changed.notify_all()
        return AddResult(added=len(new), duplicates=duplicates, keys=keys, evicted=evict,
                         positions_added=inserted)

    def update_targets(self, game_id: str, positions: np.ndarray, root_values: np.ndarray,
                       policies: np.ndarray, model_version: int) -> int:
        """Replaces root values and policies at `positions` of a stored record (reanalyse);
        returns how many. NOT_FOUND for a record that is not stored."""
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
        with self._write_lock:
            self._check_open()
            with self._lock:
                key = self._keys_by_id.get(game_id)
                if key is None:
                    raise not_found(f"game_id: no stored record {game_id!r} (never added, or evicted)")
                slots = self._slots(key)
                T = len(slots)
                if P and (positions.min() < 0 or positions.max() >= T):
                    raise invalid(f"positions: must be in [0, T = {T}) for record {game_id!r}, got "
                                  f"{positions[(positions < 0) | (positions >= T)][0]}")
                values = self._values[slots].copy()
                new_policies = self._policies[slots].copy()
            values[positions] = root_values.astype(np.float32)
            new_policies[positions] = policies.astype(np.float32)
            self._db.update_targets(key, values, new_policies, model_version)
            with self._lock:  # the record is still live: evictions take the write lock
                self._values[slots] = values
                self._policies[slots] = new_policies
                self._g_targets_version[key % self._C] = model_version
        return P

    def update_priorities(self, record_keys: np.ndarray, positions: np.ndarray,
                          priorities: np.ndarray) -> tuple[int, int]:
        """Sets the priorities of (key, position) pairs; returns (updated, skipped): pairs of
        records evicted since they were sampled are skipped. Persisted lazily (flush thread)."""
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
            never = (keys < 1) | (keys > self._last_key)
            if np.any(never):
                raise not_found(f"record_keys: key {keys[never][0]} was never issued by this buffer")
            live = keys >= self._first_key
            g = keys[live] % self._C
            pos = positions[live]
            bad = (pos < 0) | (pos >= self._g_sampleable[g])
            if np.any(bad):
                i = int(np.flatnonzero(bad)[0])
                raise invalid(f"positions: position {pos[i]} of record key {keys[live][i]} is not "
                              f"sampleable (must be in [0, {self._g_sampleable[g][i]}))")
            slots = (self._g_start[g] + pos) % self._C
            p = priorities[live]
            self._priority[slots] = p
            self._weight[slots] = np.power(p, self._alpha)
            if len(p):  # p <= priority_limit, so the running max stays bounded by it
                self._max_priority = max(self._max_priority, float(p.max()))
            self._dirty_priorities.update(np.unique(keys[live]).tolist())
            self._cumulative = None
            updated = int(live.sum())
        return updated, P - updated

    def flush_priorities(self) -> int:
        """Writes the priorities changed since the last flush; returns how many records."""
        with self._write_lock:
            if self._closed:
                return 0
            with self._lock:
                dirty = sorted(self._dirty_priorities)
                self._dirty_priorities.clear()
                snapshot = {key: self._priority[self._slots(key)].astype(np.float32) for key in dirty}
                max_priority = self._max_priority
            if snapshot:
                self._db.update_priorities(snapshot, max_priority)
        return len(snapshot)

    def _flush_forever(self) -> None:
        while not self._stop_flusher.wait(self.config.priorities_flush_s):
            try:
                self.flush_priorities()
            except Exception as error:  # keep serving; the next flush retries the new changes
                if self.log is not None:
                    self.log.error("priorities_flush_failed", error=repr(error))

    # --- sampling ----------------------------------------------------------------------------

    def _allowed(self, batch_size: int) -> bool:
        if self._sampleable < max(1, self.config.min_positions):
            return False
        spi = self.config.samples_per_insert
        if spi <= 0:
            return True
        return (self._limit_samples + batch_size
                <= spi * (self._limit_inserts - self.config.min_positions) + self.config.error_buffer)

    def _limiter_state(self, batch_size: int) -> str:
        c = self.config
        if self._sampleable < max(1, c.min_positions):
            return (f"positions={self._sampleable} sampleable positions stored < "
                    f"min_positions={max(1, c.min_positions)}")
        return (f"samples_per_insert={c.samples_per_insert:g}: {self._limit_samples:.0f} positions "
                f"sampled + batch_size={batch_size} > samples_per_insert * ({self._limit_inserts:.0f} "
                f"inserted - min_positions={c.min_positions}) + error_buffer={c.error_buffer:g}; "
                f"positions={self._sampleable}")

    def _wait_until_allowed(self, batch_size: int, timeout_s: float | None) -> None:
        """Holds `_lock`. Waits for the rate limiter; DEADLINE_EXCEEDED after `timeout_s`.

        At most `max_waiting_samplers` calls wait at once (each holds one of the server's
        threads); more get RESOURCE_EXHAUSTED at once, so that adds always find a thread.
        """
        if self._allowed(batch_size):
            return
        self._rate_limited += 1
        if self._waiting >= self.max_waiting_samplers:
            raise ReplayError("RESOURCE_EXHAUSTED",
                              f"rate limiter: {self._waiting} SampleBatch calls are already waiting "
                              f"(the most allowed); sampling is not allowed: "
                              f"{self._limiter_state(batch_size)}")
        started = self._clock()
        self._waiting += 1
        try:
            while not self._allowed(batch_size):
                if self._waiters_released:
                    raise ReplayError("UNAVAILABLE", "replay server is shutting down; sample again "
                                                     "from another server or after the restart")
                left = None if timeout_s is None else timeout_s - (self._clock() - started)
                if left is not None and left <= 0:
                    raise ReplayError("DEADLINE_EXCEEDED",
                                      f"rate limiter: waited {self._clock() - started:.2f}s and "
                                      f"sampling is still not allowed: {self._limiter_state(batch_size)}")
                self._changed.wait(left)
        finally:
            self._waiting -= 1

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
        W = K + n + 1
        C, A = self._C, self._A
        with self._changed:
            self._wait_until_allowed(B, timeout_s)
            if self._cumulative is None:
                self._cumulative = np.cumsum(self._weight)
            cumulative = self._cumulative
            total = float(cumulative[-1])
            if total > 0:
                draws = np.minimum(self._rng.random(B) * total, np.nextafter(total, 0.0))
                t = np.searchsorted(cumulative, draws, side="right")
                probability = self._weight[t] / total
            else:  # every priority is 0: uniform over the sampleable positions
                sampleable = np.flatnonzero(self._sampleable_slot)
                t = self._rng.choice(sampleable, B)
                probability = np.full(B, 1.0 / len(sampleable))
            N = self._sampleable
            windows = t[:, None] + np.arange(W)[None, :]  # slots, modulo C by take's "wrap"
            remaining = self._remaining[t].astype(np.int64)
            rewards_w = np.take(self._rewards, windows, mode="wrap")
            values_w = np.take(self._values, windows, mode="wrap")
            to_play_w = np.take(self._to_play, windows, mode="wrap")
            policy = np.take(self._policies, windows[:, :K + 1], axis=0, mode="wrap")
            actions = np.take(self._actions, windows[:, :K], mode="wrap")
            observation = self._obs[t]
            unroll = (np.take(self._obs, windows[:, :K + 1], axis=0, mode="wrap")
                      if include_unroll_observations else None)
            keys = self._key[t]
            g = keys % C
            terminated = self._g_terminated[g]
            model_version = self._g_model_version[g]
            positions = self._position[t]
            random_actions = self._rng.integers(0, A, size=(B, K), dtype=np.int32)
            self._samples += B
            self._sample_batches += 1
            self._limit_samples += B
        # Targets, outside the lock.
        # N P(i) underflows to 0 only for a weight below ~1e-308 of the total (drawn with that
        # probability); the floor keeps its weight finite, so the batch's max is never inf.
        weights = np.power(np.maximum(N * probability, np.finfo(np.float64).tiny), -self._beta)
        weights /= weights.max()
        inside = np.arange(K + 1)[None, :] < remaining[:, None]
        policy_real = inside & (policy.sum(axis=-1) > 0)
        policy = np.where(policy_real[:, :, None], policy, np.float32(1.0 / A))
        actions = np.where(np.arange(K)[None, :] < remaining[:, None], actions, random_actions)
        if unroll is not None:
            unroll = np.where(inside.reshape(inside.shape + (1,) * (unroll.ndim - 2)), unroll, 0)
            unroll = unroll.astype(np.float32)
        return Batch(
            observation=observation.astype(np.float32),
            actions=actions.astype(np.int32),
            target_value=value_targets(rewards_w, values_w, to_play_w, remaining, terminated, K, n, gamma),
            target_reward=reward_targets(rewards_w, remaining, K, c.value_prefix),
            target_policy=policy.astype(np.float32, copy=False),
            mask=unroll_mask(remaining, K),
            policy_mask=policy_real.astype(np.float32),
            importance_weight=weights.astype(np.float32),
            record_keys=keys.astype(np.int64),
            positions=positions.astype(np.int32),
            model_version=model_version.astype(np.int64),
            unroll_observations=unroll,
            value_prefix=c.value_prefix, num_unroll_steps=K, td_steps=n, discount=gamma)

    def release_waiters(self) -> None:
        """Wakes every sampler waiting on the rate limiter with UNAVAILABLE (at shutdown, so
        that the server's in-flight calls finish promptly); later waits fail the same way."""
        with self._changed:
            self._waiters_released = True
            self._changed.notify_all()

    # --- reads -------------------------------------------------------------------------------

    def _game(self, key: int) -> StoredGame:
        slots = self._slots(key)
        g = key % self._C
        game_id, episode_id = self._g_ids[key]
        game = GameArrays(
            id=game_id, episode_id=episode_id, first_move=int(self._g_first_move[g]),
            observations=self._obs[slots], actions=self._actions[slots],
            rewards=self._rewards[slots], to_play=self._to_play[slots].astype(np.int32),
            root_values=self._values[slots], policies=self._policies[slots],
            legal_actions=self._legal[slots], model_version=int(self._g_model_version[g]),
            num_sampleable=int(self._g_sampleable[g]), terminated=bool(self._g_terminated[g]))
        return StoredGame(key, game, int(self._g_targets_version[g]))

    def sample_games(self, num_games: int, newest_first: bool = False) -> list[StoredGame]:
        """Up to `num_games` whole records with their current targets: the newest first, or a
        uniform draw without replacement. Records are taken while their messages fit in
        `max_sample_bytes` (and the send limit), at least one: a reply may hold fewer."""
        if num_games < 1:
            raise invalid(f"num_games: must be >= 1, got {num_games}")
        budget = min(self.config.max_sample_bytes, self.config.send_limit - MESSAGE_SLACK_BYTES)
        with self._lock:
            count = self._last_key - self._first_key + 1 if self._g_ids else 0
            chosen = min(num_games, count)
            if newest_first:
                keys = np.arange(self._last_key, self._last_key - chosen, -1)
            else:
                keys = self._first_key + self._rng.choice(count, chosen, replace=False)
            per_position = position_bytes(self.spec)
            taken: list[StoredGame] = []
            total = 0
            for key in keys.tolist():
                game_id, episode_id = self._g_ids[key]
                size = (int(self._g_length[key % self._C]) * per_position + RECORD_HEADER_BYTES
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
            return self._priority[self._slots(key)]

    @property
    def num_games(self) -> int:
        return len(self._g_ids)

    @property
    def num_positions(self) -> int:
        """Sampleable positions stored."""
        return self._sampleable

    @property
    def stored_positions(self) -> int:
        return self._stored

    @property
    def rate_limited_total(self) -> int:
        """Samples that had to wait for the rate limiter, since this process started."""
        return self._rate_limited

    def stats(self) -> Stats:
        c = self.config
        with self._lock:
            live = np.arange(self._first_key, self._last_key + 1) if self._g_ids else np.zeros(0, np.int64)
            versions, counts = np.unique(self._g_model_version[live % self._C], return_counts=True)
            recent = np.array(self._recent, np.float64).reshape(-1, 2)
            return Stats(
                game=c.spec.name, games=len(self._g_ids), positions=self._sampleable,
                stored_positions=self._stored, capacity=self._C,
                games_per_model_version={int(v): int(n) for v, n in zip(versions, counts)},
                recent_games=len(recent),
                recent_mean_return=float(recent[:, 0].mean()) if len(recent) else 0.0,
                recent_max_return=float(recent[:, 0].max()) if len(recent) else 0.0,
                recent_mean_length=float(recent[:, 1].mean()) if len(recent) else 0.0,
                games_added_total=self._games_added, inserts_total=self._inserts,
                samples_total=self._samples, sample_batches_total=self._sample_batches,
                duplicates_total=self._duplicates, evicted_games_total=self._evicted_games,
                rate_limited_total=self._rate_limited, min_positions=c.min_positions,
                samples_per_insert=c.samples_per_insert, error_buffer=c.error_buffer,
                max_priority=self._max_priority, priority_alpha=c.priority_alpha,
                priority_beta=c.priority_beta)

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
        with self._write_lock:
            self._closed = True
            self._db.close()

    def __enter__(self) -> "ReplayBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
