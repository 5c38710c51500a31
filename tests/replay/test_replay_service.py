"""The replay service as a real process on loopback, over gRPC."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request

import grpc
import numpy as np
import pytest

from games.base import GameSpec
from protos import replay_pb2
from services.common.processes import REPO_ROOT
from services.common.tensors import to_tensor
from services.replay import metrics as replay_metrics
from services.replay.client import ReplayClient, make_game_record
from services.replay.config import spec_to_json

pytestmark = pytest.mark.integration

CARTPOLE = GameSpec(name="cartpole", observation_shape=(4,), observation_dtype="float32",
                    num_actions=2, num_players=1, discount=0.997, max_moves=500)


def game(id: str, T: int, seed: int = 0, **fields) -> replay_pb2.GameRecord:
    rng = np.random.default_rng(seed)
    return make_game_record(id, rng.normal(size=(T, 4)).astype(np.float32), rng.integers(0, 2, T),
                            np.ones(T, np.float32), rng.normal(size=T).astype(np.float32),
                            rng.dirichlet([1, 1], size=T).astype(np.float32), **fields)


def start_replay(start_service, data_dir, *flags):
    process = start_service("services.replay", ["--game", "cartpole", "--data-dir", str(data_dir),
                                                "--min-positions", "0", "--seed", "0", *flags])
    return process, ReplayClient(process.grpc_address, timeout_s=10)


def test_help():
    result = subprocess.run([sys.executable, "-m", "services.replay", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--game", "--data-dir", "--port", "--metrics-port", "--host", "--capacity",
                 "--min-positions", "--samples-per-insert", "--error-buffer", "--priority-alpha",
                 "--priority-beta"):
        assert flag in result.stdout


def test_add_sample_update_and_stats(start_service, tmp_path):
    process, client = start_replay(start_service, tmp_path / "data", "--num-unroll-steps", "3")
    with client:
        result = client.add_games([game("a", 20, 1, model_version=1), game("b", 30, 2, model_version=2)])
        assert (result.added, result.duplicates, result.positions_added) == (2, 0, 50)
        again = client.add_games([game("b", 30, 2)])
        assert (again.added, again.duplicates, again.keys) == (0, 1, [result.keys[1]])

        batch = client.sample_batch(64, include_unroll_observations=True)
        assert batch.observation.shape == (64, 4) and batch.observation.dtype == np.float32
        assert batch.actions.shape == (64, 3) and batch.actions.dtype == np.int32
        for name in ("target_value", "target_reward", "mask", "policy_mask"):
            assert getattr(batch, name).shape == (64, 4), name
        assert batch.target_policy.shape == (64, 4, 2)
        assert batch.unroll_observations.shape == (64, 4, 4)
        assert batch.importance_weight.shape == (64,) and batch.record_keys.dtype == np.int64
        assert set(batch.record_keys.tolist()) <= set(result.keys)
        versions = dict(zip(result.keys, [1, 2]))
        assert batch.model_version.tolist() == [versions[k] for k in batch.record_keys.tolist()]
        np.testing.assert_allclose(batch.target_policy.sum(-1), 1.0, rtol=1e-5)

        assert client.update_priorities(batch.record_keys, batch.positions, np.full(64, 3.0)) == (64, 0)

        stored = {g.game.id: g for g in client.sample_games(10)}
        assert set(stored) == {"a", "b"} and stored["a"].game.observations.dtype == np.float32
        assert client.update_targets("a", np.arange(20), np.full(20, 5.0), np.tile([[1.0, 0.0]], (20, 1)), 9) == (20, 0)
        newest = client.sample_games(1, order="newest_first")
        assert newest[0].game.id == "b"
        a = [g for g in client.sample_games(2) if g.game.id == "a"][0]
        assert a.targets_model_version == 9
        np.testing.assert_array_equal(a.game.root_values, 5.0)
        later = client.sample_batch(256, num_unroll_steps=1, td_steps=1, discount=0.5)
        from_a = later.record_keys == result.keys[0]
        inside = later.positions[from_a] < 19
        np.testing.assert_allclose(later.target_value[from_a][inside, 0], 1 + 0.5 * 5.0)  # r + g v
        np.testing.assert_allclose(later.target_policy[from_a][:, 0], [[1.0, 0.0]] * int(from_a.sum()))

        stats = client.get_stats()
        assert (stats.game, stats.games, stats.positions, stats.stored_positions) == ("cartpole", 2, 50, 50)
        assert dict(stats.games_per_model_version) == {1: 1, 2: 1}
        assert (stats.games_added_total, stats.duplicates_total, stats.sample_batches_total) == (2, 1, 2)
        assert stats.samples_total == 64 + 256 and stats.max_priority == 3.0
        assert stats.recent_games == 2 and stats.recent_mean_length == 25.0

    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{process.ready['metrics_port']}/metrics", timeout=10).read().decode()
    for line in (f"{replay_metrics.GAMES} 2.0", f"{replay_metrics.POSITIONS} 50.0",
                 f"{replay_metrics.GAMES_ADDED_TOTAL} 2.0", f"{replay_metrics.DUPLICATES_TOTAL} 1.0",
                 f"{replay_metrics.SAMPLES_TOTAL} 320.0", f"{replay_metrics.SAMPLE_BATCHES_TOTAL} 2.0",
                 f"{replay_metrics.EVICTED_GAMES_TOTAL} 0.0", f"{replay_metrics.RATE_LIMITED_TOTAL} 0.0",
                 f'{replay_metrics.REQUEST_SECONDS}_count{{method="SampleBatch"}} 2.0'):
        assert line in metrics, line


def _code_and_details(call):
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def test_bad_input_is_rejected_naming_the_field(start_service, tmp_path):
    process, client = start_replay(start_service, tmp_path / "data")
    stub = client._stub
    with client:
        client.add_games([game("g", 5)])
        key = client.sample_batch(1).record_keys[0]
        bad_shape = game("x", 5)
        bad_shape.observations.CopyFrom(to_tensor(np.zeros((5, 3), np.float32)))
        bad_bytes = game("y", 5)
        bad_bytes.rewards.content = b"\x00" * 7
        cases = [
            (lambda: client.add_games([game("ok", 3), bad_shape]), grpc.StatusCode.INVALID_ARGUMENT,
             "games[1].observations:"),
            (lambda: client.add_games([bad_bytes]), grpc.StatusCode.INVALID_ARGUMENT, "games[0].rewards:"),
            (lambda: client.add_games([game("", 3)]), grpc.StatusCode.INVALID_ARGUMENT, "games[0].id:"),
            (lambda: client.add_games([game("n", 3, num_sampleable=4)]), grpc.StatusCode.INVALID_ARGUMENT,
             "games[0].num_sampleable:"),
            (lambda: client.sample_batch(0), grpc.StatusCode.INVALID_ARGUMENT, "batch_size:"),
            (lambda: client.update_priorities([key], [0], [float("nan")]),
             grpc.StatusCode.INVALID_ARGUMENT, "priorities:"),
            (lambda: client.update_priorities([key], [0], [-1.0]), grpc.StatusCode.INVALID_ARGUMENT,
             "priorities:"),
            (lambda: client.update_priorities([key], [7], [1.0]), grpc.StatusCode.INVALID_ARGUMENT,
             "positions:"),
            (lambda: stub.UpdatePriorities(replay_pb2.UpdatePrioritiesRequest(), timeout=10),
             grpc.StatusCode.INVALID_ARGUMENT, "record_keys:"),
            (lambda: client.update_targets("nope", [0], [0.0], [[0.5, 0.5]], 1),
             grpc.StatusCode.NOT_FOUND, "game_id:"),
            (lambda: client.update_targets("g", [9], [0.0], [[0.5, 0.5]], 1),
             grpc.StatusCode.INVALID_ARGUMENT, "positions:"),
            (lambda: client.update_targets("g", [0], [0.0], [[0.2, 0.3, 0.5]], 1),
             grpc.StatusCode.INVALID_ARGUMENT, "policies:"),
        ]
        for call, code, prefix in cases:
            got_code, details = _code_and_details(call)
            assert (got_code, details.startswith(prefix)) == (code, True), (prefix, details)
        stats = client.get_stats()
        assert (stats.games, stats.positions, stats.max_priority) == (1, 5, 1.0)
        stored = client.sample_games(1)[0]
        assert stored.targets_model_version == 0 and stored.game.id == "g"


def test_acknowledged_adds_survive_kill_9(start_service, tmp_path):
    data = tmp_path / "data"
    process, client = start_replay(start_service, data)
    sent: dict[str, replay_pb2.GameRecord] = {}
    acked: list[str] = []
    sending = threading.Event()  # set when a request goes out after 60 records were acked

    def write(w):
        i = 0
        while True:
            records = [game(f"w{w}-{i}-{j}", 20 + (i * 7 + j) % 480, seed=w * 10_000 + i * 4 + j)
                       for j in range(4)]
            sent.update({r.id: r for r in records})
            if len(acked) >= 60:
                sending.set()
            try:
                client.add_games(records, timeout_s=3)
            except grpc.RpcError:
                return
            acked.extend(r.id for r in records)
            i += 1

    writers = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    for writer in writers:
        writer.start()
    assert sending.wait(120)
    process.kill()  # SIGKILL, mid-stream: requests are in flight
    for writer in writers:
        writer.join(120)
    client.close()
    acked_now = list(acked)

    process, client = start_replay(start_service, data)
    with client:
        stored = client.sample_games(100_000, order="newest_first")
        ids = [g.game.id for g in stored]
        assert len(ids) == len(set(ids)), "a record stored twice"
        assert set(acked_now) <= set(ids), "an acknowledged record was lost"
        unacked = set(ids) - set(acked_now)
        assert len(unacked) <= 12  # at most the requests in flight at the kill
        requests = {}
        for id in unacked:  # a request in flight is stored whole (one transaction) or not at all
            requests.setdefault(id.rsplit("-", 1)[0], []).append(id)
        assert all(len(ids_) == 4 for ids_ in requests.values()), requests
        for g in stored:  # whole records only, exactly as sent
            original = sent[g.game.id]
            for name in ("observations", "actions", "rewards", "root_values", "policies"):
                expected = np.frombuffer(getattr(original, name).content,
                                         np.float32 if name != "actions" else np.int32)
                np.testing.assert_array_equal(getattr(g.game, name).ravel(), expected, err_msg=name)
        assert client.get_stats().games == len(ids)
        # retried adds after the restart are duplicates
        result = client.add_games([sent[i] for i in acked_now[:10]])
        assert (result.added, result.duplicates) == (0, 10)


def test_eviction_by_capacity(start_service, tmp_path):
    process, client = start_replay(start_service, tmp_path / "data", "--capacity", "100")
    with client:
        for i in range(5):
            client.add_games([game(f"g{i}", 30, i)])
        stats = client.get_stats()
        assert (stats.games, stats.stored_positions, stats.evicted_games_total) == (3, 90, 2)
        assert sorted(g.game.id for g in client.sample_games(10)) == ["g2", "g3", "g4"]
        assert client.add_games([game("g0", 30, 0)]).duplicates == 1
    # the limits in force, derived from the capacity and the sample bound (docs/replay.md, Limits)
    ready = process.ready
    assert (ready["max_receive_bytes"], ready["max_send_bytes"]) == (4 << 20, 65 << 20)
    assert (ready["max_workers"], ready["max_sample_bytes"], ready["priority_limit"]) == (8, 64 << 20, 1e6)


def test_concurrent_writers_and_samplers(start_service, tmp_path):
    process, client = start_replay(start_service, tmp_path / "data", "--capacity", "3000")
    errors: list[BaseException] = []
    writers_done = threading.Event()
    batches = []

    def writer(w):
        try:
            for i in range(15):
                client.add_games([game(f"w{w}-{i}-{j}", 40 + j, seed=w * 100 + i) for j in range(3)])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def sampler():
        try:
            while not writers_done.is_set():
                batch = client.sample_batch(32, timeout_s=30)
                assert np.all(np.isfinite(batch.target_value))
                client.update_priorities(batch.record_keys, batch.positions,
                                         np.abs(batch.target_value[:, 0]) + 0.1)
                batches.append(batch)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    with client:
        client.add_games([game("seed", 10)])
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        samplers = [threading.Thread(target=sampler) for _ in range(2)]
        for thread in threads + samplers:
            thread.start()
        for thread in threads:
            thread.join(120)
        writers_done.set()
        for thread in samplers:
            thread.join(120)
        assert not errors, errors
        stats = client.get_stats()
        assert stats.games_added_total == 136
        assert stats.games + stats.evicted_games_total == 136
        assert stats.stored_positions <= 3000 and stats.evicted_games_total > 0
        assert stats.sample_batches_total == len(batches) > 0


def test_rate_limiter_blocks_then_times_out_with_its_state(start_service, tmp_path):
    process, client = start_replay(start_service, tmp_path / "data", "--min-positions", "100")
    with client:
        client.add_games([game("a", 60)])
        code, details = _code_and_details(lambda: client.sample_batch(8, timeout_s=1.0))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "rate limiter" in details and "positions=60" in details and "min_positions=100" in details
        result = {}
        waiter = threading.Thread(target=lambda: result.setdefault("batch", client.sample_batch(8, timeout_s=60)))
        waiter.start()
        while client.get_stats().rate_limited_total < 2:
            threading.Event().wait(0.01)
        client.add_games([game("b", 60)])  # wakes the waiting sampler
        waiter.join(60)
        assert result["batch"].target_value.shape[0] == 8
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{process.ready['metrics_port']}/metrics", timeout=10).read().decode()
    assert f"{replay_metrics.RATE_LIMITED_TOTAL} 2.0" in metrics


def test_samples_per_insert(start_service, tmp_path):
    process, client = start_replay(start_service, tmp_path / "data", "--samples-per-insert", "1",
                                   "--error-buffer", "0")
    with client:
        client.add_games([game("a", 50)])
        client.sample_batch(50)
        code, details = _code_and_details(lambda: client.sample_batch(1, timeout_s=0.5))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "samples_per_insert=1" in details
        client.add_games([game("b", 20)])
        client.sample_batch(20)


def test_sigterm_releases_waiters_and_keeps_everything(start_service, tmp_path):
    data = tmp_path / "data"
    process, client = start_replay(start_service, data, "--min-positions", "1000")
    client.add_games([game("a", 10)])
    key = client.sample_games(1)[0].key
    client.update_priorities([key], [3], [6.0])
    outcome = {}

    def sample():
        try:
            client.sample_batch(4, timeout_s=60)
        except grpc.RpcError as error:
            outcome["code"], outcome["details"] = error.code(), error.details()

    waiter = threading.Thread(target=sample)
    waiter.start()
    while client.get_stats().rate_limited_total < 1:
        threading.Event().wait(0.01)
    assert process.stop() == 0
    waiter.join(60)
    client.close()
    assert outcome["code"] == grpc.StatusCode.UNAVAILABLE
    assert any(e["event"] == "stopped" for e in process.events)

    process, client = start_replay(start_service, data)
    with client:
        stats = client.get_stats()
        assert (stats.games, stats.max_priority) == (1, 6.0)  # priorities written at shutdown


def test_a_data_dir_of_another_game_is_refused(start_service, tmp_path):
    process, client = start_replay(start_service, tmp_path / "data")
    client.close()
    process.stop()
    other = GameSpec(name="board", observation_shape=(3, 3, 2), observation_dtype="uint8",
                     num_actions=9, num_players=2, discount=1.0, max_moves=9)
    with pytest.raises(RuntimeError, match="holds records of"):
        start_service("services.replay", ["--game-spec", spec_to_json(other),
                                          "--data-dir", str(tmp_path / "data")])


def test_a_game_outside_the_registry_through_game_spec(start_service, tmp_path):
    spec = GameSpec(name="board", observation_shape=(3, 3, 2), observation_dtype="uint8",
                    num_actions=9, num_players=2, discount=1.0, max_moves=9)
    process = start_service("services.replay", [
        "--game-spec", spec_to_json(spec), "--data-dir", str(tmp_path / "data"),
        "--min-positions", "0", "--num-unroll-steps", "1", "--td-steps", "3"])
    observations = np.zeros((5, 3, 3, 2), np.float32)
    observations[np.arange(5), np.arange(5) % 3, 0, np.arange(5) % 2] = 1.0
    with ReplayClient(process.grpc_address) as client:
        client.add_games([make_game_record(
            "g", observations, np.arange(5), np.array([0, 0, 0, 0, 1], np.float32),
            np.array([0.1, -0.2, 0.3, -0.4, 0.5], np.float32), np.full((5, 9), 1 / 9, np.float32),
            to_play=np.arange(5) % 2, legal_actions=np.ones((5, 9), bool))])
        batch = client.sample_batch(64)
        for i in range(64):  # the two-player example of test_replay_targets, over the wire
            t = batch.positions[i]
            np.testing.assert_allclose(batch.target_value[i], [0.4, -0.5, 1.0, -1.0, 1.0, 0.0][t:t + 2],
                                       atol=1e-6)
            np.testing.assert_array_equal(batch.observation[i], observations[t])
        stored = client.sample_games(1)[0].game
        assert stored.observations.dtype == np.uint8
        np.testing.assert_array_equal(stored.observations, observations)
        assert client.get_stats().game == "board"
