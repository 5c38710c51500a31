"""One move's search for B games, split into pipelined groups.

Each group of games has its own `BatchedSearch` and its own in-flight network request. While
one group's request is on the wire (gRPC futures run outside the GIL), the agent does the tree
work of another, so a group count G > 1 keeps both the network server and this process busy.
Per simulation step each group sends ONE request for all its games; with G = 1 that is one
request for all B games.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from services.agent.inference import INITIAL_INFERENCE, RECURRENT_INFERENCE, Model, PendingPrediction, Prediction
from services.agent.metrics import AgentMetrics, private_metrics
from services.agent.search import BatchedSearch, SearchConfig


@dataclasses.dataclass
class MoveResult:
    """The search's answer for B games.

    actions: int32 [B] chosen moves; greedy_actions: int32 [B] the greedy choice;
    root_values: float32 [B] search values (view of the player to move); policies: float32
    [B, A] policy targets; versions: int64 [B] the model version each game's search used.
    """

    actions: np.ndarray
    greedy_actions: np.ndarray
    root_values: np.ndarray
    policies: np.ndarray
    versions: np.ndarray


class PipelinedSearch:
    """Runs one move's search for B games through `network`.

    Args:
      network: any `services.agent.inference.Model`: a NetworkClient (ours or TensorFlow
        Serving behind it), a LocalNetwork, a fake.
      config: the search settings.
      batch_size: B.
      num_actions: A.
      groups: G pipelined groups (np.array_split of the B games).
      two_player: whether values flip sign between plies.
      timeout_s: deadline of each request.
      metrics: where the search counts (default: a registry of its own).
    """

    def __init__(self, network: Model, config: SearchConfig, batch_size: int, num_actions: int,
                 groups: int = 1, two_player: bool = False, timeout_s: float = 30.0,
                 metrics: AgentMetrics | None = None) -> None:
        self.network = network
        self.metrics = metrics if metrics is not None else private_metrics()
        self.config = config
        self.num_actions = num_actions
        self.two_player = two_player
        self.timeout_s = timeout_s
        self.groups = [g for g in np.array_split(np.arange(batch_size), groups) if len(g)]
        self._searches: list[BatchedSearch] | None = None

    def _ensure_searches(self, hidden_shape: tuple[int, ...]) -> list[BatchedSearch]:
        if self._searches is None:
            self._searches = [BatchedSearch(len(g), self.num_actions, hidden_shape, self.config,
                                            two_player=self.two_player) for g in self.groups]
        return self._searches

    def _submit(self, signature: str, inputs: dict[str, np.ndarray], version: int | None
                ) -> tuple[PendingPrediction, float, str]:
        started = time.perf_counter()
        future = self.network.predict_future(signature, inputs, version, timeout_s=self.timeout_s)
        return future, started, signature

    def _result(self, pending: tuple[PendingPrediction, float, str]) -> Prediction:
        future, started, signature = pending
        inference = future.result()
        self.metrics.network_seconds.labels(signature).observe(time.perf_counter() - started)
        return inference

    def search(self, observation: np.ndarray, legal_actions: np.ndarray, rng: np.random.Generator,
               training: bool = True, temperature: float | None = None,
               version: int | None = None) -> MoveResult:
        """Searches every game once: 1 initial_inference + S recurrent_inference per group.

        observation float32 [B, *obs], legal_actions bool [B, A]; `version` pins the model
        version (None: the newest, then pinned for the rest of the group's search). Raises what
        `network` raises when it fails (grpc.RpcError for a NetworkClient); nothing is changed
        then, so the caller may simply search again.
        """
        roots = [self._submit(INITIAL_INFERENCE, {"observation": observation[g]}, version)
                 for g in self.groups]
        versions, in_flight = [], {}
        searches = None
        for i, g in enumerate(self.groups):
            root = self._result(roots[i])
            searches = self._ensure_searches(tuple(root.hidden_state.shape[1:]))
            searches[i].start_move(root, legal_actions[g], rng, training=training)
            versions.append(root.version)  # pinned for this group's whole search
            hidden, action = searches[i].select()
            in_flight[i] = self._submit(RECURRENT_INFERENCE, {"hidden_state": hidden, "action": action},
                                        root.version)
        remaining = [self.config.num_simulations] * len(self.groups)
        while in_flight:
            for i in list(in_flight):  # round robin: group i's tree work overlaps the others' requests
                searches[i].expand_and_backup(self._result(in_flight.pop(i)))
                remaining[i] -= 1
                if remaining[i]:
                    hidden, action = searches[i].select()
                    in_flight[i] = self._submit(RECURRENT_INFERENCE,
                                                {"hidden_state": hidden, "action": action}, versions[i])
        B = sum(len(g) for g in self.groups)
        result = MoveResult(np.zeros(B, np.int32), np.zeros(B, np.int32), np.zeros(B, np.float32),
                            np.zeros((B, self.num_actions), np.float32), np.zeros(B, np.int64))
        for i, g in enumerate(self.groups):
            move = searches[i].finish_move(temperature=temperature)
            result.actions[g] = move.action
            result.greedy_actions[g] = move.greedy_action
            result.root_values[g] = move.value
            result.policies[g] = move.policy
            result.versions[g] = versions[i]
        self.metrics.simulations.inc(B * self.config.num_simulations)
        self.metrics.model_version.set(max(versions))
        return result
