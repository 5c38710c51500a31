"""The one model protocol (`services.agent.inference.Model`): who answers it, and that the search
side loads neither TensorFlow nor gRPC."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import numpy as np
import pytest

from services.agent.inference import Answered, Model, PendingPrediction, VersionedOutput
from services.agent.pipeline import PipelinedSearch
from services.agent.search import BatchedSearch, SearchConfig
from services.common.processes import REPO_ROOT

from tests.agent.search_fakes import FakeTreeModel


def parameters(function) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_search_side_loads_no_tensorflow_and_no_grpc():
    code = ("import json, sys, services.agent.inference, services.agent.search, services.agent.pipeline; "
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    roots = {name.split(".")[0] for name in json.loads(result.stdout.splitlines()[-1])}
    assert sorted(roots & {"tensorflow", "tensorflow_serving", "grpc", "models"}) == []


@pytest.mark.parametrize("answerer", ["services.network.client:NetworkClient",
                                      "services.agent.local_network:LocalNetwork",
                                      "tests.agent.search_fakes:FakeTreeModel",
                                      "tests.agent.agent_fakes:FakeNetwork"])
def test_every_answerer_has_the_protocols_predict_future(answerer):
    """Structural: the same parameters (names, kinds, defaults) as `Model.predict_future`, so a
    caller written against the protocol works with each (NetworkClient does not import it)."""
    module, name = answerer.split(":")
    cls = getattr(__import__(module, fromlist=[name]), name)
    expected = parameters(Model.predict_future)
    actual = parameters(cls.predict_future)
    assert [(n, k) for n, k, _ in actual] == [(n, k) for n, k, _ in expected]
    # Defaults may differ only where the protocol has none (self, signature, inputs).
    assert [d for _, _, d in actual][3:] == [d for _, _, d in expected][3:]


def test_pending_predictions_answer_result_without_arguments():
    from services.network.client import InferenceFuture

    for cls in (InferenceFuture, Answered):
        result = inspect.signature(cls.result)
        assert all(p.default is not inspect.Parameter.empty for p in list(result.parameters.values())[1:])
    assert parameters(PendingPrediction.result)[1:] == []


def test_pipeline_and_run_pin_the_roots_version():
    """Both callers of the protocol: one initial request, then S recurrent ones pinned to the
    version that answered it, and the same search for the same model."""

    class Recording(FakeTreeModel):
        version = 5

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.asked: list[tuple[str, int | None]] = []

        def predict_future(self, signature, inputs, version=None, timeout_s=None) -> Answered:
            self.asked.append((signature, version))
            return super().predict_future(signature, inputs, version, timeout_s)

    B, A, S = 4, 3, 6
    config = SearchConfig(num_simulations=S, search="gumbel")
    model = Recording(B, A, seed=3)
    legal = np.ones((B, A), bool)
    alone = BatchedSearch(B, A, (2,), config).run(model, model.root_ids, legal, np.random.default_rng(0),
                                                  training=False)
    assert model.asked == [("initial_inference", None)] + [("recurrent_inference", 5)] * S
    model.asked.clear()
    piped = PipelinedSearch(model, config, B, A).search(model.root_ids, legal, np.random.default_rng(0), training=False)
    assert model.asked == [("initial_inference", None)] + [("recurrent_inference", 5)] * S
    np.testing.assert_array_equal(piped.policies, alone.policy)
    np.testing.assert_array_equal(piped.actions, alone.action)
    np.testing.assert_array_equal(piped.greedy_actions, alone.greedy_action)
    assert piped.versions.tolist() == [5] * B


def test_answered_holds_a_versioned_output():
    output = VersionedOutput(np.zeros((1, 2), np.float32), np.zeros(1), np.zeros(1), np.zeros((1, 3)), version=9)
    pending = Answered(output)
    assert pending.done() and pending.result() is output and pending.result().version == 9
