"""Tree work of the batched MCTS alone: simulations and moves per second.

An in-process fake network answers instantly with precomputed random outputs, so the numbers
are the search's own cost (selection, expansion, backup, root setup and action choice) for
B games searched in lockstep. Rows: cartpole-like (A = 2) and connect-four-like (A = 7)
action spaces with 64-float hidden states, both root policies, B = 1 ... 1024 and 16 / 32 / 50
simulations.

    python -m benchmarks search
    python -m benchmarks.search --quick      # fewer rows
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Mapping

import numpy as np
from rich.console import Console
from rich.table import Table

from services.agent.inference import Answered, VersionedOutput
from services.agent.search import BatchedSearch, SearchConfig

BATCH_SIZES = (1, 16, 64, 256, 1024)
SIMULATIONS = (16, 32, 50)
GAMES = (("A=2", 2, False), ("A=7", 7, True))   # cartpole-like one-player, connect4-like two-player
# (label, root policy, rescale_values): Gumbel with mctx's per-node Q rescale and without it.
SEARCHES = (("gumbel", "gumbel", True), ("gumbel, Q as is", "gumbel", False), ("puct", "puct", True))
HIDDEN = 64
SECONDS_PER_ROW = 0.6


class InstantNetwork:
    """A `services.agent.inference.Model` that answers every request at once with one of a few
    precomputed random outputs: no inference cost."""

    def __init__(self, batch: int, num_actions: int, seed: int = 0, pool: int = 8) -> None:
        rng = np.random.default_rng(seed)
        self.answers = [Answered(VersionedOutput(
            hidden_state=rng.normal(size=(batch, HIDDEN)).astype(np.float32),
            value=rng.uniform(-1, 1, batch).astype(np.float32), reward=rng.uniform(-1, 1, batch).astype(np.float32),
            policy_logits=rng.normal(size=(batch, num_actions)).astype(np.float32))) for _ in range(pool)]
        self.calls = 0

    def predict_future(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                       timeout_s: float | None = None) -> Answered:
        self.calls += 1
        return self.answers[self.calls % len(self.answers)]


def measure(batch: int, num_actions: int, two_player: bool, search_kind: str, simulations: int,
            seconds: float, rounds: int = 3, rescale_values: bool = True) -> tuple[float, float, float]:
    """(simulations per second, game moves per second, ms per move of B games).

    The best of `rounds` rounds of about seconds / rounds each, so that other work on a shared
    machine disturbs the numbers less.
    """
    config = SearchConfig(num_simulations=simulations, search=search_kind, max_considered_actions=16,
                          rescale_values=rescale_values)
    search = BatchedSearch(batch, num_actions, (HIDDEN,), config, two_player=two_player)
    network = InstantNetwork(batch, num_actions)
    legal = np.ones((batch, num_actions), bool)
    rng = np.random.default_rng(0)
    search.run(network, None, legal, rng)                      # warm-up
    best = float("inf")                                        # seconds per move
    for _ in range(rounds):
        moves = 0
        started = time.perf_counter()
        while True:
            search.run(network, None, legal, rng)
            moves += 1
            elapsed = time.perf_counter() - started
            if elapsed >= seconds / rounds:
                break
        best = min(best, elapsed / moves)
    return batch * simulations / best, batch / best, 1e3 * best


def main(argv: list[str] | None = None) -> None:
    """Prints the table. `argv` are this module's own flags (none when run by `python -m benchmarks`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="B = 256 and 32 simulations only")
    parser.add_argument("--seconds", type=float, default=SECONDS_PER_ROW, help="measuring time per row")
    args = parser.parse_args(argv or [])
    batches = (256,) if args.quick else BATCH_SIZES
    simulations = (32,) if args.quick else SIMULATIONS
    console = Console()
    table = Table(title=f"Batched MCTS tree work (instant fake network, hidden {HIDDEN} floats)",
                  caption="A=2: cartpole-like, one player; A=7: connect4-like, two players. "
                          "moves/s counts game moves (B per search); ms/move is one search of B games.")
    for column in ("A", "search", "B", "sims", "sims/s", "moves/s", "ms/move"):
        table.add_column(column, justify="left" if column in ("A", "search") else "right")
    rows = [(game, search, batch, sims) for game in GAMES for search in SEARCHES
            for sims in simulations for batch in batches]
    with console.status("") as status:
        for i, ((name, num_actions, two_player), (label, search_kind, rescale), batch, sims) in enumerate(rows):
            status.update(f"[{i + 1}/{len(rows)}] {name} {label} B={batch} S={sims}")
            sims_per_s, moves_per_s, ms_per_move = measure(batch, num_actions, two_player, search_kind, sims,
                                                           args.seconds, rescale_values=rescale)
            table.add_row(name, label, str(batch), str(sims), f"{sims_per_s:,.0f}", f"{moves_per_s:,.1f}",
                          f"{ms_per_move:.2f}")
    console.print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
