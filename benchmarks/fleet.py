"""A fleet of service processes for the end-to-end benchmarks (selfplay, scaling): environment,
replay and network servers, agents and reanalysers, each started from its command line on
loopback with free ports, as an operator would; their counters read from /metrics and their
CPU time from /proc."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

from services.common.metrics import flat_metrics, sum_samples
from services.common.processes import ServiceProcess

GAME = "cartpole"
# The network server's TensorFlow on one thread, as the local fleet runs it
# (services/launcher/topology.py).
ONE_THREAD = ("--tensorflow_intra_op_parallelism", "1", "--tensorflow_inter_op_parallelism", "1")
AGENT_SIMULATIONS = "mufleet_agent_simulations_total"
REANALYSE_POSITIONS = "mufleet_reanalyse_positions_total"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far, s (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(url: str) -> dict[str, float]:
    """One /metrics page as `flat_metrics`."""
    return flat_metrics(urllib.request.urlopen(url, timeout=10).read().decode())


class Fleet:
    """Environment, replay and network servers, `agents` agents ("agent-0", ...) and
    `reanalysers` reanalysers ("reanalyse-0", ...) of `GAME`, serving the versions under
    `model_base`; stopped by `stop()` (also when the start fails).

    `network_flags` go to the network server, `agent_flags` to every agent (e.g. --groups)."""

    def __init__(self, model_base: Path, tmp: Path, agents: int, batch: int, simulations: int,
                 network_flags: tuple[str, ...] = (), agent_flags: tuple[str, ...] = (),
                 reanalysers: int = 0) -> None:
        self.processes: dict[str, ServiceProcess] = {}
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            self._start(tmp, "environment", "services.environment",
                        ["--port", "0", "--metrics-port", "0", "--max-games-per-session", str(max(batch, 1024))])
            # min-positions 1: a reanalyser samples stored games as soon as there are any.
            self._start(tmp, "replay", "services.replay",
                        ["--game", GAME, "--data-dir", str(tmp / "replay"), "--port", "0", "--metrics-port", "0",
                         "--capacity", "1000000", "--min-positions", "1"])
            self._start(tmp, "network", "services.network",
                        ["--port", "0", "--metrics-port", "0", "--model_name", "muzero",
                         "--model_base_path", str(model_base), *network_flags])
            for name in ("environment", "replay", "network"):
                self.processes[name].wait_ready()
            peers = ["--network", self.processes["network"].grpc_address,
                     "--replay", self.processes["replay"].grpc_address]
            for i in range(agents):
                self._start(tmp, f"agent-{i}", "services.agent",
                            ["--game", GAME, "--environment", self.processes["environment"].grpc_address, *peers,
                             "--games-per-batch", str(batch), "--simulations", str(simulations),
                             "--metrics-port", "0", "--seed", str(i), *agent_flags])
            for i in range(reanalysers):
                self._start(tmp, f"reanalyse-{i}", "services.reanalyse",
                            ["--game", GAME, *peers, "--simulations", str(simulations), "--metrics-port", "0",
                             "--seed", str(i)])
            self.metrics_urls = {name: f"http://127.0.0.1:{p.wait_ready()['metrics_port']}/metrics"
                                 for name, p in self.processes.items()}
        except BaseException:
            self.stop()
            raise

    def _start(self, tmp: Path, name: str, module: str, flags: list[str]) -> None:
        self.processes[name] = ServiceProcess(module, flags, log_path=tmp / f"{name}.log").start()

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()

    def scrape(self) -> dict[str, dict[str, float]]:
        """Every process's /metrics, by name."""
        return {name: scrape(url) for name, url in self.metrics_urls.items()}

    def cpu(self) -> dict[str, float]:
        """Every process's CPU seconds so far, by name."""
        return {name: cpu_seconds(p.pid) for name, p in self.processes.items()}

    def check_running(self) -> None:
        """RuntimeError with the log's tail of a process that exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{process.tail()}")

    def wait_working(self, timeout_s: float = 180.0) -> None:
        """Until every agent has searched and every reanalyser reanalysed (the network answered,
        the trees exist); RuntimeError when a process exits or `timeout_s` passes first."""
        deadline = time.monotonic() + timeout_s
        while True:
            scrapes = self.scrape()
            if all(sum_samples(s, AGENT_SIMULATIONS) > 0 for n, s in scrapes.items() if n.startswith("agent-")) and \
                    all(sum_samples(s, REANALYSE_POSITIONS) > 0 for n, s in scrapes.items()
                        if n.startswith("reanalyse-")):
                return
            self.check_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the fleet did not start working within {timeout_s:.0f} s")
            time.sleep(0.5)  # polling other processes' counters; nothing to wait on instead
