"""Integration tests: a real environment server process on loopback, over gRPC.

Most tests share one server (`env_server`, module-scoped) and open their own sessions; the
tests of session expiry and SIGTERM start their own.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import games
from environment_helpers import (MAX_GAMES_PER_SESSION, InProcess, assert_same, loadable_games,
                                 random_legal_actions)
from protos import environment_pb2, environment_pb2_grpc, tensor_pb2
from services.common.channels import is_serving, make_channel
from services.common.processes import REPO_ROOT
from services.common.tensors import to_tensor
from services.environment import metrics as environment_metrics
from services.environment.client import EnvironmentClient
from services.environment.wire import SERVICE_NAME

pytestmark = pytest.mark.integration

GAMES = loadable_games()


def play(env: EnvironmentClient, name: str, num_games: int, seed: int, steps: int,
         auto_reset: bool = True) -> None:
    """Plays random legal moves through the service and in-process side by side."""
    session, spec, time_step = env.open(name, num_games, seed)
    try:
        game = games.make(name)
        assert spec == game.spec
        reference = InProcess(game, num_games, seed)
        assert_same(time_step, reference.time_step(), f"{name}: after Open")
        rng = np.random.default_rng(seed + 1)
        for t in range(steps):
            ended = np.flatnonzero(time_step.terminated | time_step.truncated)
            if not auto_reset and len(ended):
                time_step = env.reset(session, ended)
                assert_same(time_step, reference.reset(ended), f"{name}: after Reset at {t}")
            actions = random_legal_actions(rng, time_step.legal_actions)
            time_step = env.step(session, actions, auto_reset=auto_reset)
            assert_same(time_step, reference.step(actions, auto_reset), f"{name}: at step {t}")
    finally:
        env.close(session)


def test_health_is_serving(env_server):
    with make_channel(env_server.grpc_address) as channel:
        assert is_serving(channel, "")
        assert is_serving(channel, SERVICE_NAME)


@pytest.mark.parametrize("name", GAMES)
def test_get_spec_of_every_game(env, name):
    assert env.get_spec(name) == games.make(name).spec


def test_get_spec_default_and_unknown_game(env):
    assert env.get_spec() == games.make("cartpole").spec
    with pytest.raises(grpc.RpcError) as error:
        env.get_spec("chess")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("game: unknown game 'chess'")


@pytest.mark.parametrize("name", GAMES)
@pytest.mark.parametrize("auto_reset", [True, False], ids=["auto_reset", "reset"])
def test_same_seed_and_actions_give_the_games_in_process(env, name, auto_reset):
    play(env, name, num_games=8, seed=11, steps=25, auto_reset=auto_reset)


def test_auto_reset_reports_the_end_and_starts_a_new_game(env):
    session, _, time_step = env.open("cartpole", 3, seed=5)
    reference = InProcess(games.make("cartpole"), 3, seed=5)
    right = np.ones(3, np.int32)
    for t in range(100):  # always pushing right ends cartpole within ~10 steps
        time_step = env.step(session, right, auto_reset=True)
        expected = reference.step(right, auto_reset=True)
        assert_same(time_step, expected, f"at step {t}")
        if time_step.terminated.any():
            break
    ended = np.flatnonzero(time_step.terminated)
    assert len(ended) > 0 and time_step.reward[ended].tolist() == [1.0] * len(ended)
    # The observation is already the new game's: inside the start box, unlike the fallen pole.
    assert np.all(np.abs(time_step.observation[ended]) <= 0.05)
    observed = env.observe(session)
    assert_same(observed, time_step)
    assert observed.num_steps == t + 1
    assert_same(env.step(session, right, auto_reset=True), reference.step(right, auto_reset=True))
    env.close(session)


def test_reset_of_a_subset(env):
    session, _, _ = env.open("cartpole", 6, seed=2)
    reference = InProcess(games.make("cartpole"), 6, seed=2)
    for _ in range(4):
        before = env.step(session, np.zeros(6, np.int32))
        reference.step(np.zeros(6, np.int32))
    after = env.reset(session, [5, 0, 3])
    assert_same(after, reference.reset([5, 0, 3]))
    np.testing.assert_array_equal(after.observation[[1, 2, 4]], before.observation[[1, 2, 4]])
    assert not np.array_equal(after.observation[[0, 3, 5]], before.observation[[0, 3, 5]])
    assert after.reward.tolist() == [0, 1, 1, 0, 1, 0]
    assert_same(env.reset(session), reference.reset(None))
    env.close(session)


def test_close_is_idempotent_and_ends_the_session(env):
    session, _, _ = env.open("cartpole", 1)
    env.close(session)
    env.close(session)
    for call in (lambda: env.step(session, np.zeros(1, np.int32)), lambda: env.reset(session),
                 lambda: env.observe(session)):
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert error.value.details() == f"session_id: session '{session}' was closed"
    with pytest.raises(grpc.RpcError) as error:
        env.close("never-issued")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == "session_id: unknown session 'never-issued'"


def test_a_step_with_expected_num_steps_is_played_at_most_once(env):
    """A resent Step (its first answer lost) names the steps it expects: played once only."""
    session, _, _ = env.open("cartpole", 2)
    actions = np.array([0, 1], np.int32)
    first = env.step(session, actions, expected_num_steps=0)
    assert first.num_steps == 1
    with pytest.raises(grpc.RpcError) as error:
        env.step(session, actions, expected_num_steps=0)  # the same Step again
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "played 1 steps, not 0" in error.value.details()
    observed = env.observe(session)
    assert observed.num_steps == 1
    np.testing.assert_array_equal(observed.observation, first.observation)
    assert env.step(session, actions, expected_num_steps=1).num_steps == 2
    assert env.step(session, actions).num_steps == 3  # without it, as before
    env.close(session)


@pytest.mark.parametrize("game, num_games, seed, message", [
    ("chess", 1, 0, "game: unknown game 'chess'"),
    ("cartpole", 0, 0, f"num_games: must be in [1, {MAX_GAMES_PER_SESSION}]"),
    ("cartpole", -3, 0, f"num_games: must be in [1, {MAX_GAMES_PER_SESSION}]"),
    ("cartpole", MAX_GAMES_PER_SESSION + 1, 0, f"num_games: must be in [1, {MAX_GAMES_PER_SESSION}]"),
    ("cartpole", 1, -1, "seed: must be >= 0, got -1"),
])
def test_open_rejects_bad_requests(env, game, num_games, seed, message):
    with pytest.raises(grpc.RpcError) as error:
        env.open(game, num_games, seed)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(message), error.value.details()


def raw_step(env_server, session: str, actions: tensor_pb2.Tensor | None, auto_reset: bool = False):
    with make_channel(env_server.grpc_address) as channel:
        request = environment_pb2.StepRequest(session_id=session, auto_reset=auto_reset)
        if actions is not None:
            request.actions.CopyFrom(actions)
        return environment_pb2_grpc.EnvironmentStub(channel).Step(request, timeout=10)


BOARD = "tictactoe"


def test_bad_requests_are_rejected_by_name_and_change_nothing(env, env_server):
    """Every bad Step and Reset: its status code, a message naming the field, the session as it
    was (same observation, same num_steps) and, after it, the same play as in-process."""
    if BOARD not in GAMES:
        pytest.skip(f"{BOARD} does not load")
    B = 4
    session, _, _ = env.open(BOARD, B, seed=7)
    reference = InProcess(games.make(BOARD), B, seed=7)
    first = np.array([4, 0, 8, 2], np.int32)
    env.step(session, first)
    reference.step(first)
    INVALID, MISSING = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    bad_steps = [
        (np.array([0, 1, 2], np.int32), INVALID, "actions: shape must be [4] (one action per game of the session), got [3]"),
        (np.zeros((4, 1), np.int32), INVALID, "actions: shape must be [4] (one action per game of the session), got [4, 1]"),
        (np.zeros(4, np.float32), INVALID, "actions: dtype must be an integer type (int32), got float32"),
        (np.array([0, 1, 9, 3], np.int32), INVALID, "actions: action 9 of game 2 is out of range [0, 9)"),
        (np.array([0, -2, 1, 3], np.int32), INVALID, "actions: action -2 of game 1 is out of range [0, 9)"),
        (np.array([0, 1, 2, 2], np.int32), INVALID, "actions: action 2 is illegal in game 3 (legal actions: [0, 1, 3, 4, 5, 6, 7, 8])"),
    ]
    raw_bad_steps = [
        (None, INVALID, "actions: missing"),
        (tensor_pb2.Tensor(dtype=tensor_pb2.INT32, shape=[4], content=b"\0" * 15), INVALID,
         "actions: 15 bytes for shape [4] of int32 (expected 16)"),
        (tensor_pb2.Tensor(dtype=99, shape=[4], content=b"\0" * 16), INVALID, "actions: unknown dtype 99"),
    ]
    bad_resets = [
        ([4], INVALID, "game_indices: index 4 is out of range [0, 4)"),
        ([1, -1], INVALID, "game_indices: index -1 is out of range [0, 4)"),
        ([0, 0], INVALID, "game_indices: index 0 appears more than once"),
    ]
    unknown = "00000000-0000-4000-8000-000000000000"
    calls = (
        [(lambda a=a: env.step(session, a, auto_reset=True), c, m) for a, c, m in bad_steps]
        + [(lambda t=t: raw_step(env_server, session, t), c, m) for t, c, m in raw_bad_steps]
        + [(lambda i=i: env.reset(session, i), c, m) for i, c, m in bad_resets]
        + [(lambda: env.step(unknown, first), MISSING, f"session_id: unknown session '{unknown}'"),
           (lambda: env.reset(unknown), MISSING, f"session_id: unknown session '{unknown}'"),
           (lambda: env.step("", first), INVALID, "session_id: empty")])
    for call, code, message in calls:
        before = env.observe(session)
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert (error.value.code(), error.value.details()[:len(message)]) == (code, message)
        assert_same(env.observe(session), before, f"after {message!r}")
    # Nothing changed, not even the random stream: play goes on exactly as in-process.
    assert_same(env.reset(session, [1]), reference.reset([1]))
    actions = random_legal_actions(np.random.default_rng(0), reference.time_step().legal_actions)
    assert_same(env.step(session, actions), reference.step(actions))
    env.close(session)


def test_an_ended_game_must_be_reset_before_it_is_stepped(env):
    session, _, time_step = env.open("cartpole", 2, seed=3)
    right = np.ones(2, np.int32)
    while not (time_step.terminated | time_step.truncated).any():
        time_step = env.step(session, right)  # no auto_reset: ended games stay ended
    ended = int(np.flatnonzero(time_step.terminated | time_step.truncated)[0])
    for auto_reset in (False, True):
        with pytest.raises(grpc.RpcError) as error:
            env.step(session, right, auto_reset=auto_reset)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.value.details().startswith(f"actions: game {ended} has ended (terminated)")
        assert_same(env.observe(session), time_step)
    ended_games = np.flatnonzero(time_step.terminated | time_step.truncated)
    env.reset(session, ended_games)
    assert env.step(session, right).num_steps == time_step.num_steps + 1
    env.close(session)


def test_concurrent_sessions_each_play_like_in_process(env_server):
    """Threads with sessions of their own (and two threads sharing one) at the same time."""
    names = [name for name in ("cartpole", "connect4", "tictactoe") if name in GAMES]
    failures: list[BaseException] = []
    shared_steps = 30

    with EnvironmentClient(env_server.grpc_address, timeout_s=30) as env:
        shared, _, _ = env.open("cartpole", 5, seed=0)

        def own_session(i: int) -> None:
            try:
                play(env, names[i % len(names)], num_games=16 + i, seed=100 + i, steps=30)
            except BaseException as error:  # noqa: BLE001 - reported below
                failures.append(error)

        def shared_session() -> None:
            try:
                for t in range(shared_steps):
                    env.step(shared, np.full(5, t % 2, np.int32), auto_reset=True)
            except BaseException as error:  # noqa: BLE001
                failures.append(error)

        threads = [threading.Thread(target=own_session, args=(i,)) for i in range(4)]
        threads += [threading.Thread(target=shared_session) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not failures, failures
        # Two threads stepped one session: every Step was applied once, none at the same time.
        assert env.observe(shared).num_steps == 2 * shared_steps
        env.close(shared)


def scrape(env_server) -> dict[tuple[str, tuple], float]:
    url = f"http://127.0.0.1:{env_server.ready['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_steps_requests_and_errors(env, env_server):
    before = scrape(env_server)
    session, _, _ = env.open("cartpole", 7, seed=1)
    for _ in range(5):
        env.step(session, np.zeros(7, np.int32), auto_reset=True)
    with pytest.raises(grpc.RpcError):
        env.step(session, np.zeros(6, np.int32))
    during = scrape(env_server)
    env.close(session)
    after = scrape(env_server)

    def delta(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta(environment_metrics.STEPS_TOTAL, game="cartpole") == 35
    assert delta(environment_metrics.STEP_REQUESTS_TOTAL, game="cartpole") == 5
    assert delta(environment_metrics.SESSIONS_OPENED_TOTAL, game="cartpole") == 1
    assert delta(environment_metrics.ERRORS_TOTAL, method="Step", code="INVALID_ARGUMENT") == 1
    assert delta(environment_metrics.REQUEST_SECONDS + "_count", method="Step") == 6
    assert during[(environment_metrics.SESSIONS, ())] == after[(environment_metrics.SESSIONS, ())] + 1


def test_idle_sessions_expire(start_service):
    server = start_service("services.environment", ["--session-timeout-s", "0.2"])
    with EnvironmentClient(server.grpc_address) as env:
        session, _, _ = env.open("cartpole", 2)
        deadline = time.monotonic() + 30
        while not any(e["event"] == "session_expired" and e.get("session_id") == session
                      for e in list(server.events)):
            assert time.monotonic() < deadline, "the session did not expire:\n" + server.tail()
            time.sleep(0.02)  # polling the server's log, bounded by the deadline above
        with pytest.raises(grpc.RpcError) as error:
            env.step(session, np.zeros(2, np.int32))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert error.value.details().startswith(f"session_id: session '{session}' expired after 0.2s")
        env.close(session)  # a late Close of an expired session succeeds


def test_sigterm_stops_cleanly(start_service):
    server = start_service("services.environment", [])
    with EnvironmentClient(server.grpc_address) as env:
        session, _, _ = env.open("cartpole", 3)
        env.step(session, np.zeros(3, np.int32))
    assert server.stop() == 0  # SIGTERM, then waits for the exit
    events = [e for e in server.events if e["event"] in ("stopping", "stopped", "sessions_closed_at_stop")]
    # `stopped` is the last line: the sessions are closed after the calls in flight finished.
    assert [e["event"] for e in events] == ["stopping", "sessions_closed_at_stop", "stopped"]
    assert events[0]["signal"] == "SIGTERM" and events[1]["sessions"] == 1


def test_command_line():
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "services.environment", *args], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)

    helped = run("--help")
    assert helped.returncode == 0
    for flag in ("--game", "--host", "--port", "--metrics-port", "--session-timeout-s",
                 "--max-games-per-session", "--max-sessions", "--max-total-games", "--max-workers"):
        assert flag in helped.stdout
    refused = run("--game", "chess", "--port", "0", "--metrics-port", "0")
    assert refused.returncode == 2 and "--game" in refused.stderr
    refused = run("--max-games-per-session", "100", "--max-total-games", "10", "--port", "0",
                  "--metrics-port", "0")
    assert refused.returncode == 2, refused.stderr
    assert "--max-games-per-session must be <= --max-total-games=10, got 100" in refused.stderr
