"""LocalNetwork: one exported version answering the search in process."""

from __future__ import annotations

import numpy as np
import pytest

import games
from models.export import export_version, load_version
from models.networks import MuZeroNetwork
from services.agent.local_network import LocalNetwork
from services.agent.pipeline import PipelinedSearch
from services.agent.search import SearchConfig


def test_search_through_a_local_version_matches_the_model_and_pins_it(tmp_path):
    game = games.make("cartpole")
    network = MuZeroNetwork(game.spec, game.settings, seed=0)
    export_version(network, tmp_path, 7)
    model = load_version(tmp_path)
    local = LocalNetwork(model)
    state = game.reset(4, seed=0)
    observation = game.observation(state)
    root = local.predict_future("initial_inference", {"observation": observation}).result()
    np.testing.assert_allclose(root.value, model.initial_inference(observation)["value"], rtol=1e-6)
    assert root.version == 7
    search = PipelinedSearch(local, SearchConfig.from_settings(game.settings.replace(num_simulations=4)),
                             batch_size=4, num_actions=2, groups=2)
    result = search.search(observation, game.legal_actions(state), np.random.default_rng(0), training=False)
    assert result.versions.tolist() == [7, 7, 7, 7]
    np.testing.assert_allclose(result.policies.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="version 8"):
        local.predict_future("initial_inference", {"observation": observation}, version=8)
