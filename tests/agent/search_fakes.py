"""Deterministic fake models for the search tests: a fixed random tree per game.

A hidden state is [node id, game index] (float32, exact for ids < 2**24). The child of id for
action a is (id * 7919 + a * 104729 + 1) mod P, and a node's value, reward and policy logits
are looked up by id in tables drawn once per game. Game b of a `FakeTreeModel` and
`model.game(b)` (one game, plain Python floats) answer the same.

`PredictsFromMethods` turns a fake's initial_inference / recurrent_inference into the one model
protocol (`services.agent.inference.Model.predict_future`), which `BatchedSearch.run` speaks.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from services.agent.inference import (INITIAL_INFERENCE, RECURRENT_INFERENCE, Answered, ModelOutput,
                                      VersionedOutput)

TABLE_SIZE = 10_007   # a prime; collisions just make two paths share outputs


def child_id(node_id: np.ndarray | int, action: np.ndarray | int) -> np.ndarray | int:
    return (node_id * 7919 + action * 104729 + 1) % TABLE_SIZE


class PredictsFromMethods:
    """`predict_future` (the model protocol) answered at once by the fake's own
    `initial_inference(observation)` / `recurrent_inference(hidden_state, action)`; every answer
    is version `version`."""

    version = 1

    def predict_future(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                       timeout_s: float | None = None) -> Answered:
        assert version in (None, self.version), version
        if signature == INITIAL_INFERENCE:
            output = self.initial_inference(inputs["observation"])
        else:
            assert signature == RECURRENT_INFERENCE, signature
            output = self.recurrent_inference(inputs["hidden_state"], inputs["action"])
        return Answered(VersionedOutput(**dataclasses.asdict(output), version=self.version))


class FakeTreeModel(PredictsFromMethods):
    """B fake models in one, game b reading its own tables (values, rewards, logits)."""

    def __init__(self, batch_size: int, num_actions: int, seed: int, logit_scale: float = 1.5) -> None:
        rng = np.random.default_rng(seed)
        self.batch_size, self.num_actions = batch_size, num_actions
        self.values = rng.uniform(-1.0, 1.0, (batch_size, TABLE_SIZE))
        self.rewards = rng.uniform(-1.0, 1.0, (batch_size, TABLE_SIZE))
        self.logits = rng.normal(0.0, logit_scale, (batch_size, TABLE_SIZE, num_actions))
        self.root_ids = rng.integers(0, TABLE_SIZE, batch_size)
        self.recurrent_calls = 0

    def _output(self, ids: np.ndarray, reward: np.ndarray) -> ModelOutput:
        games = np.arange(self.batch_size)
        hidden = np.stack([ids, games], axis=1).astype(np.float32)
        return ModelOutput(hidden_state=hidden, value=self.values[games, ids].astype(np.float32),
                           reward=reward.astype(np.float32), policy_logits=self.logits[games, ids].astype(np.float32))

    def initial_inference(self, observation: np.ndarray) -> ModelOutput:
        ids = np.asarray(observation, dtype=np.int64)
        return self._output(ids, np.zeros(self.batch_size))

    def recurrent_inference(self, hidden_state: np.ndarray, action: np.ndarray) -> ModelOutput:
        assert hidden_state.dtype == np.float32 and hidden_state.shape == (self.batch_size, 2)
        assert action.dtype == np.int32 and action.shape == (self.batch_size,)
        # Hidden states must never travel between games.
        assert np.array_equal(hidden_state[:, 1], np.arange(self.batch_size))
        self.recurrent_calls += 1
        ids = child_id(hidden_state[:, 0].astype(np.int64), action.astype(np.int64))
        return self._output(ids, self.rewards[np.arange(self.batch_size), ids])

    def game(self, b: int) -> "OneGameModel":
        return OneGameModel(self, b)


@dataclasses.dataclass
class OneOutput:
    hidden_state: int          # the node id
    value: float
    reward: float
    policy_logits: list[float]


@dataclasses.dataclass
class OneGameModel:
    """Game b of a FakeTreeModel, one state at a time, with the same float32 rounding."""

    model: FakeTreeModel
    b: int

    def _output(self, node_id: int, reward: float) -> OneOutput:
        m = self.model
        return OneOutput(node_id, float(np.float32(m.values[self.b, node_id])), float(np.float32(reward)),
                         [float(x) for x in m.logits[self.b, node_id].astype(np.float32)])

    def initial_inference(self) -> OneOutput:
        return self._output(int(self.model.root_ids[self.b]), 0.0)

    def recurrent_inference(self, node_id: int, action: int) -> OneOutput:
        child = int(child_id(node_id, action))
        return self._output(child, self.model.rewards[self.b, child])
