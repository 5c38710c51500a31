"""Connect Four on a 6x7 board, vectorized over B games.

Player 0 moves first. Action c in [0, 7) drops the mover's piece into column c, where it falls
to the lowest empty cell; row 0 of `positions` is the TOP row, so pieces fill a column from row
5 upwards. A full column is illegal. Four in a row horizontally, vertically or on either
diagonal wins (the 69 lines are a precomputed table; a move checks only the lines through the
cell it filled); a full board without a line is a draw. Reward +1 for the winning move (from
the view of the player who made it), 0 otherwise. A game has at most 42 moves, so the rules
always end it (max_moves = 42, never truncated).

Observation: float32 [B, 6, 7, 2], plane 0 the mover's pieces, plane 1 the opponent's.
"""

from __future__ import annotations

import numpy as np

from games.settings import FleetSettings, NetworkSettings, ReplaySettings, SearchSettings, TrainingSettings
from games.base import GameSpec, MuZeroSettings
from games.validation import require
from games.boards import BoardState, LineGame
from games.symmetry import Symmetries, mirror_columns_cells

ROWS, COLS = 6, 7
MAX_MOVES = ROWS * COLS


class ConnectFour(LineGame):
    ROWS, COLS, K = ROWS, COLS, 4
    spec = GameSpec(name="connect4", observation_shape=(ROWS, COLS, 2), observation_dtype="uint8",
                    num_actions=COLS, num_players=2, discount=1.0, max_moves=MAX_MOVES)
    settings = MuZeroSettings(
        network=NetworkSettings(architecture="resnet", hidden_size=64, fc_layers=(64,),
                                res_blocks=2, support_size=1),
        search=SearchSettings(num_simulations=32, search="gumbel", max_considered_actions=COLS),
        replay=ReplaySettings(capacity=200_000, min_positions=5_000),
        training=TrainingSettings(num_unroll_steps=5, td_steps=MAX_MOVES, batch_size=256,
                                  learning_rate=3e-3, lr_decay_steps=20_000, weight_decay=1e-4,
                                  export_interval=100),
        fleet=FleetSettings(games_per_batch=256),
        discount=1.0)

    def symmetries(self) -> Symmetries:
        """The left-right mirror (gravity rules out the others); it mirrors the columns too."""
        columns = np.arange(COLS)
        return Symmetries(cells=mirror_columns_cells(ROWS, COLS), actions=np.stack([columns, columns[::-1]]))

    def _target_cells(self, board: np.ndarray, actions: np.ndarray):
        b = len(board)
        empty_in_column = (board[np.arange(b), :, actions] == 0).sum(axis=1)  # [B]
        row = empty_in_column - 1  # the lowest empty cell: empty cells sit on top of a column
        return np.maximum(row, 0) * COLS + actions, empty_in_column > 0

    def _check_positions(self, board: np.ndarray) -> None:
        floating = ((board[:, :-1] != 0) & (board[:, 1:] == 0)).any(axis=(1, 2))
        bad = np.flatnonzero(floating)
        require(bad.size == 0, f"positions: pieces must rest on the bottom row (5) or on another piece; "
                               f"floating pieces in games {bad[:10].tolist()}")

    def legal_actions(self, state: BoardState) -> np.ndarray:
        return state.board[:, 0, :] == 0
