"""Tic-tac-toe on a 3x3 board, vectorized over B games.

Player 0 moves first. Action a in [0, 9) puts the mover's piece on cell (a // 3, a % 3); only
empty cells are legal. Three in a row (3 rows, 3 columns, 2 diagonals) wins; a full board
without a line is a draw. Reward +1 for the move that wins (from the view of the player who
made it), 0 otherwise. A game has at most 9 moves, so the rules always end it (max_moves = 9,
never truncated).

Observation: float32 [B, 3, 3, 2], plane 0 the mover's pieces, plane 1 the opponent's.
"""

from __future__ import annotations

import numpy as np

from games.settings import FleetSettings, NetworkSettings, ReplaySettings, SearchSettings, TrainingSettings
from games.base import GameSpec, MuZeroSettings
from games.boards import BoardState, LineGame
from games.symmetry import Symmetries, dihedral_cells

MAX_MOVES = 9


class TicTacToe(LineGame):
    ROWS, COLS, K = 3, 3, 3
    spec = GameSpec(name="tictactoe", observation_shape=(3, 3, 2), observation_dtype="uint8",
                    num_actions=9, num_players=2, discount=1.0, max_moves=MAX_MOVES)
    # Small enough to learn on a 2-core CPU in minutes (docs/learning.md): a 32-channel, 1-block
    # resnet, 32 Gumbel simulations over all 9 actions, Monte Carlo value targets (td_steps = 9).
    # Values and rewards lie in [-1, 1], so a support of [-1, 1] is exact after h(x), and the
    # search uses Q as it is (rescale_values=False): once most positions are draws, rescaling
    # their near-equal Q values would let noise pick the move. Every sample is trained under one
    # of the board's 8 symmetries; the replay keeps about 7 minutes of self-play, so older,
    # more varied games stay in the mix; a version every 250 steps keeps export time small.
    settings = MuZeroSettings(
        network=NetworkSettings(architecture="resnet", hidden_size=32, fc_layers=(32,),
                                res_blocks=1, support_size=1),
        search=SearchSettings(num_simulations=32, search="gumbel", max_considered_actions=9,
                              rescale_values=False),
        replay=ReplaySettings(capacity=300_000, min_positions=500),
        training=TrainingSettings(num_unroll_steps=5, td_steps=MAX_MOVES, batch_size=128,
                                  learning_rate=3e-3, lr_decay_steps=5_000, weight_decay=1e-4,
                                  export_interval=250, augment_symmetries=True),
        fleet=FleetSettings(games_per_batch=128),
        discount=1.0)

    def symmetries(self) -> Symmetries:
        """The 8 rotations and reflections of the board; an action is the cell it fills."""
        cells = dihedral_cells(3)
        return Symmetries(cells=cells, actions=cells)

    def _target_cells(self, board: np.ndarray, actions: np.ndarray):
        flat = board.reshape(len(board), -1)
        return actions, flat[np.arange(len(board)), actions] == 0

    def legal_actions(self, state: BoardState) -> np.ndarray:
        return state.board.reshape(state.batch_size, -1) == 0
