"""Othello (Reversi) on an 8x8 board, vectorized over B games with 64-bit bitboards.

Standard start: player 0 (black) has d5 and e4, player 1 (white) d4 and e5; in `positions`
(row 0 at the top) that is [3, 4] = [4, 3] = 1 and [3, 3] = [4, 4] = 2. Player 0 moves first.

Actions: a in [0, 64) places a disc on cell (a // 8, a % 8); it is legal when the cell is empty
and the disc brackets, in at least one of the 8 directions, a contiguous line of opponent discs
ending in one of the mover's discs; every such line is flipped. Action 64 is pass, legal only
when the mover has no other legal move.

End: the game ends (terminated) right after the move that leaves neither player a legal move
(board full, one colour wiped out, or blocked). So pass is only ever played when the opponent
does have a move, two passes in a row never happen, and no extra state is needed. The winner
has more discs; the reward of the ending move is +1 if its player has more discs than the
opponent, -1 if fewer, 0 for a draw, and 0 for every other move (view of the player who moved).

A game has at most 60 placements, each preceded by at most one pass, so max_moves = 120 is
never reached before the rules end the game. `state_from_positions` counts pieces - 4 moves.

Observation: float32 [B, 8, 8, 2], plane 0 the mover's discs, plane 1 the opponent's.

Bitboards: bit r * 8 + c of a uint64 is cell (r, c); `discs[:, p]` holds player p's discs.
Legal moves and flips are ray casts along the 8 directions, 6 steps each (the longest line of
opponent discs a move can bracket), all with whole-batch uint64 shifts and masks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from games.settings import FleetSettings, NetworkSettings, ReplaySettings, SearchSettings, TrainingSettings
from games.base import Game, GameSpec, MuZeroSettings, State
from games.validation import require
from games.boards import (as_rng, check_actions, check_board, check_to_play, mover_board,
                          reject_illegal, truncated_at)
from games.symmetry import Symmetries, dihedral_cells

SIZE = 8
PASS = SIZE * SIZE
NUM_ACTIONS = PASS + 1
MAX_MOVES = 120

_U64 = np.uint64
_COL = [_U64(sum(1 << (r * SIZE + c) for r in range(SIZE))) for c in range(SIZE)]
_NOT_COL0 = ~_COL[0]
_NOT_COL7 = ~_COL[SIZE - 1]
_DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
# Per direction: (shift, left?, mask applied after the shift to drop discs that wrapped a row).
_SHIFTS = tuple((_U64(abs(dr * SIZE + dc)), dr * SIZE + dc > 0,
                 _NOT_COL0 if dc == 1 else _NOT_COL7 if dc == -1 else ~_U64(0))
                for dr, dc in _DIRECTIONS)


# The 8 directions in two groups of four, those whose cell offset is a left shift (positive)
# and those whose is a right shift, each as (shift amounts uint64 [4], masks uint64 [4]): the
# rays of all four directions of a group are cast together on [B, 4] arrays, so a cast costs
# the same few NumPy calls whatever the batch.
def _group(left: bool):
    chosen = [(abs(dr * SIZE + dc), mask) for (dr, dc), (_, is_left, mask) in zip(_DIRECTIONS, _SHIFTS)
              if is_left == left]
    return (np.left_shift if left else np.right_shift,
            np.array([amount for amount, _ in chosen], np.uint64), np.array([m for _, m in chosen], np.uint64))


_GROUPS = (_group(True), _group(False))


def legal_moves(mover: np.ndarray, opponent: np.ndarray) -> np.ndarray:
    """uint64 [B]: the cells where `mover` can place a disc."""
    legal = np.zeros_like(mover)
    for shift, amounts, masks in _GROUPS:
        # Opponent discs a ray may pass, per direction (a disc that wrapped a row is dropped).
        passable = masks & opponent[:, None]  # [B, 4]
        run = shift(mover[:, None], amounts) & passable
        for _ in range(5):
            run |= shift(run, amounts) & passable
        legal |= np.bitwise_or.reduce(shift(run, amounts) & masks, axis=1)
    return legal & ~(mover | opponent)


def flips(mover: np.ndarray, opponent: np.ndarray, move: np.ndarray) -> np.ndarray:
    """uint64 [B]: the opponent discs that placing `move` (one bit, or 0 for none) flips."""
    flipped = np.zeros_like(mover)
    zero = _U64(0)
    for shift, amounts, masks in _GROUPS:
        passable = masks & opponent[:, None]  # [B, 4]
        run = shift(move[:, None], amounts) & passable
        for _ in range(5):
            run |= shift(run, amounts) & passable
        bracketed = (shift(run, amounts) & masks & mover[:, None]) != zero
        flipped |= np.bitwise_or.reduce(np.where(bracketed, run, zero), axis=1)
    return flipped


def legal_action_mask(legal: np.ndarray) -> np.ndarray:
    """bool [B, 65] of `Othello.legal_actions` from the legal cells uint64 [B] (`legal_moves`):
    the cells, then pass where there is none."""
    return np.concatenate([unpack(legal), (legal == _U64(0))[:, None]], axis=1)


def action_bits(actions: np.ndarray) -> np.ndarray:
    """uint64 [B]: the cell bit each action places (int [B] in [0, 65)), 0 for a pass."""
    return np.where(actions == PASS, _U64(0), _U64(1) << np.minimum(actions, PASS - 1).astype(np.uint64))


def unpack(bits: np.ndarray) -> np.ndarray:
    """bool [B, 64] from uint64 [B] (cell i = bit i)."""
    as_bytes = np.ascontiguousarray(bits, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return np.unpackbits(as_bytes, axis=1, bitorder="little").astype(bool)


def pack(cells: np.ndarray) -> np.ndarray:
    """uint64 [B] from bool [B, 64]."""
    as_bytes = np.packbits(cells.reshape(-1, SIZE * SIZE), axis=1, bitorder="little")
    return np.ascontiguousarray(as_bytes).view("<u8").reshape(-1).astype(np.uint64)


@dataclasses.dataclass(frozen=True)
class OthelloState(State):
    discs: np.ndarray  # uint64 [B, 2]: discs[:, p] = player p's bitboard
    to_play: np.ndarray  # int8 [B]
    moves: np.ndarray  # int32 [B]: moves played, passes included
    rng: np.random.Generator


class Othello(Game):
    spec = GameSpec(name="othello", observation_shape=(SIZE, SIZE, 2), observation_dtype="uint8",
                    num_actions=NUM_ACTIONS, num_players=2, discount=1.0, max_moves=MAX_MOVES)
    # Only the ending move is rewarded, +1, 0 or -1 for its player (it may lose), so the value
    # of any position, from the view of the player to move, lies in [-1, 1] (discount 1).
    reward_range = (-1.0, 1.0)
    value_range = (-1.0, 1.0)
    rewarded_moves = 1
    settings = MuZeroSettings(
        network=NetworkSettings(architecture="resnet", hidden_size=64, fc_layers=(64,),
                                res_blocks=2, support_size=1),
        search=SearchSettings(num_simulations=32, search="gumbel", max_considered_actions=16),
        replay=ReplaySettings(capacity=300_000, min_positions=10_000),
        training=TrainingSettings(num_unroll_steps=5, td_steps=MAX_MOVES, batch_size=256,
                                  learning_rate=3e-3, lr_decay_steps=30_000, weight_decay=1e-4,
                                  export_interval=100),
        fleet=FleetSettings(games_per_batch=256),
        discount=1.0)

    def symmetries(self) -> Symmetries:
        """The 4 maps of the 8 board symmetries that keep the standard start: the identity, the
        half turn and the two diagonal reflections (the others swap the colours of the centre).
        Pass stays pass."""
        cells = dihedral_cells(SIZE)[[0, 2, 6, 7]]
        passes = np.full((len(cells), 1), PASS)
        return Symmetries(cells=cells, actions=np.concatenate([cells, passes], axis=1))

    def reset(self, n: int, seed: int | np.random.Generator | None = None) -> OthelloState:
        require(n >= 0, f"n must be >= 0, got {n}")
        black = _U64((1 << (3 * SIZE + 4)) | (1 << (4 * SIZE + 3)))
        white = _U64((1 << (3 * SIZE + 3)) | (1 << (4 * SIZE + 4)))
        discs = np.tile(np.array([black, white], np.uint64), (n, 1))
        return OthelloState(discs=discs, to_play=np.zeros(n, np.int8), moves=np.zeros(n, np.int32),
                            rng=as_rng(seed))

    def _sides(self, state: OthelloState) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(state.batch_size)
        player = state.to_play.astype(np.int64)
        return state.discs[rows, player], state.discs[rows, 1 - player]

    def step(self, state: OthelloState, actions: np.ndarray):
        b = state.batch_size
        actions = check_actions(actions, b, NUM_ACTIONS)
        mover, opponent = self._sides(state)
        legal = legal_moves(mover, opponent)
        move = action_bits(actions)
        zero = _U64(0)
        reject_illegal(actions, np.where(actions == PASS, legal == zero, (legal & move) != zero))

        flipped = flips(mover, opponent, move)
        mover = mover | move | flipped
        opponent = opponent & ~flipped
        # The game ends when neither side can move; the next player passes when only they can't.
        ended = (legal_moves(opponent, mover) == zero) & (legal_moves(mover, opponent) == zero)
        margin = np.bitwise_count(mover).astype(np.int64) - np.bitwise_count(opponent).astype(np.int64)
        reward = np.where(ended, np.sign(margin), 0).astype(np.float32)

        rows = np.arange(b)
        player = state.to_play.astype(np.int64)
        discs = np.empty_like(state.discs)
        discs[rows, player] = mover
        discs[rows, 1 - player] = opponent
        moves = state.moves + 1
        new = dataclasses.replace(state, discs=discs, to_play=(1 - state.to_play).astype(np.int8), moves=moves)
        return new, reward, ended, truncated_at(moves, MAX_MOVES, ended)

    def observation(self, state: OthelloState) -> np.ndarray:
        mover, opponent = self._sides(state)
        planes = np.stack([unpack(mover), unpack(opponent)], axis=-1)  # [B, 64, 2]
        return planes.reshape(-1, SIZE, SIZE, 2).astype(np.float32)

    def legal_actions(self, state: OthelloState) -> np.ndarray:
        return legal_action_mask(legal_moves(*self._sides(state)))

    def to_play(self, state: OthelloState) -> np.ndarray:
        return state.to_play.astype(np.int32)

    def positions(self, state: OthelloState) -> np.ndarray:
        board = unpack(state.discs[:, 0]).astype(np.int8) + 2 * unpack(state.discs[:, 1]).astype(np.int8)
        return board.reshape(-1, SIZE, SIZE)

    def state_from_positions(self, positions: np.ndarray, to_play: np.ndarray | None = None,
                             seed: int | np.random.Generator | None = None) -> OthelloState:
        """`to_play` defaults to the parity of (discs - 4): right for games without passes."""
        board = check_board(positions, (SIZE, SIZE))
        count = (board != 0).sum(axis=(1, 2))
        if to_play is None:
            to_play = (count - 4) % 2
        to_play = check_to_play(to_play, len(board))
        flat = board.reshape(len(board), -1)
        discs = np.stack([pack(flat == 1), pack(flat == 2)], axis=1)
        return OthelloState(discs=discs, to_play=to_play, moves=np.maximum(count - 4, 0).astype(np.int32),
                            rng=as_rng(seed))

    def state_from_observation(self, observation: np.ndarray,
                               seed: int | np.random.Generator | None = None) -> OthelloState:
        """The games of `observation` (mover-relative planes) with the mover as player 0 (black
        here, whatever their real colour), to play.

        The rules are colour-blind, so the legal moves (pass included), flips, rewards and ends
        are the real games'. `moves` is discs - 4, which misses the passes played so far; it
        only matters for the move limit (120), which no game reaches (each of the at most 60
        placements is preceded by at most one pass), so no outcome differs.
        """
        board = mover_board(observation, (SIZE, SIZE))
        return self.state_from_positions(board, to_play=np.zeros(len(board), np.int8), seed=seed)
