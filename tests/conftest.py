"""Shared fixtures: real service processes on loopback, started on port 0 and stopped after."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import pytest

from services.common.processes import ServiceProcess


@pytest.fixture
def start_service(tmp_path) -> Iterator[Callable[..., ServiceProcess]]:
    """start_service("services.environment", ["--game", "cartpole"]) -> a ready ServiceProcess.

    The service is started with `--port 0 --metrics-port 0` unless the args name ports, its log
    goes to tmp_path/<module>.log, and it is stopped (SIGTERM, then SIGKILL) after the test.
    """
    started: list[ServiceProcess] = []

    def start(module: str, args: Sequence[str] = (), ready_timeout_s: float = 120.0,
              default_ports: bool = True) -> ServiceProcess:
        args = list(args)
        if default_ports and "--port" not in args:
            args += ["--port", "0"]
        if default_ports and "--metrics-port" not in args:
            args += ["--metrics-port", "0"]
        name = module.rsplit(".", 1)[-1]
        process = ServiceProcess(module, args, log_path=tmp_path / f"{name}-{len(started)}.log")
        started.append(process)
        process.start()
        process.wait_ready(ready_timeout_s)
        return process

    yield start
    for process in reversed(started):
        process.stop()
