"""Fixtures of the fault tests: an exported cartpole model and a `fleet` of real service
processes (faults_helpers.Fleet) started through `start_service` and stopped after the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.faults_helpers import Fleet


@pytest.fixture(scope="session")
def cartpole_models(tmp_path_factory) -> Path:
    """A model base path holding version 0 of a random cartpole network."""
    import games
    from models.export import export_version
    from models.networks import MuZeroNetwork

    base = tmp_path_factory.mktemp("faults-models") / "muzero"
    game = games.make("cartpole")
    export_version(MuZeroNetwork(game.spec, game.settings, seed=0), base, 0)
    return base


@pytest.fixture
def fleet(start_service, tmp_path, cartpole_models) -> Fleet:
    return Fleet(start_service, tmp_path, cartpole_models)
