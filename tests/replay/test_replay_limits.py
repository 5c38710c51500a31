"""The replay's bounds: priorities (and their running max, on disk too), the bytes one
SampleBatch or SampleGames may build, the derived message limits, and the ids kept for
AddGames' idempotence (the tombstones stay bounded)."""

from __future__ import annotations

import sqlite3
import tracemalloc

import numpy as np
import pytest

import games
from games.base import support_limit

from replay_helpers import ONE_PLAYER, TWO_PLAYER, arrays, record
from services.common.channels import MAX_MESSAGE_BYTES
from services.replay.config import MIB, ReplayConfig, priority_limit_for
from services.replay.records import ReplayError, position_bytes, sample_bytes
from services.replay.storage import DB_NAME, PRIORITIES_DB_NAME
from services.replay.wire import batch_to_proto


def add(buffer, *messages):
    return buffer.add_games([arrays(buffer.spec, m) for m in messages])


def finite_weights(buffer, B: int = 256) -> np.ndarray:
    weights = buffer.sample(B).importance_weight
    assert np.all(np.isfinite(weights)) and weights.max() == 1.0, weights
    return weights


# --- priorities -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [
    (1e39, "priorities[1] = 1e+39 is over the limit 1e+06"),  # inf once stored as float32
    (np.inf, "priorities[1] = inf is not finite"),
    (np.nan, "priorities[1] = nan is not finite"),
    (-0.5, "priorities[1] = -0.5 is negative"),
    (1e6 * (1 + 1e-12), "is over the limit"),
])
def test_a_hostile_priority_is_refused_and_cannot_poison_sampling(make_buffer, bad, words):
    buffer = make_buffer()
    key = add(buffer, record(ONE_PLAYER, "g", 4)).keys[0]
    with pytest.raises(ReplayError) as error:
        buffer.update_priorities(np.array([key, key]), np.array([0, 1]), np.array([2.0, bad]))
    assert error.value.code == "INVALID_ARGUMENT"
    assert error.value.message.startswith("priorities: ") and words in error.value.message
    np.testing.assert_array_equal(buffer.priorities("g"), [1, 1, 1, 1])  # nothing changed, not even [0]
    assert buffer.stats().max_priority == 1.0
    add(buffer, record(ONE_PLAYER, "h", 3))
    np.testing.assert_array_equal(buffer.priorities("h"), [1, 1, 1])
    finite_weights(buffer)


def test_priorities_at_the_limit_keep_every_weight_finite(make_buffer):
    buffer = make_buffer(priority_alpha=1.0, priority_beta=1.0)
    key = add(buffer, record(ONE_PLAYER, "g", 4)).keys[0]
    buffer.update_priorities(np.full(4, key), np.arange(4), np.array([1e6, 1e-30, 0.0, 1e6]))
    assert buffer.stats().max_priority == 1e6
    add(buffer, record(ONE_PLAYER, "h", 2))
    np.testing.assert_array_equal(buffer.priorities("h"), [1e6, 1e6])  # enters at the bounded max
    for _ in range(20):
        finite_weights(buffer)


def _poison(data_dir, where: str, key: int, max_priority: str, priorities: np.ndarray) -> None:
    """Writes what an unbounded server could leave on disk, as the database stores it: in the
    game database, as a server before the priority store wrote it ("games": the priority
    store is removed), or in the priority store ("priorities")."""
    data = np.asarray(priorities, "<f4").tobytes()
    if where == "games":
        (data_dir / PRIORITIES_DB_NAME).unlink()
        with sqlite3.connect(data_dir / DB_NAME) as conn:
            conn.execute("UPDATE meta SET value = ? WHERE name = 'max_priority'", (max_priority,))
            conn.execute("UPDATE arrays SET data = ? WHERE key = ? AND name = 'priorities'", (data, key))
    else:
        with sqlite3.connect(data_dir / PRIORITIES_DB_NAME) as conn:
            conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES ('max_priority', ?)",
                         (max_priority,))
            conn.execute("INSERT OR REPLACE INTO priorities(key, length, data) VALUES (?, ?, ?)",
                         (key, len(priorities), data))
    conn.close()


def _on_disk(data_dir, key: int) -> tuple[str, np.ndarray]:
    """The running max and a record's priorities as the next load reads them: the priority
    store's, where it has them."""
    with sqlite3.connect(data_dir / PRIORITIES_DB_NAME) as conn:
        meta = conn.execute("SELECT value FROM meta WHERE name = 'max_priority'").fetchone()[0]
        row = conn.execute("SELECT data FROM priorities WHERE key = ?", (key,)).fetchone()
    conn.close()
    if row is None:  # never flushed nor repaired: the priorities as added
        with sqlite3.connect(data_dir / DB_NAME) as conn:
            row = conn.execute("SELECT data FROM arrays WHERE key = ? AND name = 'priorities'",
                               (key,)).fetchone()
        conn.close()
    return meta, np.frombuffer(row[0], "<f4")


INF, NAN = np.inf, np.nan


@pytest.mark.parametrize("where", ["games", "priorities"])
@pytest.mark.parametrize("meta, stored, repaired, max_priority", [
    ("1e+39", [INF, INF, INF, INF], [1e6] * 4, 1e6),  # what a 1e39 update left behind
    ("inf", [INF, NAN, 5.0, -1.0], [1e6, 1e6, 5.0, 0.0], 1e6),
    ("nan", [1.0, 2.0, 3.0, 0.5], [1.0, 2.0, 3.0, 0.5], 3.0),
    ("2e6", [2e6, 1.0, 1.0, 1.0], [1e6, 1.0, 1.0, 1.0], 1e6),  # above a limit lowered since
])
def test_a_poisoned_database_is_repaired_on_load(make_buffer, tmp_path, where, meta, stored,
                                                 repaired, max_priority):
    data_dir = tmp_path / "replay"
    buffer = make_buffer(data_dir=data_dir)
    key = add(buffer, record(ONE_PLAYER, "g", 4)).keys[0]
    buffer.close()
    _poison(data_dir, where, key, meta, np.array(stored))

    reopened = make_buffer(data_dir=data_dir)
    np.testing.assert_array_equal(reopened.priorities("g"), repaired)
    assert reopened.stats().max_priority == max_priority
    finite_weights(reopened)
    add(reopened, record(ONE_PLAYER, "h", 2))
    np.testing.assert_array_equal(reopened.priorities("h"), [max_priority] * 2)
    finite_weights(reopened)
    reopened.close()
    on_disk_max, on_disk = _on_disk(data_dir, key)  # the repair was written, not just applied
    assert float(on_disk_max) == max_priority
    np.testing.assert_array_equal(on_disk, np.array(repaired, np.float32))


# --- SampleBatch and SampleGames bytes --------------------------------------------------------
def _filled(make_buffer, spec, **fields):
    buffer = make_buffer(spec, capacity=5000, max_sample_bytes=1 << 31, **fields)
    add(buffer, *[record(spec, f"g{i}", 100, seed=i) for i in range(40)])
    return buffer


@pytest.mark.parametrize("spec", [ONE_PLAYER, TWO_PLAYER], ids=lambda s: s.name)
@pytest.mark.parametrize("B, K, n, unroll", [
    (1, 1, 1, False), (64, 1, 1, True), (256, 5, 10, False), (256, 5, 10, True),
    (512, 20, 100, True), (4, 200, 2000, False),
])
@pytest.mark.parametrize("reanalysed", [False, True], ids=["self-play", "reanalysed"])
def test_the_sample_estimate_bounds_what_a_sample_allocates(make_buffer, spec, B, K, n, unroll,
                                                            reanalysed):
    if not reanalysed:
        buffer = _filled(make_buffer, spec)
    else:  # half of the records reanalysed, a draw per sample, the off-policy horizons on
        buffer = _filled(make_buffer, spec, reanalysed_target_fraction=0.5, td_age_versions_per_step=1)
        for i in range(0, 40, 2):
            buffer.update_targets(f"g{i}", np.arange(100), np.ones(100),
                                  np.full((100, spec.num_actions), 1 / spec.num_actions), i % 5)
    buffer.sample(B, K, n, include_unroll_observations=unroll)  # the lazy cumsum, built once
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        message = batch_to_proto(buffer.sample(B, K, n, include_unroll_observations=unroll))
        message.SerializeToString()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak <= sample_bytes(spec, B, K, n, unroll), (peak, sample_bytes(spec, B, K, n, unroll))


def test_a_sample_over_the_byte_limit_is_refused_before_allocating(make_buffer):
    buffer = make_buffer(TWO_PLAYER, discount=1.0)
    add(buffer, record(TWO_PLAYER, "g", 9))
    tracemalloc.start()
    try:
        with pytest.raises(ReplayError) as error:
            buffer.sample(4096, num_unroll_steps=50, td_steps=1000)  # ~1.7 GB of temporaries before
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.value.code == "INVALID_ARGUMENT"  # retrying cannot help: not RESOURCE_EXHAUSTED
    assert error.value.message.startswith("batch_size: B = 4096 with K = 50, n = 1000 would build")
    assert "max_sample_bytes = 67108864 (64 MiB)" in error.value.message
    assert peak < MIB
    assert buffer.stats().samples_total == 0


def test_the_byte_limit_is_a_config_field(make_buffer):
    buffer = make_buffer(max_sample_bytes=MIB)
    add(buffer, record(ONE_PLAYER, "g", 9))
    assert sample_bytes(ONE_PLAYER, 200, 5, 10, False) <= MIB < sample_bytes(ONE_PLAYER, 2048, 5, 10, False)
    assert buffer.sample(200).record_keys.shape == (200,)
    with pytest.raises(ReplayError, match=r"max_sample_bytes = 1048576 \(1 MiB\)") as error:
        buffer.sample(2048)
    assert error.value.code == "INVALID_ARGUMENT"


def test_sample_games_returns_the_records_that_fit(make_buffer):
    buffer = make_buffer(capacity=100_000, max_sample_bytes=MIB)
    per_record = 10_000 * position_bytes(ONE_PLAYER)  # 420 kB: two fit in 1 MiB, three do not
    assert 2 * per_record < MIB < 3 * per_record
    add(buffer, *[record(ONE_PLAYER, f"g{i}", 10_000, seed=i) for i in range(4)])
    assert [g.game.id for g in buffer.sample_games(10, order="newest_first")] == ["g3", "g2"]
    assert len(buffer.sample_games(10)) == 2
    add(buffer, record(ONE_PLAYER, "long", 30_000))  # 1.26 MB alone: still returned, alone
    assert [g.game.id for g in buffer.sample_games(10, order="newest_first")] == ["long"]


# --- message limits ---------------------------------------------------------------------------
def test_message_limits_follow_the_capacity_and_the_sample_bound():
    wire = 4 * 4 + 16 + 5 * 2  # a position of ONE_PLAYER as sent: float32 [4], scalars, [2] x 2
    config = ReplayConfig(spec=ONE_PLAYER, data_dir="unused", capacity=100_000)
    assert config.receive_limit == 100_000 * wire + MIB
    assert config.send_limit == 64 * MIB + MIB
    small = ReplayConfig(spec=ONE_PLAYER, data_dir="unused", capacity=10)
    assert small.receive_limit == 4 * MIB  # gRPC's default is the floor
    # uint8 boards are sent as float32: 4 bytes per element on the way in, 1 when stored
    board = ReplayConfig(spec=TWO_PLAYER, data_dir="unused", capacity=1_000_000, max_sample_bytes=MIB)
    assert board.receive_limit == 1_000_000 * (18 * 4 + 16 + 45) + MIB
    assert board.send_limit == 1_000_000 * (18 + 16 + 45) + MIB  # one record of the whole capacity
    huge = ReplayConfig(spec=TWO_PLAYER, data_dir="unused", capacity=10_000_000)
    assert huge.receive_limit == huge.send_limit == MAX_MESSAGE_BYTES
    given = ReplayConfig(spec=ONE_PLAYER, data_dir="unused", capacity=10,
                         max_receive_bytes=8 * MIB, max_send_bytes=5 * MIB)
    assert (given.receive_limit, given.send_limit) == (8 * MIB, 5 * MIB)


def test_the_priority_limit_follows_the_games_values_and_support():
    assert ReplayConfig.for_game("tictactoe", "unused").priority_limit == 1e6  # values in [-1, 1]
    assert ReplayConfig.for_game("cartpole", "unused").priority_limit == 1e6  # 10 x (259 + 279)
    g2048 = type(games.make("2048"))
    limit = ReplayConfig.for_game("2048", "unused").priority_limit
    error = g2048.value_range[1] + support_limit(g2048.settings.network.support_size)  # |z - v| at most
    assert limit == pytest.approx(10 * error) and 2e7 < limit < 2.2e7
    assert ReplayConfig.for_game("2048", "unused", priority_limit=5e6).priority_limit == 5e6
    assert priority_limit_for((-1.0, 1.0), 1) == 1e6
    assert ReplayConfig(spec=ONE_PLAYER, data_dir="unused", capacity=10).priority_limit == 1e6


@pytest.mark.parametrize("fields, words", [
    ({"priority_limit": 0.5}, "ReplayConfig.priority_limit must be finite and >= 1"),
    ({"priority_limit": float("inf")}, "ReplayConfig.priority_limit must be finite"),
    ({"priority_limit": float("nan")}, "ReplayConfig.priority_limit must be finite"),
    ({"priority_alpha": 60.0}, "priority_limit ** priority_alpha * capacity is about 1e364"),
    ({"max_sample_bytes": MIB - 1}, "ReplayConfig.max_sample_bytes must be >= 1048576"),
    ({"id_window": 0}, "ReplayConfig.id_window must be >= 1, got 0"),
    ({"max_receive_bytes": MAX_MESSAGE_BYTES + 1}, "ReplayConfig.max_receive_bytes must be 0 (derived)"),
    ({"max_send_bytes": 1}, "ReplayConfig.max_send_bytes must be 0 (derived)"),
])
def test_limits_are_validated(fields, words):
    with pytest.raises(ValueError) as error:
        ReplayConfig(spec=ONE_PLAYER, data_dir="unused", capacity=10_000, **fields)
    assert words in str(error.value)


# --- ids kept for idempotence -------------------------------------------------------------------
def _rows(data_dir) -> tuple[int, int]:
    """(live records, tombstones) in the database."""
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        counts = dict(conn.execute("SELECT evicted, COUNT(*) FROM games GROUP BY evicted").fetchall())
    conn.close()
    return counts.get(0, 0), counts.get(1, 0)


def test_tombstones_stay_bounded_and_recent_retries_are_still_duplicates(make_buffer, tmp_path):
    data_dir = tmp_path / "replay"
    buffer = make_buffer(data_dir=data_dir, capacity=10, id_window=20)
    messages = [record(ONE_PLAYER, f"g{i}", 2, seed=i) for i in range(200)]
    keys = [add(buffer, m).keys[0] for m in messages]  # from the 6th on, every add evicts one
    assert keys == list(range(1, 201))
    assert _rows(data_dir) == (5, 15)  # the newest 20 keys: 5 live, 15 evicted; 180 forgotten
    stats = buffer.stats()
    assert (stats.games, stats.evicted_games_total) == (5, 195)

    # an acknowledged record, since evicted, whose add is retried: not stored again
    retry = add(buffer, messages[189], messages[199])
    assert (retry.added, retry.duplicates, retry.keys) == (0, 2, [190, 200])
    assert [g.game.id for g in buffer.sample_games(10, order="newest_first")] == [
        "g199", "g198", "g197", "g196", "g195"]
    assert buffer.stats().games_added_total == stats.games_added_total

    # the trade-off: a retry later than id_window newer records is stored as a new record
    late = add(buffer, messages[100])
    assert (late.added, late.keys) == (1, [201])
    assert _rows(data_dir) == (5, 15)


def test_a_restart_forgets_old_ids_and_keeps_the_keys_going(make_buffer, tmp_path):
    data_dir = tmp_path / "replay"
    buffer = make_buffer(data_dir=data_dir, capacity=10)  # the default window keeps every id
    for i in range(100):
        add(buffer, record(ONE_PLAYER, f"g{i}", 2, seed=i))
    buffer.close()
    assert _rows(data_dir) == (5, 95)

    reopened = make_buffer(data_dir=data_dir, capacity=10, id_window=20)
    assert _rows(data_dir) == (5, 15)
    assert add(reopened, record(ONE_PLAYER, "g85", 2)).duplicates == 1  # key 86: kept
    reopened.close()

    # a capacity smaller than the newest record evicts everything; its key still stays taken
    emptied = make_buffer(data_dir=data_dir, capacity=1, id_window=1)
    assert (emptied.num_games, _rows(data_dir)) == (0, (0, 1))
    emptied.close()
    again = make_buffer(data_dir=data_dir, capacity=10, id_window=1)
    assert add(again, record(ONE_PLAYER, "new", 2)).keys == [101]


def test_sample_games_refuses_a_record_over_the_send_limit(make_buffer):
    buffer = make_buffer(capacity=100_000, max_send_bytes=4 * MIB)  # 3 MiB for records
    add(buffer, record(ONE_PLAYER, "small", 10))
    add(buffer, record(ONE_PLAYER, "huge", 80_000))  # 80,000 x 42 bytes = 3.4 MB
    with pytest.raises(ReplayError) as error:
        buffer.sample_games(1, order="newest_first")
    assert error.value.code == "RESOURCE_EXHAUSTED"
    assert error.value.message.startswith("num_games: record 'huge' is 3360")
    assert "over the send limit 4194304" in error.value.message
