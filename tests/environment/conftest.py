"""Fixtures of the environment tests: one environment server for a whole test module."""

from __future__ import annotations

from typing import Iterator

import pytest

from environment_helpers import MAX_GAMES_PER_SESSION
from services.common.processes import ServiceProcess
from services.environment.client import EnvironmentClient


@pytest.fixture(scope="module")
def env_server(tmp_path_factory) -> Iterator[ServiceProcess]:
    """A real environment server (default game cartpole, at most 1000 games per session) shared
    by the tests of one module; they each open their own sessions, so they do not interfere."""
    log_path = tmp_path_factory.mktemp("environment") / "environment.log"
    process = ServiceProcess("services.environment", [
        "--game", "cartpole", "--port", "0", "--metrics-port", "0",
        "--max-games-per-session", str(MAX_GAMES_PER_SESSION)], log_path=log_path)
    process.start()
    try:
        process.wait_ready(60)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def env(env_server) -> Iterator[EnvironmentClient]:
    """A client of `env_server`."""
    with EnvironmentClient(env_server.grpc_address, timeout_s=20.0) as client:
        yield client
