"""The replay's durable store: one SQLite database in WAL mode, no pickle anywhere.

Tables:
  meta(name, value)         the game spec the data dir belongs to (JSON), the schema version,
                            the largest priority ever set.
  games(key, id, ...)       one row per live record, and one per evicted record among the
                            newest `id_window` keys (a tombstone: `evicted` = 1, no arrays), so
                            that a late retry of an evicted record's add is still recognised as
                            a duplicate; older tombstones are deleted (`forget_ids`), keeping the
                            table bounded. The newest key always keeps its row, so keys are never
                            reused.
  arrays(key, name, dtype, shape, data)
                            one row per array of a live record: raw little-endian C-order bytes
                            with their NumPy dtype name and shape ("200,4"). The arrays as
                            added (root_values and policies: the self-play targets, never
                            rewritten), and, once UpdateTargets set some of its positions, the
                            record's reanalysed targets: reanalysed_root_values float32 [T],
                            reanalysed_policies float32 [T, A] and targets_versions int64 [T]
                            (-1 where never reanalysed; the other two hold 0 there).
  meta also holds newest_model_version, the largest model version of an add or UpdateTargets.

Every write is one transaction (BEGIN IMMEDIATE ... COMMIT); with synchronous=FULL the WAL is
synced at each commit, so once `add` returns the records survive kill -9 and power loss
(synchronous=NORMAL: kill -9 only). A crash mid-transaction leaves no trace of it.

Priorities set after an add live in a second database of the same data dir,
`priorities.sqlite` (`PriorityStore`), with its own connection and so its own write lock: the
priority flush never waits for an add's transaction and no add ever waits for a flush's
(SQLite allows one writer per database file; WAL alone would still serialise the two). The
`arrays` row "priorities" holds a record's priorities as added (the running max then), or as a
server before this split last flushed them; a `priorities` row of the second database, when
there is one of the record's length, replaces it on load. Priorities are a sampling hint, so
that database is written with synchronous=NORMAL: what a flush committed survives kill -9, and
a power loss may take it back to an earlier flush, never to a state that breaks a load.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from games.base import GameSpec
from services.replay.config import spec_to_json
from services.replay.wire import GameArrays

SCHEMA_VERSION = "1"
DB_NAME = "replay.sqlite"
PRIORITIES_DB_NAME = "priorities.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
  name TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS games (
  key INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  episode_id TEXT NOT NULL,
  first_move INTEGER NOT NULL,
  length INTEGER NOT NULL,
  num_sampleable INTEGER NOT NULL,
  terminated INTEGER NOT NULL,
  model_version INTEGER NOT NULL,
  targets_model_version INTEGER NOT NULL,
  added_at REAL NOT NULL,
  evicted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS arrays (
  key INTEGER NOT NULL,
  name TEXT NOT NULL,
  dtype TEXT NOT NULL,
  shape TEXT NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (key, name)
);
"""

# The arrays of a record as stored, plus its priorities (float32 [T]).
STORED_ARRAYS = ("observations", "actions", "rewards", "to_play", "root_values", "policies",
                 "legal_actions", "priorities")
# The reanalysed targets of a record, written by UpdateTargets only (absent until then).
REANALYSED_ARRAYS = ("reanalysed_root_values", "reanalysed_policies", "targets_versions")


class Reanalysed(NamedTuple):
    """A record's reanalysed targets (T positions, A actions)."""

    root_values: np.ndarray  # float32 [T]
    policies: np.ndarray  # float32 [T, A]
    versions: np.ndarray  # int64 [T]: model version of each position's reanalysis, -1: none


class StoredRecord(NamedTuple):
    key: int
    game: GameArrays
    targets_model_version: int
    priorities: np.ndarray  # float32 [T]
    reanalysed: Reanalysed | None = None  # None: never reanalysed


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    # `dtype.name` is computed in Python on every access (~2 us); an add writes 8 arrays per
    # record while holding the GIL that samplers need.
    return dtype.name


def _encode(array: np.ndarray) -> tuple[str, str, bytes]:
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return _dtype_name(array.dtype), ",".join(map(str, array.shape)), array.tobytes()


def _decode(dtype: str, shape: str, data: bytes) -> np.ndarray:
    dims = tuple(int(d) for d in shape.split(",")) if shape else ()
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(dims).copy()


class GameDatabase:
    """The SQLite file of one data dir. Not thread-safe: the buffer calls it under its write lock.

    Args:
      data_dir: created if missing; the database is `<data_dir>/replay.sqlite`.
      spec: the game; a database created for another game (name, observation shape or dtype,
        actions, players) is refused with ValueError.
      synchronous: "FULL" or "NORMAL" (see ReplayConfig).
    """

    def __init__(self, data_dir: str | Path, spec: GameSpec, synchronous: str = "FULL") -> None:
        self.path = Path(data_dir) / DB_NAME
        os.makedirs(data_dir, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: could not switch SQLite to WAL mode (got {mode})")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.executescript(_SCHEMA)
        self._check_meta(spec)
        self.identity = self._identity()

    def _identity(self) -> str:
        """A random name of this database, made once (databases of older servers get theirs
        now): the priority store keeps it, so that its rows are never applied to the records
        of another database that reuses the same keys (a replay.sqlite deleted or replaced)."""
        with self.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('identity', ?)",
                         (uuid.uuid4().hex,))
        return self._conn.execute("SELECT value FROM meta WHERE name = 'identity'").fetchone()[0]

    def _check_meta(self, spec: GameSpec) -> None:
        wanted = _spec_identity(spec)
        with self.transaction():
            rows = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
            if "spec" not in rows:
                self._conn.executemany("INSERT INTO meta(name, value) VALUES (?, ?)",
                                       [("spec", spec_to_json(spec)), ("schema", SCHEMA_VERSION),
                                        ("max_priority", "1.0")])
                return
        if rows.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"{self.path}: schema version {rows.get('schema')!r}, this server "
                             f"reads {SCHEMA_VERSION!r}")
        stored = _spec_identity(json.loads(rows["spec"]))
        if stored != wanted:
            raise ValueError(f"{self.path} holds records of {stored}, not of {wanted}; use another "
                             f"--data-dir for this game")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # --- reads -----------------------------------------------------------------------------

    def existing_keys(self, ids: Sequence[str]) -> dict[str, int]:
        """id -> key of the given ids that were ever stored (evicted ones included)."""
        found: dict[str, int] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self._conn.execute(
                f"SELECT id, key FROM games WHERE id IN ({marks})", chunk).fetchall())
        return found

    def last_key(self) -> int:
        """The largest key ever given (0 for an empty database)."""
        return self._conn.execute("SELECT COALESCE(MAX(key), 0) FROM games").fetchone()[0]

    def max_priority(self) -> float:
        return float(self._conn.execute(
            "SELECT value FROM meta WHERE name = 'max_priority'").fetchone()[0])

    def newest_model_version(self) -> int:
        """The largest model version an add or UpdateTargets wrote (0 if none did: a new
        database, or one written before this was kept)."""
        row = self._conn.execute(
            "SELECT value FROM meta WHERE name = 'newest_model_version'").fetchone()
        return 0 if row is None else int(row[0])

    def live_lengths(self) -> list[tuple[int, int]]:
        """(key, length) of the live records, oldest first."""
        return self._conn.execute(
            "SELECT key, length FROM games WHERE evicted = 0 ORDER BY key").fetchall()

    def load(self, first_key: int) -> Iterator[StoredRecord]:
        """The live records with key >= first_key, oldest first."""
        games = self._conn.execute(
            "SELECT key, id, episode_id, first_move, num_sampleable, terminated, model_version, "
            "targets_model_version FROM games WHERE evicted = 0 AND key >= ? ORDER BY key",
            (first_key,)).fetchall()
        for key, id_, episode_id, first_move, num_sampleable, terminated, version, tversion in games:
            arrays = {name: _decode(dtype, shape, data) for name, dtype, shape, data in
                      self._conn.execute("SELECT name, dtype, shape, data FROM arrays WHERE key = ?",
                                         (key,))}
            missing = [name for name in STORED_ARRAYS if name not in arrays]
            if missing:
                raise RuntimeError(f"{self.path}: record {id_!r} (key {key}) lacks {missing}")
            priorities = arrays.pop("priorities")
            found = [arrays.pop(name, None) for name in REANALYSED_ARRAYS]
            game = GameArrays(id=id_, episode_id=episode_id, first_move=first_move,
                              model_version=version, num_sampleable=num_sampleable,
                              terminated=bool(terminated), **arrays)
            reanalysed = None
            if all(a is not None for a in found):
                values, policies, versions = found
                if (values.shape == (game.length,) and policies.shape == game.policies.shape
                        and versions.shape == (game.length,)):
                    reanalysed = Reanalysed(values.astype(np.float32), policies.astype(np.float32),
                                            versions.astype(np.int64))
            yield StoredRecord(key, game, tversion, priorities, reanalysed)

    # --- writes (each one transaction) -----------------------------------------------------

    def add(self, records: Sequence[tuple[int, GameArrays, np.ndarray]],
            evict: tuple[int, int] | None, forget_through: int = 0,
            newest_model_version: int | None = None) -> None:
        """Stores `records` ((key, game, priorities float32 [T])) and evicts the keys in the
        inclusive range `evict`, in one transaction. Records in that range get tombstones only.
        Tombstones with keys <= `forget_through` are deleted in the same transaction, and
        `newest_model_version`, when given, is written to meta."""
        now = time.time()
        first, last = evict if evict else (1, 0)
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO games(key, id, episode_id, first_move, length, num_sampleable, "
                "terminated, model_version, targets_model_version, added_at, evicted) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(key, g.id, g.episode_id, g.first_move, g.length, g.num_sampleable,
                  int(g.terminated), g.model_version, g.model_version, now,
                  int(first <= key <= last)) for key, g, _ in records])
            rows = []
            for key, game, priorities in records:
                if first <= key <= last:
                    continue
                for name in STORED_ARRAYS:
                    array = priorities if name == "priorities" else getattr(game, name)
                    rows.append((key, name, *_encode(array)))
            conn.executemany("INSERT INTO arrays(key, name, dtype, shape, data) VALUES (?, ?, ?, ?, ?)",
                             rows)
            if evict:
                conn.execute("UPDATE games SET evicted = 1 WHERE key BETWEEN ? AND ?", evict)
                conn.execute("DELETE FROM arrays WHERE key BETWEEN ? AND ?", evict)
            self._forget(conn, forget_through)
            self._set_newest(conn, newest_model_version)

    @staticmethod
    def _set_newest(conn: sqlite3.Connection, version: int | None) -> None:
        if version is not None:
            conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES ('newest_model_version', ?)",
                         (str(int(version)),))

    @staticmethod
    def _forget(conn: sqlite3.Connection, through: int) -> int:
        # A range of the integer primary key (callers pass one below the first live key, so it
        # holds only tombstones); the flag makes sure no live record is ever deleted.
        return conn.execute("DELETE FROM games WHERE key <= ? AND evicted = 1", (through,)).rowcount

    def forget_ids(self, through: int) -> int:
        """Deletes the tombstones with keys <= `through` (their ids are forgotten); returns how
        many. Callers pass a key below the newest, so that `last_key` stays."""
        if through < 1:
            return 0
        with self.transaction() as conn:
            return self._forget(conn, through)

    def evict(self, first: int, last: int) -> None:
        """Evicts the keys in [first, last] (used at start-up when the capacity shrank)."""
        with self.transaction() as conn:
            conn.execute("UPDATE games SET evicted = 1 WHERE key BETWEEN ? AND ?", (first, last))
            conn.execute("DELETE FROM arrays WHERE key BETWEEN ? AND ?", (first, last))

    def update_targets(self, key: int, reanalysed: Reanalysed | None, targets_model_version: int,
                       newest_model_version: int | None = None) -> None:
        """Replaces a live record's reanalysed targets (whole arrays; None: leaves them) and
        its minimum targets version, and writes `newest_model_version` when given, in one
        transaction. The self-play root values and policies are never rewritten."""
        with self.transaction() as conn:
            if reanalysed is not None:
                conn.executemany(
                    "INSERT OR REPLACE INTO arrays(key, name, dtype, shape, data) VALUES (?, ?, ?, ?, ?)",
                    [(key, name, *_encode(array)) for name, array in zip(REANALYSED_ARRAYS, reanalysed)])
                conn.execute("UPDATE games SET targets_model_version = ? WHERE key = ?",
                             (targets_model_version, key))
            self._set_newest(conn, newest_model_version)

    def close(self) -> None:
        """Checkpoints the WAL into the database file and closes it."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn.close()


_PRIORITIES_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
  name TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS priorities (
  key INTEGER PRIMARY KEY,
  length INTEGER NOT NULL,
  data BLOB NOT NULL
);
"""


class PriorityStore:
    """`<data_dir>/priorities.sqlite`: the priorities flushed since records were added (one row
    per record: key, T, float32 [T] little-endian bytes) and the largest priority ever set.

    Its own file and connection, so that its writes never take the game database's write lock
    (see the module docstring). Not thread-safe: the buffer serialises its flushes.

    Args:
      data_dir: the data dir of the game database.
      games_identity: `GameDatabase.identity` of that database; rows kept for another one (a
        replay.sqlite deleted or replaced since) are deleted on open (`discarded` says so).

    Attributes:
      before_commit: None, or called inside every `write` transaction just before COMMIT, with
        the transaction open (tests hold a flush open there to check that adds go on).
      discarded: how many rows of another game database were deleted on open.
      damaged: None, or why the file could not be read (it was then deleted and made anew).
    """

    def __init__(self, data_dir: str | Path, games_identity: str) -> None:
        self.path = Path(data_dir) / PRIORITIES_DB_NAME
        os.makedirs(data_dir, exist_ok=True)
        self.before_commit: Callable[[], None] | None = None
        self.discarded = 0
        self.damaged: str | None = None
        try:
            self._open(games_identity)
        except sqlite3.DatabaseError as error:
            # A hint that cannot be read must not stop the records from loading: start afresh
            # (the records keep their priorities as added).
            self.damaged = repr(error)
            if getattr(self, "_conn", None) is not None:
                self._conn.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._open(games_identity)

    def _open(self, games_identity: str) -> None:
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: could not switch SQLite to WAL mode (got {mode})")
        # A hint, not a record: kill -9 keeps every commit, a power loss may lose the latest.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_PRIORITIES_SCHEMA)
        check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        row = self._conn.execute("SELECT value FROM meta WHERE name = 'games'").fetchone()
        if row is None or row[0] != games_identity:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self.discarded = self._conn.execute("DELETE FROM priorities").rowcount
                self._conn.execute("DELETE FROM meta")
                self._conn.execute("INSERT INTO meta(name, value) VALUES ('games', ?)", (games_identity,))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def max_priority(self) -> float | None:
        """The running max of the last write, None if there was none."""
        row = self._conn.execute("SELECT value FROM meta WHERE name = 'max_priority'").fetchone()
        try:
            return None if row is None else float(row[0])
        except ValueError:  # not a number at all: as if never written (NaN and inf are repaired)
            return None

    def load(self, first_key: int) -> dict[int, np.ndarray]:
        """key -> float32 [T] of the stored rows with key >= first_key (older ones belong to
        evicted records)."""
        return {key: np.frombuffer(data, np.dtype("float32").newbyteorder("<")).astype(np.float32)
                for key, length, data in self._conn.execute(
                    "SELECT key, length, data FROM priorities WHERE key >= ?", (first_key,))
                if len(data) == 4 * length}

    def write(self, priorities: Iterable[tuple[int, np.ndarray]], max_priority: float,
              forget_below: int) -> int:
        """One transaction: replaces the rows of `priorities` ((key, float32 [T]) pairs), sets
        the running max, and deletes the rows of keys < `forget_below` (evicted records);
        returns how many rows it wrote."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            rows = [(key, len(p), np.asarray(p, "<f4").tobytes()) for key, p in priorities]
            self._conn.executemany(
                "INSERT OR REPLACE INTO priorities(key, length, data) VALUES (?, ?, ?)", rows)
            self._conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES ('max_priority', ?)",
                               (repr(float(max_priority)),))
            self._conn.execute("DELETE FROM priorities WHERE key < ?", (forget_below,))
            if self.before_commit is not None:
                self.before_commit()
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:  # a failed COMMIT (disk full) may leave it open
                self._conn.execute("ROLLBACK")
            raise
        return len(rows)

    def close(self) -> None:
        """Checkpoints the WAL into the database file and closes it."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn.close()


def _spec_identity(spec: GameSpec | dict) -> dict:
    """What must match between a database and the server's game."""
    if isinstance(spec, GameSpec):
        spec = json.loads(spec_to_json(spec))
    return {name: spec[name] for name in ("name", "observation_shape", "observation_dtype",
                                          "num_actions", "num_players")}
