"""2048 on a 4x4 board, vectorized over B games (one player).

Tiles are held as exponents (0 empty, 1 => 2, 2 => 4, ..., 11 => 2048); `positions` returns
them as int8 [B, 4, 4], row 0 at the top.

Actions: 0 up, 1 right, 2 down, 3 left. Every tile slides as far as it goes in that direction;
two equal tiles that meet merge into one of twice the value, and a tile merges at most once per
move, closest pairs to the wall first: [2, 2, 2, 2] moved left is [4, 4, 0, 0] and [2, 2, 4, 0]
is [4, 4, 0, 0]. A move that changes nothing is illegal. After a legal move one tile spawns on
an empty cell chosen uniformly: a 2 with p = 0.9, a 4 with p = 0.1 (drawn from `state.rng`).
The reward (float32) is the sum of the values of the tiles the merges made. The game ends
(terminated) when no move is legal. `reset` places two random tiles, as the original game does.

`step` is a pure function of its inputs: it draws spawns from a copy of `state.rng` and the
new state carries that copy, so stepping the same state twice gives the same result.

max_moves = 100_000: every move adds a 2 or a 4 to the board's tile sum, so a game that long
holds tiles worth about 200 000 (a 2^17 and a 2^16 tile together, the most a 4x4 board can
hold), far beyond any agent: the rules end real games first, and the cap only bounds runaway
ones. Long games reach the replay server in chunks.

Observation: float32 [B, 4, 4, 16], one-hot planes of the exponents: plane 0 empty cells,
plane e tiles 2^e, tiles above 2^15 in plane 15 (0/1 values: spec dtype uint8).

Value ranges, from the rules alone (no scaling: the replay server and the networks see the
rewards as they are). Let S be a board's tile sum and Phi = sum over its tiles of v (log2 v - 1)
(the score a tile v is worth when built from 2s). A merge of two v into 2v scores 2v and raises
Phi by exactly 2v; a spawned 2 leaves Phi as it was, a spawned 4 raises it by 4; sliding keeps
S, and every spawn adds at most 4 to it. So the rewards of the next j moves from a board sum to
at most Phi(then) - Phi(now) <= 16 S(then) - Phi(now) <= P(now) + 64 j, where 16 = MAX_EXPONENT -
1 bounds log2 v - 1 and P = sum v (17 - log2 v) <= 16 cells * 2^16 = 2^20 (2^e (17 - e) is
largest at e = 15, 16). A discounted return is a weighted mean of these partial sums (weights
g^j - g^(j+1)), hence:

  * reward of one move: at most 8 merges (2 a line), each making a tile of at most 2^17:
    2^20 = 1,048,576;
  * value: at most 2^20 + 64 * sum_{t < max_moves} 0.997^t = 1,069,909;
  * value prefix of K moves: at most 2^20 + 64 K.

These bounds are far above what any agent meets (a 2^15 tile is a rare feat), but they are the
only ones the rules guarantee, and a support that clipped them would clip silently: the
smallest support that holds them is S = 2104 (4,209 logits a head). The earlier S = 300 stops at
58,706, below the value of a position a few moves before a chain of merges up to one 2^15 tile
(the chain alone scores 4 + 8 + ... + 2^15 = 65,532).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from games.settings import FleetSettings, NetworkSettings, ReplaySettings, SearchSettings, TrainingSettings
from games.base import Game, GameSpec, MuZeroSettings, State, discounted_steps
from games.validation import require
from games.boards import as_rng, check_actions, reject_illegal, truncated_at
from games.symmetry import Symmetries, dihedral_cells, direction_actions

SIZE = 4
UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3
DIRECTIONS = [(-1, 0), (0, 1), (1, 0), (0, -1)]  # (d_row, d_col) of UP, RIGHT, DOWN, LEFT
PLANES = 16
MAX_EXPONENT = 17  # 2^17 = 131072, the largest tile a 4x4 game can make
MAX_MOVES = 100_000
FOUR_PROBABILITY = 0.1
DISCOUNT = 0.997
LARGEST_SPAWN = 4

# The value ranges derived in the module docstring.
MOST_MERGES = SIZE * (SIZE // 2)  # 2 a line of 4, on 4 lines
MAX_REWARD = MOST_MERGES * 2 ** MAX_EXPONENT  # 2^20
# The largest P = sum over cells of v (MAX_EXPONENT - log2 v): each cell at its worst tile.
MAX_UNBUILT = SIZE * SIZE * max(2 ** e * (MAX_EXPONENT - e) for e in range(1, MAX_EXPONENT + 1))
# How much Phi may grow a move beyond what the board already holds: a spawn's worth, at the
# highest rate a value can earn (log2 v - 1 <= MAX_EXPONENT - 1).
SCORE_PER_SPAWN = LARGEST_SPAWN * (MAX_EXPONENT - 1)  # 64


def max_future_score(moves: float) -> float:
    """The most the rewards of `moves` consecutive moves (weighted by at most 1 each) can sum to."""
    return MAX_UNBUILT + SCORE_PER_SPAWN * moves

# For each of the 16 patterns of occupied cells in a row (bit j = cell j occupied), the cell
# order that puts the occupied cells first, in order: compresses a row to the left.
_COMPRESS = np.array([[j for j in range(SIZE) if m >> j & 1] + [j for j in range(SIZE) if not m >> j & 1]
                      for m in range(1 << SIZE)], dtype=np.int64)
_ONE_HOT = np.eye(PLANES, dtype=np.float32)
_BITS = np.array([1 << j for j in range(SIZE)], dtype=np.int64)


def _slide_rows_left(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slides and merges rows (int8 [N, 4] exponents) to the left: (rows int8 [N, 4], reward float64 [N])."""
    n = len(rows)
    order = _COMPRESS[(rows != 0).astype(np.int64) @ _BITS]
    packed = np.zeros((n, 2 * SIZE), np.int8)
    packed[:, :SIZE] = np.take_along_axis(rows, order, axis=1)
    out = np.zeros((n, SIZE), np.int8)
    reward = np.zeros(n, np.float64)
    index = np.arange(n)
    source = np.zeros(n, np.int64)  # next unread cell of each packed row
    for j in range(SIZE):
        tile, following = packed[index, source], packed[index, source + 1]
        merge = (tile != 0) & (tile == following)
        out[:, j] = tile + merge
        reward += np.where(merge, np.exp2(tile.astype(np.float64) + 1), 0.0)
        source += 1 + merge
    return out, reward


def _row_tables(base: int):
    """For every row of exponents below `base`, indexed by e0 * base^3 + e1 * base^2 + e2 * base
    + e3: the row slid left (int8 [base^4, 4]), its reward (float32 [base^4]), and whether
    sliding it left / right changes it (bool [base^4] each)."""
    every = np.indices((base,) * SIZE).reshape(SIZE, -1).T.astype(np.int8)
    rows, reward = _slide_rows_left(every)
    changes_left = (rows != every).any(axis=1)
    weights = np.array([base ** (SIZE - 1 - j) for j in range(SIZE)], dtype=np.int32)
    changes_right = changes_left[every[:, ::-1].astype(np.int32) @ weights]
    return weights, rows, reward.astype(np.float32), changes_left, changes_right


_TABLE_BASE = 16  # rows of tiles up to 2^15 (every game short of a 65536 tile) are looked up
_WEIGHTS, _SLID, _REWARD, _CHANGES_LEFT, _CHANGES_RIGHT = _row_tables(_TABLE_BASE)


def _slide_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_slide_rows_left` by table look-up where every exponent is below the table's base."""
    if rows.size and rows.max() >= _TABLE_BASE:
        return _slide_rows_left(rows)
    index = rows.astype(np.int32) @ _WEIGHTS
    return _SLID[index], _REWARD[index]


def _views(board: np.ndarray) -> np.ndarray:
    """int8 [B, 4 actions, 4, 4]: the board turned so that each action slides its rows left."""
    columns = board.transpose(0, 2, 1)  # row i = column i, top to bottom
    return np.stack([columns, board[:, :, ::-1], columns[:, :, ::-1], board], axis=1)


def _unviews(turned: np.ndarray) -> np.ndarray:
    """int8 [B, 4 actions, 4, 4]: boards turned by each action's `_views` turned back."""
    return np.stack([turned.transpose(0, 2, 1), turned[:, :, ::-1],
                     turned[:, :, ::-1].transpose(0, 2, 1), turned], axis=1)


def slide(board: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic part of a move: (board int8 [B, 4, 4] after sliding and merging, before
    the spawn; reward float32 [B]) for boards int8 [B, 4, 4] and actions int [B]."""
    b = len(board)
    games = np.arange(b)
    turned = _views(board)[games, actions]  # [B, 4, 4]
    rows, reward = _slide_rows(turned.reshape(-1, SIZE))
    board = _unviews(rows.reshape(b, SIZE, SIZE))[games, actions]
    return board, reward.reshape(b, SIZE).sum(axis=1).astype(np.float32)


def legal_moves(board: np.ndarray) -> np.ndarray:
    """bool [B, 4]: the moves (up, right, down, left) that change the board."""
    if board.size and board.max() >= _TABLE_BASE:
        return _legal_moves_direct(board)
    b = len(board)
    rows = board.astype(np.int32) @ _WEIGHTS  # [B, 4]: row i, left to right
    columns = board.transpose(0, 2, 1).astype(np.int32) @ _WEIGHTS  # column i, top to bottom
    return np.stack([_CHANGES_LEFT[columns].any(axis=1), _CHANGES_RIGHT[rows].any(axis=1),
                     _CHANGES_RIGHT[columns].any(axis=1), _CHANGES_LEFT[rows].any(axis=1)], axis=1)


def _legal_moves_direct(board: np.ndarray) -> np.ndarray:
    """`legal_moves` for any exponents: a tile with an empty cell next to it on the side it
    moves to, or two equal tiles next to each other along the move."""
    b = len(board)
    occupied = board != 0
    west, east = occupied[:, :, :-1], occupied[:, :, 1:]  # horizontal neighbours
    north, south = occupied[:, :-1, :], occupied[:, 1:, :]  # vertical neighbours
    pair_h = (west & (board[:, :, :-1] == board[:, :, 1:])).reshape(b, -1).any(axis=1)
    pair_v = (north & (board[:, :-1, :] == board[:, 1:, :])).reshape(b, -1).any(axis=1)
    return np.stack([
        (south & ~north).reshape(b, -1).any(axis=1) | pair_v,  # up: a tile with a gap above it
        (west & ~east).reshape(b, -1).any(axis=1) | pair_h,  # right
        (north & ~south).reshape(b, -1).any(axis=1) | pair_v,  # down
        (east & ~west).reshape(b, -1).any(axis=1) | pair_h,  # left
    ], axis=1)


def spawn(board: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of `board` (int8 [B, 4, 4]) with one new tile (exponent 1 with p 0.9, else 2) on a
    uniformly chosen empty cell of every game that has one."""
    b = len(board)
    flat = board.reshape(b, SIZE * SIZE).copy()
    empty = flat == 0
    count = empty.sum(axis=1)
    where, four = rng.random((2, b))
    k = np.minimum((where * count).astype(np.int64), count - 1)  # the k-th empty cell, k in [0, count)
    cell = np.argmax(np.cumsum(empty, axis=1) > k[:, None], axis=1)
    games = np.flatnonzero(count > 0)
    flat[games, cell[games]] = np.where(four[games] < FOUR_PROBABILITY, 2, 1)
    return flat.reshape(board.shape)


@dataclasses.dataclass(frozen=True)
class Game2048State(State):
    board: np.ndarray  # int8 [B, 4, 4]: tile exponents, 0 empty
    moves: np.ndarray  # int32 [B]: moves played
    rng: np.random.Generator


class Game2048(Game):
    spec = GameSpec(name="2048", observation_shape=(SIZE, SIZE, PLANES), observation_dtype="uint8",
                    num_actions=4, num_players=1, discount=DISCOUNT, max_moves=MAX_MOVES)
    reward_range = (0.0, float(MAX_REWARD))
    value_range = (0.0, min(MAX_REWARD * discounted_steps(DISCOUNT, MAX_MOVES),
                            max_future_score(discounted_steps(DISCOUNT, MAX_MOVES))))
    # The smallest support that holds value_range (module docstring): h(1,069,909) = 2103.3.
    settings = MuZeroSettings(
        network=NetworkSettings(architecture="resnet", hidden_size=64, fc_layers=(64,),
                                res_blocks=2, support_size=2104),
        search=SearchSettings(num_simulations=16, search="gumbel", max_considered_actions=4),
        replay=ReplaySettings(capacity=500_000, min_positions=10_000),
        training=TrainingSettings(num_unroll_steps=5, td_steps=10, batch_size=256,
                                  learning_rate=3e-3, lr_decay_steps=50_000, weight_decay=1e-4,
                                  export_interval=100, augment_symmetries=True),
        fleet=FleetSettings(games_per_batch=256),
        discount=DISCOUNT)

    def symmetries(self) -> Symmetries:
        """The 8 rotations and reflections of the board, each with the directions it maps the
        moves to (a quarter turn takes UP to RIGHT). The rules commute with every one: sliding
        and merging are the same in any orientation, and a spawn is uniform over empty cells."""
        cells = dihedral_cells(SIZE)
        return Symmetries(cells=cells, actions=direction_actions(cells, SIZE, DIRECTIONS))

    @classmethod
    def value_prefix_range(cls, num_unroll_steps: int) -> tuple[float, float]:
        """K consecutive rewards sum to at most max_future_score(K) (module docstring)."""
        return 0.0, float(min(num_unroll_steps * MAX_REWARD, max_future_score(num_unroll_steps)))

    def reset(self, n: int, seed: int | np.random.Generator | None = None) -> Game2048State:
        require(n >= 0, f"n must be >= 0, got {n}")
        rng = as_rng(seed)
        board = spawn(spawn(np.zeros((n, SIZE, SIZE), np.int8), rng), rng)
        return Game2048State(board=board, moves=np.zeros(n, np.int32), rng=rng)

    def step(self, state: Game2048State, actions: np.ndarray):
        b = state.batch_size
        actions = check_actions(actions, b, 4)
        reject_illegal(actions, legal_moves(state.board)[np.arange(b), actions])
        board, reward = slide(state.board, actions)
        rng = copy.deepcopy(state.rng)
        board = spawn(board, rng)
        terminated = ~legal_moves(board).any(axis=1)
        moves = state.moves + 1
        new = Game2048State(board=board, moves=moves, rng=rng)
        return new, reward, terminated, truncated_at(moves, MAX_MOVES, terminated)

    def observation(self, state: Game2048State) -> np.ndarray:
        return _ONE_HOT[np.minimum(state.board, PLANES - 1)]

    def legal_actions(self, state: Game2048State) -> np.ndarray:
        return legal_moves(state.board)

    def episode_statistics(self, observation: np.ndarray, action: np.ndarray) -> dict[str, np.ndarray]:
        """{"max_tile": int64 [M]}, the largest tile of each finished game: that of its final
        board, which the last move's slide made or kept (its spawn adds a 2 or a 4 to a board
        that holds at least a 4 by then, or is the game's 4). Read from observations, so tiles
        above 2^15 count as 2^15 (the planes stop there)."""
        board = np.argmax(np.asarray(observation), axis=-1).astype(np.int8)  # plane = exponent, 0 empty
        slid, _reward = slide(board, np.asarray(action, np.int64))
        exponent = np.maximum(slid.reshape(len(slid), -1).max(axis=1).astype(np.int64), 2)
        return {"max_tile": np.left_shift(1, exponent)}

    def to_play(self, state: Game2048State) -> np.ndarray:
        return np.zeros(state.batch_size, np.int32)

    def positions(self, state: Game2048State) -> np.ndarray:
        return state.board.copy()

    def state_from_positions(self, positions: np.ndarray, to_play: np.ndarray | None = None,
                             seed: int | np.random.Generator | None = None) -> Game2048State:
        """Boards of tile exponents in [0, 17]; `to_play` is ignored (one player); moves start at 0."""
        p = np.asarray(positions)
        require(p.ndim == 3 and p.shape[1:] == (SIZE, SIZE),
                f"positions: expected shape [B, {SIZE}, {SIZE}], got {list(p.shape)}")
        require(p.size == 0 or np.issubdtype(p.dtype, np.integer),
                f"positions: expected integer exponents, got dtype {p.dtype}")
        bad = np.flatnonzero(((p < 0) | (p > MAX_EXPONENT)).any(axis=(1, 2)))
        require(bad.size == 0, f"positions: exponents must be in [0, {MAX_EXPONENT}], bad games {bad[:10].tolist()}")
        return Game2048State(board=p.astype(np.int8), moves=np.zeros(len(p), np.int32), rng=as_rng(seed))
