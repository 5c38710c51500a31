"""PipelinedSearch: groups of games searched on their own threads with blocking calls.

The fake here knows each game by index (observation = [game], hidden state = [node id, game]),
so any group of games can ask it, and a group's search can be checked against the same games
searched alone.
"""

from __future__ import annotations

import inspect
import threading

import grpc
import numpy as np
import pytest

from services.agent.inference import (INITIAL_INFERENCE, RECURRENT_INFERENCE, BlockingModel, VersionedOutput,
                                      blocking_infer)
from services.agent.pipeline import PipelinedSearch
from services.agent.search import BatchedSearch, SearchConfig
from tests.agent.search_fakes import TABLE_SIZE, child_id
from tests.grpc_fakes import FakeRpcError

B, A, S = 6, 3, 8
CONFIG = SearchConfig(num_simulations=S, search="gumbel")


class GamesModel:
    """A blocking model (`infer` only) over fixed random tables per game; records every call
    as (signature, games, pinned version). `before_call(signature, games)` runs first."""

    version = 4

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.values = rng.uniform(-1, 1, (B, TABLE_SIZE)).astype(np.float32)
        self.rewards = rng.uniform(-1, 1, (B, TABLE_SIZE)).astype(np.float32)
        self.logits = rng.normal(0, 1.5, (B, TABLE_SIZE, A)).astype(np.float32)
        self.root_ids = rng.integers(0, TABLE_SIZE, B)
        self.calls: list[tuple[str, tuple[int, ...], int | None]] = []
        self.before_call = lambda signature, games: None

    def observations(self) -> np.ndarray:
        return np.arange(B, dtype=np.float32)[:, None]

    def infer(self, signature, inputs, version=None, timeout_s=None) -> VersionedOutput:
        if signature == INITIAL_INFERENCE:
            games = inputs["observation"][:, 0].astype(np.int64)
            ids, reward = self.root_ids[games], np.zeros(len(games), np.float32)
        else:
            assert signature == RECURRENT_INFERENCE
            games = inputs["hidden_state"][:, 1].astype(np.int64)
            ids = child_id(inputs["hidden_state"][:, 0].astype(np.int64), inputs["action"].astype(np.int64))
            reward = self.rewards[games, ids]
        self.calls.append((signature, tuple(games.tolist()), version))
        self.before_call(signature, tuple(games.tolist()))
        return VersionedOutput(hidden_state=np.stack([ids, games], axis=1).astype(np.float32),
                               value=self.values[games, ids], reward=reward, policy_logits=self.logits[games, ids],
                               version=self.version)

    def predict_future(self, signature, inputs, version=None, timeout_s=None):
        raise AssertionError("the pipeline asks a model with `infer` through infer")


def test_infer_has_the_protocols_parameters_where_answerers_define_it():
    from services.agent.local_network import LocalNetwork
    from services.network.client import NetworkClient

    expected = [(p.name, p.kind, p.default) for p in inspect.signature(BlockingModel.infer).parameters.values()]
    for cls in (NetworkClient, LocalNetwork, GamesModel):
        actual = [(p.name, p.kind, p.default) for p in inspect.signature(cls.infer).parameters.values()]
        assert [(n, k) for n, k, _ in actual] == [(n, k) for n, k, _ in expected], cls
        assert [d for *_, d in actual][3:] == [d for *_, d in expected][3:], cls


def test_blocking_infer_falls_back_to_the_future_of_a_model_without_infer():
    class FutureOnly:
        def predict_future(self, signature, inputs, version=None, timeout_s=None):
            asked.append((signature, version, timeout_s))
            return answer

    asked, answer = [], type("Done", (), {"result": lambda self: "answer"})()
    assert blocking_infer(FutureOnly())("initial_inference", {}, 3, 1.5) == "answer"
    assert asked == [("initial_inference", 3, 1.5)]


def test_each_group_sends_one_request_per_step_pinned_to_its_root_and_matches_its_games_alone():
    model = GamesModel()
    legal = np.ones((B, A), bool)
    legal[1, 0] = legal[4, 2] = False
    search = PipelinedSearch(model, CONFIG, B, A, groups=2)
    result = search.search(model.observations(), legal, np.random.default_rng(7), training=True)
    groups = [(0, 1, 2), (3, 4, 5)]
    for games in groups:
        mine = [(signature, version) for signature, g, version in model.calls if g == games]
        assert mine == [(INITIAL_INFERENCE, None)] + [(RECURRENT_INFERENCE, GamesModel.version)] * S
    assert len(model.calls) == 2 * (S + 1)  # one request per step per group, nothing else
    assert result.versions.tolist() == [GamesModel.version] * B

    # Each group searched with its own generator seeded from the caller's, in group order.
    seeds = np.random.default_rng(7).integers(2**63, size=2)
    for games, seed in zip(groups, seeds):
        sub = GamesModel()
        sub.root_ids = model.root_ids  # same tables (same seed), indexed by the global game
        alone = BatchedSearch(len(games), A, (2,), CONFIG)
        root = sub.infer(INITIAL_INFERENCE, {"observation": model.observations()[list(games)]})
        rng = np.random.default_rng(seed)
        alone.start_move(root, legal[list(games)], rng, training=True)
        for _ in range(S):
            hidden, action = alone.select()
            alone.expand_and_backup(sub.infer(RECURRENT_INFERENCE, {"hidden_state": hidden, "action": action}))
        expected = alone.finish_move()
        np.testing.assert_array_equal(result.actions[list(games)], expected.action)
        np.testing.assert_array_equal(result.policies[list(games)], expected.policy)
        np.testing.assert_array_equal(result.root_values[list(games)], expected.value)


def test_a_run_with_groups_is_reproducible_from_its_seed():
    model = GamesModel()
    legal = np.ones((B, A), bool)
    first = PipelinedSearch(model, CONFIG, B, A, groups=3).search(model.observations(), legal,
                                                                  np.random.default_rng(1))
    second = PipelinedSearch(model, CONFIG, B, A, groups=3).search(model.observations(), legal,
                                                                   np.random.default_rng(1))
    for name in ("actions", "greedy_actions", "root_values", "policies"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


def test_the_groups_requests_are_in_flight_together():
    """Group 0's first recurrent request is answered only once group 1 has sent one too: a
    pipeline that waited for one group before starting the other would break the barrier."""
    model = GamesModel()
    barrier = threading.Barrier(2, timeout=30)
    met = []

    def before_call(signature, games):
        if signature == RECURRENT_INFERENCE and not met.count(games):
            met.append(games)
            barrier.wait()  # both groups' first recurrent requests are waiting at once

    model.before_call = before_call
    result = PipelinedSearch(model, CONFIG, B, A, groups=2).search(model.observations(), np.ones((B, A), bool),
                                                                   np.random.default_rng(0))
    assert sorted(met) == [(0, 1, 2), (3, 4, 5)] and not barrier.broken
    np.testing.assert_allclose(result.policies.sum(axis=1), 1.0, atol=1e-5)


def test_a_failing_group_raises_its_error_and_the_next_search_starts_afresh():
    model = GamesModel()
    failures = [grpc.StatusCode.UNAVAILABLE]

    def before_call(signature, games):
        if signature == RECURRENT_INFERENCE and games == (3, 4, 5) and failures:
            raise FakeRpcError(failures.pop(), "network restarting")

    model.before_call = before_call
    search = PipelinedSearch(model, CONFIG, B, A, groups=2)
    legal = np.ones((B, A), bool)
    with pytest.raises(grpc.RpcError) as raised:
        search.search(model.observations(), legal, np.random.default_rng(0))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    model.calls.clear()
    result = search.search(model.observations(), legal, np.random.default_rng(0))
    assert len(model.calls) == 2 * (S + 1)
    np.testing.assert_allclose(result.policies.sum(axis=1), 1.0, atol=1e-5)
    assert not [t for t in threading.enumerate() if t.name.startswith("search-group")]  # ended with the search
