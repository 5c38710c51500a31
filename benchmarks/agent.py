"""The agent's search through the real network server: simulations and moves per second.

A cartpole-sized network (the game's default settings, random weights) is exported as a real
SavedModel and served by `services.network` in its own process; the agent's `PipelinedSearch`
searches B games with S simulations, sending one request per simulation step per group.
Compare with `python -m benchmarks search` (tree work alone, instant fake network).

    python -m benchmarks agent
    python -m benchmarks.agent --quick        # B = 256, S = 32 only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import games
from models.export import export_version
from models.networks import MuZeroNetwork
from services.agent.pipeline import PipelinedSearch
from services.agent.search import SearchConfig
from services.common.channels import wait_until_serving
from services.common.processes import ServiceProcess
from services.network.client import NetworkClient

BATCH_SIZES = (1, 16, 64, 256, 1024)
SIMULATIONS = (16, 32, 50)
SECONDS_PER_ROW = 2.0


def measure(network: NetworkClient, game: games.Game, batch: int, simulations: int, groups: int,
            seconds: float) -> tuple[float, float, float]:
    """(simulations per second, game moves per second, ms per move of all B games)."""
    settings = game.settings.replace(num_simulations=simulations)
    search = PipelinedSearch(network, SearchConfig.from_settings(settings), batch, game.spec.num_actions,
                             groups=min(groups, batch))
    state = game.reset(batch, seed=0)
    observation, legal = game.observation(state), game.legal_actions(state)
    rng = np.random.default_rng(0)
    search.search(observation, legal, rng)  # warm-up: allocates the trees, warms the server
    moves, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        search.search(observation, legal, rng)
        moves += 1
    elapsed = time.perf_counter() - started
    return moves * batch * simulations / elapsed, moves * batch / elapsed, 1000 * elapsed / moves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only B = 256, S = 32")
    parser.add_argument("--groups", type=int, default=2, help="pipelined groups of games")
    parser.add_argument("--batching", action="store_true", help="serve with --enable_batching")
    args = parser.parse_args(argv if argv is not None else [])
    console = Console()
    game = games.make("cartpole")
    rows = [(256, 32)] if args.quick else [(b, s) for b in BATCH_SIZES for s in SIMULATIONS]
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "muzero"
        export_version(MuZeroNetwork(game.spec, game.settings, seed=0), models, 0)
        flags = ["--port", "0", "--metrics-port", "0", "--model_name", "muzero", "--model_base_path", str(models)]
        server = ServiceProcess("services.network", flags + (["--enable_batching"] if args.batching else []),
                                log_path=Path(tmp) / "network.log").start()
        try:
            server.wait_ready()
            wait_until_serving(server.grpc_address, "tensorflow.serving.PredictionService")
            table = Table(title=f"cartpole network through services.network, {args.groups} groups, "
                                f"batching {'on' if args.batching else 'off'}")
            for column in ("B", "simulations", "simulations/s", "moves/s", "ms/move"):
                table.add_column(column, justify="right")
            with NetworkClient(server.grpc_address, timeout_s=60) as network, \
                    console.status("measuring") as status:
                for batch, simulations in rows:
                    status.update(f"B={batch} S={simulations}")
                    sims, moves, ms = measure(network, game, batch, simulations, args.groups, SECONDS_PER_ROW)
                    table.add_row(str(batch), str(simulations), f"{sims:,.0f}", f"{moves:,.0f}", f"{ms:.2f}")
        finally:
            server.stop()
    console.print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
