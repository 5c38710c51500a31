"""The agent against real environment, network and replay server processes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import games
from models.export import export_version
from models.networks import MuZeroNetwork
from services.common.processes import REPO_ROOT, ServiceProcess
from services.replay.client import ReplayClient

pytestmark = pytest.mark.integration


def _fleet(start_service, tmp_path, game_name: str):
    game = games.make(game_name)
    models = tmp_path / "models" / "muzero"
    export_version(MuZeroNetwork(game.spec, game.settings, seed=0), models, 0)
    environment = start_service("services.environment", ["--game", game_name])
    replay = start_service("services.replay", ["--game", game_name, "--data-dir", str(tmp_path / "replay"),
                                               "--min-positions", "1"])
    network = start_service("services.network", ["--model_name", "muzero", "--model_base_path", str(models),
                                                 "--enable_batching", "--file_system_poll_wait_seconds", "1"])
    return environment, replay, network


@pytest.mark.parametrize("game_name, moves", [("cartpole", 60), ("tictactoe", 12)])
def test_agent_plays_whole_games_that_replay_stores_consistently(start_service, tmp_path, game_name, moves):
    environment, replay, network = _fleet(start_service, tmp_path, game_name)
    agent = start_service("services.agent", [
        "--game", game_name, "--environment", environment.grpc_address, "--network", network.grpc_address,
        "--replay", replay.grpc_address, "--games-per-batch", "16", "--simulations", "4",
        "--groups", "2", "--max-moves", str(moves), "--chunk-length", "20"], default_ports=False)
    assert agent.wait(120) == 0, agent.tail()  # flushes every record before exiting 0
    spec = games.make(game_name).spec
    with ReplayClient(replay.grpc_address) as client:
        stats = client.get_stats()
        stored = client.sample_games(1000)
    assert stats.games > 0
    episodes: dict[str, list] = {}
    for game in stored:
        record = game.game
        T = len(record.actions)
        assert record.observations.shape == (T, *spec.observation_shape)
        assert record.policies.shape == (T, spec.num_actions)
        np.testing.assert_allclose(record.policies.sum(axis=1), 1.0, atol=1e-5)
        assert np.all(record.legal_actions[np.arange(T), record.actions]), "only legal moves stored"
        assert record.model_version == 0
        episodes.setdefault(record.episode_id, []).append(record)
    finished = 0
    for chunks in episodes.values():
        chunks.sort(key=lambda r: r.first_move)
        for before, after in zip(chunks, chunks[1:]):  # chunks tile the game without gaps
            assert before.num_sampleable > 0
            assert after.first_move == before.first_move + before.num_sampleable
        last = chunks[-1]
        if last.num_sampleable < len(last.actions):
            continue  # a long game still being played when the agent stopped: chunks only
        finished += 1
        length = last.first_move + len(last.actions)
        if game_name == "tictactoe":
            assert 5 <= length <= 9 and last.terminated and len(chunks) == 1
            # Players alternate, and only the final move can earn a reward.
            np.testing.assert_array_equal(last.to_play, np.arange(length) % 2)
            assert np.all(last.rewards[:-1] == 0)
        else:
            assert last.terminated or length == spec.max_moves
            np.testing.assert_array_equal(last.rewards, 1.0)
    assert finished >= 8, "most game slots finished a game"


def test_agent_evaluation_mode_prints_results_against_a_random_player(start_service, tmp_path):
    environment, _replay, network = _fleet(start_service, tmp_path, "tictactoe")
    completed = subprocess.run(
        [sys.executable, "-m", "services.agent", "--game", "tictactoe", "--environment",
         environment.grpc_address, "--network", network.grpc_address, "--simulations", "4",
         "--evaluate", "10", "--version", "0", "--rescale-values"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["games"] == 10 and summary["version"] == 0
    # tic-tac-toe's search does not rescale; the flag makes this evaluation's search rescale
    assert games.make("tictactoe").settings.search.rescale_values is False
    assert summary["rescale_values"] is True
    assert summary["wins"] + summary["draws"] + summary["losses"] == 10
    assert summary["losses_as_first"] + summary["losses_as_second"] == summary["losses"]


def test_agent_help():
    completed = subprocess.run([sys.executable, "-m", "services.agent", "--help"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0 and "--games-per-batch" in completed.stdout


def _free_port() -> int:
    """A loopback port nothing listens on (bound once and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_event(process: ServiceProcess, name: str, timeout_s: float = 120.0) -> dict:
    waiting = threading.Event()
    for _ in range(int(timeout_s / 0.02)):
        found = [e for e in list(process.events) if e["event"] == name]
        if found:
            return found[0]
        if process.poll() is not None:
            break
        waiting.wait(0.02)
    raise AssertionError(f"no {name} event:\n" + process.tail())


def test_sigterm_right_after_start_is_a_clean_exit(tmp_path):
    down = f"127.0.0.1:{_free_port()}"
    agent = ServiceProcess("services.agent", [
        "--game", "cartpole", "--environment", down, "--network", down, "--replay", down,
        "--games-per-batch", "2", "--simulations", "2", "--metrics-port", "0"],
        log_path=tmp_path / "agent.log").start()
    try:
        _wait_for_event(agent, "starting")  # the stop handlers are in place from here on
        agent.signal(signal.SIGTERM)         # while TensorFlow and the clients load
        assert agent.wait(120) == 0, agent.tail()
    finally:
        agent.stop()
    stopped = [e for e in agent.events if e["event"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["unsent_records"] == 0, agent.tail()


def test_unsupported_evaluation_is_refused_before_connecting():
    down = f"127.0.0.1:{_free_port()}"
    completed = subprocess.run(
        [sys.executable, "-m", "services.agent", "--game", "connect4", "--environment", down,
         "--network", down, "--evaluate", "10", "--opponent", "minimax"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2, completed.stderr
    assert "--opponent 'minimax' plays tictactoe only" in completed.stderr
    assert "Traceback" not in completed.stderr
