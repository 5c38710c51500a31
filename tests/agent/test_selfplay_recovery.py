"""SelfPlay's recovery paths against fake peers: a Step is played exactly once whatever fails,
permanent failures end the run, and a stop is never held up by back-pressure."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from services.agent.config import AgentConfig
from services.agent.selfplay import SelfPlay
from services.common.failures import PermanentFailure, RetryPolicy
from tests.agent.agent_fakes import FakeEnvironment, FakeNetwork, FakeReplay, FakeRpcError, LogSink

C = grpc.StatusCode
FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)


def make_selfplay(game: str = "cartpole", B: int = 2, replay: FakeReplay | None = None,
                  stop: threading.Event | None = None, **fields):
    sink = LogSink()
    environment = FakeEnvironment(game)
    config = AgentConfig(game=game, environment=environment.address, network=FakeNetwork.address,
                         replay="127.0.0.1:3", games_per_batch=B, simulations=2, groups=1, seed=0,
                         **fields)
    selfplay = SelfPlay(config, sink.log, environment=environment,
                        network=FakeNetwork(environment.game.spec.num_actions),
                        replay=replay or FakeReplay(), policy=FAST, stop=stop)
    return selfplay, environment, sink


def opened(selfplay: SelfPlay, environment: FakeEnvironment):
    environment.open(num_games=selfplay.config.games_per_batch)
    return np.zeros(selfplay.config.games_per_batch, np.int32)


def test_a_step_whose_answer_was_lost_is_not_played_again_while_observe_fails():
    selfplay, environment, _ = make_selfplay()
    actions = opened(selfplay, environment)
    environment.step_failures = [(C.DEADLINE_EXCEEDED, True)]   # applied, answer lost
    environment.observe_failures = [C.UNAVAILABLE, C.DEADLINE_EXCEEDED, C.CANCELLED]
    time_step = selfplay._step("s1", actions, 0, threading.Event())
    assert environment.session.num_steps == 1, "the move must be played exactly once"
    assert environment.step_calls == 1 and environment.observe_calls == 4
    assert time_step.num_steps == 1
    np.testing.assert_array_equal(time_step.observation, environment.session.time_step().observation)
    selfplay.close(timeout_s=1.0)


def test_a_step_that_was_not_applied_is_sent_again_once():
    selfplay, environment, _ = make_selfplay()
    actions = opened(selfplay, environment)
    environment.step_failures = [(C.UNAVAILABLE, False)]
    environment.observe_failures = [C.UNAVAILABLE]
    time_step = selfplay._step("s1", actions, 0, threading.Event())
    assert environment.session.num_steps == 1 and time_step.num_steps == 1
    assert environment.step_calls == 2
    selfplay.close(timeout_s=1.0)


def test_a_step_that_arrives_after_the_observe_is_not_played_twice():
    """The Step cut by its deadline reaches the environment after the agent observed the
    session unchanged; the resent Step names the steps it expects, so only one is played."""
    selfplay, environment, _ = make_selfplay()
    actions = opened(selfplay, environment)
    environment.late_steps = []
    environment.step_failures = [(C.DEADLINE_EXCEEDED, False)]
    time_step = selfplay._step("s1", actions, 0, threading.Event())
    assert environment.session.num_steps == 1, "the move must be played exactly once"
    # Step, Observe (unchanged; then the late Step lands), Step refused, Observe (applied)
    assert environment.step_calls == 2 and environment.observe_calls == 2
    assert time_step.num_steps == 1
    selfplay.close(timeout_s=1.0)


def test_a_permanent_observe_failure_ends_the_run_instead_of_stepping_again():
    selfplay, environment, _ = make_selfplay()
    actions = opened(selfplay, environment)
    environment.step_failures = [(C.DEADLINE_EXCEEDED, True)]
    environment.observe_failures = [C.INVALID_ARGUMENT]
    with pytest.raises(PermanentFailure) as raised:
        selfplay._step("s1", actions, 0, threading.Event())
    assert (raised.value.peer, raised.value.method, raised.value.code) == (
        "environment", "Observe", "INVALID_ARGUMENT")
    assert environment.step_calls == 1 and environment.session.num_steps == 1
    selfplay.close(timeout_s=1.0)


def test_not_found_from_step_or_observe_means_the_session_is_lost():
    selfplay, environment, _ = make_selfplay()
    actions = opened(selfplay, environment)
    environment.step_failures = [(C.NOT_FOUND, False)]
    assert selfplay._step("s1", actions, 0, threading.Event()) is None
    environment.step_failures = [(C.UNAVAILABLE, False)]
    environment.observe_failures = [C.NOT_FOUND]
    assert selfplay._step("s1", actions, 0, threading.Event()) is None
    assert environment.step_calls == 2
    selfplay.close(timeout_s=1.0)


def test_a_permanent_step_failure_names_what_to_fix():
    selfplay, environment, _ = make_selfplay()
    actions = opened(selfplay, environment)
    environment.step_failures = [(C.INVALID_ARGUMENT, False)]
    with pytest.raises(PermanentFailure, match="--game") as raised:
        selfplay._step("s1", actions, 0, threading.Event())
    assert raised.value.method == "Step" and environment.step_calls == 1
    selfplay.close(timeout_s=1.0)


def test_a_record_the_replay_refuses_ends_self_play_with_the_failure():
    def refuse(records, timeout_s):
        raise FakeRpcError(C.INVALID_ARGUMENT, "games[0].observations: T = 9 positions exceed the "
                                               "server's capacity 4")

    replay = FakeReplay(refuse)
    selfplay, _, _ = make_selfplay("tictactoe", B=2, replay=replay, max_moves=200)
    with pytest.raises(PermanentFailure) as raised:
        selfplay.run(threading.Event())
    failure = raised.value
    assert (failure.peer, failure.method, failure.code) == ("replay", "AddGames", "INVALID_ARGUMENT")
    assert "--capacity" in failure.hint and "capacity 4" in failure.details
    assert replay.calls == 1, "a permanent failure is not retried"
    assert selfplay.moves < 200
    assert selfplay.close(timeout_s=1.0) > 0  # what stayed unsent is counted


def test_stop_ends_a_run_held_by_back_pressure_and_close_counts_the_unsent_records():
    down = threading.Event()

    def unavailable(records, timeout_s):
        down.set()
        raise FakeRpcError(C.UNAVAILABLE, "connection refused")

    stop = threading.Event()
    selfplay, _, sink = make_selfplay("tictactoe", B=2, replay=FakeReplay(unavailable), stop=stop,
                                      max_pending_records=1)
    runner = threading.Thread(target=selfplay.run, args=(stop,))
    runner.start()
    assert down.wait(60), "the agent finished a game and tried to send it"
    stop.set()
    runner.join(60)
    assert not runner.is_alive(), "run() must return once stopped, even while put() waits for room"
    unsent = selfplay.close(timeout_s=0.5)
    assert unsent >= 1 and unsent == selfplay.writer.pending
    assert sink.events("replay_add_failed")
