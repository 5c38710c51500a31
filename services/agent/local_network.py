"""One loaded model version behind the network client's interface, without a server.

Used where a whole evaluation must use exactly one version however long it takes (the network
server keeps only the newest few versions loaded while the trainer exports new ones).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from models.export import LoadedModel
from services.agent.inference import (NUM_CHANCE_CODES, VALUE_PREFIX_HORIZON, VALUE_PREFIX_STATE, Answered,
                                      VersionedOutput)


class LocalNetwork:
    """A `services.agent.inference.Model` answered in process by `model`, one loaded version."""

    def __init__(self, model: LoadedModel) -> None:
        if model.version is None:
            raise ValueError("LocalNetwork needs a model loaded from a version directory")
        self.model = model

    def predict_future(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                       timeout_s: float | None = None) -> Answered:
        """Runs `signature` now (`timeout_s` is ignored); a `version` other than the held one is
        a ValueError."""
        if version is not None and version != self.model.version:
            raise ValueError(f"version {version} asked of a LocalNetwork holding version {self.model.version}")
        outputs = self.model.run(signature, inputs)
        return Answered(VersionedOutput(hidden_state=outputs["hidden_state"], value=outputs["value"],
                                        reward=outputs["reward"], policy_logits=outputs["policy_logits"],
                                        value_prefix_state=outputs.get(VALUE_PREFIX_STATE),
                                        value_prefix_horizon=outputs.get(VALUE_PREFIX_HORIZON),
                                        num_chance_codes=outputs.get(NUM_CHANCE_CODES),
                                        version=int(self.model.version)))

    def infer(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
              timeout_s: float | None = None) -> VersionedOutput:
        """`predict_future(...).result()`: the blocking call of `services.agent.inference.BlockingModel`."""
        return self.predict_future(signature, inputs, version, timeout_s).result()

    def wait_until_available(self, version: int | None = None, timeout_s: float = 0.0,
                             stop=None) -> int:
        """The held version (it is always available); `timeout_s` and `stop` are ignored."""
        return int(self.model.version)
