"""Fixtures for the network server's integration tests: exported SavedModels and module-scoped
server processes (each imports TensorFlow, so there are few)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from games.base import GameSpec, MuZeroSettings
from games.cartpole import CartPole
from services.common.processes import ServiceProcess
from tests.network.network_helpers import start_network

BOARD = GameSpec(name="board6x7", observation_shape=(6, 7, 2), observation_dtype="uint8", num_actions=7,
                 num_players=2, discount=1.0, max_moves=42)
BOARD_SETTINGS = MuZeroSettings.of(architecture="resnet", hidden_size=8, fc_layers=(16,), res_blocks=1, support_size=5)


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory) -> Path:
    """<dir>/cartpole/{1,2} (fc, different random weights) and <dir>/board/1 (resnet 6x7x2)."""
    from models.export import export_version
    from models.networks import MuZeroNetwork

    root = tmp_path_factory.mktemp("saved_models")
    for name, spec, settings, versions in (("cartpole", CartPole.spec, CartPole.settings, (1, 2)),
                                           ("board", BOARD, BOARD_SETTINGS, (1,))):
        for version in versions:
            network = MuZeroNetwork(spec, settings, seed=version)
            rng = np.random.default_rng(version)
            network.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype(np.float32)
                                 for w in network.get_weights()])
            export_version(network, root / name, version)
    return root


@pytest.fixture(scope="module")
def network_server(tmp_path_factory) -> Iterator[Callable[[list[str]], ServiceProcess]]:
    """Starts network servers that live for the whole test module."""
    started: list[ServiceProcess] = []
    logs = tmp_path_factory.mktemp("network-logs")

    def start(args: list[str]) -> ServiceProcess:
        process = start_network(args, logs / f"network-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()
