"""An exact check of a tic-tac-toe player against every line of a perfect opponent.

200 games against the minimax player (the evaluator's match) sample the lines it picks among
equally good moves; a flaw on a line it picks one game in 50 shows up as 0 to 4 losses. This
walks all of them instead: from the empty board, with the player under test as X and then as
O, the opponent plays every move that keeps its game-theoretic value (every move minimax may
pick) and the player its own move; every position the player meets is checked against the
optimal-move table. The player loses some game against minimax exactly when this finds a move
that gives up its position's value (a drawn position into a lost one, or a won one into a
draw).

    mistakes = audit_tictactoe(player)     # player(observation [B, 3, 3, 2], legal [B, 9]) -> [B]
    python -m benchmarks.audit --models DIR --versions 9000 9250

The player must be deterministic (a greedy search is: its noise is off in evaluation).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

import games
from services.agent.opponents import optimal_tictactoe_moves

Player = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Mistake:
    """A move that gives up value.

    Attributes:
      side: "X" (the first player) or "O".
      board: int [3, 3], the position from the mover's view: 1 the mover's stones, 2 the
        opponent's, 0 empty (row 0 the top).
      played: the cell the player chose.
      optimal: the cells that keep the position's value.
    """

    side: str
    board: np.ndarray
    played: int
    optimal: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Audit:
    """What `audit_tictactoe` found: the distinct positions the player moved in per side, and
    its mistakes (empty: no minimax line beats or out-draws it)."""

    positions: dict[str, int]
    mistakes: list[Mistake]


def _codes(observation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(base-3 codes int [B] of the optimal-move table, boards int [B, 9]: 1 mover, 2 opponent)."""
    cells = observation.reshape(len(observation), 9, 2)
    board = (cells[:, :, 0] + 2 * cells[:, :, 1]).astype(np.int64)
    return board @ (3 ** np.arange(9)), board


def audit_tictactoe(player: Player) -> Audit:
    """Plays `player` against every optimal line of the opponent, as X and as O (module
    docstring); positions are merged where lines meet, so each is searched once."""
    game = games.make("tictactoe")
    table = optimal_tictactoe_moves()
    positions: dict[str, int] = {}
    mistakes: list[Mistake] = []
    for side, player_moves_first in (("X", True), ("O", False)):
        frontier = game.reset(1)
        players_turn = player_moves_first
        seen = 0
        while frontier.batch_size:
            observation, legal = game.observation(frontier), game.legal_actions(frontier)
            codes, boards = _codes(observation)
            if players_turn:
                actions = np.asarray(player(observation, legal), np.int64)
                seen += len(actions)
                for i in np.flatnonzero(~table[codes, actions]):
                    mistakes.append(Mistake(side=side, board=boards[i].reshape(3, 3), played=int(actions[i]),
                                            optimal=tuple(np.flatnonzero(table[codes[i]]).tolist())))
                rows = np.arange(frontier.batch_size)
            else:  # every move minimax may pick
                rows, actions = np.nonzero(table[codes] & legal)
            state, _, terminated, truncated = game.step(frontier.take(rows), actions)
            state = state.take(np.flatnonzero(~(terminated | truncated)))
            # Lines that meet in one position go on as one.
            _, first = np.unique(_codes(game.observation(state))[0], return_index=True)
            frontier = state.take(np.sort(first))
            players_turn = not players_turn
        positions[side] = seen
    return Audit(positions=positions, mistakes=mistakes)
