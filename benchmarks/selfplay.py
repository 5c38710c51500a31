"""Self-play end to end against its in-process limit: simulations per second.

Three rows for the same work (cartpole networks of the game's default size, random weights,
B games searched with S simulations per move):

  * **search alone**: `BatchedSearch` against an instant fake network (tree work only);
  * **in-process limit**: the agent's `PipelinedSearch` with the exported SavedModel called in
    this process (`LocalNetwork`, TensorFlow on one thread), with 1 and with 2 groups: search
    plus network compute, no wire, no environment, no replay. The better of the two is the
    limit;
  * **end to end**: the environment, replay and network servers and one agent, each in its own
    process started from its command line as an operator would (no trainer). The number is the
    agent's own `mufleet_agent_simulations_total` counter over a steady window (after a
    warm-up), read from its /metrics endpoint. Three times: agent and network server at their
    defaults; then with the server's TensorFlow on one thread (`--tensorflow_intra_op_parallelism
    1 --tensorflow_inter_op_parallelism 1`), as the local fleet runs it (TensorFlow's thread
    pools spin while they wait, CPU that the agent on the same cores needs), with the agent's
    `--groups` 1 and 2.

The last column gives each row's ratio to the in-process limit: what the wire, the environment
and the replay cost the agent. A second table gives each process's CPU time per simulation step
of all B games over the end-to-end window (from /proc), which says where the time goes and
what the cores allow.

    python -m benchmarks selfplay
    python -m benchmarks.selfplay --seconds 10 --batch 256 --simulations 32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from rich.console import Console
from rich.table import Table

import games
from benchmarks.fleet import AGENT_SIMULATIONS, GAME, ONE_THREAD, Fleet, scrape
from benchmarks.search import measure as measure_search_alone
from models.export import export_version, load_version
from models.networks import MuZeroNetwork
from services.agent.local_network import LocalNetwork
from services.agent.pipeline import PipelinedSearch
from services.agent.search import SearchConfig
from services.common.metrics import sum_samples

NAMES = ("environment", "replay", "network", "agent")
# (label, the agent's --groups (None: its default), extra flags of the network server): both at
# their defaults, then TensorFlow on one thread as the local fleet runs it
# (services/launcher/topology.py) with 1 and with 2 groups.
END_TO_END_VARIANTS = (("agent and network server defaults", None, ()),
                       ("1 group, network TF on one thread", 1, ONE_THREAD),
                       ("2 groups, network TF on one thread", 2, ONE_THREAD))


def in_process_limit(model_dir: Path, game: games.Game, batch: int, simulations: int, groups: int,
                     seconds: float) -> float:
    """Simulations per second of `PipelinedSearch` with the SavedModel called in process
    (TensorFlow releases the GIL while it runs, so with 2 groups one group's inference overlaps
    the other's tree work)."""
    network = LocalNetwork(load_version(model_dir.parent))
    settings = game.settings.replace(num_simulations=simulations)
    search = PipelinedSearch(network, SearchConfig.from_settings(settings), batch, game.spec.num_actions,
                             groups=groups, two_player=game.spec.num_players == 2)
    state = game.reset(batch, seed=0)
    observation, legal = game.observation(state), game.legal_actions(state)
    rng = np.random.default_rng(0)
    search.search(observation, legal, rng)  # warm-up: traces nothing (a SavedModel), allocates trees
    moves, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        search.search(observation, legal, rng)
        moves += 1
    return moves * batch * simulations / (time.perf_counter() - started)


def end_to_end(model_dir: Path, tmp: Path, batch: int, simulations: int, groups: int | None,
               warmup_s: float, seconds: float, network_flags: tuple[str, ...] = ()) -> tuple[float, dict[str, float]]:
    """Simulations per second of a real agent process against real servers, and each process's
    CPU time per simulation step of all B games (ms, by name in NAMES)."""
    fleet = Fleet(model_dir.parent, tmp, agents=1, batch=batch, simulations=simulations,
                  network_flags=network_flags, agent_flags=("--groups", str(groups)) if groups is not None else ())
    try:
        # Warm-up: until the agent has searched (the network answered, the trees exist), then a while.
        fleet.wait_working(120)
        time.sleep(warmup_s)
        cpu_before = fleet.cpu()
        first, started = _simulations(fleet), time.perf_counter()
        time.sleep(seconds)
        last, elapsed = _simulations(fleet), time.perf_counter() - started
        cpu = {name.split("-")[0]: used - cpu_before[name] for name, used in fleet.cpu().items()}
        fleet.check_running()
        rate = (last - first) / elapsed
        steps = (last - first) / batch  # simulation steps of the whole batch
        return rate, {name: 1000 * cpu[name] / max(steps, 1) for name in NAMES}
    finally:
        fleet.stop()


def _simulations(fleet: Fleet) -> float:
    return sum_samples(scrape(fleet.metrics_urls["agent-0"]), AGENT_SIMULATIONS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256, help="B, games searched at once")
    parser.add_argument("--simulations", type=int, default=32, help="S, simulations per move")
    parser.add_argument("--groups", type=int, default=None,
                        help="end to end: only one row, with this --groups of the agent")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window of each row, s")
    parser.add_argument("--network-flags", default="",
                        help="end to end: only one row, with these extra flags of the network server (one string)")
    parser.add_argument("--only-e2e", action="store_true", help="only the end-to-end row")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="end to end: warm-up before the window, s")
    args = parser.parse_args(argv if argv is not None else [])
    # This process's TensorFlow on one thread, as the local fleet's network server runs it
    # (before anything starts TensorFlow's runtime).
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    console = Console(width=150)
    game = games.make(GAME)
    B, S = args.batch, args.simulations
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp_name, console.status("measuring") as status:
        tmp = Path(tmp_name)
        model_dir = export_version(MuZeroNetwork(game.spec, game.settings, seed=0), tmp / "muzero", 1)
        limit = None
        if not args.only_e2e:
            status.update("search alone")
            alone, _, _ = measure_search_alone(B, game.spec.num_actions, False, "gumbel", S,
                                               min(args.seconds, 6.0))
            rows.append(("search alone (instant fake network)", alone))
            for groups in (1, 2):
                status.update(f"in-process limit, {groups} group(s)")
                rate = in_process_limit(model_dir, game, B, S, groups, args.seconds)
                rows.append((f"in-process limit, {groups} group{'s' if groups > 1 else ''} "
                             f"(PipelinedSearch + LocalNetwork)", rate))
                limit = max(limit or 0.0, rate)
        variants = END_TO_END_VARIANTS
        if args.network_flags or args.groups:
            variants = (("as configured", args.groups, tuple(args.network_flags.split())),)
        cpu_rows = []
        for label, groups, flags in variants:
            status.update(f"end to end, {label}")
            e2e, cpu = end_to_end(model_dir, tmp / label.replace(" ", "-").replace(",", ""), B, S, groups,
                                  args.warmup_s, args.seconds, flags)
            rows.append((f"end to end, {label}", e2e))
            cpu_rows.append((label, cpu))
    table = Table(title=f"self-play, {GAME} networks, B={B}, S={S} "
                        f"(search: {game.settings.search.search})")
    for column in ("row", "simulations/s", "moves/s", "ratio to in-process limit"):
        table.add_column(column, justify="right")
    for name, rate in rows:
        table.add_row(name, f"{rate:,.0f}", f"{rate / S:,.0f}", f"{rate / limit:.2f}" if limit else "-")
    console.print(table)
    cpu_table = Table(title="end to end: CPU ms per simulation step of all B games, by process")
    for column in ("row", *NAMES, "total", f"steps/s if {os.cpu_count()} cores were all busy"):
        cpu_table.add_column(column, justify="right")
    for label, cpu in cpu_rows:
        total = sum(cpu.values())
        cpu_table.add_row(label, *(f"{cpu[name]:.2f}" for name in NAMES), f"{total:.2f}",
                          f"{1000 * (os.cpu_count() or 1) / max(total, 1e-9):,.0f}")
    console.print(cpu_table)


if __name__ == "__main__":
    main(sys.argv[1:])
