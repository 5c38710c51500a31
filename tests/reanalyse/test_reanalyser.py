"""The reanalyse loop against a real replay server in this process and a small deterministic
fake network: the targets it stores are exactly the agent's search's, stamped with the
version, ordered by version, and the loop survives evictions and network outages."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import games
from services.agent.inference import INITIAL_INFERENCE, Answered, ModelOutput, VersionedOutput
from services.agent.pipeline import PipelinedSearch
from services.agent.search import STOCHASTIC_OF, SearchConfig
from services.common.failures import RetryPolicy
from services.common.metrics import flat_metrics, sum_samples
from services.reanalyse import metrics as reanalyse_metrics
from services.reanalyse.config import ReanalyseConfig
from services.reanalyse.metrics import ReanalyseMetrics
from services.reanalyse.worker import Reanalyser
from services.replay.config import ReplayConfig
from services.replay.server import serve as serve_replay
from services.replay.wire import make_game_record
from tests.agent.agent_fakes import LogSink
from tests.grpc_fakes import FakeRpcError

GAME = "tictactoe"
TABLE = 4099
FAST_RETRY = RetryPolicy(initial_backoff_s=0.0, max_backoff_s=0.01)


class ObservationModel:
    """A network whose answers depend on the position alone (never on the batch it comes in):
    the root's node id is a hash of its observation, a child's a hash of (node, action), and
    values, rewards and logits are read from fixed tables by node id. `version` answers every
    request; `failures` are raised by the next calls, one each."""

    def __init__(self, num_actions: int, version: int = 3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.values = rng.uniform(-1, 1, TABLE).astype(np.float32)
        self.rewards = rng.uniform(-1, 1, TABLE).astype(np.float32)
        self.logits = rng.normal(0, 1.5, (TABLE, num_actions)).astype(np.float32)
        self.version = version
        self.failures: list[grpc.StatusCode] = []
        self.calls = 0

    def _output(self, ids: np.ndarray, reward: np.ndarray) -> VersionedOutput:
        return VersionedOutput(hidden_state=ids[:, None].astype(np.float32), value=self.values[ids],
                               reward=reward.astype(np.float32), policy_logits=self.logits[ids],
                               version=self.version)

    def predict_future(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                       timeout_s: float | None = None) -> Answered:
        self.calls += 1
        if self.failures:
            raise FakeRpcError(self.failures.pop(0), "network down")
        assert version in (None, self.version), version
        if signature == INITIAL_INFERENCE:
            flat = inputs["observation"].reshape(len(inputs["observation"]), -1).astype(np.int64)
            ids = (flat @ (np.arange(flat.shape[1]) * 7 + 3) + flat.sum(1) * 131) % TABLE
            return Answered(self._output(ids, np.zeros(len(ids))))
        ids = (inputs["hidden_state"][:, 0].astype(np.int64) * 7919 + inputs["action"] * 104729 + 1) % TABLE
        return Answered(self._output(ids, self.rewards[ids]))


def play_record(id: str, seed: int, model_version: int = 0):
    """A whole random game of tic-tac-toe as a GameRecord (real positions and legal masks)."""
    game = games.make(GAME)
    rng = np.random.default_rng(seed)
    state = game.reset(1, seed=seed)
    observations, legal, actions, rewards, to_play = [], [], [], [], []
    while True:
        mask = game.legal_actions(state)[0]
        action = int(rng.choice(np.flatnonzero(mask)))
        observations.append(game.observation(state)[0])
        legal.append(mask)
        to_play.append(int(game.to_play(state)[0]))
        actions.append(action)
        state, reward, terminated, truncated = game.step(state, np.array([action]))
        rewards.append(float(reward[0]))
        if terminated[0] or truncated[0]:
            break
    T, A = len(actions), game.spec.num_actions
    return make_game_record(id, np.stack(observations), np.array(actions), np.array(rewards),
                            np.zeros(T), np.full((T, A), 1.0 / A), to_play=np.array(to_play),
                            legal_actions=np.stack(legal), model_version=model_version)


@pytest.fixture
def replay(tmp_path):
    config = ReplayConfig.for_game(GAME, str(tmp_path / "replay"), port=0, metrics_port=0, min_positions=0,
                                   samples_per_insert=0, seed=0)
    server = serve_replay(config, registry=CollectorRegistry())
    client = server.client(timeout_s=30)
    yield server, client
    client.close()
    server.stop()


def reanalyser(client, network, batch_size: int, **fields) -> Reanalyser:
    config = ReanalyseConfig(game=GAME, replay="127.0.0.1:1", network="127.0.0.1:2", batch_size=batch_size,
                             simulations=8, seed=11, metrics_port=0, **fields)
    return Reanalyser(config, LogSink("reanalyse").log, client, network,
                      metrics=ReanalyseMetrics(CollectorRegistry()), policy=FAST_RETRY)


def stored(client, game_id: str):
    return next(g for g in client.sample_games(100) if g.game.id == game_id)


def test_reanalysis_gives_exactly_the_agents_search_targets(replay):
    _, client = replay
    record = play_record("g1", seed=1)
    client.add_games([record])
    T = stored(client, "g1").game.length
    network = ObservationModel(9, version=3)
    worker = reanalyser(client, network, batch_size=T)

    outcome = worker.run_batch()

    assert outcome.positions == T and outcome.games_updated == 1 and outcome.version == 3
    got = stored(client, "g1")
    # The agent's search on the same positions, with the same settings and random stream.
    game = games.make(GAME)
    agent = PipelinedSearch(ObservationModel(9, version=3),
                            SearchConfig.from_settings(game.settings.replace(num_simulations=8)), T, 9,
                            two_player=True)
    expected = agent.search(got.game.observations.astype(np.float32), got.game.legal_actions,
                            np.random.default_rng(11), training=True)
    np.testing.assert_array_equal(got.game.root_values, expected.root_values)
    np.testing.assert_array_equal(got.game.policies, expected.policies)
    assert got.targets_model_version == 3


def test_positions_of_several_games_share_a_batch_and_padding_changes_no_result(replay):
    _, client = replay
    records = [play_record(f"g{i}", seed=i) for i in range(3)]
    client.add_games(records)
    lengths = {g.game.id: g.game.length for g in client.sample_games(10)}
    total = sum(lengths.values())
    network = ObservationModel(9, version=4)
    # One batch larger than everything stored: the games side by side, then padding.
    worker = reanalyser(client, network, batch_size=total + 5, exploration=False)
    outcome = worker.run_batch()
    assert outcome.positions == total and outcome.games_updated == 3
    game = games.make(GAME)
    for id in lengths:  # each game alone, without exploration noise: the same targets
        got = stored(client, id)
        alone = PipelinedSearch(ObservationModel(9, version=4),
                                SearchConfig.from_settings(game.settings.replace(num_simulations=8)),
                                got.game.length, 9, two_player=True)
        expected = alone.search(got.game.observations.astype(np.float32), got.game.legal_actions,
                                np.random.default_rng(0), training=False)
        np.testing.assert_allclose(got.game.root_values, expected.root_values, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got.game.policies, expected.policies, rtol=1e-6, atol=1e-6)
        assert got.targets_model_version == 4


def test_a_long_game_is_split_over_batches_and_every_position_is_updated(replay):
    _, client = replay
    client.add_games([play_record("g1", seed=3)])
    T = stored(client, "g1").game.length
    worker = reanalyser(client, ObservationModel(9, version=2), batch_size=max(T // 2, 1))
    done = 0
    while done < T:
        outcome = worker.run_batch()
        done += outcome.positions
    assert done == T
    got = stored(client, "g1")
    assert got.targets_model_version == 2
    assert not np.allclose(got.game.policies, 1.0 / 9)  # every position's uniform policy was replaced


def test_an_older_reanalysis_never_overwrites_a_newer_one(replay):
    _, client = replay
    client.add_games([play_record("g1", seed=1)])
    T = stored(client, "g1").game.length
    newer = reanalyser(client, ObservationModel(9, version=7, seed=1), batch_size=T)
    newer.run_batch()
    after_newer = stored(client, "g1")

    older = reanalyser(client, ObservationModel(9, version=5, seed=2), batch_size=T)
    outcome = older.run_batch()

    assert outcome.skipped["newer"] == T
    got = stored(client, "g1")
    np.testing.assert_array_equal(got.game.root_values, after_newer.game.root_values)
    np.testing.assert_array_equal(got.game.policies, after_newer.game.policies)
    assert got.targets_model_version == 7
    text = _metrics_text(older)
    assert sum_samples(flat_metrics(text), reanalyse_metrics.POSITIONS_SKIPPED_TOTAL) == T


def test_a_game_evicted_before_its_update_is_skipped_and_the_loop_goes_on(tmp_path):
    config = ReplayConfig.for_game(GAME, str(tmp_path / "replay"), port=0, metrics_port=0, min_positions=0,
                                   samples_per_insert=0, seed=0, capacity=40)
    server = serve_replay(config, registry=CollectorRegistry())
    try:
        with server.client(timeout_s=30) as client:
            client.add_games([play_record("old", seed=1)])
            T = stored(client, "old").game.length
            worker = reanalyser(client, ObservationModel(9), batch_size=T)
            worker._refill(worker.stop)  # "old" is queued ...
            client.add_games([play_record(f"new{i}", seed=10 + i) for i in range(8)])  # ... then evicted
            assert all(g.game.id != "old" for g in client.sample_games(100))
            outcome = worker.run_batch()
            assert outcome.skipped["evicted"] >= 1
            assert worker.run_batch().games_updated >= 1  # the next batch works on what is stored
    finally:
        server.stop()


def test_the_network_down_for_a_while_is_waited_out(replay):
    _, client = replay
    client.add_games([play_record("g1", seed=1)])
    T = stored(client, "g1").game.length
    network = ObservationModel(9, version=3)
    network.failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND]  # down, then no version yet
    worker = reanalyser(client, network, batch_size=T)
    outcome = worker.run_batch()
    assert outcome.games_updated == 1
    failures = flat_metrics(_metrics_text(worker))
    assert sum_samples(failures, reanalyse_metrics.PEER_FAILURES_TOTAL) == 2


def test_an_empty_replay_is_waited_for_without_a_search(replay):
    _, client = replay
    network = ObservationModel(9)
    worker = reanalyser(client, network, batch_size=16)
    assert worker.run_batch() is None and network.calls == 0
    client.add_games([play_record("g1", seed=1)])
    assert worker.run_batch().positions > 0


def test_metrics_count_positions_games_versions_and_target_age(replay):
    _, client = replay
    client.add_games([play_record("g1", seed=1, model_version=2), play_record("g2", seed=2, model_version=2)])
    total = sum(g.game.length for g in client.sample_games(10))
    worker = reanalyser(client, ObservationModel(9, version=6), batch_size=total, max_batches=1)
    worker.run()
    samples = flat_metrics(_metrics_text(worker))
    assert sum_samples(samples, reanalyse_metrics.POSITIONS_TOTAL) == total
    assert sum_samples(samples, reanalyse_metrics.GAMES_UPDATED_TOTAL) == 2
    assert sum_samples(samples, reanalyse_metrics.SIMULATIONS_TOTAL) == total * 8
    assert sum_samples(samples, reanalyse_metrics.MODEL_VERSION) == 6
    assert sum_samples(samples, reanalyse_metrics.MEAN_TARGET_AGE_VERSIONS) == 4  # 6 - 2
    assert worker.batches == 1


def _metrics_text(worker: Reanalyser) -> str:
    from prometheus_client import generate_latest

    return generate_latest(worker.metrics.registry).decode()


def test_config_refuses_bad_values_naming_them():
    good = dict(game=GAME, replay="127.0.0.1:1", network="127.0.0.1:2")
    for field, value in (("batch_size", 0), ("order", "random"), ("games_per_request", 0),
                         ("max_positions_per_s", -1.0), ("simulations", -1)):
        with pytest.raises(ValueError, match=field):
            ReanalyseConfig(**good, **{field: value})
    with pytest.raises(ValueError, match="replay"):
        ReanalyseConfig(game=GAME, replay="nowhere", network="127.0.0.1:2")
    assert ReanalyseConfig(**good).search_simulations == games.make(GAME).settings.search.num_simulations


class StochasticObservationModel(ObservationModel):
    """`ObservationModel` as a Stochastic MuZero model with C chance codes: logits over A + C
    edges, and its root says num_chance_codes."""

    def __init__(self, num_actions: int, num_codes: int, version: int = 3, seed: int = 0) -> None:
        super().__init__(num_actions + num_codes, version, seed)
        self.num_codes = num_codes

    def predict_future(self, signature, inputs, version=None, timeout_s=None):
        answer = super().predict_future(signature, inputs, version, timeout_s).result()
        if signature == INITIAL_INFERENCE:
            answer = dataclasses.replace(answer, num_chance_codes=np.full(len(answer.value), self.num_codes, np.int32))
        return Answered(answer)


def test_a_stochastic_model_is_reanalysed_with_chance_nodes(replay):
    """The reanalyser's settings name no chance nodes: the model's num_chance_codes turn its
    search stochastic, and the targets equal the agent's search configured so outright."""
    _, client = replay
    client.add_games([play_record("g1", seed=2)])
    T = stored(client, "g1").game.length
    C = 4
    worker = reanalyser(client, StochasticObservationModel(9, C), batch_size=T)
    assert worker.run_batch().games_updated == 1
    got = stored(client, "g1")
    settings = games.make(GAME).settings.replace(num_simulations=8)
    chance_policy = STOCHASTIC_OF[settings.search.search]
    agent = PipelinedSearch(StochasticObservationModel(9, C),
                            SearchConfig.from_settings(settings).replace(search=chance_policy, num_chance_codes=C),
                            T, 9, two_player=True)
    expected = agent.search(got.game.observations.astype(np.float32), got.game.legal_actions,
                            np.random.default_rng(11), training=True)
    assert agent._searches[0].config.search == chance_policy and agent._searches[0].policy.is_chance.any()
    np.testing.assert_array_equal(got.game.root_values, expected.root_values)
    np.testing.assert_array_equal(got.game.policies, expected.policies)
    np.testing.assert_allclose(got.game.policies.sum(axis=1), 1.0, rtol=1e-5)
