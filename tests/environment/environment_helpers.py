"""Helpers of the environment tests: the in-process reference a session must match."""

from __future__ import annotations

import numpy as np

import games
from games.base import Game
from services.environment.wire import TimeStep

# --max-games-per-session of the shared test server.
MAX_GAMES_PER_SESSION = 1000


def loadable_games() -> list[str]:
    """The registered games whose modules import (others are still being written)."""
    names = []
    for name in games.names():
        try:
            games.make(name)
        except Exception:  # noqa: BLE001 - a game module that does not load yet
            continue
        names.append(name)
    return names


class InProcess:
    """The same games played in-process with `Game` alone: what a session must reproduce.

    A session's rule: start as game.reset(B, seed); reset k games by
    state.put(indices, game.reset(k, state.rng)).
    """

    def __init__(self, game: Game, num_games: int, seed: int) -> None:
        self.game = game
        self.state = game.reset(num_games, seed=seed)
        self.reward = np.zeros(num_games, np.float32)
        self.terminated = np.zeros(num_games, bool)
        self.truncated = np.zeros(num_games, bool)
        self.num_steps = 0

    def step(self, actions: np.ndarray, auto_reset: bool = False) -> TimeStep:
        self.state, self.reward, self.terminated, self.truncated = self.game.step(
            self.state, np.asarray(actions))
        self.num_steps += 1
        ended = np.flatnonzero(self.terminated | self.truncated)
        if auto_reset and len(ended):
            self.state = self.state.put(ended, self.game.reset(len(ended), seed=self.state.rng))
        return self.time_step()

    def reset(self, indices=None) -> TimeStep:
        indices = np.arange(self.state.batch_size) if indices is None or len(indices) == 0 else np.asarray(indices)
        self.state = self.state.put(indices, self.game.reset(len(indices), seed=self.state.rng))
        for array, value in ((self.reward, 0.0), (self.terminated, False), (self.truncated, False)):
            array[indices] = value
        return self.time_step()

    def time_step(self) -> TimeStep:
        return TimeStep(observation=self.game.observation(self.state), reward=self.reward.copy(),
                        terminated=self.terminated.copy(), truncated=self.truncated.copy(),
                        legal_actions=self.game.legal_actions(self.state),
                        to_play=self.game.to_play(self.state), num_steps=self.num_steps)


def random_legal_actions(rng: np.random.Generator, legal: np.ndarray) -> np.ndarray:
    """One uniformly random legal action per game: int32 [B]."""
    return np.argmax(np.where(legal, rng.random(legal.shape), -1.0), axis=1).astype(np.int32)


def assert_same(actual: TimeStep, expected: TimeStep, where: str = "") -> None:
    """Equal arrays, bit for bit, and dtypes as the protocol says."""
    for field in ("observation", "reward", "terminated", "truncated", "legal_actions", "to_play"):
        a, e = getattr(actual, field), getattr(expected, field)
        np.testing.assert_array_equal(a, e, err_msg=f"{field} differs {where}")
    assert actual.observation.dtype == np.float32
    assert actual.reward.dtype == np.float32
    assert actual.terminated.dtype == actual.truncated.dtype == actual.legal_actions.dtype == np.bool_
    assert actual.to_play.dtype == np.int32
    assert actual.num_steps == expected.num_steps, where
