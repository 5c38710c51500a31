"""A UCT opponent: Monte Carlo tree search with uniformly random playouts, for the two-player
board games (tic-tac-toe, Connect Four, Othello), B games at once in NumPy.

Per simulation all B trees work together, with no Python loop over games:
  1. select: from the root, each tree follows the edge of the highest UCT score
     Q + c sqrt(ln N(parent) / N(child)) (Q: the mean result of the child from the view of the
     player who moves into it, in [-1, 1]) until it meets a legal action without a child (the
     leaf edge; among several, one at random) or a child where the game has ended;
  2. expand: one `game.step` over the batch creates the leaf child of every tree that found one;
  3. play out: from every new child whose game goes on, one uniformly random game to its end,
     all playouts stepped together and the finished ones dropped from the batch (`State.take`);
  4. back up: the result (+1 / 0 / -1, or the exact reward where the tree reached an ended game)
     is added along the path, its sign flipping at every edge since the players alternate
     (an Othello pass is a move too).
The move played is the root action with the most visits, ties to the lowest action index.

Randomness: each game's search draws every random number (the leaf edge to expand, the
playout moves) from a counter-based stream of its own: splitmix64 of (the game's seed, the
simulation, the ply). So a game's search, its visit counts and its move depend only on its
position and its seed, never on which other games share the batch (`search` takes the seeds;
the opponent callable draws one per game from the evaluation's generator).

The search rebuilds the games from the mover's view (`Game.state_from_observation`); their
rules are the same for both players, so what it finds holds in the real games.

Playouts are the game's own where it has them (services/agent/playouts.py: Connect Four on
bitboards, Othello without the generic step's checks), with the generic step's results draw for
draw; `fast_playouts=False` plays them through `game.step`.

Speed (`python -m benchmarks opponents`, quiet 2-core machine, 2026-12-02): B = 50 Connect Four
games from the opening, 259 moves/s at 100 simulations and 26.5 at 1,000 (generic step: 129
and 13.4); B = 20 Othello games, 20.1 moves/s at 100 (generic 11.4). A simulation costs about
one playout, some 35 plies of the shrinking batch for Connect Four and about 60 for Othello,
which is most of the time.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

import games
from games.base import Game, State
from games.validation import require
from services.agent.playouts import draw_legal, playouts_for, stream_base, stream_keys

# The board games an observation shape belongs to (an opponent sees only observations).
BOARD_GAMES = {(3, 3, 2): "tictactoe", (6, 7, 2): "connect4", (8, 8, 2): "othello"}

# Stream domains, so the expansion draws and the playout draws of one (simulation, ply) differ.
_EXPAND, _PLAYOUT = 1, 2


def _write(store: State, rows: np.ndarray, games_: State) -> None:
    """Writes `games_` (k games) into `store` at `rows` (int [k]), in place: `State.put` copies
    the whole store, which is B * N games here."""
    for field in dataclasses.fields(store):  # type: ignore[arg-type]
        if field.name != "rng":
            getattr(store, field.name)[rows] = getattr(games_, field.name)


@dataclasses.dataclass(frozen=True)
class RolloutSearchResult:
    """What one search of B games found.

    Attributes:
      action: int32 [B], the most visited root action (ties to the lowest index).
      visits: int32 [B, A], the visits of the root's children (0 for actions never tried).
      value: float64 [B], the root's mean result from the mover's view, in [-1, 1].
    """

    action: np.ndarray
    visits: np.ndarray
    value: np.ndarray


class RolloutMCTS:
    """The UCT opponent of `mcts_rollout_opponent`; see the module docstring.

    Args:
      game_name: a two-player board game, or None to pick it from the observation's shape at
        each call (`BOARD_GAMES`), so one opponent serves every board game.
      simulations: S >= 1 simulations per move; each adds at most one node per tree.
      exploration: c >= 0 of the UCT bonus. Q lies in [-1, 1], so the default sqrt(2) is half
        UCB1's for rewards in [0, 1], a greedier search. Not tuned: at 100 simulations in
        Connect Four it beat c = 2 sqrt(2) by 15 to 9 and lost to c = 0.7 by 9 to 14 (one draw),
        24 games each, too few to tell.
      fast_playouts: play Connect Four's playouts on bitboards (services/agent/playouts.py:
        the same draws and results, several times faster); False plays every game's playouts
        through its generic `step`.
    """

    def __init__(self, game_name: str | None, simulations: int, exploration: float = math.sqrt(2.0),
                 fast_playouts: bool = True) -> None:
        require(game_name is None or game_name in BOARD_GAMES.values(),
                f"game_name must be one of {', '.join(BOARD_GAMES.values())} (or None), got {game_name!r}")
        require(simulations >= 1, f"simulations must be >= 1, got {simulations}")
        require(exploration >= 0.0, f"exploration must be >= 0, got {exploration}")
        self.game_name = game_name
        self.simulations = simulations
        self.exploration = exploration
        self.fast_playouts = fast_playouts

    def __call__(self, observation: np.ndarray, legal_actions: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        """The opponent interface: observation [B, *obs], legal bool [B, A] -> int32 [B], with
        one seed per game drawn from `rng`."""
        seeds = rng.integers(0, np.iinfo(np.uint64).max, size=len(observation), dtype=np.uint64,
                             endpoint=True)
        return self.search(observation, legal_actions, seeds).action

    def game(self, observation: np.ndarray) -> Game:
        """The game this opponent plays, or the one `observation`'s shape belongs to."""
        name = self.game_name
        if name is None:
            shape = tuple(np.shape(observation)[1:])
            known = ", ".join(f"{n} {list(s)}" for s, n in BOARD_GAMES.items())
            require(shape in BOARD_GAMES,
                    f"observation: shape {list(shape)} is none of the board games' ({known})")
            name = BOARD_GAMES[shape]
        return games.make(name)

    def search(self, observation: np.ndarray, legal_actions: np.ndarray,
               seeds: np.ndarray) -> RolloutSearchResult:
        """Searches B positions, none of them ended.

        Args:
          observation: float32 [B, *obs], from the mover's view.
          legal_actions: bool [B, A]; must be the observation's (checked).
          seeds: uint64 [B], each game's random stream (same seed and position: same result).
        """
        game = self.game(observation)
        root = game.state_from_observation(observation)
        B, A, S = root.batch_size, game.spec.num_actions, self.simulations
        root_legal = game.legal_actions(root)
        legal_actions = np.asarray(legal_actions, bool)
        require(legal_actions.shape == root_legal.shape,
                f"legal_actions: expected shape {list(root_legal.shape)}, got {list(legal_actions.shape)}")
        differ = np.flatnonzero((legal_actions != root_legal).any(axis=1))
        require(differ.size == 0,
                f"legal_actions: not the observation's legal moves in games {differ[:10].tolist()}")
        seeds = np.asarray(seeds).astype(np.uint64)
        require(seeds.shape == (B,), f"seeds: expected shape ({B},), got {seeds.shape}")

        # Node arrays are flat over the B trees of N nodes: row b * N + n.
        playouts = playouts_for(game, self.fast_playouts)
        N = S + 1
        roots = np.arange(B, dtype=np.int64) * N
        store = root.take(np.repeat(np.arange(B), N))  # each node's game; rows filled on expansion
        children = np.full((B * N, A), -1, np.int64)  # the child row of each edge (-1: none yet)
        legal = np.zeros((B * N, A), bool)
        legal[roots] = root_legal
        visits = np.zeros(B * N, np.float64)
        value_sum = np.zeros(B * N, np.float64)  # results from the view of the player who moved into the node
        ended = np.zeros(B * N, bool)
        ended_value = np.zeros(B * N, np.float64)  # the exact reward of the move into an ended node
        parent = np.full(B * N, -1, np.int64)
        used = np.ones(B, np.int64)  # nodes per tree so far
        all_games = np.arange(B)

        for simulation in range(S):
            leaf_parent, leaf_action, hit = self._select(children, legal, visits, value_sum, ended,
                                                         roots, seeds, simulation)
            grow = np.flatnonzero(leaf_parent >= 0)
            leaves = hit.copy()  # [B] the node each tree backs a result up from
            results = np.zeros(B)  # from the view of the player who moved into the leaf
            known = np.flatnonzero(hit >= 0)
            results[known] = ended_value[hit[known]]
            if grow.size:
                rows = leaf_parent[grow]
                actions = leaf_action[grow]
                child, reward, terminated, truncated = game.step(store.take(rows), actions)
                new = grow * N + used[grow]
                used[grow] += 1
                _write(store, new, child)
                children[rows, actions] = new
                parent[new] = rows
                done = terminated | truncated
                ended[new] = done
                ended_value[new] = reward
                legal[new] = game.legal_actions(child)
                results[grow] = reward
                going = np.flatnonzero(~done)
                if going.size:
                    # A playout's result is from the view of the child's mover, the other player.
                    results[grow[going]] = -playouts(game, child.take(going),
                                                     stream_base(seeds[grow[going]], _PLAYOUT, simulation))
                leaves[grow] = new
            # Back up: every tree has a leaf (one it created or an ended node it reached).
            node, value, live = leaves, results, all_games
            while live.size:
                visits[node] += 1.0
                value_sum[node] += value
                node, value = parent[node], -value
                keep = node >= 0
                node, value, live = node[keep], value[keep], live[keep]

        kids = children[roots]
        child_visits = np.where(kids >= 0, visits[np.maximum(kids, 0)], 0.0)
        action = np.argmax(child_visits, axis=1).astype(np.int32)  # ties: the lowest index
        value = -value_sum[roots] / np.maximum(visits[roots], 1.0)
        return RolloutSearchResult(action=action, visits=child_visits.astype(np.int32), value=value)

    def _select(self, children, legal, visits, value_sum, ended, roots, seeds, simulation):
        """Descends all B trees at once. Returns (leaf_parent int64 [B]: the row whose edge
        `leaf_action` int64 [B] gets a new child, -1 where none; hit int64 [B]: the ended node
        reached instead, -1 where none)."""
        B = len(roots)
        leaf_parent = np.full(B, -1, np.int64)
        leaf_action = np.zeros(B, np.int64)
        hit = np.full(B, -1, np.int64)
        node, live, depth = roots.copy(), np.arange(B), 0
        expand_base = stream_base(seeds, _EXPAND, simulation)
        while live.size:
            kids = children[node]  # [k, A]
            has = kids >= 0
            fresh = legal[node] & ~has
            expand = fresh.any(axis=1)
            if expand.any():
                e = np.flatnonzero(expand)
                keys = stream_keys(expand_base[live[e]], depth)
                leaf_parent[live[e]] = node[e]
                leaf_action[live[e]] = draw_legal(keys, fresh[e])
            go = np.flatnonzero(~expand)
            if go.size == 0:
                break
            kids, has, node, live = kids[go], has[go], node[go], live[go]
            safe = np.maximum(kids, 0)
            n = np.maximum(visits[safe], 1.0)
            q = value_sum[safe] / n
            bonus = self.exploration * np.sqrt(np.log(visits[node])[:, None] / n)
            best = np.argmax(np.where(has, q + bonus, -np.inf), axis=1)
            node = kids[np.arange(len(go)), best]
            stop = ended[node]
            hit[live[stop]] = node[stop]
            node, live = node[~stop], live[~stop]
            depth += 1
        return leaf_parent, leaf_action, hit


def mcts_rollout_opponent(game_name: str | None, simulations: int,
                          exploration: float = math.sqrt(2.0)) -> RolloutMCTS:
    """A UCT opponent with random playouts (module docstring): a callable (observation
    [B, *obs], legal bool [B, A], rng) -> int32 [B] for `game_name` (None: any board game,
    picked by the observation's shape)."""
    return RolloutMCTS(game_name, simulations, exploration)
