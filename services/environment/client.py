"""EnvironmentClient: the environment service from Python, NumPy in and out.

    with EnvironmentClient("127.0.0.1:50000") as env:
        session, spec, time_step = env.open("cartpole", num_games=256, seed=0)
        while ...:
            actions = policy(time_step.observation, time_step.legal_actions)   # int32 [256]
            time_step = env.step(session, actions, auto_reset=True)
        env.close(session)

Every call has a deadline (`timeout_s`, per client and per call). Calls that are safe to repeat
are retried on UNAVAILABLE with backoff by the channel's service config: GetSpec, Observe and
Close (closing a closed session succeeds), and Reset, whose effect is the same when repeated (the
games it names are freshly started; only the draw from the session's random stream differs, so
bit-exact replay of a seed holds for calls that were not retried). Open (a retry would open a
second session) and Step (a retry would play twice) are never retried: after a Step that got no
answer, `observe(session).num_steps` tells whether it was applied. Failures raise `grpc.RpcError`
with the server's status code and message.

A leaf: the client imports the service's wire types and codecs (`services.environment.wire`)
and nothing of its server, so it loads no session store and no TensorFlow.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from games.base import GameSpec
from protos import environment_pb2, environment_pb2_grpc
from services.common.channels import DEFAULT_DEADLINE_S, make_channel
from services.common.tensors import to_tensor
from services.environment.wire import SERVICE_NAME, TimeStep, spec_from_proto, time_step_from_proto

IDEMPOTENT_METHODS = ("GetSpec", "Observe", "Close", "Reset")


class OpenedSession(NamedTuple):
    session_id: str
    spec: GameSpec
    time_step: TimeStep


class EnvironmentClient:
    """A connection to one environment server.

    Args:
      address: "host:port" of the server.
      timeout_s: deadline of every call unless the call passes its own.
    """

    def __init__(self, address: str, timeout_s: float = DEFAULT_DEADLINE_S) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = make_channel(address, idempotent={SERVICE_NAME: IDEMPOTENT_METHODS})
        self._stub = environment_pb2_grpc.EnvironmentStub(self._channel)

    def _timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    def get_spec(self, game: str = "", timeout_s: float | None = None) -> GameSpec:
        """The spec of `game` ("" = the server's default game)."""
        proto = self._stub.GetSpec(environment_pb2.GetSpecRequest(game=game),
                                   timeout=self._timeout(timeout_s))
        return spec_from_proto(proto)

    def open(self, game: str = "", num_games: int = 1, seed: int = 0,
             timeout_s: float | None = None) -> OpenedSession:
        """A new session of `num_games` games of `game` ("" = the server's default game)."""
        response = self._stub.Open(
            environment_pb2.OpenRequest(game=game, num_games=num_games, seed=seed),
            timeout=self._timeout(timeout_s))
        return OpenedSession(response.session_id, spec_from_proto(response.spec),
                             time_step_from_proto(response.time_step))

    def reset(self, session_id: str, game_indices: Sequence[int] | np.ndarray | None = None,
              timeout_s: float | None = None) -> TimeStep:
        """Resets the games at `game_indices` (None: all of them)."""
        indices = [] if game_indices is None else [int(i) for i in game_indices]
        proto = self._stub.Reset(environment_pb2.ResetRequest(session_id=session_id, game_indices=indices),
                                 timeout=self._timeout(timeout_s))
        return time_step_from_proto(proto)

    def step(self, session_id: str, actions: np.ndarray, auto_reset: bool = False,
             timeout_s: float | None = None, expected_num_steps: int | None = None) -> TimeStep:
        """Plays `actions` (ints [B], sent as int32) in the session's B games.

        `expected_num_steps`: play only if the session has played exactly this many steps
        (else FAILED_PRECONDITION and nothing changes), so that resending is safe."""
        actions = np.asarray(actions)
        if np.issubdtype(actions.dtype, np.integer):
            actions = actions.astype(np.int32, copy=False)
        proto = self._stub.Step(
            environment_pb2.StepRequest(session_id=session_id, actions=to_tensor(actions),
                                        auto_reset=auto_reset, expected_num_steps=expected_num_steps),
            timeout=self._timeout(timeout_s))
        return time_step_from_proto(proto)

    def observe(self, session_id: str, timeout_s: float | None = None) -> TimeStep:
        """The session's current time step, changing nothing."""
        proto = self._stub.Observe(environment_pb2.ObserveRequest(session_id=session_id),
                                   timeout=self._timeout(timeout_s))
        return time_step_from_proto(proto)

    def close(self, session_id: str, timeout_s: float | None = None) -> None:
        """Ends a session (a session already closed or expired: nothing to do)."""
        self._stub.Close(environment_pb2.CloseRequest(session_id=session_id),
                         timeout=self._timeout(timeout_s))

    def close_channel(self) -> None:
        """Closes the connection (the server's sessions stay open until closed or expired)."""
        self._channel.close()

    def __enter__(self) -> "EnvironmentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_channel()
