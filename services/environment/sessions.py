"""Sessions: B games of one kind, stepped together, held in this process.

A `Session` owns one game's `State` of B games (and so its random stream), a per-game `done`
mask, the last time step it returned, a lock and its last-used time. A `SessionStore` maps
session ids (uuid4) to sessions, thread-safely, and closes the ones left idle.

Nothing here knows gRPC: bad requests raise `SessionError` carrying the name of the gRPC status
code and a message that names the field; the servicer turns it into the status. Every check
runs before anything changes, so a rejected call leaves the session exactly as it was.

Determinism: a session opened with `seed` starts as `game.reset(B, seed)`; its later resets of k
games (Reset, or Step with auto_reset) draw `game.reset(k, state.rng)` and `put` them at their
indices in the order given. The same seed and calls therefore give the same observations as
the same calls on the game in-process.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import uuid
from typing import Callable, Iterator, Sequence

import numpy as np

from games.base import Game, State
from services.common.errors import ServiceError
from services.environment.wire import TimeStep  # services.agent.selfplay imports it from here too

# Ids of closed and expired sessions remembered, so that a late call learns what happened to
# its session and a retried Close succeeds.
ENDED_SESSIONS_REMEMBERED = 10_000


class SessionError(ServiceError):
    """A request the environment service cannot serve (see ServiceError)."""


def invalid(message: str) -> SessionError:
    return SessionError("INVALID_ARGUMENT", message)


class Session:
    """B games of one game, their random stream and what the last call returned.

    Callers hold `lock` around `step`, `reset` and `time_step` (`SessionStore.use` does).
    """

    def __init__(self, session_id: str, game_name: str, game: Game, num_games: int, seed: int,
                 now: float) -> None:
        self.id = session_id
        self.game_name = game_name
        self.game = game
        self.num_games = num_games
        self.seed = seed
        self.lock = threading.Lock()
        self.last_used = now
        self.closed = False
        self.num_steps = 0
        self.state: State = game.reset(num_games, seed=seed)
        self.done = np.zeros(num_games, bool)  # ended on a Step without auto_reset: Reset first
        self._time_step = self._observe(self.state, np.zeros(num_games, np.float32),
                                        np.zeros(num_games, bool), np.zeros(num_games, bool))

    def _observe(self, state: State, reward: np.ndarray, terminated: np.ndarray,
                 truncated: np.ndarray, num_steps: int = 0) -> TimeStep:
        return TimeStep(
            observation=np.asarray(self.game.observation(state), np.float32),
            reward=reward, terminated=terminated, truncated=truncated,
            legal_actions=np.asarray(self.game.legal_actions(state), bool),
            to_play=np.asarray(self.game.to_play(state), np.int32),
            num_steps=num_steps)

    def time_step(self) -> TimeStep:
        """The last time step returned, unchanged."""
        return self._time_step

    def step(self, actions: np.ndarray, auto_reset: bool) -> tuple[TimeStep, int]:
        """Plays one action per game; returns the new time step and how many games ended."""
        actions = self._check_actions(np.asarray(actions))
        state, reward, terminated, truncated = self.game.step(self.state, actions)
        reward = np.asarray(reward, np.float32)
        terminated = np.asarray(terminated, bool)
        truncated = np.asarray(truncated, bool)
        ended = terminated | truncated
        num_ended = int(ended.sum())
        if auto_reset and num_ended:
            indices = np.flatnonzero(ended)
            state = state.put(indices, self.game.reset(len(indices), seed=state.rng))
            done = np.zeros(self.num_games, bool)
        else:
            done = ended
        time_step = self._observe(state, reward, terminated, truncated, self.num_steps + 1)
        self.state, self.done, self._time_step = state, done, time_step
        self.num_steps += 1
        return time_step, num_ended

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        if not np.issubdtype(actions.dtype, np.integer):
            raise invalid(f"actions: dtype must be an integer type (int32), got {actions.dtype}")
        if actions.shape != (self.num_games,):
            raise invalid(f"actions: shape must be [{self.num_games}] (one action per game of the "
                          f"session), got {list(actions.shape)}")
        num_actions = self.game.spec.num_actions
        out_of_range = (actions < 0) | (actions >= num_actions)
        if out_of_range.any():
            i = int(np.argmax(out_of_range))
            raise invalid(f"actions: action {int(actions[i])} of game {i} is out of range "
                          f"[0, {num_actions})")
        if self.done.any():
            i = int(np.argmax(self.done))
            how = "terminated" if self._time_step.terminated[i] else "truncated"
            raise SessionError(
                "FAILED_PRECONDITION",
                f"actions: game {i} has ended ({how}) and must be reset before it is stepped again "
                f"(Reset it, or step with auto_reset so that ended games restart at once)")
        legal = self._time_step.legal_actions[np.arange(self.num_games), actions]
        if not legal.all():
            i = int(np.argmin(legal))
            allowed = np.flatnonzero(self._time_step.legal_actions[i]).tolist()
            raise invalid(f"actions: action {int(actions[i])} is illegal in game {i} "
                          f"(legal actions: {allowed})")
        return actions.astype(np.int32, copy=False)

    def reset(self, game_indices: Sequence[int] | np.ndarray | None = None) -> TimeStep:
        """Resets the games at `game_indices` (distinct, in [0, B)); None or empty: all of them."""
        indices = self._check_indices(game_indices)
        fresh = self.game.reset(len(indices), seed=self.state.rng)
        state = self.state.put(indices, fresh)
        last = self._time_step
        reward, terminated, truncated = last.reward.copy(), last.terminated.copy(), last.truncated.copy()
        reward[indices], terminated[indices], truncated[indices] = 0.0, False, False
        done = self.done.copy()
        done[indices] = False
        time_step = self._observe(state, reward, terminated, truncated, self.num_steps)
        self.state, self.done, self._time_step = state, done, time_step
        return time_step

    def _check_indices(self, game_indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
        if game_indices is None or len(game_indices) == 0:
            return np.arange(self.num_games)
        indices = np.asarray(game_indices)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise invalid(f"game_indices: must be a list of integers, got {game_indices!r}")
        out_of_range = (indices < 0) | (indices >= self.num_games)
        if out_of_range.any():
            raise invalid(f"game_indices: index {int(indices[np.argmax(out_of_range)])} is out of "
                          f"range [0, {self.num_games})")
        values, counts = np.unique(indices, return_counts=True)
        if (counts > 1).any():
            raise invalid(f"game_indices: index {int(values[np.argmax(counts > 1)])} appears more "
                          f"than once")
        return indices.astype(np.int64)


class SessionStore:
    """The open sessions of one server, by id; thread-safe.

    Args:
      max_sessions: the most sessions open at once.
      max_games_per_session: the largest B of one session.
      clock: monotonic seconds (a fake one in tests).
      max_total_games: the most games all open sessions hold together (None: no bound beyond
        max_sessions * max_games_per_session).
    """

    def __init__(self, max_sessions: int, max_games_per_session: int,
                 clock: Callable[[], float] = time.monotonic,
                 max_total_games: int | None = None) -> None:
        self.max_sessions = max_sessions
        self.max_games_per_session = max_games_per_session
        self.max_total_games = (max_sessions * max_games_per_session if max_total_games is None
                                else max_total_games)
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        # Sessions and games being built outside the lock, counted against the limits so that
        # Opens running at the same time cannot together go beyond them.
        self._opening = 0
        self._opening_games = 0
        self._games = 0  # games held by self._sessions
        self._ended: collections.OrderedDict[str, str] = collections.OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def num_games(self) -> int:
        """Games held by all open sessions."""
        with self._lock:
            return self._games

    def open(self, game_name: str, game: Game, num_games: int, seed: int) -> Session:
        """A new session of `num_games` fresh games of `game` (game.reset(num_games, seed))."""
        if not 1 <= num_games <= self.max_games_per_session:
            raise invalid(f"num_games: must be in [1, {self.max_games_per_session}] "
                          f"(the server's --max-games-per-session), got {num_games}")
        if seed < 0:
            raise invalid(f"seed: must be >= 0, got {seed}")
        with self._lock:
            in_use = self._games + self._opening_games
            if in_use + num_games > self.max_total_games:
                raise SessionError(
                    "RESOURCE_EXHAUSTED",
                    f"num_games: {num_games} more games would go beyond this server's maximum "
                    f"of {self.max_total_games} games in all sessions (--max-total-games): "
                    f"{in_use} are in use by {len(self._sessions) + self._opening} sessions, "
                    f"{max(self.max_total_games - in_use, 0)} are free; close sessions or wait "
                    f"for idle ones to expire")
            if len(self._sessions) + self._opening >= self.max_sessions:
                raise SessionError(
                    "RESOURCE_EXHAUSTED",
                    f"Open: this server already holds its maximum of {self.max_sessions} "
                    f"sessions (--max-sessions); close sessions or wait for idle ones to expire")
            self._opening += 1
            self._opening_games += num_games
        session: Session | None = None
        try:
            session = Session(str(uuid.uuid4()), game_name, game, num_games, seed, self.clock())
        finally:
            with self._lock:
                self._opening -= 1
                self._opening_games -= num_games
                if session is not None:
                    self._sessions[session.id] = session
                    self._games += num_games
        return session

    def get(self, session_id: str) -> Session:
        """The open session `session_id`, marked used now; SessionError NOT_FOUND otherwise."""
        if not session_id:
            raise invalid("session_id: empty; pass the id that Open returned")
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise self._not_found(session_id)
            session.last_used = self.clock()
            return session

    def _not_found(self, session_id: str) -> SessionError:
        why = self._ended.get(session_id)
        if why is None:
            return SessionError("NOT_FOUND", f"session_id: unknown session {session_id!r}")
        return SessionError("NOT_FOUND", f"session_id: session {session_id!r} {why}")

    @contextlib.contextmanager
    def use(self, session_id: str, timeout_s: float | None = None) -> Iterator[Session]:
        """The session, locked for the caller alone and marked used before and after.

        Waits at most `timeout_s` (None: as long as it takes) for a call already using it.
        """
        session = self.get(session_id)
        if not session.lock.acquire(timeout=-1 if timeout_s is None else max(timeout_s, 0.0)):
            raise SessionError("ABORTED", f"session_id: session {session_id!r} is busy with "
                                          f"another call that did not finish in time")
        try:
            if session.closed:  # closed or expired while this call waited for the lock
                with self._lock:
                    raise self._not_found(session_id)
            yield session
        finally:
            session.last_used = self.clock()
            session.lock.release()

    def close(self, session_id: str) -> Session | None:
        """Closes a session; None if it was already closed or expired (closing is idempotent).
        SessionError NOT_FOUND for an id this store never issued (or has forgotten)."""
        if not session_id:
            raise invalid("session_id: empty; pass the id that Open returned")
        with self._lock:
            session = self._sessions.pop(session_id, None)
            if session is None:
                if session_id in self._ended:
                    return None
                raise self._not_found(session_id)
            session.closed = True
            self._games -= session.num_games
            self._remember(session_id, "was closed")
            return session

    def reap(self, timeout_s: float) -> list[tuple[Session, float]]:
        """Closes the sessions unused for `timeout_s` or longer, skipping any a call is using.
        Returns them with their idle seconds."""
        reaped = []
        with self._lock:
            now = self.clock()
            for session_id, session in list(self._sessions.items()):
                idle_s = now - session.last_used
                if idle_s < timeout_s or not session.lock.acquire(blocking=False):
                    continue
                try:
                    session.closed = True
                    del self._sessions[session_id]
                    self._games -= session.num_games
                    self._remember(session_id, f"expired after {timeout_s:g}s without calls "
                                               f"(the server's --session-timeout-s)")
                finally:
                    session.lock.release()
                reaped.append((session, idle_s))
        return reaped

    def close_all(self) -> list[Session]:
        """Closes every session (at shutdown)."""
        with self._lock:
            sessions = list(self._sessions.values())
            for session in sessions:
                session.closed = True
                self._remember(session.id, "was closed when the server stopped")
            self._sessions.clear()
            self._games = 0
        return sessions

    def _remember(self, session_id: str, why: str) -> None:
        self._ended[session_id] = why
        while len(self._ended) > ENDED_SESSIONS_REMEMBERED:
            self._ended.popitem(last=False)
