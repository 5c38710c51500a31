"""Priorities under load: the flush writes the priority store outside the add path, and the
durability contract of UpdatePriorities (docs/replay.md, Priorities on disk), against the real
SQLite store, the real server in this process and the real server as a process killed with
SIGKILL."""

from __future__ import annotations

import sqlite3
import threading
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import games
from replay_helpers import ONE_PLAYER, arrays, check_parts_agree, record
from services.replay import metrics as replay_metrics
from services.replay.buffer import ReplayBuffer
from services.replay.client import ReplayClient
from services.replay.config import ReplayConfig
from services.replay.server import serve
from services.replay.storage import DB_NAME, PRIORITIES_DB_NAME

CARTPOLE = games.make("cartpole").spec


def add(buffer, *messages):
    return buffer.add_games([arrays(buffer.spec, m) for m in messages])


def on_disk(data_dir) -> dict[int, np.ndarray]:
    """key -> float32 [T]: what the priority store holds (read through its own connection)."""
    with sqlite3.connect(data_dir / PRIORITIES_DB_NAME) as conn:
        rows = conn.execute("SELECT key, data FROM priorities").fetchall()
    conn.close()
    return {key: np.frombuffer(data, "<f4") for key, data in rows}


def test_a_flush_writes_what_changed_and_a_restart_recovers_it(make_buffer, tmp_path):
    data_dir = tmp_path / "replay"
    buffer = make_buffer(data_dir=data_dir, priorities_flush_s=3600)
    a, b = add(buffer, record(ONE_PLAYER, "a", 5), record(ONE_PLAYER, "b", 4, num_sampleable=2,
                                                             terminated=False)).keys
    buffer.update_priorities(np.array([a, a, b]), np.array([0, 4, 1]), np.array([0.5, 7.0, 2.0]))
    assert buffer.flush_priorities() == 2
    assert buffer.flush_priorities() == 0  # nothing changed since
    stored = on_disk(data_dir)
    np.testing.assert_array_equal(stored[a], [0.5, 1, 1, 1, 7.0])
    np.testing.assert_array_equal(stored[b], [1, 2.0, 0, 0])  # look-ahead context: 0
    buffer.update_priorities(np.array([a]), np.array([1]), np.array([3.0]))  # after the flush
    np.testing.assert_array_equal(on_disk(data_dir)[a], [0.5, 1, 1, 1, 7.0])
    buffer.close()  # writes the pending update
    reopened = make_buffer(data_dir=data_dir)
    np.testing.assert_array_equal(reopened.priorities("a"), [0.5, 3.0, 1, 1, 7.0])
    np.testing.assert_array_equal(reopened.priorities("b"), [1, 2.0, 0, 0])
    assert reopened.stats().max_priority == 7.0
    assert add(reopened, record(ONE_PLAYER, "c", 2)).added == 1
    np.testing.assert_array_equal(reopened.priorities("c"), [7.0, 7.0])  # enters at the max
    check_parts_agree(reopened)


def test_a_failed_flush_leaves_its_records_to_the_next_one(make_buffer, tmp_path):
    data_dir = tmp_path / "replay"
    buffer = make_buffer(data_dir=data_dir, priorities_flush_s=3600)
    key = add(buffer, record(ONE_PLAYER, "g", 3)).keys[0]
    assert buffer.flush_priorities() == 0
    buffer.update_priorities(np.array([key]), np.array([1]), np.array([4.0]))

    def disk_full() -> None:
        raise OSError("disk full")

    buffer._priorities.before_commit = disk_full
    with pytest.raises(OSError, match="disk full"):
        buffer.flush_priorities()
    assert key not in on_disk(data_dir)  # rolled back whole
    buffer._priorities.before_commit = None
    assert buffer.flush_priorities() == 1
    np.testing.assert_array_equal(on_disk(data_dir)[key], [1.0, 4.0, 1.0])


def test_flushes_forget_the_rows_of_evicted_records(make_buffer, tmp_path):
    data_dir = tmp_path / "replay"
    buffer = make_buffer(data_dir=data_dir, capacity=30, priorities_flush_s=3600)
    keys = add(buffer, *[record(ONE_PLAYER, f"g{i}", 10, seed=i) for i in range(3)]).keys
    buffer.update_priorities(np.array(keys), np.zeros(3, np.int64), np.full(3, 2.0))
    assert buffer.flush_priorities() == 3
    new = add(buffer, record(ONE_PLAYER, "n0", 10), record(ONE_PLAYER, "n1", 10)).keys  # evicts 2
    buffer.update_priorities(np.array(new), np.zeros(2, np.int64), np.full(2, 3.0))
    assert buffer.flush_priorities() == 2
    assert sorted(on_disk(data_dir)) == [keys[2], *new]  # only live records keep a row
    buffer.close()
    reopened = make_buffer(data_dir=data_dir, capacity=30)
    assert [reopened.priorities(f"n{i}")[0] for i in range(2)] == [3.0, 3.0]
    assert reopened.priorities("g2")[0] == 2.0


def test_priorities_of_another_game_database_are_never_applied(make_buffer, tmp_path):
    data_dir = tmp_path / "replay"
    buffer = make_buffer(data_dir=data_dir)
    key = add(buffer, record(ONE_PLAYER, "old", 4)).keys[0]
    buffer.update_priorities(np.array([key]), np.array([2]), np.array([9.0]))
    buffer.close()
    (data_dir / DB_NAME).unlink()  # the records are gone; the priority store is still there
    reopened = make_buffer(data_dir=data_dir)
    assert add(reopened, record(ONE_PLAYER, "new", 4)).keys == [key]  # the same key again
    np.testing.assert_array_equal(reopened.priorities("new"), [1.0] * 4)
    assert reopened.stats().max_priority == 1.0
    reopened.close()
    again = make_buffer(data_dir=data_dir)  # and the store now belongs to the new database
    np.testing.assert_array_equal(again.priorities("new"), [1.0] * 4)


def test_an_unreadable_priority_store_is_made_anew_and_the_records_load(make_buffer, tmp_path):
    data_dir = tmp_path / "replay"
    buffer = make_buffer(data_dir=data_dir)
    key = add(buffer, record(ONE_PLAYER, "g", 3)).keys[0]
    buffer.update_priorities(np.array([key]), np.array([0]), np.array([5.0]))
    buffer.close()
    (data_dir / PRIORITIES_DB_NAME).write_bytes(b"not a database" * 300)
    reopened = make_buffer(data_dir=data_dir)
    np.testing.assert_array_equal(reopened.priorities("g"), [1.0] * 3)  # as added
    reopened.update_priorities(np.array([key]), np.array([1]), np.array([2.0]))
    assert reopened.flush_priorities() == 1
    np.testing.assert_array_equal(on_disk(data_dir)[key], [1.0, 2.0, 1.0])


def test_concurrent_adds_samples_updates_and_flushes_leave_the_buffer_consistent(make_buffer,
                                                                                  tmp_path):
    data_dir = tmp_path / "replay"
    # the flusher thread runs all the time too, beside the explicit flushes
    buffer = make_buffer(data_dir=data_dir, capacity=1500, priorities_flush_s=0.001)
    add(buffer, record(ONE_PLAYER, "seed", 20))
    errors: list[BaseException] = []
    adding = threading.Event()
    adding.set()

    def guarded(work):
        def run() -> None:
            try:
                work()
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)
                adding.clear()
        return threading.Thread(target=run)

    def adder(w: int) -> None:
        rng = np.random.default_rng(w)
        for i in range(40):
            add(buffer, *[record(ONE_PLAYER, f"w{w}-{i}-{j}", int(rng.integers(5, 60)), seed=i)
                          for j in range(int(rng.integers(1, 4)))])

    def trainer(t: int) -> None:
        rng = np.random.default_rng(100 + t)
        while adding.is_set():
            batch = buffer.sample(32)
            # quarters: exact in float32, so memory and disk can be compared exactly
            buffer.update_priorities(batch.record_keys, batch.positions,
                                     rng.integers(0, 40, 32) / 4)

    def flusher() -> None:
        while adding.is_set():
            buffer.flush_priorities()

    adders = [guarded(lambda w=w: adder(w)) for w in range(2)]
    others = [guarded(lambda t=t: trainer(t)) for t in range(2)] + [guarded(flusher)]
    for thread in adders + others:
        thread.start()
    for thread in adders:
        thread.join(120)
    adding.clear()
    for thread in others:
        thread.join(120)
    assert not errors, errors
    check_parts_agree(buffer)
    ids = [g.game.id for g in buffer.sample_games(10_000)]
    expected = {id: buffer.priorities(id).astype(np.float32) for id in ids}
    max_priority = buffer.stats().max_priority
    buffer.close()
    reopened = make_buffer(data_dir=data_dir, capacity=1500)
    check_parts_agree(reopened)
    assert sorted(g.game.id for g in reopened.sample_games(10_000)) == sorted(ids)
    for id, priorities in expected.items():
        np.testing.assert_array_equal(reopened.priorities(id), priorities, err_msg=id)
    assert reopened.stats().max_priority == max_priority
    assert np.all(np.isfinite(reopened.sample(256).importance_weight))


def game(id: str, T: int, seed: int = 0):
    return record(CARTPOLE, id, T, seed=seed)


def test_adds_samples_and_updates_go_on_while_a_flush_is_held_open(tmp_path):
    registry = CollectorRegistry()
    config = ReplayConfig.for_game("cartpole", str(tmp_path / "replay"), port=0, metrics_port=0,
                                   min_positions=0, samples_per_insert=0, seed=0,
                                   priorities_flush_s=3600)
    server = serve(config, registry=registry)
    inside, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def hold() -> None:  # runs in the flush, its transaction open
        inside.set()
        outcome["released"] = release.wait(60)

    def flush() -> None:
        outcome["flushed"] = server.buffer.flush_priorities()

    try:
        with server.client(timeout_s=30) as client:
            key = client.add_games([game("before", 20, 1)]).keys[0]
            client.update_priorities([key], [3], [5.0])
            server.buffer._priorities.before_commit = hold
            flusher = threading.Thread(target=flush)
            flusher.start()
            assert inside.wait(60)
            # the flush is in progress (inside its transaction): an add, a sample and an update
            # complete meanwhile; were they blocked, the hold would time out and they would fail
            result = client.add_games([game("during", 30, 2)])
            assert (result.added, result.keys) == (1, [key + 1])
            batch = client.sample_batch(16)
            assert client.update_priorities(batch.record_keys, batch.positions, np.full(16, 2.0)) == (16, 0)
            assert "flushed" not in outcome
            release.set()
            flusher.join(60)
            assert outcome == {"released": True, "flushed": 1}
            assert registry.get_sample_value(replay_metrics.PRIORITY_FLUSH_SECONDS + "_count") == 1
            assert registry.get_sample_value(replay_metrics.PRIORITY_FLUSHED_RECORDS_TOTAL) == 1
            assert client.get_stats().games == 2
    finally:
        release.set()
        server.stop(0)
    # what changed during the flush was written by the flush at stop: a restart sees it all
    reopened = ReplayBuffer(config)
    try:
        for id in ("before", "during"):
            np.testing.assert_array_equal(reopened.priorities(id),
                                          server.buffer.priorities(id).astype(np.float32))
    finally:
        reopened.close()


def scrape(process) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{process.ready['metrics_port']}/metrics",
                                  timeout=10).read().decode()
    return {name: float(value) for name, _, value in
            (line.partition(" ") for line in text.splitlines() if line and line[0] != "#")}


@pytest.mark.integration
def test_flushed_priorities_survive_kill_9_of_the_server(start_service, tmp_path):
    data = tmp_path / "data"
    args = ["--game", "cartpole", "--data-dir", str(data), "--min-positions", "0",
            "--samples-per-insert", "0", "--seed", "0"]
    process = start_service("services.replay", [*args, "--priorities-flush-s", "0.05"])
    flushes = replay_metrics.PRIORITY_FLUSH_SECONDS + "_count"
    with ReplayClient(process.grpc_address, timeout_s=10) as client:
        a, b = client.add_games([game("a", 20, 1), game("b", 30, 2)]).keys
        assert client.update_priorities([a, b, b], [3, 0, 29], [0.25, 6.0, 2.5]) == (3, 0)
        # the flush after the next one began after the update returned, so it wrote it
        target = scrape(process)[flushes] + 2
        while scrape(process)[flushes] < target:
            threading.Event().wait(0.01)
        assert scrape(process)[replay_metrics.PRIORITY_FLUSHED_RECORDS_TOTAL] >= 2
    process.kill()  # SIGKILL: no shutdown flush

    expected_a, expected_b = np.ones(20), np.ones(30)
    expected_a[3], expected_b[0], expected_b[29] = 0.25, 6.0, 2.5
    buffer = ReplayBuffer(ReplayConfig.for_game("cartpole", str(data), min_positions=0))
    try:
        np.testing.assert_array_equal(buffer.priorities("a"), expected_a)
        np.testing.assert_array_equal(buffer.priorities("b"), expected_b)
        assert buffer.stats().max_priority == 6.0
    finally:
        buffer.close()
    process = start_service("services.replay", args)
    with ReplayClient(process.grpc_address, timeout_s=10) as client:
        batch = client.sample_batch(256)
        assert np.all(np.isfinite(batch.importance_weight))
        assert client.get_stats().max_priority == 6.0
