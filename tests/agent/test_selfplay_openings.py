"""Random openings in self-play (`random_opening_moves`): the first N moves of every game are
uniform among the legal moves and later moves are the search's. Fakes for the peers (an in-process environment session, a
network whose policy all but forces the centre cell)."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.agent.config import AgentConfig
from services.agent.metrics import AgentMetrics
from services.agent.selfplay import SelfPlay
from services.common.failures import RetryPolicy
from tests.agent.agent_fakes import FakeEnvironment, FakeNetwork, FakeReplay, LogSink

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)
CENTRE = 4


class CentreNetwork(FakeNetwork):
    """Policy logits of +30 on the centre cell: the search plays it whenever it is free."""

    def predict_future(self, signature, inputs, version=None, timeout_s=None):
        done = super().predict_future(signature, inputs, version, timeout_s)
        done.result().policy_logits[:, CENTRE] = 30.0
        return done


class MoveRecorder(FakeEnvironment):
    """Remembers each move's (index in its game, action)."""

    def __init__(self, game: str) -> None:
        super().__init__(game)
        self.moves: list[tuple[int, int]] = []

    def step(self, session_id, actions, auto_reset=False, **kwargs):
        played = (self.session.time_step().observation != 0).sum(axis=(1, 2, 3))  # stones = move index
        self.moves += list(zip(played.tolist(), np.asarray(actions).tolist()))
        return super().step(session_id, actions, auto_reset, **kwargs)


def play(random_opening_moves: int) -> tuple[MoveRecorder, FakeReplay]:
    environment, replay = MoveRecorder("tictactoe"), FakeReplay()
    config = AgentConfig(game="tictactoe", environment=environment.address, network=FakeNetwork.address,
                         replay="127.0.0.1:3", games_per_batch=16, simulations=4, groups=1, seed=0,
                         max_moves=60, random_opening_moves=random_opening_moves)
    selfplay = SelfPlay(config, LogSink().log, environment=environment, network=CentreNetwork(9),
                        replay=replay, policy=FAST, metrics=AgentMetrics(CollectorRegistry()))
    selfplay.run()
    selfplay.close(timeout_s=1.0)
    return environment, replay


def by_index(moves: list[tuple[int, int]], index: int) -> np.ndarray:
    return np.array([action for i, action in moves if i == index])


def test_without_random_openings_every_game_opens_in_the_centre():
    environment, _ = play(0)
    assert set(by_index(environment.moves, 0).tolist()) == {CENTRE}


@pytest.mark.parametrize("n", [1, 2])
def test_the_first_n_moves_are_uniform_and_later_ones_the_searchs(n):
    environment, _ = play(n)
    for index in range(n):
        actions = by_index(environment.moves, index)
        counts = np.bincount(actions, minlength=9)
        assert len(actions) >= 100
        # Uniform over the free cells: every cell is played, none far more often than the others.
        assert (counts > 0).sum() >= 9 - index, counts
        assert counts.max() < 3 * len(actions) / (9 - index), counts
    # At move n the search plays the centre wherever it is still free.
    later = [(i, a) for i, a in environment.moves if i == n]
    assert later and np.mean([a == CENTRE for _, a in later]) > 0.6


def test_a_bad_random_opening_moves_is_refused_by_name():
    with pytest.raises(ValueError, match="AgentConfig.random_opening_moves must be >= 0, got -1"):
        AgentConfig(game="tictactoe", environment="h:1", network="h:2", replay="h:3", games_per_batch=1,
                    simulations=1, random_opening_moves=-1)
