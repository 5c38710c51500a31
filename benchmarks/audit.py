"""Audits tic-tac-toe model versions exactly: every line of a perfect opponent, as X and as O
(services/evaluator/audit.py), with the model playing as the evaluator plays it (its greedy
search, the game's simulations, the SavedModel called in this process).

    python -m benchmarks.audit --models RUN/models/muzero --versions 9000 9250
    python -m benchmarks.audit --models RUN/models/muzero          # every version there

A version with no mistake cannot lose (or miss a win) against the minimax player in any game;
each mistake is printed with its position (mover's view: 1 the mover, 2 the opponent).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import games
from models.export import list_versions, load_version
from services.agent.local_network import LocalNetwork
from services.agent.pipeline import PipelinedSearch
from services.agent.search import SearchConfig
from services.evaluator.audit import audit_tictactoe


def greedy_player(models: Path, version: int, simulations: int | None = None):
    """The model's greedy search (evaluation mode) as an audit player."""
    game = games.make("tictactoe")
    settings = game.settings if simulations is None else game.settings.replace(num_simulations=simulations)
    network = LocalNetwork(load_version(models, version))
    config = SearchConfig.from_settings(settings)

    def player(observation: np.ndarray, legal: np.ndarray) -> np.ndarray:
        search = PipelinedSearch(network, config, len(observation), game.spec.num_actions, groups=1,
                                 two_player=True)
        result = search.search(observation, legal, np.random.default_rng(0), training=False, temperature=0.0)
        return np.asarray(result.greedy_actions)

    return player


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="a tic-tac-toe run's model base path")
    parser.add_argument("--versions", type=int, nargs="*", default=None, help="default: every version there")
    parser.add_argument("--simulations", type=int, default=None, help="default: the game's")
    args = parser.parse_args(argv)
    versions = args.versions or list_versions(args.models)
    table = Table(title=f"tic-tac-toe audit against every minimax line: {args.models}")
    for column in ("version", "positions as X / O", "mistakes as X", "mistakes as O", "first mistakes"):
        table.add_column(column, justify="left" if column == "first mistakes" else "right")
    for version in versions:
        audit = audit_tictactoe(greedy_player(args.models, version, args.simulations))
        sides = [m.side for m in audit.mistakes]
        shown = "; ".join(f"{m.side} {m.board.reshape(-1).tolist()} played {m.played}, optimal {list(m.optimal)}"
                          for m in audit.mistakes[:2])
        table.add_row(str(version), f"{audit.positions['X']} / {audit.positions['O']}", str(sides.count("X")),
                      str(sides.count("O")), shown)
    Console().print(table)


if __name__ == "__main__":
    main()
