"""The environment servicer: gRPC `mufleet.Environment` over a `SessionStore`.

One server hosts any registered game: `EnvironmentConfig.game` is its default (what an empty
`game` field means, loaded at start-up) and every other game of `games.names()` is loaded on its
first Open or GetSpec. Calls on different sessions run in parallel on the server's threads; calls
on one session take turns on its lock. A reaper thread closes sessions left idle for
`session_timeout_s`.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, TypeVar

import grpc
import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry

import games
from games.base import Game
from protos import environment_pb2, environment_pb2_grpc, tensor_pb2
from services.common.errors import serve_rpc
from services.common.logs import EventLogger, get_logger
from services.common.metrics import serve_metrics
from services.common.server import ServiceServer
from services.common.tensors import TensorError, TensorTooLarge, from_tensor
from services.environment.config import EnvironmentConfig
from services.environment.metrics import EnvironmentMetrics
from services.environment.limits import message_limits
from services.environment.sessions import SessionError, SessionStore, invalid
from services.environment.wire import SERVICE_NAME, spec_to_proto, time_step_to_proto

if TYPE_CHECKING:
    from services.environment.client import EnvironmentClient

T = TypeVar("T")


def decode_tensor(tensor: tensor_pb2.Tensor, name: str) -> np.ndarray:
    """A request's tensor field as a read-only array; SessionError INVALID_ARGUMENT naming `name`
    for any tensor that does not decode (unknown dtype, negative dimensions, bytes that disagree
    with the shape, element counts past int64), RESOURCE_EXHAUSTED for one over a size limit."""
    try:
        return from_tensor(tensor, name)
    except TensorTooLarge as error:
        raise SessionError("RESOURCE_EXHAUSTED", str(error)) from error
    except TensorError as error:
        raise invalid(str(error)) from error
    except ValueError as error:
        # NumPy refusing a shape the byte count allowed (more than 64 dimensions, a zero-size
        # array whose other dimensions overflow): still the client's tensor, not a server bug.
        raise invalid(f"{name}: shape {list(tensor.shape)} cannot be decoded: {error}") from error


class EnvironmentServicer(environment_pb2_grpc.EnvironmentServicer):
    """Serves `mufleet.Environment`.

    Args:
      config: what to host and the limits.
      log: where events go (session_opened, session_closed, session_expired, request_rejected).
      metrics: a fresh `EnvironmentMetrics` per process by default.
      clock: monotonic seconds, for the session store.
    """

    def __init__(self, config: EnvironmentConfig, log: EventLogger,
                 metrics: EnvironmentMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.log = log
        self.metrics = metrics or EnvironmentMetrics()
        self.store = SessionStore(config.max_sessions, config.max_games_per_session, clock,
                                  max_total_games=config.max_total_games)
        self._games: dict[str, Game] = {}
        self._games_lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self._game(config.game)  # the default game must load: fail at start-up, not on a call

    # --- lifecycle -------------------------------------------------------------------------

    def start_reaper(self) -> None:
        """Starts the thread that closes idle sessions."""
        self._reaper = threading.Thread(target=self._reap_forever, name="session-reaper", daemon=True)
        self._reaper.start()

    def _reap_forever(self) -> None:
        while not self._stop.wait(self.config.reap_interval_s):
            self.reap()

    def reap(self) -> int:
        """Closes the sessions idle for `session_timeout_s`; returns how many."""
        reaped = self.store.reap(self.config.session_timeout_s)
        for session, idle_s in reaped:
            self.metrics.sessions_expired.labels(session.game_name).inc()
            self.log.info("session_expired", session_id=session.id, game=session.game_name,
                          num_games=session.num_games, idle_s=round(idle_s, 3),
                          session_timeout_s=self.config.session_timeout_s)
        if reaped:
            self._update_gauges()
        return len(reaped)

    def stop(self) -> None:
        """Stops the reaper and closes every session (after the gRPC server has stopped)."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join()
        closed = self.store.close_all()
        self._update_gauges()
        if closed:
            self.log.info("sessions_closed_at_stop", sessions=len(closed))

    def _update_gauges(self) -> None:
        self.metrics.sessions.set(len(self.store))
        self.metrics.games.set(self.store.num_games())

    # --- helpers ---------------------------------------------------------------------------

    def _game(self, name: str) -> tuple[str, Game]:
        """(name, game) for a request's `game` field; "" is the default game."""
        name = name or self.config.game
        with self._games_lock:
            game = self._games.get(name)
            if game is not None:
                return name, game
            if name not in games.names():
                raise invalid(f"game: unknown game {name!r}; this server hosts "
                              f"{', '.join(games.names())} (default {self.config.game!r})")
            try:
                game = games.make(name)
            except Exception as error:  # registered, but its module does not load
                raise SessionError("UNIMPLEMENTED", f"game: {name!r} is registered but cannot be "
                                                    f"loaded on this server: {error!r}") from error
            self._games[name] = game
            return name, game

    def _serve(self, method: str, context: grpc.ServicerContext, body: Callable[[], T]) -> T:
        """Runs `body`, timing it; a SessionError (or a crash: INTERNAL) aborts the call."""
        return serve_rpc(method, context, body, self.log, self.metrics.request_seconds, self.metrics.errors)

    # --- RPCs ------------------------------------------------------------------------------

    def GetSpec(self, request: environment_pb2.GetSpecRequest, context) -> environment_pb2.GameSpec:
        return self._serve("GetSpec", context, lambda: spec_to_proto(self._game(request.game)[1].spec))

    def Open(self, request: environment_pb2.OpenRequest, context) -> environment_pb2.OpenResponse:
        def body() -> environment_pb2.OpenResponse:
            name, game = self._game(request.game)
            session = self.store.open(name, game, request.num_games, request.seed)
            time_step = session.time_step()
            self.metrics.sessions_opened.labels(name).inc()
            self._update_gauges()
            self.log.info("session_opened", session_id=session.id, game=name,
                          num_games=session.num_games, seed=session.seed, peer=context.peer())
            return environment_pb2.OpenResponse(session_id=session.id, spec=spec_to_proto(game.spec),
                                                time_step=time_step_to_proto(time_step))
        return self._serve("Open", context, body)

    def Reset(self, request: environment_pb2.ResetRequest, context) -> environment_pb2.TimeStep:
        def body() -> environment_pb2.TimeStep:
            with self.store.use(request.session_id, context.time_remaining()) as session:
                time_step = session.reset(list(request.game_indices))
            return time_step_to_proto(time_step)
        return self._serve("Reset", context, body)

    def Step(self, request: environment_pb2.StepRequest, context) -> environment_pb2.TimeStep:
        def body() -> environment_pb2.TimeStep:
            if not request.HasField("actions"):
                raise invalid("actions: missing; send an int32 tensor of shape [num_games]")
            actions = decode_tensor(request.actions, "actions")
            expected = request.expected_num_steps if request.HasField("expected_num_steps") else None
            with self.store.use(request.session_id, context.time_remaining()) as session:
                if expected is not None and expected != session.num_steps:
                    raise SessionError(
                        "FAILED_PRECONDITION",
                        f"expected_num_steps: the session has played {session.num_steps} steps, not "
                        f"{expected}; nothing was played (observe the session to learn its state)")
                time_step, num_ended = session.step(actions, request.auto_reset)
            self.metrics.step_requests.labels(session.game_name).inc()
            self.metrics.steps.labels(session.game_name).inc(session.num_games)
            if num_ended:
                self.metrics.episodes.labels(session.game_name).inc(num_ended)
            return time_step_to_proto(time_step)
        return self._serve("Step", context, body)

    def Observe(self, request: environment_pb2.ObserveRequest, context) -> environment_pb2.TimeStep:
        def body() -> environment_pb2.TimeStep:
            with self.store.use(request.session_id, context.time_remaining()) as session:
                time_step = session.time_step()
            return time_step_to_proto(time_step)
        return self._serve("Observe", context, body)

    def Close(self, request: environment_pb2.CloseRequest, context) -> environment_pb2.CloseResponse:
        def body() -> environment_pb2.CloseResponse:
            session = self.store.close(request.session_id)
            if session is not None:
                self._update_gauges()
                self.log.info("session_closed", session_id=session.id, game=session.game_name,
                              num_games=session.num_games, num_steps=session.num_steps)
            return environment_pb2.CloseResponse()
        return self._serve("Close", context, body)


class EnvironmentServer(ServiceServer):
    """A running environment service (`serve`): its gRPC server, servicer and /metrics.
    `stop()` finishes in-flight calls, then stops the reaper and closes every session."""

    def __init__(self, servicer: EnvironmentServicer, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.servicer = servicer

    def stop(self, grace_s: float | None = None) -> None:
        if self.stopped:
            return
        super().stop(grace_s)
        self.servicer.stop()

    def client(self, timeout_s: float | None = None) -> "EnvironmentClient":
        """A client of this server (the caller closes it)."""
        from services.environment.client import EnvironmentClient
        return EnvironmentClient(self.address) if timeout_s is None else \
            EnvironmentClient(self.address, timeout_s=timeout_s)


def serve(config: EnvironmentConfig, log: EventLogger | None = None,
          registry: CollectorRegistry = REGISTRY) -> EnvironmentServer:
    """Starts the environment service in this process: the gRPC server on `config.host` and
    `config.port` (0: a free one), its /metrics on `config.metrics_port` serving `registry`
    (pass a fresh `CollectorRegistry` to run several services in one process) and the reaper
    of idle sessions. Logs `ready` with the bound ports.

    Raises ValueError when the message limits cannot fit gRPC's (`limits.message_limits`) and
    SessionError when the default game does not load; nothing is left running then.
    """
    log = log or get_logger("environment")
    limits = message_limits(config)
    servicer = EnvironmentServicer(config, log, EnvironmentMetrics(registry))
    server = EnvironmentServer(servicer, log, host=config.host, port=config.port,
                               max_workers=config.max_workers,
                               max_receive_bytes=limits.max_receive_bytes,
                               max_send_bytes=limits.max_send_bytes)
    environment_pb2_grpc.add_EnvironmentServicer_to_server(servicer, server.grpc_server)
    try:
        server.start([SERVICE_NAME])
        server.metrics_endpoint = serve_metrics(config.metrics_port, config.host, registry)
        servicer.start_reaper()
    except BaseException:
        server.stop(0)
        raise
    log.info("ready", grpc_port=server.port, metrics_port=server.metrics_endpoint.port,
             game=config.game, games=games.names(), session_timeout_s=config.session_timeout_s,
             max_games_per_session=config.max_games_per_session, max_sessions=config.max_sessions,
             max_total_games=config.max_total_games, max_receive_bytes=limits.max_receive_bytes,
             max_send_bytes=limits.max_send_bytes)
    return server
