"""Network benchmark: Predict latency and throughput, in-process vs through the server.

    python -m benchmarks network

Two networks: cartpole-sized ("fc", hidden 64) and connect4-sized ("resnet" on a 6x7x2 board,
64 channels, 2 residual blocks). Both are exported as SavedModels and served by two server
processes (batching off, and batching on with models/batching.config). For every batch size
the table compares `recurrent_inference` (what the agent calls at every search step) called
in-process (the loaded SavedModel signature, NumPy in and out) with the same call through
the server (NetworkClient over loopback gRPC). A second table runs 8 concurrent clients.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
from rich.console import Console
from rich.table import Table
from rich import box

from services.common.metrics import flat_metrics, sum_samples
from services.network import metrics as network_metrics

BATCH_SIZES = (1, 16, 64, 256, 1024)
CLIENTS = 8
CONCURRENT_BATCH = 64
CELL_SECONDS = 0.6
CONCURRENT_SECONDS = 2.0

console = Console()
tables = Console(width=170)  # wide enough for the tables even when stdout is not a terminal


def _networks():
    from games.base import GameSpec, MuZeroSettings
    from games.cartpole import CartPole

    connect4 = GameSpec(name="connect4", observation_shape=(6, 7, 2), observation_dtype="uint8", num_actions=7,
                        num_players=2, discount=1.0, max_moves=42)
    connect4_settings = MuZeroSettings.of(architecture="resnet", hidden_size=64, fc_layers=(64,), res_blocks=2, support_size=10)
    return {"cartpole (fc)": (CartPole.spec, CartPole.settings),
            "connect4 (resnet 6x7x2)": (connect4, connect4_settings)}


def _measure(call: Callable[[], object], seconds: float = CELL_SECONDS, min_calls: int = 8,
             max_calls: int = 5000) -> list[float]:
    for _ in range(3):
        call()
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < max_calls and (len(latencies) < min_calls or time.perf_counter() - started < seconds):
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    return latencies


def _stats(latencies: list[float], rows: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, rows/s)."""
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return p50 * 1e3, p99 * 1e3, rows / statistics.fmean(latencies)


def _scrape(process, name: str) -> float:
    url = f"http://127.0.0.1:{process.ready['metrics_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum_samples(flat_metrics(text), name)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with console.status("network benchmark: importing TensorFlow") as status, \
            tempfile.TemporaryDirectory(prefix="mufleet-bench-network-") as tmp:
        root = Path(tmp)
        from models.export import export_version, load_version
        from models.networks import MuZeroNetwork
        from services.common.processes import ServiceProcess
        from services.network.client import NetworkClient

        networks = _networks()
        config_entries = []
        for index, (label, (spec, settings)) in enumerate(networks.items()):
            status.update(f"network benchmark: exporting {label}")
            export_version(MuZeroNetwork(spec, settings, seed=0), root / f"model{index}", 1)
            config_entries.append(f'config {{ name: "model{index}" base_path: "{root / f"model{index}"}" '
                                  f'model_platform: "tensorflow" }}')
        (root / "models.config").write_text("model_config_list { " + " ".join(config_entries) + " }")

        status.update("network benchmark: starting two servers (batching off, on)")
        common = ["--model_config_file", str(root / "models.config"), "--port", "0", "--metrics-port", "0"]
        plain = ServiceProcess("services.network", common, log_path=root / "plain.log").start()
        batched = ServiceProcess("services.network", [
            *common, "--enable_batching", "--batching_parameters_file", "models/batching.config"],
            log_path=root / "batched.log").start()
        try:
            plain.wait_ready()
            batched.wait_ready()
            single_rows, concurrent_rows = [], []
            for index, (label, (spec, settings)) in enumerate(networks.items()):
                model = load_version(root / f"model{index}", 1)
                client = NetworkClient(plain.grpc_address, model_name=f"model{index}", timeout_s=60)
                rng = np.random.default_rng(0)
                for batch in BATCH_SIZES:
                    observation = rng.uniform(-1, 1, (batch, *spec.observation_shape)).astype(np.float32)
                    hidden = model.initial_inference(observation)["hidden_state"]
                    action = rng.integers(0, spec.num_actions, batch).astype(np.int32)
                    status.update(f"network benchmark: {label}, batch {batch}, in-process")
                    local = _stats(_measure(lambda: model.recurrent_inference(hidden, action)), batch)
                    status.update(f"network benchmark: {label}, batch {batch}, through the server")
                    remote = _stats(_measure(lambda: client.recurrent_inference(hidden, action)), batch)
                    single_rows.append((label, batch, local, remote))
                client.close()
                for server, batching in ((plain, "off"), (batched, "on")):
                    status.update(f"network benchmark: {label}, {CLIENTS} clients, batching {batching}")
                    concurrent_rows.append((label, batching, *_concurrent(server, f"model{index}", model, spec)))
        finally:
            status.update("network benchmark: stopping servers")
            plain.stop()
            batched.stop()

    table = Table(title="recurrent_inference: in-process SavedModel call vs through the server (no batching)",
                  box=box.MARKDOWN)
    for column in ("network", "batch", "in-process p50 ms", "p99 ms", "rows/s", "server p50 ms", "p99 ms",
                   "rows/s", "added p50 ms"):
        table.add_column(column, justify="left" if column == "network" else "right")
    for label, batch, local, remote in single_rows:
        table.add_row(label, str(batch), f"{local[0]:.3f}", f"{local[1]:.3f}", f"{local[2]:,.0f}",
                      f"{remote[0]:.3f}", f"{remote[1]:.3f}", f"{remote[2]:,.0f}", f"{remote[0] - local[0]:+.3f}")
    tables.print(table)
    table = Table(title=f"{CLIENTS} concurrent clients, {CONCURRENT_BATCH} rows per request, recurrent_inference",
                  box=box.MARKDOWN)
    for column in ("network", "batching", "p50 ms", "p99 ms", "rows/s", "rows per model run"):
        table.add_column(column, justify="left" if column == "network" else "right")
    for label, batching, p50, p99, rate, per_run in concurrent_rows:
        table.add_row(label, batching, f"{p50:.3f}", f"{p99:.3f}", f"{rate:,.0f}", f"{per_run:.1f}")
    tables.print(table)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    tables.print(f"machine: {os.cpu_count()} CPU cores (load average {load:.1f} at the end); "
                 f"the two servers and the benchmark's clients share them.")


def _concurrent(server, model_name: str, model, spec) -> tuple[float, float, float, float]:
    """(p50 ms, p99 ms, total rows/s, mean rows per model run) of CLIENTS threads."""
    from services.network.client import NetworkClient

    rng = np.random.default_rng(1)
    observation = rng.uniform(-1, 1, (CONCURRENT_BATCH, *spec.observation_shape)).astype(np.float32)
    hidden = model.initial_inference(observation)["hidden_state"]
    action = rng.integers(0, spec.num_actions, CONCURRENT_BATCH).astype(np.int32)
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    start = threading.Barrier(CLIENTS + 1)
    stop = threading.Event()

    def worker(index: int) -> None:
        with NetworkClient(server.grpc_address, model_name=model_name, timeout_s=60) as client:
            for _ in range(2):
                client.recurrent_inference(hidden, action)
            start.wait()
            while not stop.is_set():
                t0 = time.perf_counter()
                client.recurrent_inference(hidden, action)
                latencies[index].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    start.wait()
    rows_before = _scrape(server, network_metrics.BATCH_SIZE + "_sum")
    runs_before = _scrape(server, network_metrics.BATCH_SIZE + "_count")
    began = time.perf_counter()
    time.sleep(CONCURRENT_SECONDS)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    runs = _scrape(server, network_metrics.BATCH_SIZE + "_count") - runs_before
    rows = _scrape(server, network_metrics.BATCH_SIZE + "_sum") - rows_before
    every = [x for per_client in latencies for x in per_client]
    p50, p99, _ = _stats(every, CONCURRENT_BATCH)
    return p50, p99, len(every) * CONCURRENT_BATCH / elapsed, rows / runs if runs else 0.0
