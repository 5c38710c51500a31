"""A Connect Four opponent: fixed-depth negamax with alpha-beta pruning on bitboards.

Position: two Python ints in the standard 7 x (6 + 1) layout, bit 7 * col + height (height 0
the bottom row; bit 6 of each column is an always-empty guard, so shifts never carry a line
from one column into the next): `current`, the stones of the player to move, and `mask`, all
stones. A move is `mask | (mask + bottom(col))`; the next player's stones are `current ^ mask`.

The search, per game of the batch (one at a time, in pure Python):
  * exact at every node, whatever the depth left: a move that makes four ends the search with
    a win; a full board is a draw; where the opponent has a playable winning cell the move
    must block it (two such cells: lost). A win at move m scores WIN - m, so nearer wins
    score more and farther losses score less (they are exact, and stay so in the table);
  * at the depth limit, a heuristic from the mover's view, far inside (-WIN, WIN): over the
    69 lines of four cells, THREE_WEIGHT per line holding three of the mover's stones and no
    opponent stone (an open three, gaps included), TWO_WEIGHT per open two, minus the same
    for the opponent, plus CENTRE_WEIGHT per stone of the mover in the centre column minus
    the opponent's there. (Counting only the open threes plays worse: depth 5 lost 5 of 20
    games to depth 1 with it, 2 of 20 with this.);
  * move ordering: the transposition table's best move first, then the centre columns
    outwards (3, 2, 4, 1, 5, 0, 6);
  * a transposition table (dict: key current + mask, unique per position) of (depth, bound,
    value, best column), kept for the iterative deepening from depth 1 to `depth` of one move;
  * at the root, every column whose value equals the best is found (a null window just below
    the best) and one of them is played at random, so repeated games differ.

Speed (`python -m benchmarks opponents`). On a quiet 2-core machine (2026-12-02, about 115,000
to 170,000 nodes/s) the deepest search under a second per move is depth 12 from the opening
(86,603 nodes, 0.60 s; depth 13: 155,942 nodes, 1.08 s) and depth 15 from the benchmark's
12-stone midgame (161,237 nodes, 0.97 s; depth 16: 204,279 nodes, 1.2 s). Loaded (nice 10
beside a learning run, load average about 8) it was depth 10 and depth 14. Node counts do not
depend on the machine.
"""

from __future__ import annotations

import numpy as np

from games.validation import require

ROWS, COLS = 6, 7
HEIGHT = ROWS + 1  # bits per column, the guard bit included
WIN = 1_000_000  # a win at move m scores WIN - m (m <= 42)
THREE_WEIGHT, TWO_WEIGHT, CENTRE_WEIGHT = 5, 2, 3
CENTRE_ORDER = (3, 2, 4, 1, 5, 0, 6)

_BOTTOM = sum(1 << (HEIGHT * c) for c in range(COLS))
_BOARD = _BOTTOM * ((1 << ROWS) - 1)  # every playable cell
_COLUMN = [((1 << ROWS) - 1) << (HEIGHT * c) for c in range(COLS)]
_EXACT, _LOWER, _UPPER = 0, 1, 2


def _lines() -> list[int]:
    """The 69 lines of four cells as bitboards: horizontal, vertical and both diagonals."""
    lines = []
    for dc, dh in ((1, 0), (0, 1), (1, 1), (1, -1)):
        for c in range(COLS):
            for h in range(ROWS):
                cells = [(c + i * dc, h + i * dh) for i in range(4)]
                if all(0 <= cc < COLS and 0 <= hh < ROWS for cc, hh in cells):
                    lines.append(sum(1 << (HEIGHT * cc + hh) for cc, hh in cells))
    return lines


LINES = _lines()


def from_observation(observation: np.ndarray) -> tuple[int, int, int]:
    """(current, mask, stones) of one game from its observation float [6, 7, 2] (row 0 the top,
    plane 0 the mover's stones, plane 1 the opponent's)."""
    current = mask = 0
    own, other = observation[..., 0] > 0, observation[..., 1] > 0
    for r in range(ROWS):
        for c in range(COLS):
            bit = 1 << (HEIGHT * c + (ROWS - 1 - r))
            if own[r, c]:
                current |= bit
                mask |= bit
            elif other[r, c]:
                mask |= bit
    return current, mask, mask.bit_count()


def winning_cells(stones: int, mask: int) -> int:
    """The empty cells (a bitboard) where one more stone of `stones` makes four in a row."""
    # Vertical: three stones right below.
    cells = (stones << 1) & (stones << 2) & (stones << 3)
    for s in (HEIGHT, HEIGHT - 1, HEIGHT + 1):  # horizontal, and the two diagonals
        pair = (stones << s) & (stones << (2 * s))
        cells |= pair & (stones << (3 * s))  # the three on one side
        cells |= pair & (stones >> s)  # two on one side, one on the other
        pair = (stones >> s) & (stones >> (2 * s))
        cells |= pair & (stones << s)
        cells |= pair & (stones >> (3 * s))
    return cells & (_BOARD ^ mask)


def heuristic(current: int, mask: int) -> int:
    """The depth-limit score from the view of the player to move (module docstring)."""
    other = current ^ mask
    score = CENTRE_WEIGHT * ((current & _COLUMN[3]).bit_count() - (other & _COLUMN[3]).bit_count())
    for line in LINES:
        if not line & other:
            n = (line & current).bit_count()
            if n == 3:
                score += THREE_WEIGHT
            elif n == 2:
                score += TWO_WEIGHT
        elif not line & current:
            n = (line & other).bit_count()
            if n == 3:
                score -= THREE_WEIGHT
            elif n == 2:
                score -= TWO_WEIGHT
    return score


class AlphaBetaSearch:
    """One game's searches; `table` is the transposition table and `nodes` counts the visits."""

    def __init__(self) -> None:
        self.table: dict[int, tuple[int, int, int, int]] = {}
        self.nodes = 0

    def negamax(self, current: int, mask: int, stones: int, depth: int, alpha: int, beta: int) -> int:
        """The value of the position for the player to move, searched `depth` plies deep
        (exact where the game ends inside the horizon), within the window (alpha, beta)."""
        self.nodes += 1
        playable = (mask + _BOTTOM) & _BOARD
        if winning_cells(current, mask) & playable:
            return WIN - (stones + 1)
        if stones == ROWS * COLS:
            return 0
        forced = winning_cells(current ^ mask, mask) & playable
        if forced:
            if forced & (forced - 1):  # two cells to block: the opponent wins next move
                return -(WIN - (stones + 2))
            playable = forced
        if depth <= 0:
            return heuristic(current, mask)
        key = current + mask
        entry = self.table.get(key)
        first = -1
        if entry is not None:
            stored_depth, bound, value, first = entry
            if stored_depth >= depth:
                if bound == _EXACT:
                    return value
                if bound == _LOWER:
                    alpha = max(alpha, value)
                else:
                    beta = min(beta, value)
                if alpha >= beta:
                    return value
        start_alpha = alpha
        best, best_col = -2 * WIN, -1
        for col in _ordered(first):
            move = playable & _COLUMN[col]
            if not move:
                continue
            value = -self.negamax(current ^ mask, mask | move, stones + 1, depth - 1, -beta, -alpha)
            if value > best:
                best, best_col = value, col
                if value > alpha:
                    alpha = value
                    if alpha >= beta:
                        break
        bound = _UPPER if best <= start_alpha else _LOWER if best >= beta else _EXACT
        self.table[key] = (depth, bound, best, best_col)
        return best

    def best_columns(self, current: int, mask: int, stones: int, depth: int) -> tuple[list[int], int]:
        """(every column of the best value, that value) for the player to move, by iterative
        deepening to `depth`; the game must not have ended."""
        playable = (mask + _BOTTOM) & _BOARD
        wins = winning_cells(current, mask) & playable
        if wins:
            return [c for c in range(COLS) if wins & _COLUMN[c]], WIN - (stones + 1)
        columns, best = [], -2 * WIN
        for d in range(1, depth + 1):
            entry = self.table.get(current + mask)
            columns, best = [], -2 * WIN
            for col in _ordered(entry[3] if entry else -1):
                move = playable & _COLUMN[col]
                if not move:
                    continue
                # Just below the best: an equal value comes back exact, a smaller one as <= best - 1.
                alpha = best - 1 if columns else -2 * WIN
                value = -self.negamax(current ^ mask, mask | move, stones + 1, d - 1, -2 * WIN, -alpha)
                if value > best:
                    columns, best = [col], value
                elif value == best:
                    columns.append(col)
            self.table[current + mask] = (d, _EXACT, best, columns[0])
        return columns, best


def _ordered(first: int) -> tuple[int, ...]:
    """The columns to try: `first` (the table's best, -1 for none), then centre outwards."""
    if first < 0:
        return CENTRE_ORDER
    return (first, *(c for c in CENTRE_ORDER if c != first))


class AlphaBetaOpponent:
    """The opponent of `connect4_alphabeta_opponent`: (observation float32 [B, 6, 7, 2], legal
    bool [B, 7], rng) -> int32 [B], one game at a time."""

    def __init__(self, depth: int) -> None:
        require(depth >= 1, f"depth must be >= 1, got {depth}")
        self.depth = depth

    def __call__(self, observation: np.ndarray, legal_actions: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        observation = np.asarray(observation)
        require(observation.ndim == 4 and observation.shape[1:] == (ROWS, COLS, 2),
                f"observation: expected shape [B, {ROWS}, {COLS}, 2], got {list(observation.shape)}")
        actions = np.zeros(len(observation), np.int32)
        for i in range(len(observation)):
            columns, _ = AlphaBetaSearch().best_columns(*from_observation(observation[i]), self.depth)
            legal = [c for c in columns if legal_actions[i, c]]
            require(len(legal) == len(columns) > 0,
                    f"legal_actions: game {i}'s legal moves are not its observation's")
            actions[i] = legal[int(rng.integers(len(legal)))] if len(legal) > 1 else legal[0]
        return actions


def connect4_alphabeta_opponent(depth: int) -> AlphaBetaOpponent:
    """A Connect Four opponent searching `depth` plies (module docstring), ties at random.

    Time per move of one game (module docstring, quiet machine): ~0.02 s at depth 7, under a
    second up to depth 12 from the opening.
    """
    return AlphaBetaOpponent(depth)
