"""What MuFleet's two-player board games share: input checks, mover-relative observation planes,
win-line tables and `LineGame`, the base of the k-in-a-row games (tic-tac-toe, Connect Four).

Everything is vectorized over the batch: no Python loop over games anywhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from games.base import Game, State
from games.validation import require


# --------------------------------------------------------------------------------------------
# Input checks. Bad input raises ValueError naming the field, before anything is computed.

def check_actions(actions: np.ndarray, batch_size: int, num_actions: int) -> np.ndarray:
    """`actions` as int64 [B]; ValueError unless it is int [batch_size] with values in [0, A)."""
    a = np.asarray(actions)
    require(a.shape == (batch_size,), f"actions: expected shape ({batch_size},), got {a.shape}")
    require(a.size == 0 or np.issubdtype(a.dtype, np.integer),
            f"actions: expected integers, got dtype {a.dtype}")
    bad = np.flatnonzero((a < 0) | (a >= num_actions))
    require(bad.size == 0, f"actions: must be in [0, {num_actions}), got {a[bad[:10]].tolist()} "
                           f"at game indices {bad[:10].tolist()}")
    return a.astype(np.int64)


def reject_illegal(actions: np.ndarray, legal: np.ndarray) -> None:
    """ValueError naming the games whose action is not legal (`legal`: bool [B], the action's legality)."""
    bad = np.flatnonzero(~legal)
    require(bad.size == 0, f"actions: illegal action(s) {actions[bad[:10]].tolist()} "
                           f"at game indices {bad[:10].tolist()}")


def check_board(positions: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`positions` as int8 [B, rows, cols]; ValueError unless the shape fits and cells are 0, 1 or 2."""
    p = np.asarray(positions)
    require(p.ndim == 3 and p.shape[1:] == shape,
            f"positions: expected shape [B, {shape[0]}, {shape[1]}], got {list(p.shape)}")
    require(p.size == 0 or np.issubdtype(p.dtype, np.integer),
            f"positions: expected integers, got dtype {p.dtype}")
    bad = np.flatnonzero(((p < 0) | (p > 2)).any(axis=(1, 2)))
    require(bad.size == 0, f"positions: cells must be 0 (empty), 1 or 2, bad games {bad[:10].tolist()}")
    return p.astype(np.int8)


def check_to_play(to_play: np.ndarray, batch_size: int) -> np.ndarray:
    """`to_play` as int8 [B]; ValueError unless it is [batch_size] of 0 and 1."""
    t = np.asarray(to_play)
    require(t.shape == (batch_size,), f"to_play: expected shape ({batch_size},), got {t.shape}")
    require(bool(np.isin(t, (0, 1)).all()), f"to_play: must be 0 or 1, got {np.unique(t).tolist()}")
    return t.astype(np.int8)


def to_play_from_counts(board: np.ndarray) -> np.ndarray:
    """int8 [B]: whose turn it is where player 0 moved first and players alternate (no passes)."""
    ones = (board == 1).sum(axis=(1, 2))
    twos = (board == 2).sum(axis=(1, 2))
    bad = np.flatnonzero((ones != twos) & (ones != twos + 1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"positions: player 0 must have as many pieces as player 1 or one more; "
                         f"game {i} has {int(ones[i])} and {int(twos[i])}")
    return (ones - twos).astype(np.int8)


def as_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A Generator from a seed; a Generator is used as it is (shared, not copied)."""
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------------
# Observations and outcomes.

def board_planes(board: np.ndarray, to_play: np.ndarray) -> np.ndarray:
    """float32 [B, rows, cols, 2]: plane 0 the mover's pieces, plane 1 the opponent's (0/1)."""
    own = (np.asarray(to_play, np.int8) + 1)[:, None, None]
    return np.stack([board == own, board == 3 - own], axis=-1).astype(np.float32)


def mover_board(observation: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """int8 [B, rows, cols] from mover-relative planes float [B, rows, cols, 2] (`board_planes`):
    1 the mover's pieces (plane 0), 2 the opponent's (plane 1), 0 empty. ValueError unless the
    shape fits, every value is 0 or 1 and no cell holds both."""
    o = np.asarray(observation)
    require(o.ndim == 4 and o.shape[1:] == (*shape, 2),
            f"observation: expected shape [B, {shape[0]}, {shape[1]}, 2], got {list(o.shape)}")
    bad = np.flatnonzero(((o != 0) & (o != 1)).any(axis=(1, 2, 3)))
    require(bad.size == 0, f"observation: planes must hold 0 or 1, bad games {bad[:10].tolist()}")
    both = np.flatnonzero(((o[..., 0] == 1) & (o[..., 1] == 1)).any(axis=(1, 2)))
    require(both.size == 0, f"observation: a cell holds both players' pieces in games {both[:10].tolist()}")
    return (o[..., 0] + 2 * o[..., 1]).astype(np.int8)


def truncated_at(moves: np.ndarray, max_moves: int, terminated: np.ndarray) -> np.ndarray:
    """bool [B]: the move limit ends the game where the rules did not."""
    return (moves >= max_moves) & ~terminated


# --------------------------------------------------------------------------------------------
# Lines of k cells.

def line_windows(rows: int, cols: int, k: int) -> np.ndarray:
    """int [N, k]: flat cell indices (row * cols + col) of every line of k cells on the board:
    horizontal, vertical, down-right diagonal, down-left diagonal, in that order."""
    windows = []
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        for r in range(rows):
            for c in range(cols):
                cells = [(r + i * dr, c + i * dc) for i in range(k)]
                if all(0 <= rr < rows and 0 <= cc < cols for rr, cc in cells):
                    windows.append([rr * cols + cc for rr, cc in cells])
    return np.array(windows, dtype=np.int64)


def windows_through_cells(windows: np.ndarray, num_cells: int) -> np.ndarray:
    """int [num_cells, M, k]: for every cell the windows that contain it, padded with windows of
    the sentinel index `num_cells` (a cell that is always empty, so never part of a win)."""
    per_cell = [windows[(windows == cell).any(axis=1)] for cell in range(num_cells)]
    most = max(len(w) for w in per_cell)
    k = windows.shape[1]
    table = np.full((num_cells, most, k), num_cells, dtype=np.int64)
    for cell, w in enumerate(per_cell):
        table[cell, :len(w)] = w
    return table


# --------------------------------------------------------------------------------------------
# k-in-a-row games.

@dataclasses.dataclass(frozen=True)
class BoardState(State):
    """B games of a two-player board game."""

    board: np.ndarray  # int8 [B, rows, cols]: 0 empty, 1 player 0's piece, 2 player 1's
    to_play: np.ndarray  # int8 [B]: the player to move
    moves: np.ndarray  # int32 [B]: moves played (pieces placed)
    rng: np.random.Generator


class LineGame(Game):
    """A two-player game where players alternate placing pieces and k in a row wins; a full
    board without a line is a draw. Subclasses set ROWS, COLS, K and say where an action puts a
    piece (`_target_cells`) and which actions are legal."""

    ROWS: int
    COLS: int
    K: int
    # Only the last move of a game is rewarded: +1 when it makes a line (a move cannot lose for
    # its player). With discount <= 1 the value of any position, from the view of the player to
    # move, is that one reward with a sign: in [-1, 1].
    reward_range = (0.0, 1.0)
    value_range = (-1.0, 1.0)
    rewarded_moves = 1

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._windows_by_cell = windows_through_cells(line_windows(cls.ROWS, cls.COLS, cls.K),
                                                     cls.ROWS * cls.COLS)

    def _target_cells(self, board: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flat cell int [B] where each action puts its piece, bool [B] whether the action is legal)."""
        raise NotImplementedError

    def _check_positions(self, board: np.ndarray) -> None:
        """Extra checks of a position (e.g. Connect Four's gravity)."""

    def reset(self, n: int, seed: int | np.random.Generator | None = None) -> BoardState:
        require(n >= 0, f"n must be >= 0, got {n}")
        return BoardState(board=np.zeros((n, self.ROWS, self.COLS), np.int8),
                          to_play=np.zeros(n, np.int8), moves=np.zeros(n, np.int32), rng=as_rng(seed))

    def step(self, state: BoardState, actions: np.ndarray):
        b = state.batch_size
        actions = check_actions(actions, b, self.spec.num_actions)
        cells, legal = self._target_cells(state.board, actions)
        reject_illegal(actions, legal)
        rows = np.arange(b)
        piece = (state.to_play + 1).astype(np.int8)
        flat = state.board.reshape(b, -1)
        board = np.concatenate([flat, np.zeros((b, 1), np.int8)], axis=1)  # + the sentinel cell
        board[rows, cells] = piece
        lines = board[rows[:, None, None], self._windows_by_cell[cells]]  # [B, M, K]
        hit = lines == piece[:, None, None]
        line = hit[:, :, 0]
        for i in range(1, self.K):  # all(axis=2), but faster on short lines
            line = line & hit[:, :, i]
        won = line.any(axis=1)
        moves = state.moves + 1
        full = ~(board[:, :-1] == 0).any(axis=1)
        terminated = won | full
        reward = won.astype(np.float32)  # a move can only win for the mover
        new = dataclasses.replace(state, board=board[:, :-1].reshape(state.board.shape),
                                  to_play=(1 - state.to_play).astype(np.int8), moves=moves)
        return new, reward, terminated, truncated_at(moves, self.spec.max_moves, terminated)

    def observation(self, state: BoardState) -> np.ndarray:
        return board_planes(state.board, state.to_play)

    def to_play(self, state: BoardState) -> np.ndarray:
        return state.to_play.astype(np.int32)

    def positions(self, state: BoardState) -> np.ndarray:
        return state.board.copy()

    def state_from_positions(self, positions: np.ndarray, to_play: np.ndarray | None = None,
                             seed: int | np.random.Generator | None = None) -> BoardState:
        board = check_board(positions, (self.ROWS, self.COLS))
        self._check_positions(board)
        if to_play is None:
            to_play = to_play_from_counts(board)
        to_play = check_to_play(to_play, len(board))
        moves = (board != 0).sum(axis=(1, 2)).astype(np.int32)
        return BoardState(board=board, to_play=to_play, moves=moves, rng=as_rng(seed))

    def state_from_observation(self, observation: np.ndarray,
                               seed: int | np.random.Generator | None = None) -> BoardState:
        """The games of `observation` (mover-relative planes) with the mover as player 0, to play.

        The rules do not depend on who is player 0, so the legal moves, the rewards and the
        ends are the real games'. `moves` (the pieces on the board) is exact too, so the move
        limit falls where it does in the real game. Only `to_play` (0 here) and which piece
        value is whose differ, and neither shows in the observation.
        """
        board = mover_board(observation, (self.ROWS, self.COLS))
        return self.state_from_positions(board, to_play=np.zeros(len(board), np.int8), seed=seed)
