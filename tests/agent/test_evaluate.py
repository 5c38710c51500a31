"""evaluate(): one model version for the whole evaluation, reported in the summary; stop and
failures."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from services.agent.evaluate import EvaluationStopped, evaluate
from services.common.failures import PermanentFailure
from tests.agent.agent_fakes import FakeEnvironment, FakeNetwork


def test_an_evaluation_pins_the_newest_version_at_its_start_for_every_request():
    environment = FakeEnvironment("tictactoe")
    network = FakeNetwork(num_actions=9, newest=2, export_after=3)  # version 3 appears mid-way
    result = evaluate("tictactoe", environment, network, num_games=4, simulations=2, seed=0)
    assert network.newest == 3, "the fake exported a newer version during the evaluation"
    assert len(network.pinned) > 3 and set(network.pinned) == {2}, "every request pins version 2"
    assert result.version == 2 and result.summary()["version"] == 2
    assert result.summary()["games"] == 4 and environment.closed == ["s1"]


def test_a_given_version_is_pinned_for_every_request():
    network = FakeNetwork(num_actions=2, newest=5)
    result = evaluate("cartpole", FakeEnvironment("cartpole"), network, num_games=2, simulations=2,
                      version=4, seed=0)
    assert set(network.pinned) == {4} and result.version == 4
    assert np.all(result.lengths >= 1)


def test_a_stop_ends_the_evaluation_between_moves():
    stop = threading.Event()
    stop.set()
    environment = FakeEnvironment("tictactoe")
    with pytest.raises(EvaluationStopped):
        evaluate("tictactoe", environment, FakeNetwork(num_actions=9), num_games=2, simulations=2,
                 stop=stop)
    assert environment.step_calls == 0


def test_a_failed_call_names_the_peer_and_the_method():
    environment = FakeEnvironment("tictactoe")
    environment.step_failures = [(grpc.StatusCode.UNAVAILABLE, False)]
    with pytest.raises(PermanentFailure) as raised:
        evaluate("tictactoe", environment, FakeNetwork(num_actions=9), num_games=2, simulations=2)
    assert (raised.value.peer, raised.value.method, raised.value.code) == ("environment", "Step", "UNAVAILABLE")
    assert "running" in raised.value.hint and environment.closed == ["s1"]
