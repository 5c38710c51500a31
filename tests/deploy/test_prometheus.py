"""Prometheus contract: a real Prometheus scrapes a locally launched fleet.

The fleet (cartpole, small batches, every service on a free loopback port, the dashboard
included) is started by the local launcher; Prometheus (Debian's /usr/bin/prometheus) gets a
generated configuration with one job per service and a 1 s scrape interval. Through Prometheus's
HTTP API the test checks that every target is up and that the key `mufleet_` metrics have
values. Each endpoint's text also goes through `promtool check metrics`: the monitor's must be
clean; problems of the other services are reported as warnings.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Callable

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is missing: pip install -r requirements.txt")

from monitor import metrics as monitor_metrics
from services.agent import metrics as agent_metrics
from services.common.logs import get_logger
from services.environment import metrics as environment_metrics
from services.launcher.local import LocalFleet
from services.launcher.topology import FleetConfig, build_topology
from services.network import metrics as network_metrics
from services.replay import metrics as replay_metrics
from services.trainer import metrics as trainer_metrics

pytestmark = pytest.mark.e2e

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

# metric -> what it must be in the fleet once it runs (PromQL over the scraped samples).
KEY_METRICS = {
    "environment steps": f"sum({environment_metrics.STEPS_TOTAL}) > 0",
    "replay positions": f"sum({replay_metrics.POSITIONS}) > 0",
    "agent simulations": f"sum({agent_metrics.SIMULATIONS_TOTAL}) > 0",
    "trainer steps": f"count({trainer_metrics.STEPS_TOTAL}) > 0",
    "trainer exported version": f"max({trainer_metrics.EXPORTED_VERSION}) >= 0",
    "network requests": f"sum({network_metrics.REQUESTS_TOTAL}) > 0",
    "monitor requests": f"sum({monitor_metrics.REQUESTS_TOTAL}) > 0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout_s: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float, describe: Callable[[], str] = str):
    """Polls an observable condition (not the clock) until it holds; fails with `describe()`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass  # Prometheus still starting
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s:.0f}s: {describe()}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if not Path(PROMETHEUS).exists():
        pytest.skip(f"{PROMETHEUS} is missing (apt-get install prometheus)")
    run_dir = tmp_path_factory.mktemp("fleet-cartpole")
    config = FleetConfig(game="cartpole", run_dir=run_dir, fixed_ports=False, monitor=True,
                         games_per_batch=16, simulations=4)
    fleet = LocalFleet(build_topology(config), log_dir=Path(run_dir) / "logs",
                       log=get_logger("launcher", stream=io.StringIO()), ready_timeout_s=240)
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def prometheus(fleet, tmp_path_factory):
    root = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": name, "static_configs": [{"targets": [address]}]}
                           for name, address in fleet.metrics_addresses.items()],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(root / "prometheus.log", "w")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(base + "/-/ready", timeout=2).status == 200,
                   "Prometheus ready", 60, lambda: (root / "prometheus.log").read_text()[-2000:])
        yield base
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def query(base: str, promql: str) -> list[dict]:
    body = get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_every_target_is_up(fleet, prometheus):
    expected = set(fleet.metrics_addresses)
    assert {"environment", "replay", "network", "trainer", "agent-0", "monitor"} <= expected

    def targets() -> dict[str, str]:
        active = get_json(prometheus + "/api/v1/targets")["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active}

    wait_until(lambda: targets() == {name: "up" for name in expected}, "every target up", 60,
               lambda: json.dumps(targets()))
    assert {r["metric"]["job"] for r in query(prometheus, "up == 1")} == expected


def test_key_metrics_have_values(fleet, prometheus):
    missing: dict[str, str] = {}

    def all_present() -> bool:
        missing.clear()
        for what, promql in KEY_METRICS.items():
            if not query(prometheus, promql):
                missing[what] = promql
        return not missing

    wait_until(all_present, "every key metric", 120, lambda: json.dumps(missing))
    # Every MuFleet metric Prometheus holds follows the naming rule.
    names = get_json(prometheus + "/api/v1/label/__name__/values")["data"]
    ours = [n for n in names if n.startswith("mufleet_")]
    assert len(ours) > 30
    for name in ours:
        service = name.split("_")[1]
        assert service in ("environment", "replay", "network", "agent", "trainer", "monitor"), name


def test_metrics_pass_promtool(fleet):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is missing (apt-get install prometheus)")
    problems: dict[str, str] = {}
    for name, address in fleet.metrics_addresses.items():
        text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
        checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        if checked.returncode != 0:
            problems[name] = (checked.stdout + checked.stderr).strip()
    assert "monitor" not in problems, problems.get("monitor")
    for name, report in problems.items():
        warnings.warn(f"promtool check metrics on {name}: {report}")
