"""Every service is a library: `serve(config)` starts it in this process and returns what the
launchers use (ports, a client, stop, wait). Servers here are real, on loopback free ports,
each with a registry of its own."""

from __future__ import annotations

import io
import json
import threading
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from games.base import GameSpec
from services.common.logs import get_logger
from services.common.metrics import flat_metrics, serve_metrics
from services.common.service import Worker
from services.environment import metrics as environment_metrics
from services.environment.config import EnvironmentConfig
from services.environment.server import serve as serve_environment
from services.replay.config import ReplayConfig
from services.replay.server import serve as serve_replay


class Sink:
    def __init__(self, service: str) -> None:
        self.stream = io.StringIO()
        self.log = get_logger(service, self.stream)

    def events(self, name: str) -> list[dict]:
        return [e for line in self.stream.getvalue().splitlines() if (e := json.loads(line))["event"] == name]


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return flat_metrics(response.read().decode())


def test_the_environment_serves_in_process_with_its_own_registry():
    sink = Sink("environment")
    server = serve_environment(EnvironmentConfig(port=0, metrics_port=0), sink.log, CollectorRegistry())
    try:
        assert set(server.ports) == {"grpc", "metrics"} and server.address.endswith(f":{server.port}")
        [ready] = sink.events("ready")
        assert (ready["grpc_port"], ready["metrics_port"]) == (server.ports["grpc"], server.ports["metrics"])
        with server.client() as client:
            session, _spec, _time_step = client.open("cartpole", 3)
            client.step(session, np.zeros(3, np.int32))
        samples = scrape(server.ports["metrics"])
        assert samples[environment_metrics.STEPS_TOTAL + "{game=cartpole}"] == 3
    finally:
        server.stop()
    assert server.wait(0) and server.stopped
    server.stop()  # idempotent
    assert sink.events("sessions_closed_at_stop")[0]["sessions"] == 1
    with pytest.raises(OSError):
        scrape(server.ports["metrics"])  # the endpoint closed with the server


def test_two_replays_run_side_by_side_and_stop_closes_their_buffers(tmp_path):
    spec = GameSpec(name="fake", observation_shape=(2,), observation_dtype="float32", num_actions=2,
                    num_players=1, discount=1.0, max_moves=10)
    servers = [serve_replay(ReplayConfig(spec=spec, data_dir=str(tmp_path / f"r{i}"), capacity=100,
                                         port=0, metrics_port=0), Sink("replay").log,
                            registry=CollectorRegistry()) for i in range(2)]
    try:
        assert len({s.ports["grpc"] for s in servers} | {s.ports["metrics"] for s in servers}) == 4
        with servers[0].client() as client:
            assert client.get_stats().games == 0
    finally:
        for server in servers:
            server.stop()
    # A stopped server left its data dir usable: a new server opens it at once.
    again = serve_replay(ReplayConfig(spec=spec, data_dir=str(tmp_path / "r0"), capacity=100, port=0,
                                      metrics_port=0), Sink("replay").log, registry=CollectorRegistry())
    again.stop()


def test_a_worker_reports_ready_its_exit_code_and_a_crash():
    registry = CollectorRegistry()
    sink = Sink("trainer")

    def run(stop: threading.Event, ready: threading.Event) -> int:
        ready.set()
        stop.wait()
        return 3

    worker = Worker("trainer", run, sink.log, serve_metrics(0, registry=registry)).start()
    assert worker.wait_ready(30) and worker.running and "metrics" in worker.ports
    worker.stop()
    assert worker.exit_code == 3 and not worker.running

    def crash(stop: threading.Event, ready: threading.Event) -> int:
        raise RuntimeError("a bug")

    worker = Worker("trainer", crash, sink.log, serve_metrics(0, registry=registry)).start()
    assert not worker.wait_ready(30)  # it ended without being ready
    assert worker.exit_code == 1 and "RuntimeError('a bug')" in sink.events("crashed")[0]["error"]
