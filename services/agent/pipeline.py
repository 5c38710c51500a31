"""One move's search for B games, split into pipelined groups.

Each group of games has its own `BatchedSearch` and searches on its own thread, sending its
requests as blocking calls. A blocking gRPC call waits outside the GIL, so while one group's
request is on the wire the agent does the tree work of another, and a group count G > 1 keeps
both the network server and this process busy. Per simulation step each group sends ONE
request for all its games; with G = 1 that is one request for all B games, on the caller's
thread.

Why threads and blocking calls rather than gRPC futures on one thread: a future's answer is
delivered by the channel's own polling thread, which gRPC starts again whenever no call is in
flight and which takes the GIL for every event. In the agent's loop that machinery cost about
40% of the agent's CPU (py-spy, B = 256, S = 32, G = 2); a blocking call polls its own
completion queue in the calling thread.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, Mapping

import numpy as np

from services.agent.inference import INITIAL_INFERENCE, RECURRENT_INFERENCE, Model, Prediction, blocking_infer
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
        self._call: Callable[..., Prediction] = blocking_infer(network)
        self._searches_lock = threading.Lock()  # the groups' threads create the trees once

    def _ensure_searches(self, hidden_shape: tuple[int, ...]) -> list[BatchedSearch]:
        with self._searches_lock:
            if self._searches is None:
                self._searches = [BatchedSearch(len(g), self.num_actions, hidden_shape, self.config,
                                                two_player=self.two_player) for g in self.groups]
            return self._searches

    def _infer(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None) -> Prediction:
        started = time.perf_counter()
        answer = self._call(signature, inputs, version, self.timeout_s)
        self.metrics.network_seconds.labels(signature).observe(time.perf_counter() - started)
        return answer

    def _search_group(self, i: int, observation: np.ndarray, legal_actions: np.ndarray,
                      rng: np.random.Generator, training: bool, version: int | None,
                      failed: threading.Event) -> tuple:
        """Group i's whole search: (SearchResult, the version that answered its root).

        Stops early (returns None) when another group failed: its move is lost anyway."""
        g = self.groups[i]
        root = self._infer(INITIAL_INFERENCE, {"observation": observation[g]}, version)
        search = self._ensure_searches(tuple(root.hidden_state.shape[1:]))[i]
        search.start_move(root, legal_actions[g], rng, training=training)
        for _ in range(self.config.num_simulations):
            if failed.is_set():
                return None
            # The root's version for the whole search: a tree's nodes all come from one model.
            search.expand_and_backup(self._infer(RECURRENT_INFERENCE, search.select_inputs(), root.version))
        return search, root.version

    def search(self, observation: np.ndarray, legal_actions: np.ndarray, rng: np.random.Generator,
               training: bool = True, temperature: float | None = None,
               version: int | None = None) -> MoveResult:
        """Searches every game once: 1 initial_inference + S recurrent_inference per group.

        observation float32 [B, *obs], legal_actions bool [B, A]; `version` pins the model
        version (None: the newest, then pinned for the rest of the group's search). Raises what
        `network` raises when it fails (grpc.RpcError for a NetworkClient); nothing is changed
        then, so the caller may simply search again.

        Randomness: with one group the search draws from `rng` itself; with G > 1 each group
        draws from its own generator, seeded from `rng` in group order, so a run is as
        reproducible as with one group although the groups' threads interleave freely.
        """
        G = len(self.groups)
        rngs = [rng] if G == 1 else [np.random.default_rng(seed) for seed in rng.integers(2**63, size=G)]
        failed = threading.Event()
        outcomes: list = [None] * G
        errors: list[BaseException | None] = [None] * G

        def run(i: int) -> None:
            try:
                outcomes[i] = self._search_group(i, observation, legal_actions, rngs[i], training, version, failed)
            except BaseException as error:  # noqa: BLE001 - re-raised on the caller's thread
                errors[i] = error
                failed.set()

        threads = [threading.Thread(target=run, args=(i,), name=f"search-group-{i}", daemon=True)
                   for i in range(1, G)]
        for thread in threads:
            thread.start()
        run(0)  # group 0 on the caller's thread
        for thread in threads:
            thread.join()
        for error in errors:
            if error is not None:
                raise error
        B = sum(len(g) for g in self.groups)
        result = MoveResult(np.zeros(B, np.int32), np.zeros(B, np.int32), np.zeros(B, np.float32),
                            np.zeros((B, self.num_actions), np.float32), np.zeros(B, np.int64))
        versions = []
        for g, (search, answered) in zip(self.groups, outcomes):
            move = search.finish_move(temperature=temperature)
            result.actions[g] = move.action
            result.greedy_actions[g] = move.greedy_action
            result.root_values[g] = move.value
            result.policies[g] = move.policy
            result.versions[g] = answered
            versions.append(answered)
        self.metrics.simulations.inc(B * self.config.num_simulations)
        self.metrics.model_version.set(max(versions))
        return result
