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

A second table scales the buffer: cartpole with 300,000 and with 3,000,000 stored positions
(server capacity 400,000 and 3,200,000, synchronous=FULL). A trainer loop in this process
(SampleBatch B = 256, K = 5, n = 10, then UpdatePriorities of every batch) runs while an agent
process adds games (32 per AddGames call) as fast as it can, as agent and trainer do in a fleet;
the rows give SampleBatch's latency (p50, p95, measured by the trainer around the call) and
the agent's AddGames rate, and the last row the ratio 3M / 300k. Both servers are started
and filled first, then measured in alternating segments, 3 x --seconds per row in all (9 s by
default), so that other jobs on a shared machine weigh on both rows alike. The fill uses big
AddGames calls (500 games, ~100k positions each) on the same synchronous=FULL server; its time
is printed.

    python -m benchmarks replay
    python -m benchmarks.replay --seconds 1      # shorter rows
    python -m benchmarks.replay --only scale     # only the second table
"""

from __future__ import annotations

import argparse
import multiprocessing
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
TD_STEPS = 10
# The scaling rows: (stored positions, server capacity). The capacity leaves room for the
# agent's adds during a row before they start to evict.
SCALES = ((300_000, 400_000), (3_000_000, 3_200_000))
FILL_GAMES_PER_CALL = 500  # ~100k cartpole positions (~4 MB) per AddGames while filling
AGENT_GAMES_PER_CALL = 32
CARTPOLE_MEAN_LENGTH = 200
# The scaling rows measure this many times --seconds: their latencies mix calls that meet an
# add in the server with calls that do not, and need more calls than a rate to settle.
SCALE_ROW_FACTOR = 3
SCALE_SEGMENTS = 6  # alternating segments per scale, see bench_scales

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
                 extra: tuple[str, ...] = (), capacity: int = FILL_POSITIONS) -> ServiceProcess:
    """A replay server process, not started yet: `with start_server(...) as server` starts it
    (and stops it at the end)."""
    return ServiceProcess("services.replay", [
        *flags, "--data-dir", data_dir, "--port", "0", "--metrics-port", "0",
        "--capacity", str(capacity), "--min-positions", "0", "--samples-per-insert", "0",
        "--priority-alpha", "1", "--num-unroll-steps", str(NUM_UNROLL_STEPS),
        "--td-steps", str(TD_STEPS), "--synchronous", synchronous, *extra])


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


# --- scaling: 300k and 3M stored positions, a trainer and an agent at once -------------------

def renamed(pool: list[replay_pb2.GameRecord], count: int, prefix: str,
            start: int = 0) -> list[replay_pb2.GameRecord]:
    """`count` copies of records of `pool` with new ids `<prefix>-<i>` (no call is a duplicate)."""
    records = []
    for i in range(start, start + count):
        record = replay_pb2.GameRecord()
        record.CopyFrom(pool[i % len(pool)])
        record.id = f"{prefix}-{i}"
        records.append(record)
    return records


def fill_to(client: ReplayClient, pool: list[replay_pb2.GameRecord], positions: int,
            status) -> tuple[int, float]:
    """Adds big calls of new games until `positions` are stored; (positions stored, seconds)."""
    started = time.perf_counter()
    stored, calls = 0, 0
    mean_length = float(np.mean([r.actions.shape[0] for r in pool]))
    while stored < positions:
        count = int(min(FILL_GAMES_PER_CALL, np.ceil((positions - stored) / mean_length)))
        client.add_games(renamed(pool, count, f"fill{calls}"), timeout_s=600)
        calls += 1
        stored = client.get_stats().stored_positions
        status.update(f"cartpole: filling {stored:,} / {positions:,} positions "
                      f"({time.perf_counter() - started:.0f}s)")
    return stored, time.perf_counter() - started


def agent_process(commands, go, stop, results) -> None:
    """An agent: for each server address read from `commands` (None: exit), AddGames of
    AGENT_GAMES_PER_CALL new cartpole games per call, as fast as the server takes them, from
    `go` until `stop`; puts (games, positions, seconds) on `results` after each."""
    import games
    spec = games.make("cartpole").spec
    pool = make_games(spec, 256, CARTPOLE_MEAN_LENGTH, seed=7, prefix="agent")
    clients: dict[str, ReplayClient] = {}
    calls = 0
    while (address := commands.get()) is not None:
        client = clients.get(address) or clients.setdefault(address, ReplayClient(address, timeout_s=120))
        results.put("ready")
        go.wait()
        added, positions = 0, 0
        started = time.perf_counter()
        while not stop.is_set():
            result = client.add_games(renamed(pool, AGENT_GAMES_PER_CALL, "agent",
                                              calls * AGENT_GAMES_PER_CALL))
            added += result.added
            positions += result.positions_added
            calls += 1
        results.put((added, positions, time.perf_counter() - started))
    for client in clients.values():
        client.close()


def trainer_loop(client: ReplayClient, seconds: float) -> tuple[list[float], int, float]:
    """SampleBatch then UpdatePriorities of the batch, for `seconds`: (SampleBatch latencies
    [calls] in seconds, steps, seconds)."""
    latencies = []
    for _ in range(3):  # warm-up
        client.sample_batch(BATCH_SIZE, NUM_UNROLL_STEPS, TD_STEPS)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        before = time.perf_counter()
        batch = client.sample_batch(BATCH_SIZE, NUM_UNROLL_STEPS, TD_STEPS)
        latencies.append(time.perf_counter() - before)
        client.update_priorities(batch.record_keys, batch.positions,
                                 np.abs(batch.target_value[:, 0]) + 0.01)
    return latencies, len(latencies), time.perf_counter() - started


def bench_scales(seconds: float, status) -> list[dict[str, float]]:
    """The rows of the scaling table: one fresh server per scale, filled, then a trainer (this
    process) and an agent (a child process) against one server at a time for `seconds` per
    scale in all, in SCALE_SEGMENTS alternating segments (so that the other jobs of a shared
    machine weigh on both scales alike, not on whichever row ran while they did)."""
    import contextlib

    import games
    spec = games.make("cartpole").spec
    pool = make_games(spec, 256, CARTPOLE_MEAN_LENGTH, seed=3, prefix="pool")
    context = multiprocessing.get_context("spawn")  # no fork of a process with gRPC threads
    with contextlib.ExitStack() as stack:
        rows, clients = [], []
        for stored, capacity in SCALES:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mufleet-replay-bench-"))
            status.update(f"cartpole: starting a replay server of capacity {capacity:,}")
            server = stack.enter_context(start_server(["--game", "cartpole"], data_dir,
                                                      capacity=capacity))
            server.wait_ready(120)
            client = stack.enter_context(ReplayClient(server.grpc_address, timeout_s=60))
            filled, fill_s = fill_to(client, pool, stored, status)
            clients.append((server.grpc_address, client))
            rows.append(dict(stored=filled, capacity=capacity, fill_s=fill_s, latencies=[],
                             steps=0, trained_s=0.0, games=0, positions=0, added_s=0.0))
        commands, go, stop, results = context.Queue(), context.Event(), context.Event(), context.Queue()
        agent = context.Process(target=agent_process, name="replay-bench-agent",
                                args=(commands, go, stop, results), daemon=True)
        agent.start()
        try:
            for segment in range(SCALE_SEGMENTS):
                order = range(len(rows)) if segment % 2 == 0 else reversed(range(len(rows)))
                for i in order:
                    row, (address, client) = rows[i], clients[i]
                    status.update(f"cartpole: trainer and agent, {row['stored']:,} positions "
                                  f"stored (segment {segment + 1}/{SCALE_SEGMENTS})")
                    commands.put(address)
                    assert results.get(timeout=120) == "ready"
                    stop.clear()
                    go.set()
                    latencies, steps, trained_s = trainer_loop(client, seconds / SCALE_SEGMENTS)
                    stop.set()
                    added, positions, added_s = results.get(timeout=120)
                    go.clear()
                    row["latencies"] += latencies
                    row["steps"] += steps
                    row["trained_s"] += trained_s
                    row["games"] += added
                    row["positions"] += positions
                    row["added_s"] += added_s
            commands.put(None)
        finally:
            stop.set()
            go.set()
            agent.join(60)
            if agent.is_alive():
                agent.terminate()
        for row, (_, client) in zip(rows, clients):
            row["end"] = client.get_stats().stored_positions
    for row in rows:
        latencies = 1e3 * np.array(row.pop("latencies"))
        row.update(p50=float(np.percentile(latencies, 50)), p95=float(np.percentile(latencies, 95)),
                   steps=row["steps"] / row["trained_s"], games=row["games"] / row["added_s"],
                   positions=row["positions"] / row["added_s"])
    return rows


def scale_table(seconds: float, status) -> Table:
    table = Table(title=f"Replay at scale (cartpole, synchronous=FULL): a trainer (SampleBatch "
                        f"B={BATCH_SIZE}, K={NUM_UNROLL_STEPS}, n={TD_STEPS}, then "
                        f"UpdatePriorities) and an agent process (AddGames, "
                        f"{AGENT_GAMES_PER_CALL} games/call) at once, {seconds:g}s per row")
    for column in ("stored positions", "capacity", "fill", "SampleBatch p50 ms",
                   "SampleBatch p95 ms", "trainer steps/s", "AddGames games/s",
                   "AddGames positions/s"):
        table.add_column(column, justify="right")
    rows = bench_scales(seconds, status)
    for row in rows:
        table.add_row(f"{row['stored']:,} -> {row['end']:,}", f"{row['capacity']:,}",
                      f"{row['fill_s']:.1f}s", f"{row['p50']:.2f}", f"{row['p95']:.2f}",
                      f"{row['steps']:,.0f}", f"{row['games']:,.0f}", f"{row['positions']:,.0f}")
    small, large = rows[0], rows[-1]
    table.add_row("ratio 3M / 300k", "", "", f"{large['p50'] / small['p50']:.2f}x",
                  f"{large['p95'] / small['p95']:.2f}x", f"{large['steps'] / small['steps']:.2f}x",
                  f"{large['games'] / small['games']:.2f}x",
                  f"{large['positions'] / small['positions']:.2f}x")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=SECONDS_PER_ROW,
                        help=f"measuring time per row; the scaling rows take {SCALE_ROW_FACTOR} "
                             f"times as long (default: %(default)s)")
    parser.add_argument("--only", choices=("calls", "scale"), default=None,
                        help="run one table: the calls at 100k positions, or the scaling rows")
    args = parser.parse_args([] if argv is None else argv)  # `python -m benchmarks` passes none
    console = Console(width=170)  # wide enough for the tables even when stdout is not a terminal
    tables = []
    with console.status("") as status:
        if args.only != "scale":
            table = Table(title=f"Replay service through gRPC: one client, a server process, SQLite "
                                f"synchronous=FULL, buffer full at {FILL_POSITIONS:,} positions")
            for column in ("game", "call", "rate", "throughput", "ms/call"):
                table.add_column(column, justify="left" if column in ("game", "call") else "right")
            for name, mean_length in (("cartpole", CARTPOLE_MEAN_LENGTH), ("connect4", 30)):
                for row in bench_game(name, mean_length, args.seconds, status):
                    table.add_row(*row)
            tables.append(table)
        if args.only != "calls":
            tables.append(scale_table(SCALE_ROW_FACTOR * args.seconds, status))
    for table in tables:
        console.print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
