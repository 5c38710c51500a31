"""The learner: synthetic steps/s in process against the real trainer loop on a real replay.

Two rows, measured in alternating segments in one run, and their ratio:

  * synthetic: `Trainer.train_step` on one synthetic cartpole batch (B = 256, K = 5) fed again
    and again, in this process, no XLA (`services.trainer.bench`'s row): the train step's own
    cost, nothing else.
  * replay: the trainer service's own loop (`services.trainer.service.serve`, the code path of
    `python -m services.trainer`: prefetch thread, SampleBatch decoding, priorities sent with
    UpdatePriorities, exports every export_interval = 100 steps (the game's default) with their
    checkpoints, summaries and metrics) in this process, against a replay server in its own
    process (`python -m services.replay`, as in a fleet) holding ~90,000 cartpole positions,
    prioritized (alpha 1), computing targets for every batch. No agent adds games meanwhile.

Each replay segment starts the trainer (with resume, so steps and versions continue) and times
from its first `train` log line (after tracing and the first steps) to its last, so every
segment's window holds one export per 100 steps. Segments alternate with synthetic segments so
that other jobs on a shared machine weigh on both rows alike. The CPU columns are CPU seconds
per step of this process (all threads: for the replay row the training thread, the prefetch,
priority and writer threads, gRPC's) and of the replay process: what the learner costs the
machine beside its train step, which a loaded machine's wall clock hides.

    python -m benchmarks trainer
    python -m benchmarks.trainer --segments 2 --replay-steps 400 --synthetic-steps 200
    python -m services.trainer.bench     # the synthetic rows alone, all games, with XLA
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console
from rich.table import Table

GAME = "cartpole"
FILL_POSITIONS = 90_000
CAPACITY = 100_000
SEGMENTS = 3
SYNTHETIC_STEPS = 300
REPLAY_STEPS = 600
LOG_INTERVAL = 100  # the replay window runs from the first `train` line to the last


def process_cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system, all threads) of this process or of process `pid`."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Clock(NamedTuple):
    """A moment: wall time and the CPU seconds of this process and of the replay process."""

    wall: float
    cpu: float
    replay_cpu: float

    @classmethod
    def now(cls, replay_pid: int) -> "Clock":
        return cls(time.perf_counter(), process_cpu_s(), process_cpu_s(replay_pid))


class _TimedEvents(io.TextIOBase):
    """A log stream that keeps every event with the Clock of the moment it was written."""

    def __init__(self, replay_pid: int) -> None:
        super().__init__()
        self.replay_pid = replay_pid
        self.events: list[tuple[Clock, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        now = Clock.now(self.replay_pid)
        for line in text.splitlines():
            if line.strip():
                with self._lock:
                    self.events.append((now, json.loads(line)))
        return len(text)

    def named(self, name: str) -> list[tuple[Clock, dict[str, Any]]]:
        with self._lock:
            return [(t, e) for t, e in self.events if e["event"] == name]


def synthetic_segment(trainer, batch, steps: int, replay_pid: int) -> dict[str, float]:
    """`steps` train steps on `batch` (the trainer already traced): steps/s and CPU per step."""
    start = Clock.now(replay_pid)
    for _ in range(steps):
        trainer.train_step(batch)
    end = Clock.now(replay_pid)
    return {"steps_per_second": steps / (end.wall - start.wall), "steps": steps,
            "cpu_ms": 1e3 * (end.cpu - start.cpu) / steps,
            "replay_cpu_ms": 1e3 * (end.replay_cpu - start.replay_cpu) / steps}


def replay_segment(replay_address: str, replay_pid: int, run_dir: Path, steps: int) -> dict[str, float]:
    """Runs the trainer service (resumed) for `steps` more steps against the replay; returns
    steps/s between its first and last `train` lines, with what happened in that window."""
    from prometheus_client import CollectorRegistry

    from services.common.logs import get_logger
    from services.trainer.config import TrainerConfig
    from services.trainer.service import serve

    stream = _TimedEvents(replay_pid)
    log = get_logger("trainer", stream)
    start_step = _latest_step(run_dir / "checkpoints")
    config = TrainerConfig.for_game(
        GAME, str(run_dir / "models"), str(run_dir / "checkpoints"), replay_address=replay_address,
        resume=True, steps=start_step + steps, log_interval=LOG_INTERVAL, metrics_port=0, seed=0)
    worker = serve(config, log, registry=CollectorRegistry())
    worker.wait()
    if worker.exit_code != 0:
        raise RuntimeError(f"the trainer exited with {worker.exit_code}: "
                           + json.dumps([e for _, e in stream.events][-5:]))
    lines = stream.named("train")
    (t0, first), (t1, last) = lines[0], lines[-1]
    exports = [e for t, e in stream.named("exported") if t0.wall <= t.wall < t1.wall]
    trained = last["step"] - first["step"]
    return {"steps_per_second": trained / (t1.wall - t0.wall), "steps": trained,
            "cpu_ms": 1e3 * (t1.cpu - t0.cpu) / trained,
            "replay_cpu_ms": 1e3 * (t1.replay_cpu - t0.replay_cpu) / trained,
            "exports": len(exports), "export_s": sum(e["seconds"] for e in exports),
            "batch_wait_s": statistics.mean(e["batch_wait_s"] for _, e in lines[1:]),
            "end_step": last["step"]}


def _latest_step(checkpoint_dir: Path) -> int:
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def fill_replay(address: str, positions: int, status) -> tuple[int, float]:
    """Adds ~200-move cartpole games in big calls until `positions` are stored."""
    from benchmarks.replay import CARTPOLE_MEAN_LENGTH, fill_to, make_games
    import games
    from services.replay.client import ReplayClient

    pool = make_games(games.make(GAME).spec, 256, CARTPOLE_MEAN_LENGTH, seed=3, prefix="pool")
    with ReplayClient(address, timeout_s=120) as client:
        return fill_to(client, pool, positions, status)


def combined(segments: list[dict[str, float]]) -> dict[str, float]:
    """The segments as one: steps over their total time, CPU per step over all steps."""
    steps = sum(r["steps"] for r in segments)
    seconds = sum(r["steps"] / r["steps_per_second"] for r in segments)
    total = {"steps_per_second": steps / seconds, "steps": steps}
    for key in ("cpu_ms", "replay_cpu_ms"):
        total[key] = sum(r[key] * r["steps"] for r in segments) / steps
    for key in ("exports", "export_s"):
        total[key] = sum(r.get(key, 0) for r in segments)
    total["batch_wait_s"] = sum(r.get("batch_wait_s", 0) * r["steps"] for r in segments) / steps
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=SEGMENTS,
                        help="alternating segments per row (default: %(default)s)")
    parser.add_argument("--synthetic-steps", type=int, default=SYNTHETIC_STEPS,
                        help="timed synthetic steps per segment (default: %(default)s)")
    parser.add_argument("--replay-steps", type=int, default=REPLAY_STEPS,
                        help=f"trainer steps per replay segment, a multiple of {LOG_INTERVAL}; "
                             f"the first {LOG_INTERVAL} are not timed (default: %(default)s)")
    parser.add_argument("--positions", type=int, default=FILL_POSITIONS,
                        help="cartpole positions in the replay (default: %(default)s)")
    args = parser.parse_args([] if argv is None else argv)  # `python -m benchmarks` passes none
    if args.replay_steps < 2 * LOG_INTERVAL or args.replay_steps % LOG_INTERVAL:
        parser.error(f"--replay-steps must be a multiple of {LOG_INTERVAL} and >= {2 * LOG_INTERVAL}")

    import games
    from services.common.logs import get_logger
    from services.common.processes import ServiceProcess
    from services.trainer.bench import synthetic_batch
    from services.trainer.config import TrainerConfig
    from services.trainer.trainer import Trainer

    console = Console(width=150)
    settings = games.make(GAME).settings
    synthetic, real = [], []
    with tempfile.TemporaryDirectory(prefix="mufleet-trainer-bench-") as directory, \
            console.status("") as status:
        root = Path(directory)
        status.update("starting the replay server")
        replay = ServiceProcess("services.replay", [
            "--game", GAME, "--data-dir", str(root / "replay"), "--port", "0", "--metrics-port", "0",
            "--capacity", str(CAPACITY)])
        with replay:
            replay.wait_ready(120)
            stored, fill_s = fill_replay(replay.grpc_address, args.positions, status)
            status.update("synthetic trainer: tracing")
            config = TrainerConfig(spec=games.make(GAME).spec, settings=settings,
                                   models_dir=str(root / "synthetic" / "models"),
                                   checkpoint_dir=str(root / "synthetic" / "checkpoints"), seed=0)
            trainer = Trainer(config, log=get_logger("trainer", io.StringIO()))
            batch = synthetic_batch(GAME, settings.training.batch_size)
            for _ in range(3):
                trainer.train_step(batch)
            for segment in range(args.segments):
                status.update(f"synthetic, segment {segment + 1}/{args.segments}")
                synthetic.append(synthetic_segment(trainer, batch, args.synthetic_steps, replay.pid))
                status.update(f"trainer against the replay, segment {segment + 1}/{args.segments}")
                real.append(replay_segment(replay.grpc_address, replay.pid, root / "run",
                                           args.replay_steps))
    table = Table(title=f"trainer: {GAME}, B={settings.training.batch_size}, "
                        f"K={settings.training.num_unroll_steps}, no XLA; replay in its own process "
                        f"with {stored:,} positions (filled in {fill_s:.0f}s), priorities on, export "
                        f"every {settings.training.export_interval} steps; {args.segments} "
                        f"alternating segments")
    for column in ("segment", "synthetic steps/s", "replay steps/s", "ratio",
                   "synthetic CPU ms/step", "trainer CPU ms/step", "replay server CPU ms/step",
                   "exports in window", "export s (each)", "batch wait ms/step"):
        table.add_column(column, justify="right")

    def row(name: str, s: dict[str, float], r: dict[str, float]) -> None:
        table.add_row(name, f"{s['steps_per_second']:.1f}", f"{r['steps_per_second']:.1f}",
                      f"{r['steps_per_second'] / s['steps_per_second']:.2f}", f"{s['cpu_ms']:.2f}",
                      f"{r['cpu_ms']:.2f}", f"{r['replay_cpu_ms']:.2f}", str(r["exports"]),
                      f"{r['export_s'] / max(r['exports'], 1):.2f}", f"{1e3 * r['batch_wait_s']:.2f}")

    for i, (s, r) in enumerate(zip(synthetic, real)):
        row(str(i + 1), s, r)
    row("all", combined(synthetic), combined(real))
    console.print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
