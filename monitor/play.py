"""The play page's engine: a person against (or, in 2048, beside) the fleet's current model.

The position lives in the browser; every request carries the board in the `positions` format of
the game, and the server rebuilds the game with `state_from_positions`, checks the move against
the rules, plays it, and answers. The model's moves come from the agent's own batched search
(`services.agent.pipeline.PipelinedSearch`, B = 1, the game's MuZero settings, greedy) through
the network service, exactly as an agent would search.

Two-player board games (tictactoe, connect4, othello): {"board": [[0 empty, 1 the first player's
piece, 2 the second's]], "move": the person's move or null, "model_player": 0 or 1}; the answer
holds the person's move and the model's reply, and whose turn it is ("to_play"). Othello's board
does not tell whose turn it is once a player has passed: its requests carry "to_play" too (the
answer's; default: the parity of the discs), its pass is action 64 (legal only when the mover
has no other move, as the rules say) and its answers count the discs ("discs": [black, white]).

2048 (one player: the model plays, a person watches or takes over): {"board": [[tile exponents
0..17, 0 empty, e the tile 2^e]] or null (a new game: the rules deal two tiles), "move": 0 up,
1 right, 2 down, 3 left (the person's move), or null (the model moves)}; no "model_player".
One move a request; the answer holds the new board (after the random spawn, drawn from a
server-side generator), the move's reward, the legal moves and the largest tile. The score is
the browser's: the sum of the rewards.
"""

from __future__ import annotations

import math
import reprlib
import threading
import time
from typing import Any

import numpy as np

import games
from games import g2048, othello
from games.boards import line_windows
from monitor.config import MonitorConfig
from monitor.metrics import MonitorMetrics

PLAYABLE = ("tictactoe", "connect4", "othello", "2048")
DIRECTIONS = ("up", "right", "down", "left")  # 2048's actions 0..3

# Echoes a bad value in a message without echoing a megabyte of it.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40
_short.maxlist = _short.maxdict = 4
_short.maxlevel = 2


def _shown(value: Any) -> str:
    return _short.repr(value)


class PlayError(Exception):
    """A request the play page refuses: `status` 400 (bad move or position) or 503 (no model)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Player:
    def __init__(self, config: MonitorConfig, metrics: MonitorMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.game_name = config.game
        self.game = games.make(config.game)
        self.playable = config.game in PLAYABLE
        self.one_player = self.game.spec.num_players == 1
        self.simulations = config.play_simulations or self.game.settings.search.num_simulations
        self._network = None
        self._lock = threading.Lock()
        self._rng = np.random.default_rng()  # 2048's spawns (a fresh seed for every request)
        if self.playable and self.one_player:
            self.rows = self.cols = g2048.SIZE
        elif self.game_name == "othello":
            self.rows = self.cols = othello.SIZE
        elif self.playable:
            self.rows, self.cols, k = self.game.ROWS, self.game.COLS, self.game.K
            self._windows = line_windows(self.rows, self.cols, k)

    def info(self) -> dict[str, Any]:
        """What the page needs to draw the game (or to say why it cannot)."""
        if not self.playable:
            return {"game": self.game_name, "playable": False,
                    "message": f"The play page plays {', '.join(PLAYABLE[:-1])} and {PLAYABLE[-1]}; this "
                               f"fleet trains {self.game_name}. Start a fleet with --game tictactoe, "
                               f"--game connect4, --game othello or --game 2048 to play with its model."}
        moves_by = "direction" if self.one_player else "column" if self.game_name == "connect4" else "cell"
        info = {"game": self.game_name, "playable": True, "rows": self.rows, "cols": self.cols,
                "num_actions": self.game.spec.num_actions, "moves_by": moves_by,
                "simulations": self.simulations, "network": self.config.network,
                "rate_per_s": self.config.play_rate_per_s}
        if self.one_player:
            info["directions"] = list(DIRECTIONS)
            info["discount"] = self.game.spec.discount
        if self.game_name == "othello":
            info["pass_action"] = othello.PASS
        if not self.one_player:  # the opening position, as the rules set it up
            start = self.game.reset(1)
            info["start"] = {"board": self.game.positions(start)[0].astype(int).tolist(),
                             "to_play": int(self.game.to_play(start)[0]),
                             "legal": self.game.legal_actions(start)[0].astype(bool).tolist()}
        return info

    # -- the network ------------------------------------------------------------------------------

    def network(self):
        with self._lock:
            if self._network is None:
                if not self.config.network:
                    raise PlayError(503, "no network service configured (--network)")
                from services.network.client import NetworkClient  # loads TensorFlow's protos

                self._network = NetworkClient(self.config.network, model_name=self.config.model_name,
                                              timeout_s=self.config.play_timeout_s)
            return self._network

    def close(self) -> None:
        with self._lock:
            if self._network is not None:
                self._network.close()
                self._network = None

    # -- one request --------------------------------------------------------------------------------

    def play(self, board: Any, move: Any, model_player: Any = None, to_play: Any = None) -> dict[str, Any]:
        """Plays the person's `move` (None: none, e.g. the model opens) on `board`, then the
        model's answer if it is the model's turn (`model_player`, default 1: the model moves
        second). `to_play`: whose turn it is, Othello only (a pass leaves the board silent on
        it; default the discs' parity). 2048: `play_2048`. PlayError for anything the rules
        refuse."""
        if not self.playable:
            raise PlayError(400, self.info()["message"])
        if self.one_player:
            if model_player is not None:
                raise PlayError(400, f"model_player has no meaning in {self.game_name} (one player): leave it "
                                     f"out, got {_shown(model_player)}")
            return self.play_2048(board, move)
        if model_player is None:
            model_player = 1
        if model_player not in (0, 1):
            raise PlayError(400, f"model_player must be 0 (the model moves first) or 1, got {_shown(model_player)}")
        if to_play is not None and self.game_name != "othello":
            raise PlayError(400, f"to_play is for othello only ({self.game_name}'s board tells whose turn it is), "
                                 f"got {_shown(to_play)}")
        if to_play is not None and (isinstance(to_play, bool) or to_play not in (0, 1)):
            raise PlayError(400, f"to_play must be 0 (black) or 1 (white), got {_shown(to_play)}")
        state = self._state(board, to_play)
        if self._over(state):
            raise PlayError(400, "the game is over: start a new game")
        moves: list[dict[str, Any]] = []
        to_play = int(self.game.to_play(state)[0])
        if move is not None:
            if to_play == model_player:
                raise PlayError(400, "it is the model's turn, not yours (send no move to let it play)")
            action = self._check_move(state, move)
            state, outcome = self._step(state, action)
            moves.append({"player": "human", "action": action})
            self.metrics.play_moves.labels("human").inc()
            if outcome:
                return self._answer(state, moves, outcome, None)
            to_play = int(self.game.to_play(state)[0])
        elif to_play != model_player:
            raise PlayError(400, "it is your turn: send a move")
        model = self._model_move(state)
        state, outcome = self._step(state, model["action"])
        moves.append({"player": "model", "action": model["action"]})
        self.metrics.play_moves.labels("model").inc()
        return self._answer(state, moves, outcome, model)

    def play_2048(self, board: Any, move: Any) -> dict[str, Any]:
        """One move of 2048 on `board` (tile exponents [4, 4]; None: deal a new game, no move):
        the person's `move` (0 up, 1 right, 2 down, 3 left), or the model's when `move` is None.
        The spawn after the move is random (a server-side generator seeds the state's rng)."""
        if board is None:
            if move is not None:
                raise PlayError(400, f"a new game (board null) takes no move, got {_shown(move)}")
            state = self.game.reset(1, seed=self._seed())
            return self._answer_2048(state, [], None)
        state = self._state_2048(board)
        if not self.game.legal_actions(state)[0].any():
            raise PlayError(400, "the game is over (no move changes the board): start a new game")
        if move is not None:
            action, player, model = self._check_direction(state, move), "human", None
        else:
            model = self._model_move(state)
            action, player = model["action"], "model"
        state, reward, _terminated, _truncated = self.game.step(state, np.array([action], np.int32))
        self.metrics.play_moves.labels(player).inc()
        moves = [{"player": player, "action": action, "direction": DIRECTIONS[action],
                  "reward": float(reward[0])}]
        return self._answer_2048(state, moves, model)

    def _seed(self) -> int:
        with self._lock:
            return int(self._rng.integers(2**63))

    def _state_2048(self, board: Any):
        """The state of a board of tile exponents, its rng freshly seeded; PlayError naming what
        is wrong with the board otherwise."""
        size, top = g2048.SIZE, g2048.MAX_EXPONENT
        expected = f"expected a {size}x{size} grid of tile exponents 0..{top} (0 empty, e the tile 2^e)"
        try:
            positions = np.asarray(board)
        except (ValueError, TypeError):  # ragged rows
            raise PlayError(400, f"bad board: {expected}, got {_shown(board)}") from None
        if positions.dtype == object or not np.issubdtype(positions.dtype, np.integer):
            raise PlayError(400, f"bad board: {expected}, got {_shown(board)}")
        if positions.shape != (size, size):
            raise PlayError(400, f"bad board: {expected}, got shape {list(positions.shape)}")
        bad = np.argwhere((positions < 0) | (positions > top))
        if len(bad):
            r, c = (int(i) for i in bad[0])
            raise PlayError(400, f"bad board: tile exponents must be in [0, {top}] (0 empty, e the tile 2^e), "
                                 f"got {int(positions[r, c])} at row {r + 1}, column {c + 1}")
        return self.game.state_from_positions(positions[None].astype(np.int64), seed=self._seed())

    def _check_direction(self, state, move: Any) -> int:
        if isinstance(move, bool) or not isinstance(move, (int, np.integer)) or not 0 <= move < len(DIRECTIONS):
            raise PlayError(400, f"move must be an integer in [0, 4) (0 up, 1 right, 2 down, 3 left) "
                                 f"or null (the model moves), got {_shown(move)}")
        move = int(move)
        if not self.game.legal_actions(state)[0, move]:
            raise PlayError(400, f"illegal move: {DIRECTIONS[move]} changes nothing")
        return move

    def _answer_2048(self, state, moves: list[dict[str, Any]], model: dict[str, Any] | None) -> dict[str, Any]:
        board = self.game.positions(state)[0]
        legal = self.game.legal_actions(state)[0]
        over = not legal.any()
        max_tile = 2 ** int(board.max()) if board.max() > 0 else 0
        return {
            "game": self.game_name,
            "board": board.astype(int).tolist(),
            "to_play": 0,
            "legal": legal.astype(bool).tolist(),
            "moves": moves,
            "reward": math.fsum(m["reward"] for m in moves),
            "max_tile": max_tile,
            "model": model,
            "game_over": over,
            "winner": None,
            "message": f"Game over: largest tile {max_tile}." if over else None,
        }

    def _state(self, board: Any, to_play: int | None = None):
        try:
            positions = np.asarray(board)
            if positions.dtype == object or not np.issubdtype(positions.dtype, np.integer):
                raise ValueError(f"board: expected a {self.rows}x{self.cols} grid of 0, 1 and 2")
            return self.game.state_from_positions(positions[None].astype(np.int64),
                                                  to_play=None if to_play is None else np.array([to_play], np.int8))
        except (ValueError, TypeError) as error:
            raise PlayError(400, f"bad position: {error}") from None

    def _over(self, state) -> bool:
        if self.game_name == "othello":  # over when neither side can place a disc
            board = self.game.positions(state)
            for side in (0, 1):
                turned = self.game.state_from_positions(board, to_play=np.array([side], np.int8))
                if self.game.legal_actions(turned)[0, :othello.PASS].any():
                    return False
            return True
        flat = self.game.positions(state)[0].reshape(-1)
        lines = flat[self._windows]
        won = ((lines == lines[:, :1]) & (lines[:, :1] != 0)).all(axis=1).any()
        return bool(won) or not self.game.legal_actions(state)[0].any()

    def _check_move(self, state, move: Any) -> int:
        A = self.game.spec.num_actions
        if isinstance(move, bool) or not isinstance(move, (int, np.integer)) or not 0 <= move < A:
            raise PlayError(400, f"move must be an integer in [0, {A}), got {_shown(move)}")
        move = int(move)
        if not self.game.legal_actions(state)[0, move]:
            if self.game_name == "connect4":
                raise PlayError(400, f"illegal move: column {move + 1} is full")
            if self.game_name == "othello":
                if move == othello.PASS:
                    raise PlayError(400, "illegal move: you may pass only when you have no other move")
                r, c = divmod(move, self.cols)
                raise PlayError(400, f"illegal move: a disc at row {r + 1}, column {c + 1} flips nothing"
                                     + (" (the cell is taken)" if self.game.positions(state)[0, r, c] else ""))
            r, c = divmod(move, self.cols)
            raise PlayError(400, f"illegal move: the cell at row {r + 1}, column {c + 1} is taken")
        return move

    def _step(self, state, action: int):
        state, reward, terminated, truncated = self.game.step(state, np.array([action], np.int32))
        if not (terminated[0] or truncated[0]):
            return state, None
        # Rewards are from the view of the player who just moved.
        return state, {"mover_result": int(np.sign(reward[0]))}

    def _model_move(self, state) -> dict[str, Any]:
        import grpc

        from services.agent.pipeline import PipelinedSearch
        from services.agent.search import SearchConfig

        settings = self.game.settings.replace(num_simulations=self.simulations)
        network = self.network()
        search = PipelinedSearch(network, SearchConfig.from_settings(settings), batch_size=1,
                                 num_actions=self.game.spec.num_actions, groups=1,
                                 two_player=self.game.spec.num_players == 2,
                                 timeout_s=self.config.play_timeout_s)
        legal = self.game.legal_actions(state)
        started = time.perf_counter()
        try:
            found = search.search(self.game.observation(state), legal, np.random.default_rng(),
                                  training=False, temperature=0.0)
        except grpc.RpcError as error:
            self.metrics.play_errors.labels("unavailable").inc()
            code = error.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise PlayError(503, f"the network at {self.config.network} serves no model version yet "
                                     f"({error.details()}); wait for the trainer's first export") from None
            raise PlayError(503, f"network unreachable at {self.config.network} ({code.name}: "
                                 f"{error.details()}); your move was not played") from None
        seconds = time.perf_counter() - started
        self.metrics.play_search_seconds.observe(seconds)
        action = int(found.greedy_actions[0])
        policy = found.policies[0]
        if not legal[0, action]:  # the search masks illegal moves at the root; never trust blindly
            action = int(np.argmax(np.where(legal[0], policy, -1.0)))
        return {"action": action, "value": float(found.root_values[0]),
                "policy": [round(float(p), 4) for p in policy], "version": int(found.versions[0]),
                "simulations": self.simulations, "seconds": round(seconds, 4)}

    def _answer(self, state, moves: list[dict[str, Any]], outcome: dict[str, Any] | None,
                model: dict[str, Any] | None) -> dict[str, Any]:
        board = self.game.positions(state)[0]
        over = outcome is not None
        winner, message = None, None
        if over:
            mover, other = moves[-1]["player"], {"human": "model", "model": "human"}[moves[-1]["player"]]
            winner = {1: mover, -1: other, 0: "draw"}[outcome["mover_result"]]
            message = {"human": "You win!", "model": "The model wins.", "draw": "Draw."}[winner]
        answer = {
            "game": self.game_name,
            "board": board.astype(int).tolist(),
            "to_play": int(self.game.to_play(state)[0]),
            "legal": self.game.legal_actions(state)[0].astype(bool).tolist() if not over else
            [False] * self.game.spec.num_actions,
            "moves": moves,
            "model": model,
            "game_over": over,
            "winner": winner,
            "message": message,
        }
        if self.game_name == "othello":
            answer["discs"] = [int((board == 1).sum()), int((board == 2).sum())]
            if over and winner != "draw":
                answer["message"] += f" {answer['discs'][0]}–{answer['discs'][1]}"
        return answer
