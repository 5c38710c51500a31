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

A third table measures the agent's adds under priority load: cartpole with 1,000,000 stored
positions (capacity 1,100,000, synchronous=FULL), the agent process (AddGames of 32 games per
call, as fast as it goes) alone, with a trainer loop in this process (SampleBatch B = 256, K = 5,
then UpdatePriorities of every batch, paced at --trainer-steps-per-s) on a server that flushes
priorities every --priorities-flush-s (1 s: 30 times as often as the default, so that the rows
meet flushes), and with the same trainer on a server that never flushes during the run (what
the trainer's calls cost the adds by themselves). The rows alternate in six rounds, 3 x
--seconds per row in all; the table prints each row's AddGames rate, its ratio to the agent
alone (target >= 0.80), and the flushes the flushing server made (their count, records written
and mean seconds, from its /metrics).

    python -m benchmarks replay
    python -m benchmarks.replay --seconds 1      # shorter rows
    python -m benchmarks.replay --only scale     # only the second table
    python -m benchmarks.replay --only priorities --trainer-steps-per-s 0   # trainer unpaced
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
from services.replay.metrics import PRIORITY_FLUSH_SECONDS as FLUSH_SECONDS
from services.replay.metrics import PRIORITY_FLUSHED_RECORDS_TOTAL as FLUSHED_RECORDS

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
# The priorities table (bench_priorities): a buffer of 1M positions (~5,000 records, nearly all
# of them dirty after a second of training at 150 steps/s), flushed every second (30 times as
# often as the default, so that every round of a row meets flushes).
PRIORITY_STORED, PRIORITY_CAPACITY = 1_000_000, 1_100_000
PRIORITY_FLUSH_S = 1.0
NEVER_FLUSH_S = 1e9  # the server whose rows measure the trainer's calls without flushes
PRIORITY_SEGMENTS = 6  # rounds of the three rows
PRIORITY_ROW_FACTOR = 3  # seconds per row: this many times --seconds
TRAINER_STEPS_PER_S = 150.0  # a trainer's rate on one accelerator, in the 80-200 steps/s range
PRIORITY_TARGET = 0.80

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


def trainer_loop(client: ReplayClient, seconds: float,
                 steps_per_s: float = 0.0) -> tuple[list[float], int, float]:
    """SampleBatch then UpdatePriorities of the batch, for `seconds`: (SampleBatch latencies
    [calls] in seconds, steps, seconds). With `steps_per_s` > 0 the steps are paced at that
    rate (a trainer whose own step, on its accelerator, takes the rest of the time); a loop
    that falls behind runs as fast as it goes without catching up in a burst."""
    latencies = []
    for _ in range(3):  # warm-up
        client.sample_batch(BATCH_SIZE, NUM_UNROLL_STEPS, TD_STEPS)
    started = time.perf_counter()
    next_step = started
    while time.perf_counter() - started < seconds:
        if steps_per_s > 0:
            wait = next_step - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            next_step = max(next_step + 1.0 / steps_per_s, time.perf_counter() - 1.0 / steps_per_s)
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


# --- priorities under load: the agent's adds while a trainer samples and updates --------------

def scrape(metrics_port: int) -> dict[str, float]:
    """The unlabelled samples of a server's /metrics (name -> value)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            values[name] = float(value)
    return values


def bench_priorities(seconds: float, steps_per_s: float, flush_s: float,
                     status) -> list[dict[str, float]]:
    """The rows of the priorities table. Two servers of PRIORITY_CAPACITY, each filled to
    PRIORITY_STORED positions: one flushing priorities every `flush_s`, one that never flushes
    during the run. An agent process adds AGENT_GAMES_PER_CALL games per call as fast as the
    server takes them: alone (on the non-flushing server, so that no flush of the trainer's
    updates lands in it), with the trainer loop (this process) sampling and updating every
    batch on the flushing server, and the same on the non-flushing one (what the trainer's
    calls cost the adds without any flush). `seconds` per row in all, in PRIORITY_SEGMENTS
    rounds of the three rows, their order alternating round by round."""
    import contextlib

    import games
    spec = games.make("cartpole").spec
    pool = make_games(spec, 256, CARTPOLE_MEAN_LENGTH, seed=5, prefix="pool")
    context = multiprocessing.get_context("spawn")  # no fork of a process with gRPC threads
    with contextlib.ExitStack() as stack:
        servers = []
        for interval in (flush_s, NEVER_FLUSH_S):
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mufleet-replay-bench-"))
            status.update(f"cartpole: starting a replay server of capacity {PRIORITY_CAPACITY:,}")
            server = stack.enter_context(start_server(
                ["--game", "cartpole"], data_dir, capacity=PRIORITY_CAPACITY,
                extra=("--priorities-flush-s", f"{interval:g}")))
            server.wait_ready(120)
            client = stack.enter_context(ReplayClient(server.grpc_address, timeout_s=60))
            fill_to(client, pool, PRIORITY_STORED, status)
            servers.append((server, client))
        rows = [dict(name="agent alone", server=1, trainer=False),
                dict(name=f"agent + trainer, flush every {flush_s:g}s", server=0, trainer=True),
                dict(name="agent + trainer, no flush", server=1, trainer=True)]
        for row in rows:
            row.update(latencies=[], steps=0, trained_s=0.0, games=0, added_s=0.0)
        before = scrape(servers[0][0].ready["metrics_port"])
        commands, go, stop, results = context.Queue(), context.Event(), context.Event(), context.Queue()
        agent = context.Process(target=agent_process, name="replay-bench-agent",
                                args=(commands, go, stop, results), daemon=True)
        agent.start()
        segment_s = seconds / PRIORITY_SEGMENTS
        try:
            for segment in range(PRIORITY_SEGMENTS):
                order = rows if segment % 2 == 0 else rows[::-1]
                for row in order:
                    server, client = servers[row["server"]]
                    status.update(f"cartpole: {row['name']} (round {segment + 1}/{PRIORITY_SEGMENTS})")
                    commands.put(server.grpc_address)
                    assert results.get(timeout=120) == "ready"
                    stop.clear()
                    go.set()
                    if row["trainer"]:
                        latencies, steps, trained_s = trainer_loop(client, segment_s, steps_per_s)
                        row["latencies"] += latencies
                        row["steps"] += steps
                        row["trained_s"] += trained_s
                    else:
                        time.sleep(segment_s)
                    stop.set()
                    added, _, added_s = results.get(timeout=120)
                    go.clear()
                    row["games"] += added
                    row["added_s"] += added_s
            commands.put(None)
        finally:
            stop.set()
            go.set()
            agent.join(60)
            if agent.is_alive():
                agent.terminate()
        after = scrape(servers[0][0].ready["metrics_port"])
    flushes = {name: after.get(name, 0.0) - before.get(name, 0.0)
               for name in (FLUSH_SECONDS + "_count", FLUSH_SECONDS + "_sum", FLUSHED_RECORDS)}
    for row in rows:
        latencies = 1e3 * np.array(row.pop("latencies") or [np.nan])
        row.update(p50=float(np.percentile(latencies, 50)),
                   steps=row["steps"] / row["trained_s"] if row["trained_s"] else 0.0,
                   games=row["games"] / row["added_s"])
        if row["server"] == 0 and row["trainer"]:
            row["flushes"] = flushes if FLUSH_SECONDS + "_count" in after else None
    return rows


def priorities_table(seconds: float, steps_per_s: float, flush_s: float, status) -> Table:
    pace = f"paced at {steps_per_s:g} steps/s" if steps_per_s > 0 else "as fast as it goes"
    table = Table(title=f"Replay under priority load (cartpole, synchronous=FULL, "
                        f"{PRIORITY_STORED:,} positions stored, capacity {PRIORITY_CAPACITY:,}): an "
                        f"agent process (AddGames, {AGENT_GAMES_PER_CALL} games/call) alone and with a "
                        f"trainer (SampleBatch B={BATCH_SIZE}, K={NUM_UNROLL_STEPS}, then "
                        f"UpdatePriorities of every batch, {pace}), {seconds:g}s per row")
    for column in ("row", "trainer steps/s", "SampleBatch p50 ms", "AddGames games/s", "vs alone",
                   "flushes (records, mean s)"):
        table.add_column(column, justify="left" if column == "row" else "right")
    rows = bench_priorities(seconds, steps_per_s, flush_s, status)
    alone = rows[0]["games"]
    for row in rows:
        flushes = row.get("flushes")
        if flushes is None:
            flushed = "-" if row["server"] else "not measured"  # a server without the metric
        else:
            count = flushes[FLUSH_SECONDS + "_count"]
            flushed = (f"{count:.0f} ({flushes[FLUSHED_RECORDS]:,.0f}, "
                       f"{flushes[FLUSH_SECONDS + '_sum'] / max(count, 1):.3f})")
        table.add_row(row["name"], f"{row['steps']:,.0f}" if row["trainer"] else "-",
                      f"{row['p50']:.2f}" if row["trainer"] else "-", f"{row['games']:,.0f}",
                      f"{row['games'] / alone:.2f}", flushed)
    table.caption = f"target: agent + trainer with flushes / agent alone >= {PRIORITY_TARGET:.2f}"
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=SECONDS_PER_ROW,
                        help=f"measuring time per row; the scaling rows take {SCALE_ROW_FACTOR} "
                             f"times as long (default: %(default)s)")
    parser.add_argument("--only", choices=("calls", "scale", "priorities"), default=None,
                        help="run one table: the calls at 100k positions, the scaling rows, or "
                             "the adds under priority load")
    parser.add_argument("--trainer-steps-per-s", type=float, default=TRAINER_STEPS_PER_S,
                        help="the priorities table's trainer pace; 0: as fast as it goes "
                             "(default: %(default)s)")
    parser.add_argument("--priorities-flush-s", type=float, default=PRIORITY_FLUSH_S,
                        help="the priorities table's flush interval (the server's default is "
                             "30 s; default: %(default)s)")
    args = parser.parse_args([] if argv is None else argv)  # `python -m benchmarks` passes none
    console = Console(width=170)  # wide enough for the tables even when stdout is not a terminal
    tables = []
    with console.status("") as status:
        if args.only in (None, "calls"):
            table = Table(title=f"Replay service through gRPC: one client, a server process, SQLite "
                                f"synchronous=FULL, buffer full at {FILL_POSITIONS:,} positions")
            for column in ("game", "call", "rate", "throughput", "ms/call"):
                table.add_column(column, justify="left" if column in ("game", "call") else "right")
            for name, mean_length in (("cartpole", CARTPOLE_MEAN_LENGTH), ("connect4", 30)):
                for row in bench_game(name, mean_length, args.seconds, status):
                    table.add_row(*row)
            tables.append(table)
        if args.only in (None, "scale"):
            tables.append(scale_table(SCALE_ROW_FACTOR * args.seconds, status))
        if args.only in (None, "priorities"):
            tables.append(priorities_table(PRIORITY_ROW_FACTOR * args.seconds,
                                           args.trainer_steps_per_s, args.priorities_flush_s, status))
    for table in tables:
        console.print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
