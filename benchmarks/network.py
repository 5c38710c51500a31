"""Network benchmark: Predict latency and throughput, in-process vs through the server.

    python -m benchmarks network

Two networks: cartpole-sized ("fc", hidden 64) and connect4-sized ("resnet" on a 6x7x2 board,
64 channels, 2 residual blocks). Both are exported as SavedModels and served by two server
processes (batching off, and batching on with models/batching.config). For every batch size
the table compares `recurrent_inference` (what the agent calls at every search step) called
in-process (the loaded SavedModel signature, NumPy in and out) with the same call through
the server (NetworkClient over loopback gRPC). A second table runs 8 concurrent clients.

The memory row presents 1,000 versions of one cartpole SavedModel to a real server process as
the trainer does (atomic rename into the base path, old versions pruned), waits for each to be
served, runs Predict on it, and prints the server's resident memory (VmRSS) along the way and
its ratio after 1,000 versions to after the first 50: a version that is not released when it
is evicted shows up as growth.

    python -m benchmarks network                          # both
    python -m benchmarks.network --only latency
    python -m benchmarks.network --only memory --versions 200
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
from rich.console import Console
from rich.table import Table
from rich import box

from services.common.metrics import flat_metrics, sample_key, sum_samples
from services.network import metrics as network_metrics

BATCH_SIZES = (1, 16, 64, 256, 1024)
CLIENTS = 8
CONCURRENT_BATCH = 64
CELL_SECONDS = 0.6
CONCURRENT_SECONDS = 2.0
MEMORY_VERSIONS = 1000
MEMORY_SAMPLES = (1, 10, 50, 100, 250, 500, 750, 1000)  # versions after which RSS is read
MEMORY_BASELINE = 50  # the ratio's denominator: RSS once the first versions have come and gone
MEMORY_KEEP = 5  # versions left on disk after each export (the trainer's default keep_versions)
MEMORY_POLL_S = 0.02  # the server's --file_system_poll_wait_seconds: small, so loading dominates

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("latency", "memory"), help="run one part (default: both)")
    parser.add_argument("--versions", type=int, default=MEMORY_VERSIONS,
                        help=f"versions the memory row loads (default {MEMORY_VERSIONS})")
    args = parser.parse_args(argv if argv is not None else [])
    if args.versions < 1:
        parser.error(f"--versions must be >= 1, got {args.versions}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.only != "memory":
        _latency()
    if args.only != "latency":
        _memory(args.versions)


def _latency() -> None:
    """The two latency tables: in-process vs through the server, and concurrent clients."""
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


def _rss_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB (VmRSS of /proc/<pid>/status, which is in kB)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def _publish(source: Path, base: Path, version: int) -> None:
    """Presents a copy of the SavedModel `source` as <base>/<version> the way export_version
    publishes one: written under a temporary name, then one rename (a real, complete copy, so
    the server loads it from its own files like any new version)."""
    from models.export import TEMP_PREFIX

    temporary = base / f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex}"
    shutil.copytree(source, temporary)
    os.rename(temporary, base / str(version))


def _memory(versions: int) -> None:
    """The memory row: server RSS while `versions` versions are published, served, used and
    evicted one after another, and the ratio of the last sample to the one at MEMORY_BASELINE."""
    import games
    from models.export import export_version, prune_versions
    from models.networks import MuZeroNetwork
    from services.common.processes import ServiceProcess
    from services.network.client import NetworkClient

    samples = sorted({v for v in MEMORY_SAMPLES if v <= versions} | {versions})
    baseline = min(MEMORY_BASELINE, versions)
    rows: list[tuple[int, float, float]] = []  # (versions, RSS MiB, seconds since the first)
    with console.status("network memory: exporting a cartpole version") as status, \
            tempfile.TemporaryDirectory(prefix="mufleet-bench-network-memory-") as tmp:
        root = Path(tmp)
        game = games.make("cartpole")
        source = export_version(MuZeroNetwork(game.spec, game.settings, seed=0), root / "source", 0)
        base = root / "muzero"
        base.mkdir()
        # As the local launcher runs it (batching on, so per-version batch queues are exercised
        # too), with a short poll interval so that the time per version is the load's own.
        server = ServiceProcess("services.network", [
            "--port", "0", "--metrics-port", "0", "--model_name", "muzero", "--model_base_path", str(base),
            "--enable_batching", "--file_system_poll_wait_seconds", str(MEMORY_POLL_S)],
            log_path=root / "network.log").start()
        try:
            server.wait_ready()
            rng = np.random.default_rng(0)
            observation = rng.uniform(-1, 1, (16, *game.spec.observation_shape)).astype(np.float32)
            action = rng.integers(0, game.spec.num_actions, 16).astype(np.int32)
            with NetworkClient(server.grpc_address, model_name="muzero", timeout_s=60) as client:
                started = time.perf_counter()
                for version in range(1, versions + 1):
                    _publish(source, base, version)
                    prune_versions(base, MEMORY_KEEP)
                    client.wait_until_available(version, timeout_s=120, poll_s=0.01)
                    # Every version answers both signatures (pinned, as an agent's search is), so
                    # each one's functions and batch queues are really used before it is evicted.
                    first = client.initial_inference(observation, version=version)
                    client.recurrent_inference(first.hidden_state, action, version=version)
                    if version in samples:
                        rows.append((version, _rss_mib(server.pid), time.perf_counter() - started))
                    elapsed = time.perf_counter() - started
                    status.update(f"network memory: version {version}/{versions}, "
                                  f"{elapsed / version:.3f} s per version, RSS {_rss_mib(server.pid):.0f} MiB")
                wall_s = time.perf_counter() - started
            metrics = flat_metrics(urllib.request.urlopen(
                f"http://127.0.0.1:{server.ready['metrics_port']}/metrics", timeout=10).read().decode())
        finally:
            status.update("network memory: stopping the server")
            server.stop()

    loads = metrics.get(sample_key(network_metrics.VERSION_LOADS_TOTAL, {"model": "muzero", "result": "ok"}), 0.0)
    load_s = sum_samples(metrics, network_metrics.VERSION_LOAD_SECONDS + "_sum")
    load_count = sum_samples(metrics, network_metrics.VERSION_LOAD_SECONDS + "_count")
    base_rss = next(rss for v, rss, _ in rows if v == baseline)
    table = Table(title=f"network server memory (VmRSS) while {versions:,} cartpole versions come and go "
                        f"(keep {MEMORY_KEEP} on disk, 3 loaded)", box=box.MARKDOWN)
    for column in ("versions", "RSS MiB", f"vs {baseline}", "elapsed s"):
        table.add_column(column, justify="right")
    for version, rss, elapsed in rows:
        table.add_row(f"{version:,}", f"{rss:.1f}", f"{rss / base_rss:.3f}", f"{elapsed:.1f}")
    tables.print(table)
    last_version, last_rss, _ = rows[-1]
    per_version_kib = (last_rss - base_rss) * 1024 / (last_version - baseline) if last_version > baseline else 0.0
    tables.print(f"memory ratio {last_version}/{baseline}: {last_rss / base_rss:.3f} "
                 f"({per_version_kib:+.1f} KiB per version after {baseline}); "
                 f"{loads:.0f} loads, {1e3 * load_s / max(load_count, 1):.0f} ms per load and warm-up in the server, "
                 f"{1e3 * wall_s / versions:.0f} ms per version end to end (copy, rename, prune, load, "
                 f"two Predicts)")


if __name__ == "__main__":
    main(sys.argv[1:])
