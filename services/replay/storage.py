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
                            with their NumPy dtype name and shape ("200,4").

Every write is one transaction (BEGIN IMMEDIATE ... COMMIT); with synchronous=FULL the WAL is
synced at each commit, so once `add` returns the records survive kill -9 and power loss
(synchronous=NORMAL: kill -9 only). A crash mid-transaction leaves no trace of it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from games.base import GameSpec
from services.replay.config import spec_to_json
from services.replay.wire import GameArrays

SCHEMA_VERSION = "1"
DB_NAME = "replay.sqlite"

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


class StoredRecord(NamedTuple):
    key: int
    game: GameArrays
    targets_model_version: int
    priorities: np.ndarray  # float32 [T]


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
            game = GameArrays(id=id_, episode_id=episode_id, first_move=first_move,
                              model_version=version, num_sampleable=num_sampleable,
                              terminated=bool(terminated), **arrays)
            yield StoredRecord(key, game, tversion, priorities)

    # --- writes (each one transaction) -----------------------------------------------------

    def add(self, records: Sequence[tuple[int, GameArrays, np.ndarray]],
            evict: tuple[int, int] | None, forget_through: int = 0) -> None:
        """Stores `records` ((key, game, priorities float32 [T])) and evicts the keys in the
        inclusive range `evict`, in one transaction. Records in that range get tombstones only.
        Tombstones with keys <= `forget_through` are deleted in the same transaction."""
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

    def update_targets(self, key: int, root_values: np.ndarray, policies: np.ndarray,
                       model_version: int) -> None:
        """Replaces a live record's root values and policies (whole arrays)."""
        with self.transaction() as conn:
            for name, array in (("root_values", root_values), ("policies", policies)):
                dtype, shape, data = _encode(array)
                conn.execute("UPDATE arrays SET dtype = ?, shape = ?, data = ? WHERE key = ? AND name = ?",
                             (dtype, shape, data, key, name))
            conn.execute("UPDATE games SET targets_model_version = ? WHERE key = ?",
                         (model_version, key))

    def update_priorities(self, priorities: dict[int, np.ndarray], max_priority: float) -> None:
        """Writes records' priorities (key -> float32 [T]) and the largest priority ever set."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE arrays SET data = ? WHERE key = ? AND name = 'priorities'",
                [(_encode(np.asarray(p, np.float32))[2], key) for key, p in priorities.items()])
            conn.execute("UPDATE meta SET value = ? WHERE name = 'max_priority'", (repr(max_priority),))

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
