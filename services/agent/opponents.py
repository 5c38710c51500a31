"""Opponents for evaluating two-player agents, the rungs of an Elo ladder: a random player, an
exact tic-tac-toe solver, UCT searches with random playouts (any board game) and a Connect Four
alpha-beta player.

An opponent maps (observation [B, *obs], legal bool [B, A], rng) to actions int32 [B], seeing
the position from the view of the player to move, as the agent does. The searching ones rebuild
the game from the observation (`Game.state_from_observation`).
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from services.agent.alphabeta import connect4_alphabeta_opponent
from services.agent.rollout_mcts import BOARD_GAMES, mcts_rollout_opponent

Opponent = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def random_opponent(observation: np.ndarray, legal_actions: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """A uniformly random legal action per game."""
    scores = rng.random(legal_actions.shape) * legal_actions
    return np.argmax(scores, axis=1).astype(np.int32)


_LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]


@functools.lru_cache(maxsize=None)
def _negamax(board: tuple[int, ...]) -> int:
    """Value (+1 win, 0 draw, -1 loss) for the player to move; board cells 0 empty, 1 the
    player to move, 2 the opponent."""
    for a, b, c in _LINES:
        if board[a] == board[b] == board[c] == 2:
            return -1  # the opponent's last move won
    empty = [i for i, v in enumerate(board) if v == 0]
    if not empty:
        return 0
    swapped = tuple((0, 2, 1)[v] for v in board)  # the next player's view
    return max(-_negamax(swapped[:i] + (2,) + swapped[i + 1:]) for i in empty)


@functools.lru_cache(maxsize=1)
def optimal_tictactoe_moves() -> np.ndarray:
    """bool [3^9, 9]: for every board (base-3 code, cells 0 empty / 1 mover / 2 opponent) the
    moves that keep the best game-theoretic value for the player to move."""
    table = np.zeros((3 ** 9, 9), bool)
    for code in range(3 ** 9):
        board = tuple((code // 3 ** i) % 3 for i in range(9))
        empty = [i for i, v in enumerate(board) if v == 0]
        if not empty or any(board[a] == board[b] == board[c] != 0 for a, b, c in _LINES):
            continue
        swapped = tuple((0, 2, 1)[v] for v in board)
        values = {i: -_negamax(swapped[:i] + (2,) + swapped[i + 1:]) for i in empty}
        best = max(values.values())
        for i, value in values.items():
            table[code, i] = value == best
    return table


def tictactoe_minimax(observation: np.ndarray, legal_actions: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """An exact (perfect) tic-tac-toe player: a game-theoretically optimal move, ties broken at
    random so repeated games differ. observation float32 [B, 3, 3, 2] (mover's pieces, then the
    opponent's) -> int32 [B]."""
    cells = observation.reshape(len(observation), 9, 2)
    board = (cells[:, :, 0] + 2 * cells[:, :, 1]).astype(np.int64)  # 1 mover, 2 opponent
    codes = board @ (3 ** np.arange(9))
    optimal = optimal_tictactoe_moves()[codes] & legal_actions
    scores = rng.random(optimal.shape) * optimal
    return np.argmax(scores, axis=1).astype(np.int32)


# The "alphabeta" opponent's search depth in plies. A Connect Four move takes it about 0.1 s
# (opening and midgame) here, so an evaluation of a few hundred games stays in minutes; depth
# 10 is the deepest that stayed under a second per move from the opening (alphabeta.py).
ALPHABETA_DEPTH = 7

OPPONENTS: dict[str, Opponent] = {
    "random": random_opponent,
    "minimax": tictactoe_minimax,
    # UCT with random playouts; each picks its game from the observation's shape.
    "mcts100": mcts_rollout_opponent(None, 100),
    "mcts1000": mcts_rollout_opponent(None, 1000),
    "alphabeta": connect4_alphabeta_opponent(ALPHABETA_DEPTH),
}
# The games each opponent can play (None: any two-player game): minimax reads tic-tac-toe
# boards, the searches rebuild board games from their observations, alpha-beta Connect Four's.
OPPONENT_GAMES: dict[str, tuple[str, ...] | None] = {
    "random": None,
    "minimax": ("tictactoe",),
    "mcts100": tuple(BOARD_GAMES.values()),
    "mcts1000": tuple(BOARD_GAMES.values()),
    "alphabeta": ("connect4",),
}
