"""What a search asks of a network: ONE `Model` protocol, shared by every caller and answerer.

    pending = model.predict_future(INITIAL_INFERENCE, {"observation": observation})
    root = pending.result()                       # hidden_state, value, reward, policy_logits, version
    step = model.predict_future(RECURRENT_INFERENCE, {"hidden_state": h, "action": a},
                                version=root.version).result()   # the same version all move long

Who speaks it:
  * callers: `services.agent.pipeline.PipelinedSearch` (the agent, the evaluator, the play
    page: blocking calls, one thread per group, through `blocking_infer`) and
    `services.agent.search.BatchedSearch.run`;
  * answerers: `services.network.client.NetworkClient` (over gRPC, structurally: it is not
    changed to know this module), `services.agent.local_network.LocalNetwork` (one exported
    version in process) and the tests' and benchmarks' fakes.

A leaf: NumPy and the standard library only (no TensorFlow, no gRPC), so the search and the
pipeline load neither.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Protocol

import numpy as np

INITIAL_INFERENCE = "initial_inference"
"""Signature: inputs {"observation": float32 [B, *obs]}; the root's outputs (reward 0)."""
RECURRENT_INFERENCE = "recurrent_inference"
"""Signature: inputs {"hidden_state": float32 [B, *H], "action": int32 [B]} (a value-prefix model
also takes VALUE_PREFIX_STATE); the child's outputs."""
VALUE_PREFIX_STATE = "value_prefix_state"
"""A value-prefix model's LSTM state, float32 [B, 2L]: output of both signatures, input of
recurrent_inference (models/export.py)."""
VALUE_PREFIX_HORIZON = "value_prefix_horizon"
"""A value-prefix model's H, int32 [B] (the same in every row): an output of its
initial_inference, from which the search takes its resets."""
NUM_CHANCE_CODES = "num_chance_codes"
"""A Stochastic MuZero model's C, int32 [B] (the same in every row): an output of its
initial_inference, from which the search takes its "stochastic" policy and A + C edges."""


@dataclasses.dataclass(frozen=True)
class ModelOutput:
    """One network inference for B states (initial or recurrent): what the search reads.

    The search reads only these four attributes, and the value-prefix and chance ones where present, so
    any object that has them will do (e.g. `services.network.client.Inference`, which adds the
    model version).

    Attributes:
      hidden_state: float32 [B, *hidden_shape].
      value: float [B], from the view of the player to move in the (new) state.
      reward: float [B], reward of the move into the state, from the view of the player who
        made it (ignored for initial inference); from a value-prefix model, the value prefix
        (the sum of the rewards since the search path's last reset).
      policy_logits: float [B, A].
      value_prefix_state: float32 [B, 2L], a value-prefix model's LSTM state; None otherwise.
      value_prefix_horizon: int32 [B], a value-prefix model's H (initial_inference only);
        None otherwise.
      num_chance_codes: int32 [B], a Stochastic MuZero model's C (initial_inference only; its
        policy_logits are then [B, A + C]); None otherwise.
    """

    hidden_state: np.ndarray
    value: np.ndarray
    reward: np.ndarray
    policy_logits: np.ndarray
    value_prefix_state: np.ndarray | None = None
    value_prefix_horizon: np.ndarray | None = None
    num_chance_codes: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class VersionedOutput(ModelOutput):
    """A `ModelOutput` with the model version that answered it (a `Prediction`)."""

    version: int = 0


class Prediction(Protocol):
    """A network's answer: the four outputs of `ModelOutput` and the version that computed them."""

    @property
    def hidden_state(self) -> np.ndarray: ...

    @property
    def value(self) -> np.ndarray: ...

    @property
    def reward(self) -> np.ndarray: ...

    @property
    def policy_logits(self) -> np.ndarray: ...

    @property
    def version(self) -> int: ...


class PendingPrediction(Protocol):
    """A request in flight; `result()` blocks until its answer (or raises the call's error)."""

    def result(self) -> Prediction: ...


class Model(Protocol):
    """Anything a search can ask for inferences: a gRPC client, a local version, a fake.

    `predict_future` starts one request for B states and returns without waiting, so that a
    caller can keep several in flight (one per pipelined group of games).
    """

    def predict_future(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                       timeout_s: float | None = None) -> PendingPrediction:
        """Starts `signature` (INITIAL_INFERENCE or RECURRENT_INFERENCE) on `inputs`.

        Args:
          signature: which inference; its inputs are named in the constants' docstrings.
          inputs: name -> array, batch first.
          version: the model version to use; None lets the answerer choose (the newest).
          timeout_s: the request's deadline in seconds (None: the answerer's default).
        """
        ...


class BlockingModel(Model, Protocol):
    """A `Model` that can also answer with a blocking call, more cheaply than through a future
    (a NetworkClient: a gRPC future's answer goes through the channel's polling thread)."""

    def infer(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
              timeout_s: float | None = None) -> Prediction:
        """`predict_future(...).result()` in one blocking call."""
        ...


def blocking_infer(model: Model) -> Callable[..., Prediction]:
    """`model.infer` where the model has one, else `predict_future(...).result()`:
    (signature, inputs, version, timeout_s) -> Prediction."""
    infer = getattr(model, "infer", None)
    if infer is not None:
        return infer

    def via_future(signature: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                   timeout_s: float | None = None) -> Prediction:
        return model.predict_future(signature, inputs, version, timeout_s=timeout_s).result()

    return via_future


class Answered:
    """A `PendingPrediction` that is already answered (in-process models and fakes)."""

    def __init__(self, prediction: Prediction) -> None:
        self._prediction = prediction

    def result(self, timeout: float | None = None) -> Prediction:
        """The answer; `timeout` is accepted for the gRPC future's signature and ignored."""
        return self._prediction

    def done(self) -> bool:
        return True
