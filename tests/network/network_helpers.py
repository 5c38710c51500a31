"""Helpers of the network server's integration tests: publish versions atomically, start
server processes, scrape metrics, wait on observable state."""

from __future__ import annotations

import os
import shutil
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families

from services.common.processes import ServiceProcess


def publish(source: Path, base: Path, version: int) -> Path:
    """Copies the SavedModel `source` to <base>/<version> atomically (copy, then one rename)."""
    base.mkdir(parents=True, exist_ok=True)
    temporary = base / f".tmp-{version}-{uuid.uuid4().hex}"
    shutil.copytree(source, temporary)
    target = base / str(version)
    os.rename(temporary, target)
    return target


def publish_served_models(saved_models: Path, root: Path) -> Path:
    """Two models under `root`, as the server tests serve them: "muzero" (cartpole versions 1
    and 2, both kept, label "stable" on 1) and "board" (version 1), and their models.config;
    returns the config's path."""
    publish(saved_models / "cartpole" / "1", root / "muzero", 1)
    publish(saved_models / "cartpole" / "2", root / "muzero", 2)
    publish(saved_models / "board" / "1", root / "board", 1)
    config = root / "models.config"
    config.write_text(f"""
model_config_list {{
  config {{
    name: "muzero"
    base_path: "{root / 'muzero'}"
    model_platform: "tensorflow"
    model_version_policy {{ latest {{ num_versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
  }}
  config {{
    name: "board"
    base_path: "{root / 'board'}"
    model_platform: "tensorflow"
  }}
}}
""")
    return config


def start_network(args: list[str], log_path: Path) -> ServiceProcess:
    process = ServiceProcess("services.network", [*args, "--port", "0", "--metrics-port", "0"],
                             log_path=log_path)
    process.start()
    try:
        process.wait_ready(120)
    except BaseException:
        process.stop()
        raise
    return process


def scrape(process: ServiceProcess, path: str = "/metrics") -> dict[tuple, float]:
    """The process's metrics as {(sample name, sorted label items): value}."""
    url = f"http://127.0.0.1:{process.ready['metrics_port']}{path}"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(process: ServiceProcess, name: str, **labels) -> float:
    return scrape(process).get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Polls an observable condition (server state, not the clock) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)
