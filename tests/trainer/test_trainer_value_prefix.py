"""Value prefix from the trainer to the search: a trainer with training.value_prefix trains
(graph and XLA), exports versions whose signatures carry the LSTM state, and the network server
serves them over TensorFlow Serving's API so that the agent's search runs through them."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from models.export import VALUE_PREFIX_STATE, load_version
from services.agent.inference import INITIAL_INFERENCE, RECURRENT_INFERENCE
from services.agent.pipeline import PipelinedSearch
from services.agent.search import SearchConfig
from services.common.logs import get_logger
from services.network.__main__ import build_config, build_parser
from services.network.client import NetworkClient
from services.network.metrics import NetworkMetrics
from services.network.server import serve
from services.trainer.metrics import TrainerMetrics
from services.trainer.trainer import Trainer
from tests.trainer.trainer_helpers import SPEC, TINY, LogSink, batch, config

PREFIX = TINY.replace(value_prefix=True, value_prefix_horizon=2, value_prefix_lstm_size=4, export_interval=2)


@pytest.fixture(scope="module", params=[False, True], ids=["graph", "xla"])
def trained(request, tmp_path_factory):
    """A value-prefix trainer after 4 steps (versions 2 and 4 exported) and its run dir."""
    root = tmp_path_factory.mktemp("prefix")
    trainer = Trainer(config(root, settings=PREFIX, steps=4, jit_compile=request.param), log=LogSink().log,
                      metrics=TrainerMetrics())
    data = [batch(seed=i) for i in range(4)]
    first = trainer.train_step(data[0])
    assert np.isfinite(first.loss) and first.reward_loss > 0
    assert trainer.run(data[1:]) == 4
    yield trainer, root
    trainer.close()


def test_versions_are_value_prefix_models_equal_to_the_trained_network(trained):
    trainer, root = trained
    model = load_version(root / "models", 4)
    assert model.value_prefix
    observation = batch(seed=9)["observation"][:3]
    got = model.initial_inference(observation)
    np.testing.assert_allclose(got["value"], trainer.network.initial_inference(observation).value.numpy(),
                               atol=1e-5)
    action = np.array([0, 1, 1], np.int32)
    state = got[VALUE_PREFIX_STATE]
    step = model.recurrent_inference(got["hidden_state"], action, state)
    want = trainer.network.recurrent_inference(got["hidden_state"], action, state)
    np.testing.assert_allclose(step[VALUE_PREFIX_STATE], want.value_prefix_state.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_the_network_server_serves_the_state_and_the_search_runs_through_it(trained, batching):
    _trainer, root = trained
    args = ["--model_name", "muzero", "--model_base_path", str(root / "models"), "--port", "0",
            "--rest_api_port", "0", "--host", "127.0.0.1"]
    if batching:
        args.append("--enable_batching")
    parser = build_parser()
    server = serve(build_config(parser.parse_args(args), parser), get_logger("network"),
                   metrics=NetworkMetrics(CollectorRegistry()))
    try:
        with NetworkClient(server.address, timeout_s=30) as client:
            local = load_version(root / "models", 4)
            observation = batch(seed=3)["observation"][:5]
            root_answer = client.infer(INITIAL_INFERENCE, {"observation": observation}, version=4)
            assert root_answer.value_prefix_state.shape == (5, 8)
            assert root_answer.value_prefix_horizon.tolist() == [2] * 5
            action = np.array([0, 1, 0, 1, 1], np.int32)
            state = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
            served = client.infer(RECURRENT_INFERENCE, {"hidden_state": root_answer.hidden_state, "action": action,
                                                        VALUE_PREFIX_STATE: state}, version=4)
            direct = local.recurrent_inference(root_answer.hidden_state, action, state)
            np.testing.assert_allclose(served.value_prefix_state, direct[VALUE_PREFIX_STATE], rtol=1e-5, atol=1e-6)
            # The agent's search, one request per step for all games, the state in each request;
            # it takes H from the model, so a searcher's settings need not know of value prefix.
            search = PipelinedSearch(client, SearchConfig.from_settings(TINY, num_simulations=8), 5,
                                     SPEC.num_actions)
            move = search.search(observation, np.ones((5, SPEC.num_actions), bool), np.random.default_rng(1))
            assert move.versions.tolist() == [4] * 5
            assert search._searches[0].value_prefix_horizon == 2
            np.testing.assert_allclose(move.policies.sum(axis=1), 1.0, rtol=1e-5)
            assert np.isfinite(move.root_values).all()
    finally:
        server.stop()
