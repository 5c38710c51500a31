"""Uniformly random playouts for the rollout-MCTS opponent (services/agent/rollout_mcts.py):
k games played to their ends at once, every move drawn from each game's own random stream.

Implementations with the same results, draw for draw:
  * `random_playouts`: any game, through its own `legal_actions` and `step` (the rules as the
    fleet plays them);
  * `connect4_random_playouts`: Connect Four on bitboards (the 7 x (6 + 1) layout of
    services/agent/alphabeta.py, one uint64 per player and game): a move sets one bit and four
    in a row is a few shifts and ANDs on [k, 4] arrays, where the generic step gathers the 16
    lines through the cell;
  * `othello_random_playouts`: Othello on its own bitboards (games/othello.py) without the
    generic step's checks, and with two ray casts a move instead of five (the end test's cast
    for the next player is that player's legal moves at the next ply).
The legal moves come out in the same order and every game ends at the same move with the same
result, so a search's playouts, visits and move are bit for bit those of the generic path
(tests/agent/test_playouts.py checks it on random positions).

`playouts_for(game)` gives the fast one where a game has it, else the generic one.

A playout's result is +1 / 0 / -1 from the view of the player to move at its start. Random
numbers: `stream_keys(base, ply)` of the game's stream `base` (uint64 [k]) picks the move at
`ply` among the legal ones (`draw_legal`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from games.base import Game, State
from games import othello
from games.boards import BoardState
from games.othello import OthelloState
from services.agent.alphabeta import COLS, HEIGHT, ROWS

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

# Bit of each cell of a [6, 7] board whose row 0 is the top: 1 << (7 * col + height from the bottom).
_CELL_BITS = np.array([[1 << (HEIGHT * c + (ROWS - 1 - r)) for c in range(COLS)] for r in range(ROWS)],
                      dtype=np.uint64)
# Shifts between neighbours of a line: vertical 1, horizontal 7, the two diagonals 6 and 8.
_SHIFTS = np.array([1, HEIGHT, HEIGHT - 1, HEIGHT + 1], np.uint64)
_DOUBLE_SHIFTS = 2 * _SHIFTS

Playouts = Callable[[Game, State, np.ndarray], np.ndarray]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: uint64 [k] -> uint64 [k], wrapping arithmetic (a bijection)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def odd_multiple(n: int) -> np.uint64:
    """n times the golden-ratio constant, modulo 2^64 (Python ints: NumPy scalars warn on wrapping)."""
    return np.uint64((n * _GOLDEN) % (1 << 64))


def stream_base(seeds: np.ndarray, domain: int, simulation: int) -> np.ndarray:
    """uint64 [k]: each game's stream (`seeds` uint64 [k]) for one (domain, simulation), to be
    drawn from with `stream_keys`."""
    return _mix(_mix(seeds ^ odd_multiple(domain)) + odd_multiple(simulation + 1))


def stream_keys(base: np.ndarray, ply: int) -> np.ndarray:
    """uint64 [k]: the random number at `ply` of each stream of `stream_base`: a pure function
    of (seed, domain, simulation, ply), per game."""
    return _mix(base + odd_multiple(ply + 1))


def draw_legal(keys: np.ndarray, legal: np.ndarray) -> np.ndarray:
    """int64 [k]: a uniformly random True column per row of `legal` (bool [k, A], each row with
    at least one), chosen by `keys` (uint64 [k])."""
    count = legal.sum(axis=1)
    pick = (keys % count.astype(np.uint64)).astype(np.int64)  # in [0, count)
    return np.argmax(np.cumsum(legal, axis=1) > pick[:, None], axis=1)


def random_playouts(game: Game, state: State, base: np.ndarray) -> np.ndarray:
    """float64 [k]: one uniformly random game from each of `state`'s k games (none ended) to its
    end through `game`'s own rules, +1 / 0 / -1 from the view of the player to move in `state`;
    `base` uint64 [k]: each game's stream."""
    result = np.zeros(state.batch_size)
    live = np.arange(state.batch_size)
    ply = 0
    while live.size:
        actions = draw_legal(stream_keys(base[live], ply), game.legal_actions(state))
        state, reward, terminated, truncated = game.step(state, actions)
        done = terminated | truncated
        if done.any():
            # The players alternate, so the mover of an even ply is the one to move at the start.
            result[live[done]] = reward[done] * (1.0 if ply % 2 == 0 else -1.0)
            keep = np.flatnonzero(~done)
            state, live = state.take(keep), live[keep]
        ply += 1
    return result


def _has_four(stones: np.ndarray) -> np.ndarray:
    """bool [k]: whether each bitboard (uint64 [k]) holds four in a row (all four directions at
    once: [k, 4] arrays, so 5 NumPy calls however many games)."""
    column = stones[:, None]
    pairs = column & (column >> _SHIFTS)  # [k, 4]: stones whose neighbour in that direction is one too
    return (pairs & (pairs >> _DOUBLE_SHIFTS)).any(axis=1)


def connect4_random_playouts(game: Game, state: BoardState, base: np.ndarray) -> np.ndarray:
    """`random_playouts` for Connect Four (`state`: its BoardState, none ended), on bitboards;
    the same results draw for draw (module docstring)."""
    board = state.board
    own = (state.to_play + 1).astype(np.int8)[:, None, None]
    # Distinct bits, so their sum is their OR.
    mover = np.where(board == own, _CELL_BITS, np.uint64(0)).sum(axis=(1, 2), dtype=np.uint64)
    other = np.where((board != 0) & (board != own), _CELL_BITS, np.uint64(0)).sum(axis=(1, 2), dtype=np.uint64)
    heights = (board != 0).sum(axis=1).astype(np.int64)  # [k, 7]: gravity stacks the stones
    moves = state.moves.astype(np.int64)
    result = np.zeros(len(board))
    live = np.arange(len(board))
    ply = 0
    while live.size:
        actions = draw_legal(stream_keys(base[live], ply), heights < ROWS)  # a column is legal until full
        rows = np.arange(len(live))
        mover = mover | np.left_shift(np.uint64(1), (HEIGHT * actions + heights[rows, actions]).astype(np.uint64))
        heights[rows, actions] += 1
        moves += 1
        won = _has_four(mover)
        done = won | (moves >= ROWS * COLS)
        if done.any():
            result[live[done]] = won[done] * (1.0 if ply % 2 == 0 else -1.0)
            keep = np.flatnonzero(~done)
            mover, other, heights, moves, live = mover[keep], other[keep], heights[keep], moves[keep], live[keep]
        mover, other = other, mover  # the other player moves next
        ply += 1
    return result


def othello_random_playouts(game: Game, state: OthelloState, base: np.ndarray) -> np.ndarray:
    """`random_playouts` for Othello (`state`: its OthelloState, none ended), on its bitboards
    without the generic step's checks and repeated ray casts: the end test's cast for the next
    player is that player's legal moves at the next ply. The same results draw for draw."""
    rows = np.arange(state.batch_size)
    player = state.to_play.astype(np.int64)
    mover, other = state.discs[rows, player], state.discs[rows, 1 - player]
    legal = othello.legal_moves(mover, other)
    result = np.zeros(state.batch_size)
    live = np.arange(state.batch_size)
    zero, ply = np.uint64(0), 0
    while live.size:
        actions = draw_legal(stream_keys(base[live], ply), othello.legal_action_mask(legal))
        move = othello.action_bits(actions)
        flipped = othello.flips(mover, other, move)
        mover, other = mover | move | flipped, other & ~flipped
        legal = othello.legal_moves(other, mover)  # the next player's
        done = (legal == zero) & (othello.legal_moves(mover, other) == zero)
        if done.any():
            margin = np.bitwise_count(mover).astype(np.int64) - np.bitwise_count(other).astype(np.int64)
            result[live[done]] = np.sign(margin[done]) * (1.0 if ply % 2 == 0 else -1.0)
            keep = np.flatnonzero(~done)
            mover, other, legal, live = mover[keep], other[keep], legal[keep], live[keep]
        mover, other = other, mover
        ply += 1
    return result


_FAST = {"connect4": connect4_random_playouts, "othello": othello_random_playouts}


def playouts_for(game: Game, fast: bool = True) -> Playouts:
    """The playouts of `game`: its fast implementation where it has one (and `fast`), else
    `random_playouts`."""
    return _FAST.get(game.spec.name, random_playouts) if fast else random_playouts
