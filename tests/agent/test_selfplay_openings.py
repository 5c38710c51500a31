"""Random openings in self-play (`random_opening_moves`): the first N moves of every game are
uniform among the legal moves and later moves are the search's. Branching
(`random_branch_probability`/`_plies`): each early ply is played at random with some
probability, and the game is recorded from the position after its last random move. Fakes for the peers (an in-process environment session, a
network whose policy all but forces the centre cell)."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.agent.config import AgentConfig
from services.agent.metrics import AgentMetrics
from services.agent.selfplay import SelfPlay
from services.common.failures import RetryPolicy
from services.common.tensors import from_tensor
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


class RecordKeeper(FakeReplay):
    """Keeps every record it acknowledges."""

    def __init__(self) -> None:
        super().__init__()
        self.records = []

    def add_games(self, records, timeout_s=None):
        super().add_games(records, timeout_s)
        self.records.extend(records)


def play(random_opening_moves: int = 0, **branching) -> tuple[MoveRecorder, RecordKeeper]:
    environment, replay = MoveRecorder("tictactoe"), RecordKeeper()
    config = AgentConfig(game="tictactoe", environment=environment.address, network=FakeNetwork.address,
                         replay="127.0.0.1:3", games_per_batch=16, simulations=4, groups=1, seed=0,
                         max_moves=60, random_opening_moves=random_opening_moves, **branching)
    metrics = AgentMetrics(CollectorRegistry())
    selfplay = SelfPlay(config, LogSink().log, environment=environment, network=CentreNetwork(9),
                        replay=replay, policy=FAST, metrics=metrics)
    selfplay.run()
    selfplay.close(timeout_s=1.0)
    environment.branched = metrics.registry.get_sample_value("mufleet_agent_branch_moves_total")
    environment.finished = selfplay.games_finished
    return environment, replay


def first_moves(replay: RecordKeeper) -> np.ndarray:
    """Each record's first move, checked against the stones of its first position (a
    tic-tac-toe position's stone count is its move index)."""
    firsts = np.array([record.first_move for record in replay.records])
    stones = np.array([(from_tensor(record.observations)[0] != 0).sum() for record in replay.records])
    np.testing.assert_array_equal(firsts, stones)
    return firsts


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


def test_without_branching_every_record_starts_at_the_first_move():
    environment, replay = play()
    assert replay.records and set(first_moves(replay).tolist()) == {0}
    assert environment.branched == 0


def test_a_game_branching_at_the_first_ply_plays_it_at_random_and_is_recorded_after_it():
    environment, replay = play(random_branch_probability=1.0, random_branch_plies=1)
    # Every game's first move is uniform, the second the search's (the centre where free).
    counts = np.bincount(by_index(environment.moves, 0), minlength=9)
    assert counts.sum() >= 100 and (counts > 0).all() and counts.max() < 3 * counts.sum() / 9, counts
    second = by_index(environment.moves, 1)
    assert np.mean(second == CENTRE) > 0.6
    # Every record starts after the branch: the random move and what came before are not sent.
    assert replay.records and set(first_moves(replay).tolist()) == {1}
    assert environment.branched >= environment.finished >= 100


def test_each_early_ply_is_played_at_random_on_its_own_and_the_record_follows_the_last():
    environment, replay = play(random_branch_probability=0.5, random_branch_plies=3)
    # A record starts after its game's last random move: after ply 2 for half of the games, ply
    # 1 for a quarter, ply 0 for an eighth; an eighth play no random move and start at 0.
    shares = np.bincount(first_moves(replay), minlength=4) / len(replay.records)
    assert len(shares) == 4 and len(replay.records) >= 100, shares
    assert 0.35 < shares[3] < 0.65 and 0.12 < shares[2] < 0.38, shares
    assert 0.03 < shares[1] < 0.25 and 0.03 < shares[0] < 0.25, shares
    # Every random move is counted: 1.5 per game on average (3 plies, each at 0.5).
    started = environment.finished + 16  # the 16 slots' unfinished games started too
    assert 1.1 * environment.finished < environment.branched < 1.9 * started


def test_branching_is_refused_without_plies_and_out_of_range_by_name():
    fields = dict(game="tictactoe", environment="h:1", network="h:2", replay="h:3", games_per_batch=1,
                  simulations=1)
    with pytest.raises(ValueError, match=r"AgentConfig.random_branch_plies must be >= 1 when random_branch_probability "
                                         r"> 0 \(it is 0.5\), got 0 \(tictactoe's random_branch_plies\)$"):
        AgentConfig(**fields, random_branch_probability=0.5)
    with pytest.raises(ValueError, match=r"AgentConfig.random_branch_probability must be in \[0, 1\], got 1.5"):
        AgentConfig(**fields, random_branch_probability=1.5, random_branch_plies=2)
    with pytest.raises(ValueError, match="AgentConfig.random_branch_plies must be >= 0, got -1$"):
        AgentConfig(**fields, random_branch_plies=-1)
    with pytest.raises(ValueError, match="AgentConfig.random_branch_plies must be an int, got 2.5$"):
        AgentConfig(**fields, random_branch_probability=0.5, random_branch_plies=2.5)
