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


def test_a_2048_evaluation_reports_each_games_largest_tile():
    class Recording(FakeEnvironment):
        """Remembers each slot's first game's last observation and move, as the rules saw them."""

        def __init__(self):
            super().__init__("2048")
            self.last = {}

        def step(self, session_id, actions, auto_reset=False, **kwargs):
            before = self.session.time_step().observation
            step = super().step(session_id, actions, auto_reset, **kwargs)
            for g in np.flatnonzero(step.terminated | step.truncated):
                self.last.setdefault(int(g), (before[g], int(actions[g])))
            return step

    environment = Recording()
    result = evaluate("2048", environment, FakeNetwork(num_actions=4, newest=1), num_games=3, simulations=2, seed=1)
    games = sorted(environment.last)
    assert games == [0, 1, 2]
    want = environment.game.episode_statistics(np.stack([environment.last[g][0] for g in games]),
                                                np.array([environment.last[g][1] for g in games]))
    np.testing.assert_array_equal(result.statistics["max_tile"], want["max_tile"])
    summary = result.summary()
    tiles = result.statistics["max_tile"]
    assert summary["max_tile_largest"] == tiles.max()
    assert summary["max_tile_at_least"] == {str(t): int((tiles >= t).sum()) for t in (256, 512, 1024, 2048, 4096)}
    assert "max_tile_at_least" not in evaluate("cartpole", FakeEnvironment("cartpole"), FakeNetwork(num_actions=2),
                                               num_games=2, simulations=2).summary()


class RecordingEnvironment(FakeEnvironment):
    """Keeps every step's actions ([steps, B])."""

    def __init__(self, game_name: str) -> None:
        super().__init__(game_name)
        self.actions: list[np.ndarray] = []

    def step(self, session_id, actions, auto_reset=False, timeout_s=None, expected_num_steps=None):
        self.actions.append(np.array(actions))
        return super().step(session_id, actions, auto_reset, timeout_s, expected_num_steps)


def first_legal(observation, legal_actions, rng):
    """A deterministic opponent, as a greedy model version is."""
    return np.argmax(legal_actions, axis=1).astype(np.int32)


@pytest.mark.parametrize("opening_moves", [0, 2])
def test_random_openings_make_two_deterministic_players_play_different_games(opening_moves):
    environment = RecordingEnvironment("tictactoe")
    evaluate("tictactoe", environment, FakeNetwork(num_actions=9), num_games=12, simulations=2, seed=3,
             opponent=first_legal, opening_moves=opening_moves)
    openings = {tuple(int(a) for a in np.stack(environment.actions)[:4, slot]) for slot in range(12)}
    if opening_moves == 0:
        # a deterministic search against a deterministic opponent: one game per side at most
        # (here one: the fake network's uniform prior makes the search pick the first legal
        # move too)
        assert len(openings) <= 2, openings
    else:
        assert len(openings) >= 6, openings
        firsts = {opening[:2] for opening in openings}
        assert len(firsts) >= 6 and all(a != b for a, b in firsts)  # two random legal plies
    with pytest.raises(ValueError, match="opening_moves must be >= 0, got -1"):
        evaluate("tictactoe", environment, FakeNetwork(num_actions=9), num_games=2, simulations=2, opening_moves=-1)
