"""Helpers of the fault tests: a small cartpole fleet of real processes whose members can be
killed and restarted on the same loopback port, metrics scraping, log events, polling waits."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.processes import ServiceProcess

# Generous: the suite shares two cores with other work, and every service imports TensorFlow.
WAIT_S = 120.0
GAMES_PER_BATCH = 16
# Longer than a cartpole game (500 moves at most): every finished game is exactly one record.
CHUNK_LENGTH = 500


def free_port() -> int:
    """A loopback port that is free now, for a service that must come back on the same port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(process: ServiceProcess) -> dict[str, float]:
    """The process's /metrics as {"name{label=value,...}": value}; {} if it does not answer."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{process.ready['metrics_port']}/metrics",
                                      timeout=10).read().decode()
    except OSError:
        return {}
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def metric(process: ServiceProcess, name: str) -> float:
    """Sum of a metric's samples over its labels (0 when absent)."""
    return sum(v for k, v in scrape(process).items() if k == name or k.startswith(name + "{"))


def events(process: ServiceProcess, name: str) -> list[dict]:
    return [e for e in list(process.events) if e["event"] == name]


def wait_until(condition: Callable[[], object], what: str, *processes: ServiceProcess,
               timeout_s: float = WAIT_S) -> object:
    """Polls `condition` until it returns something truthy (returned); on timeout fails the test
    with the last log lines of `processes`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.module} (exit code {p.poll()}):\n{p.tail()}" for p in processes)
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for: {what}\n{tails}")
        time.sleep(0.2)


class Fleet:
    """Starts cartpole services through `start_service` (stopped after the test). A service given
    a fixed port can be killed and started again there, so its clients reconnect to it."""

    def __init__(self, start_service, tmp_path: Path, models: Path) -> None:
        self._start = start_service
        self.tmp_path = tmp_path
        self.models = models

    def environment(self, port: int = 0) -> ServiceProcess:
        return self._start("services.environment", ["--game", "cartpole", "--port", str(port)])

    def replay(self, port: int = 0, *flags: str) -> ServiceProcess:
        return self._start("services.replay", [
            "--game", "cartpole", "--data-dir", str(self.tmp_path / "replay"), "--port", str(port),
            "--min-positions", "1", "--seed", "0", *flags])

    def network(self, port: int = 0) -> ServiceProcess:
        return self._start("services.network", [
            "--model_name", "muzero", "--model_base_path", str(self.models), "--port", str(port),
            "--file_system_poll_wait_seconds", "1"])

    def agent(self, environment: str, network: str, replay: str, *flags: str) -> ServiceProcess:
        return self._start("services.agent", [
            "--game", "cartpole", "--environment", environment, "--network", network, "--replay", replay,
            "--games-per-batch", str(GAMES_PER_BATCH), "--simulations", "4", "--groups", "2",
            "--chunk-length", str(CHUNK_LENGTH), "--request-timeout-s", "10", "--seed", "0",
            "--metrics-port", "0", *flags], default_ports=False)


def address(port: int) -> str:
    return f"127.0.0.1:{port}"


def stop_agent(agent: ServiceProcess, timeout_s: float = 60.0) -> tuple[int, dict]:
    """SIGTERM, wait for the exit; returns (exit code, the `stopped` event)."""
    agent.signal(signal.SIGTERM)
    code = agent.wait(timeout_s)
    stopped = events(agent, "stopped")
    assert stopped, f"the agent logged no `stopped` event:\n{agent.tail()}"
    return code, stopped[-1]
