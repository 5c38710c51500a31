"""Audits tic-tac-toe model versions exactly: every line of a perfect opponent, as X and as O
(services/evaluator/audit.py), with the model playing as the evaluator plays it (its greedy
search, the game's simulations, the SavedModel called in this process).

    python -m benchmarks.audit --models RUN/models/muzero --versions 9000 9250
    python -m benchmarks.audit --models RUN/models/muzero          # every version there
    python -m benchmarks.audit --models RUN/models/muzero --from-version 11000 --jsonl audit.jsonl

A run of `python -m benchmarks.learn --keep-versions` keeps every version for this.

A version with no mistake cannot lose (or miss a win) against the minimax player in any game;
each mistake is printed with its position (mover's view: 1 the mover, 2 the opponent). The last
line counts the versions with a mistake; `--jsonl` writes one line per version with all of its
mistakes (side, board as 9 cells, the move played, the optimal moves).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import games
from models.export import list_versions, load_version
from services.agent.local_network import LocalNetwork
from services.agent.pipeline import PipelinedSearch
from services.agent.search import SearchConfig
from services.evaluator.audit import Audit, audit_tictactoe


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


def audit_record(version: int, simulations: int | None, audit: Audit) -> dict:
    """One version's audit as a JSON line: its mistakes per side and each one's position
    (9 cells, mover's view), the move played and the optimal moves."""
    sides = [m.side for m in audit.mistakes]
    return {"version": version, "simulations": simulations, "positions": dict(audit.positions),
            "mistakes_as_x": sides.count("X"), "mistakes_as_o": sides.count("O"),
            "mistakes": [{"side": m.side, "board": m.board.reshape(-1).tolist(), "played": int(m.played),
                          "optimal": [int(a) for a in m.optimal]} for m in audit.mistakes]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="a tic-tac-toe run's model base path")
    parser.add_argument("--versions", type=int, nargs="*", default=None, help="default: every version there")
    parser.add_argument("--from-version", type=int, default=0, help="only the versions from this one on")
    parser.add_argument("--simulations", type=int, default=None, help="default: the game's")
    parser.add_argument("--jsonl", type=Path, default=None, help="also write one JSON line per version here")
    args = parser.parse_args(argv)
    if args.simulations is not None and args.simulations < 1:
        parser.error(f"--simulations must be >= 1, got {args.simulations}")
    versions = [v for v in (args.versions or list_versions(args.models)) if v >= args.from_version]
    if not versions:
        parser.error(f"no version >= {args.from_version} in {args.models}")
    table = Table(title=f"tic-tac-toe audit against every minimax line: {args.models}")
    for column in ("version", "positions as X / O", "mistakes as X", "mistakes as O", "first mistakes"):
        table.add_column(column, justify="left" if column == "first mistakes" else "right")
    out = args.jsonl.open("w") if args.jsonl else None
    flawed = 0
    try:
        for version in versions:
            audit = audit_tictactoe(greedy_player(args.models, version, args.simulations))
            record = audit_record(version, args.simulations, audit)
            flawed += bool(audit.mistakes)
            if out:
                out.write(json.dumps(record) + "\n")
                out.flush()
            shown = "; ".join(f"{m.side} {m.board.reshape(-1).tolist()} played {m.played}, optimal {list(m.optimal)}"
                              for m in audit.mistakes[:2])
            table.add_row(str(version), f"{audit.positions['X']} / {audit.positions['O']}",
                          str(record["mistakes_as_x"]), str(record["mistakes_as_o"]), shown)
    finally:
        if out:
            out.close()
    console = Console()
    console.print(table)
    console.print(f"{flawed} of {len(versions)} versions (v{versions[0]}-v{versions[-1]}) made a mistake")


if __name__ == "__main__":
    main()
