"""Launches a topology as child processes on loopback, one after another, each once healthy."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families

from services.common.channels import wait_until_serving
from services.common.logs import EventLogger
from services.common.processes import ServiceProcess
from services.launcher.topology import ServiceSpec

# `{name}` is a service's gRPC address, `{name.metrics}` its metrics address.
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_-]+)(\.metrics)?\}")


class LocalFleet:
    """Starts `specs` in order; `stop()` stops them in reverse order (SIGTERM, then SIGKILL).

    Each child's log goes to `<log_dir>/<name>.log`.
    """

    def __init__(self, specs: list[ServiceSpec], log_dir: Path, log: EventLogger,
                 ready_timeout_s: float = 300.0) -> None:
        self.specs = specs
        self.log_dir = Path(log_dir)
        self.log = log
        self.ready_timeout_s = ready_timeout_s
        self.processes: dict[str, ServiceProcess] = {}
        self.grpc_addresses: dict[str, str] = {}
        self.metrics_addresses: dict[str, str] = {}
        self.http_addresses: dict[str, str] = {}

    def _resolve(self, arg: str) -> str:
        def address(match: re.Match[str]) -> str:
            name, metrics = match.group(1), match.group(2)
            addresses = self.metrics_addresses if metrics else self.grpc_addresses
            if name not in addresses:
                raise ValueError(f"argument {arg!r} names {match.group(0)}, which has no such "
                                 f"address among the services started before it")
            return addresses[name]

        return _PLACEHOLDER.sub(address, arg)

    def start(self, on_started: Callable[[ServiceSpec], None] | None = None) -> None:
        """Starts every service, waiting for each to be ready (and SERVING, for gRPC ones)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            args = [self._resolve(arg) for arg in spec.args]
            process = ServiceProcess(spec.module, args, log_path=self.log_dir / f"{spec.name}.log")
            self.processes[spec.name] = process
            self.log.info("starting", name=spec.name, command=" ".join(["python", "-m", spec.module, *args]))
            process.start()
            ready = process.wait_ready(self.ready_timeout_s)
            if ready.get("metrics_port"):
                self.metrics_addresses[spec.name] = f"127.0.0.1:{ready['metrics_port']}"
            if spec.kind == "http":
                self.http_addresses[spec.name] = f"127.0.0.1:{ready['http_port']}"
                self.metrics_addresses[spec.name] = self.http_addresses[spec.name]
            if spec.kind == "grpc":
                self.grpc_addresses[spec.name] = f"127.0.0.1:{ready['grpc_port']}"
                wait_until_serving(self.grpc_addresses[spec.name], spec.health_service,
                                   timeout_s=self.ready_timeout_s)
            self.log.info("started", name=spec.name, pid=process.pid,
                          grpc=self.grpc_addresses.get(spec.name), http=self.http_addresses.get(spec.name),
                          metrics=self.metrics_addresses.get(spec.name))
            if on_started:
                on_started(spec)

    def exited(self) -> dict[str, int]:
        """Services that have exited, with their exit codes."""
        return {name: code for name, p in self.processes.items() if (code := p.poll()) is not None}

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            code = self.processes[name].stop()
            self.log.info("stopped_service", name=name, exit_code=code)

    def scrape(self, name: str, timeout_s: float = 2.0) -> dict[str, float]:
        """The metrics of service `name` as {sample name{labels}: value} (empty if unreachable)."""
        address = self.metrics_addresses.get(name)
        if not address:
            return {}
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as response:
                text = response.read().decode()
        except OSError:
            return {}
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples


def sum_samples(samples: dict[str, float], name: str) -> float:
    """Sum of every sample of metric `name` over its label sets."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def wait_for(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.5) -> bool:
    """Polls `predicate` until true or `timeout_s` passes; returns its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
