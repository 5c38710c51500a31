"""The replay service through gRPC: AddGames games/s and SampleBatch batches/s.

A real server process (`python -m services.replay`, port 0, a temporary data dir, SQLite WAL with
synchronous=FULL: every add is on disk before its answer) and one client in this process. Rows,
for cartpole (float32 [4] observations, ~200-move games) and connect4 ([6, 7, 2] uint8 boards,
~30-move games, observations sent as float32 like the agent's):
  * AddGames with 1 and with 32 games per call (each call one durable transaction); for
    cartpole also into the full buffer (each add evicts), with every evicted id kept and with
    --id-window 1000 (each add also deletes the tombstones that leave the window);
  * SampleBatch with B = 256, K = 5 (n = 10) from a buffer of ~100k positions, alone and
    followed by UpdatePriorities of the batch (a trainer's step), and with unroll observations.

    python -m benchmarks replay
    python -m benchmarks.replay --seconds 1      # shorter rows
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from games.base import GameSpec
from protos import replay_pb2
from services.common.processes import ServiceProcess
from services.replay.client import ReplayClient, make_game_record
from services.replay.config import spec_to_json

BATCH_SIZE = 256
NUM_UNROLL_STEPS = 5
FILL_POSITIONS = 100_000
SECONDS_PER_ROW = 3.0
ID_WINDOW = 1000  # small enough that the filled buffer's adds forget ids at once

FAKE_CONNECT4 = GameSpec(name="connect4", observation_shape=(6, 7, 2), observation_dtype="uint8",
                         num_actions=7, num_players=2, discount=1.0, max_moves=42)


def game_spec(name: str) -> tuple[GameSpec, list[str]]:
    """The spec and the server flags naming it: the registered game if it loads, else a fake."""
    try:
        import games
        return games.make(name).spec, ["--game", name]
    except Exception:  # not written yet: the same shapes, served through --game-spec
        assert name == "connect4", name
        return FAKE_CONNECT4, ["--game-spec", spec_to_json(FAKE_CONNECT4)]


def make_games(spec: GameSpec, count: int, mean_length: int, seed: int, prefix: str) -> list[replay_pb2.GameRecord]:
    rng = np.random.default_rng(seed)
    A = spec.num_actions
    records = []
    for i in range(count):
        T = int(rng.integers(mean_length // 2, mean_length * 3 // 2 + 1))
        if spec.observation_dtype == "uint8":
            observations = rng.integers(0, 2, (T, *spec.observation_shape)).astype(np.float32)
        else:
            observations = rng.normal(size=(T, *spec.observation_shape)).astype(np.float32)
        records.append(make_game_record(
            f"{prefix}-{i}", observations, rng.integers(0, A, T), rng.normal(size=T).astype(np.float32),
            rng.normal(size=T).astype(np.float32), rng.dirichlet(np.ones(A), size=T).astype(np.float32),
            to_play=np.arange(T) % spec.num_players, legal_actions=np.ones((T, A), bool),
            model_version=1))
    return records


def timed(seconds: float, step: Callable[[], int]) -> tuple[float, int]:
    """Runs `step` (returns units done) for about `seconds`; (units per second, calls)."""
    step()  # warm-up
    units, calls = 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        units += step()
        calls += 1
    return units / (time.perf_counter() - started), calls


def start_server(flags: list[str], data_dir: str, synchronous: str = "FULL",
                 extra: tuple[str, ...] = ()) -> ServiceProcess:
    return ServiceProcess("services.replay", [
        *flags, "--data-dir", data_dir, "--port", "0", "--metrics-port", "0",
        "--capacity", str(FILL_POSITIONS), "--min-positions", "0", "--priority-alpha", "1",
        "--num-unroll-steps", str(NUM_UNROLL_STEPS), "--td-steps", "10",
        "--synchronous", synchronous, *extra]).start()


def fill(client: ReplayClient, spec: GameSpec, mean_length: int) -> replay_pb2.ReplayStats:
    """Adds games until the buffer holds ~FILL_POSITIONS positions (from then on adds evict)."""
    stats = client.get_stats()
    calls = 0
    while stats.stored_positions < 0.98 * FILL_POSITIONS:
        client.add_games(make_games(spec, 64, mean_length, seed=100 + calls, prefix=f"fill{calls}"))
        calls += 1
        stats = client.get_stats()
    return stats


def add_rate(client: ReplayClient, pool: list[replay_pb2.GameRecord], per_call: int,
             seconds: float, prefix: str = "add") -> float:
    """Games per second stored by AddGames calls of `per_call` new games (copies of `pool`)."""
    counter = iter(range(10**9))

    def add() -> int:
        batch = []
        for _ in range(per_call):
            i = next(counter)
            record = replay_pb2.GameRecord()
            record.CopyFrom(pool[i % len(pool)])
            record.id = f"{prefix}{per_call}-{i}"  # new ids: no call is a duplicate
            batch.append(record)
        return client.add_games(batch).added

    return timed(seconds, add)[0]


def add_row(name: str, label: str, rate: float, mean_length: int, per_call: int) -> tuple[str, ...]:
    return (name, label, f"{rate:,.0f} games/s", f"{rate * mean_length:,.0f} positions/s",
            f"{1e3 * per_call / rate:.2f}")


def bench_game(name: str, mean_length: int, seconds: float, status) -> list[tuple[str, ...]]:
    spec, flags = game_spec(name)
    pool = make_games(spec, 2048, mean_length, seed=1, prefix="pool")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mufleet-replay-bench-") as data_dir:
        status.update(f"{name}: starting the replay server")
        with start_server(flags, data_dir) as server:
            server.wait_ready(120)
            with ReplayClient(server.grpc_address, timeout_s=30) as client:
                for per_call in (1, 32):
                    status.update(f"{name}: AddGames, {per_call} games per call")
                    rate = add_rate(client, pool, per_call, seconds)
                    rows.append(add_row(name, f"AddGames, {per_call} game{'s' if per_call > 1 else ''}/call",
                                        rate, mean_length, per_call))
                status.update(f"{name}: filling the buffer to {FILL_POSITIONS:,} positions")
                stats = fill(client, spec, mean_length)

                def sample() -> int:
                    client.sample_batch(BATCH_SIZE)
                    return 1

                def sample_and_update() -> int:
                    batch = client.sample_batch(BATCH_SIZE)
                    client.update_priorities(batch.record_keys, batch.positions,
                                             np.abs(batch.target_value[:, 0]) + 0.01)
                    return 1

                def sample_unroll() -> int:
                    client.sample_batch(BATCH_SIZE, include_unroll_observations=True)
                    return 1

                if name == "cartpole":  # every add evicts; every evicted id is kept
                    status.update(f"{name}: AddGames into the full buffer")
                    rate = add_rate(client, pool, 1, seconds, prefix="full")
                    rows.append(add_row(name, "AddGames, 1 game/call, full (evicts)", rate,
                                        mean_length, 1))
                for label, step in (("SampleBatch", sample),
                                    ("SampleBatch + UpdatePriorities", sample_and_update),
                                    ("SampleBatch + unroll obs.", sample_unroll)):
                    status.update(f"{name}: {label}, B={BATCH_SIZE}, K={NUM_UNROLL_STEPS}, "
                                  f"{stats.positions:,} positions")
                    rate, _ = timed(seconds, step)
                    rows.append((name, f"{label}, B={BATCH_SIZE}, K={NUM_UNROLL_STEPS}",
                                 f"{rate:,.0f} batches/s", f"{rate * BATCH_SIZE:,.0f} positions/s",
                                 f"{1e3 / rate:.2f}"))
    if name == "cartpole":  # what forgetting evicted ids costs: every add deletes tombstones too
        with tempfile.TemporaryDirectory(prefix="mufleet-replay-bench-") as data_dir:
            status.update(f"{name}: AddGames into the full buffer, --id-window {ID_WINDOW}")
            with start_server(flags, data_dir, extra=("--id-window", str(ID_WINDOW))) as server:
                server.wait_ready(120)
                with ReplayClient(server.grpc_address, timeout_s=30) as client:
                    fill(client, spec, mean_length)
                    rate = add_rate(client, pool, 1, seconds, prefix="full")
                    rows.append(add_row(name, f"AddGames, 1 game/call, full, id_window={ID_WINDOW}",
                                        rate, mean_length, 1))
    if name == "cartpole":  # what synchronous=FULL costs: the same adds with NORMAL
        with tempfile.TemporaryDirectory(prefix="mufleet-replay-bench-") as data_dir:
            status.update(f"{name}: AddGames with synchronous=NORMAL")
            with start_server(flags, data_dir, "NORMAL") as server:
                server.wait_ready(120)
                with ReplayClient(server.grpc_address, timeout_s=30) as client:
                    rate = add_rate(client, pool, 1, seconds)
                    rows.append(add_row(name, "AddGames, 1 game/call, synchronous=NORMAL", rate,
                                        mean_length, 1))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=SECONDS_PER_ROW, help="measuring time per row")
    args = parser.parse_args([] if argv is None else argv)  # `python -m benchmarks` passes none
    console = Console()
    table = Table(title=f"Replay service through gRPC: one client, a server process, SQLite "
                        f"synchronous=FULL, buffer full at {FILL_POSITIONS:,} positions")
    for column in ("game", "call", "rate", "throughput", "ms/call"):
        table.add_column(column, justify="left" if column in ("game", "call") else "right")
    with console.status("") as status:
        for name, mean_length in (("cartpole", 200), ("connect4", 30)):
            for row in bench_game(name, mean_length, args.seconds, status):
                table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
