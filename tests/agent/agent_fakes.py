"""Small fakes of the agent's peers: an environment over a real in-process Session whose calls
can be made to fail (before or after the step is applied), a network that answers at once and
records the version each request pinned, and a logger into memory."""

from __future__ import annotations

import io
import json
from typing import Mapping

import grpc
import numpy as np

import games
from services.environment.client import OpenedSession
from services.environment.sessions import Session
from services.network.client import Inference
from tests.grpc_fakes import FakeRpcError


class FakeEnvironment:
    """EnvironmentClient's calls over one in-process Session.

    Script failures with `step_failures` (each `(code, applied)`: the next Step fails with
    `code`, after being applied when `applied`, as when only its answer was lost) and
    `observe_failures` (codes of the next Observe calls). Set `late_steps = []` to have a
    Step that fails with DEADLINE_EXCEEDED (not applied) played just after the next Observe
    answers, as a Step cut by its deadline that still reaches the server. `step_calls` and
    `observe_calls` count the calls made.
    """

    address = "127.0.0.1:1"

    def __init__(self, game_name: str) -> None:
        self.game_name = game_name
        self.game = games.make(game_name)
        self.session: Session | None = None
        self.step_failures: list[tuple[grpc.StatusCode, bool]] = []
        self.observe_failures: list[grpc.StatusCode] = []
        self.step_calls = 0
        self.observe_calls = 0
        # Steps that failed with DEADLINE_EXCEEDED but reach the session later (None: never)
        self.late_steps: list | None = None
        self.closed: list[str] = []

    def open(self, game: str = "", num_games: int = 1, seed: int = 0, timeout_s=None) -> OpenedSession:
        self.session = Session("s1", self.game_name, self.game, num_games, seed, now=0.0)
        return OpenedSession("s1", self.game.spec, self.session.time_step())

    def step(self, session_id: str, actions, auto_reset: bool = False, timeout_s=None,
             expected_num_steps: int | None = None):
        self.step_calls += 1
        if self.step_failures:
            code, applied = self.step_failures.pop(0)
            if applied:
                self.session.step(np.asarray(actions), auto_reset)
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED and self.late_steps is not None:
                # still on its way: played when the next Observe has answered
                self.late_steps.append((np.asarray(actions), auto_reset, expected_num_steps))
            raise FakeRpcError(code, "step failed")
        self._check_expected(expected_num_steps)
        return self.session.step(np.asarray(actions), auto_reset)[0]

    def _check_expected(self, expected_num_steps: int | None) -> None:
        # as the environment server does (services/environment/server.py, Step)
        if expected_num_steps is not None and expected_num_steps != self.session.num_steps:
            raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"expected_num_steps: the session has played {self.session.num_steps} "
                               f"steps, not {expected_num_steps}")

    def observe(self, session_id: str, timeout_s=None):
        self.observe_calls += 1
        if self.observe_failures:
            raise FakeRpcError(self.observe_failures.pop(0), "observe failed")
        time_step = self.session.time_step()
        while self.late_steps:  # a Step cut by its deadline reaches the session after all
            actions, auto_reset, expected = self.late_steps.pop(0)
            try:
                self._check_expected(expected)
                self.session.step(actions, auto_reset)
            except FakeRpcError:
                pass  # refused by the server: nobody is waiting for that answer
        return time_step

    def close(self, session_id: str, timeout_s=None) -> None:
        self.closed.append(session_id)

    def close_channel(self) -> None:
        pass


class _Done:
    def __init__(self, inference: Inference) -> None:
        self._inference = inference

    def result(self, timeout=None) -> Inference:
        return self._inference


class FakeNetwork:
    """Answers every Predict at once with zeros (uniform policy), hidden states [b, 4].

    `newest` is the version an unpinned request gets; `export_after` requests later it becomes
    `newest + 1` (the trainer exported a version mid-way). `pinned` records the version each
    request asked for (None: unpinned).
    """

    address = "127.0.0.1:2"

    def __init__(self, num_actions: int, newest: int = 2, export_after: int | None = None) -> None:
        self.num_actions = num_actions
        self.newest = newest
        self.export_after = export_after
        self.pinned: list[int | None] = []

    def wait_until_available(self, version=None, timeout_s: float = 120.0, stop=None) -> int:
        return self.newest

    def predict_future(self, signature: str, inputs: Mapping[str, np.ndarray], version=None,
                       timeout_s=None) -> _Done:
        self.pinned.append(version)
        if self.export_after is not None and len(self.pinned) == self.export_after:
            self.newest += 1
        b = len(next(iter(inputs.values())))
        zeros = np.zeros(b, np.float32)
        return _Done(Inference(hidden_state=np.zeros((b, 4), np.float32), value=zeros, reward=zeros,
                               policy_logits=np.zeros((b, self.num_actions), np.float32),
                               version=self.newest if version is None else int(version)))

    def close(self) -> None:
        pass


class FakeReplay:
    """add_games that runs `behaviour(records, timeout_s)` (default: acknowledge)."""

    def __init__(self, behaviour=None) -> None:
        self.behaviour = behaviour
        self.calls = 0
        self.stored: list[str] = []

    def add_games(self, records, timeout_s=None):
        self.calls += 1
        if self.behaviour is not None:
            self.behaviour(records, timeout_s)
        self.stored.extend(r.id for r in records)

    def close(self) -> None:
        pass


class LogSink:
    """A logger writing into memory; `events(name)` parses what was logged."""

    def __init__(self, service: str = "agent") -> None:
        from services.common.logs import get_logger

        self.stream = io.StringIO()
        self.log = get_logger(service, self.stream)

    def events(self, name: str | None = None) -> list[dict]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines() if line]
        return [e for e in lines if name is None or e["event"] == name]
