"""The ladder opponents' speed: the rollout-MCTS opponent's moves per second for B Connect Four
and Othello games at once, and the time per move of the Connect Four alpha-beta player by depth.

  * MCTS: one search of B = 50 Connect Four games from the opening (B moves), at 100 and 1,000
    simulations, and of B = 20 Othello games at 100, each with the game's own playouts that the
    opponent uses (services/agent/playouts.py) and with the generic `game.step` ones (the same
    search, bit for bit: what the own playouts buy);
  * alpha-beta: one move of one game from the opening and from a 12-stone midgame (two random
    moves, then depth-3 play, seed 5), at depths 1, 2, ... until a move takes over a second.

    python -m benchmarks opponents
"""

from __future__ import annotations

import os
import time

import numpy as np
from rich.console import Console
from rich.table import Table

import games
from services.agent.alphabeta import AlphaBetaSearch, connect4_alphabeta_opponent, from_observation
from services.agent.rollout_mcts import RolloutMCTS

MCTS_GAMES = 50
MCTS_SIMULATIONS = (100, 1000)
OTHELLO_GAMES, OTHELLO_SIMULATIONS = 20, 100  # Othello's playouts are about 60 moves long
ALPHABETA_LIMIT_S = 1.0


def midgame():
    """The 12-stone Connect Four midgame of the alpha-beta rows (one game)."""
    game = games.make("connect4")
    rng = np.random.default_rng(5)
    state = game.reset(1)
    for i in range(12):
        if i < 2:
            actions = np.argmax(game.legal_actions(state) * rng.random((1, 7)), axis=1)
        else:
            actions = connect4_alphabeta_opponent(3)(game.observation(state), game.legal_actions(state), rng)
        state, *_ = game.step(state, actions)
    return state


def mcts_rows(name: str, simulations: tuple[int, ...], games_: int) -> Table:
    """One search of `games_` games of `name` from the opening per row, with the game's own
    playouts and with the generic ones (the same search, bit for bit)."""
    game = games.make(name)
    start = game.reset(games_)
    table = Table(title=f"rollout MCTS, B = {games_} {name} games ({os.cpu_count()} cores)")
    for column in ("playouts", "simulations", "s per search", "moves/s"):
        table.add_column(column, justify="left" if column == "playouts" else "right")
    for fast in (True, False):
        for count in simulations:
            search = RolloutMCTS(name, count, fast_playouts=fast)
            started = time.perf_counter()
            search.search(game.observation(start), game.legal_actions(start),
                          np.arange(games_, dtype=np.uint64))
            elapsed = time.perf_counter() - started
            table.add_row("own (playouts.py)" if fast else "generic step", str(count), f"{elapsed:.2f}",
                          f"{games_ / elapsed:.1f}")
    return table


def main() -> None:
    console = Console()
    console.print(mcts_rows("connect4", MCTS_SIMULATIONS, MCTS_GAMES))
    console.print(mcts_rows("othello", (OTHELLO_SIMULATIONS,), OTHELLO_GAMES))
    game = games.make("connect4")

    table = Table(title="Connect Four alpha-beta, one move of one game")
    for column in ("position", "depth", "s per move", "nodes", "nodes/s"):
        table.add_column(column, justify="left" if column == "position" else "right")
    for name, state in (("opening", game.reset(1)), ("midgame", midgame())):
        position = from_observation(game.observation(state)[0])
        for depth in range(1, 43):
            search = AlphaBetaSearch()
            started = time.perf_counter()
            search.best_columns(*position, depth)
            elapsed = time.perf_counter() - started
            table.add_row(name, str(depth), f"{elapsed:.3f}", f"{search.nodes:,}",
                          f"{search.nodes / max(elapsed, 1e-9):,.0f}")
            if elapsed > ALPHABETA_LIMIT_S:
                break
    console.print(table)


if __name__ == "__main__":
    main()
