"""Unit tests of the servicer (with a fake gRPC context), the wire format and the config."""

from __future__ import annotations

import io
import subprocess
import sys

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import games
from protos import environment_pb2, tensor_pb2
from services.common.logs import get_logger, parse_line
from services.common.processes import REPO_ROOT
from services.common.tensors import to_tensor
from services.environment import metrics as environment_metrics
from services.environment.__main__ import parse_args
from services.environment.config import EnvironmentConfig
from services.environment.metrics import EnvironmentMetrics
from services.environment.server import EnvironmentServicer
from services.environment.wire import spec_from_proto, spec_to_proto, time_step_from_proto


class Aborted(Exception):
    pass


class FakeContext:
    """What the servicer uses of a `grpc.ServicerContext`."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def abort(self, code: grpc.StatusCode, details: str):
        self.code, self.details = code, details
        raise Aborted(details)

    def time_remaining(self) -> float:
        return 10.0

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


@pytest.fixture
def servicer():
    stream = io.StringIO()
    registry = CollectorRegistry()
    servicer = EnvironmentServicer(EnvironmentConfig(game="cartpole", max_games_per_session=64),
                                   get_logger("environment", stream), EnvironmentMetrics(registry))
    servicer.registry, servicer.stream = registry, stream
    yield servicer
    servicer.stop()


def call(servicer, method: str, request):
    context = FakeContext()
    try:
        return getattr(servicer, method)(request, context), None
    except Aborted:
        return None, context


def metric(servicer, name: str, **labels) -> float:
    return servicer.registry.get_sample_value(name, labels) or 0.0


def test_open_step_close_counts_and_logs(servicer):
    response, _ = call(servicer, "Open", environment_pb2.OpenRequest(num_games=5, seed=2))
    assert spec_from_proto(response.spec) == games.make("cartpole").spec  # "" = the default game
    sid = response.session_id
    actions = to_tensor(np.ones(5, np.int32))
    for _ in range(3):
        _, error = call(servicer, "Step", environment_pb2.StepRequest(session_id=sid, actions=actions))
        assert error is None
    assert metric(servicer, environment_metrics.STEPS_TOTAL, game="cartpole") == 15
    assert metric(servicer, environment_metrics.STEP_REQUESTS_TOTAL, game="cartpole") == 3
    assert metric(servicer, environment_metrics.SESSIONS) == 1
    assert metric(servicer, environment_metrics.GAMES) == 5
    assert metric(servicer, environment_metrics.SESSIONS_OPENED_TOTAL, game="cartpole") == 1
    assert metric(servicer, environment_metrics.REQUEST_SECONDS + "_count", method="Step") == 3
    observed, _ = call(servicer, "Observe", environment_pb2.ObserveRequest(session_id=sid))
    assert observed.num_steps == 3
    call(servicer, "Close", environment_pb2.CloseRequest(session_id=sid))
    assert metric(servicer, environment_metrics.SESSIONS) == 0
    events = [parse_line(line)["event"] for line in servicer.stream.getvalue().splitlines()]
    assert events == ["session_opened", "session_closed"]


def test_errors_have_codes_messages_and_metrics(servicer):
    response, _ = call(servicer, "Open", environment_pb2.OpenRequest(game="cartpole", num_games=2))
    sid = response.session_id
    cases = [
        ("GetSpec", environment_pb2.GetSpecRequest(game="chess"), grpc.StatusCode.INVALID_ARGUMENT,
         "game: unknown game 'chess'"),
        ("Open", environment_pb2.OpenRequest(game="chess", num_games=1), grpc.StatusCode.INVALID_ARGUMENT,
         "game: unknown game 'chess'"),
        ("Open", environment_pb2.OpenRequest(num_games=65), grpc.StatusCode.INVALID_ARGUMENT,
         "num_games: must be in [1, 64]"),
        ("Step", environment_pb2.StepRequest(session_id=sid), grpc.StatusCode.INVALID_ARGUMENT,
         "actions: missing"),
        ("Step", environment_pb2.StepRequest(session_id=sid, actions=tensor_pb2.Tensor(
            dtype=tensor_pb2.INT32, shape=[2], content=b"\0" * 7)), grpc.StatusCode.INVALID_ARGUMENT,
         "actions: 7 bytes for shape [2] of int32 (expected 8)"),
        ("Step", environment_pb2.StepRequest(session_id=sid, actions=tensor_pb2.Tensor(
            shape=[2], content=b"\0" * 8)), grpc.StatusCode.INVALID_ARGUMENT, "actions: unknown dtype 0"),
        ("Step", environment_pb2.StepRequest(session_id="x", actions=to_tensor(np.zeros(2, np.int32))),
         grpc.StatusCode.NOT_FOUND, "session_id: unknown session 'x'"),
        ("Reset", environment_pb2.ResetRequest(session_id=sid, game_indices=[2]),
         grpc.StatusCode.INVALID_ARGUMENT, "game_indices: index 2 is out of range [0, 2)"),
        ("Observe", environment_pb2.ObserveRequest(session_id=""), grpc.StatusCode.INVALID_ARGUMENT,
         "session_id: empty"),
        ("Close", environment_pb2.CloseRequest(session_id="y"), grpc.StatusCode.NOT_FOUND,
         "session_id: unknown session 'y'"),
    ]
    for method, request, code, message in cases:
        response, context = call(servicer, method, request)
        assert context is not None, (method, request)
        assert context.code == code and context.details.startswith(message), (context.code, context.details)
        assert metric(servicer, environment_metrics.ERRORS_TOTAL, method=method, code=code.name) >= 1
    assert metric(servicer, environment_metrics.ERRORS_TOTAL, method="Step", code="INVALID_ARGUMENT") == 3


def test_a_game_that_crashes_is_internal_and_the_server_goes_on(servicer, monkeypatch):
    response, _ = call(servicer, "Open", environment_pb2.OpenRequest(num_games=2))
    game = servicer._games["cartpole"]
    monkeypatch.setattr(game, "step", lambda state, actions: 1 / 0)
    _, context = call(servicer, "Step", environment_pb2.StepRequest(
        session_id=response.session_id, actions=to_tensor(np.zeros(2, np.int32))))
    assert context.code == grpc.StatusCode.INTERNAL and "ZeroDivisionError" in context.details
    monkeypatch.undo()
    observed, _ = call(servicer, "Observe", environment_pb2.ObserveRequest(session_id=response.session_id))
    assert observed.num_steps == 0


def test_reaper_logs_and_counts_expired_sessions():
    clock = [0.0]
    stream, registry = io.StringIO(), CollectorRegistry()
    servicer = EnvironmentServicer(EnvironmentConfig(session_timeout_s=30), get_logger("environment", stream),
                                   EnvironmentMetrics(registry), clock=lambda: clock[0])
    response, _ = call(servicer, "Open", environment_pb2.OpenRequest(num_games=3))
    clock[0] = 29.0
    assert servicer.reap() == 0
    clock[0] = 30.0
    assert servicer.reap() == 1
    expired = [parse_line(line) for line in stream.getvalue().splitlines()][-1]
    assert expired["event"] == "session_expired" and expired["session_id"] == response.session_id
    assert registry.get_sample_value(environment_metrics.SESSIONS) == 0
    assert registry.get_sample_value(environment_metrics.SESSIONS_EXPIRED_TOTAL, {"game": "cartpole"}) == 1


@pytest.mark.parametrize("name", games.names())
def test_spec_round_trips_through_the_wire(name):
    try:
        spec = games.make(name).spec
    except Exception:  # noqa: BLE001
        pytest.skip(f"{name} does not load")
    assert spec_from_proto(spec_to_proto(spec)) == spec


def test_time_step_from_proto_shapes():
    response = EnvironmentServicer(EnvironmentConfig(), get_logger("environment", io.StringIO()),
                                   EnvironmentMetrics(CollectorRegistry())).Open(
        environment_pb2.OpenRequest(num_games=3), FakeContext())
    time_step = time_step_from_proto(response.time_step)
    assert time_step.observation.shape == (3, 4) and time_step.legal_actions.shape == (3, 2)


@pytest.mark.parametrize("fields, message", [
    ({"game": "chess"}, "EnvironmentConfig.game must be one of"),
    ({"port": 70000}, "EnvironmentConfig.port must be in [0, 65535], got 70000"),
    ({"session_timeout_s": 0}, "EnvironmentConfig.session_timeout_s must be > 0, got 0"),
    ({"max_games_per_session": 0}, "EnvironmentConfig.max_games_per_session must be >= 1, got 0"),
    ({"max_sessions": 0}, "EnvironmentConfig.max_sessions must be >= 1, got 0"),
    ({"max_workers": 0}, "EnvironmentConfig.max_workers must be >= 1, got 0"),
    ({"max_total_games": 0}, "EnvironmentConfig.max_total_games must be >= 1, got 0"),
    ({"max_games_per_session": 100, "max_total_games": 99},
     "EnvironmentConfig.max_games_per_session must be <= max_total_games=99, got 100"),
    ({"max_games_per_session": 2**31, "max_total_games": 2**32},
     "EnvironmentConfig.max_games_per_session must be <= 2147483647, got 2147483648"),
])
def test_config_names_the_bad_field(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        EnvironmentConfig(**fields)


def test_flags_build_the_config():
    config = parse_args(["--game", "cartpole", "--port", "0", "--metrics-port", "0",
                         "--session-timeout-s", "1.5", "--max-games-per-session", "10",
                         "--max-sessions", "3", "--max-total-games", "20", "--max-workers", "4",
                         "--host", "127.0.0.1"])
    assert config == EnvironmentConfig(game="cartpole", host="127.0.0.1", port=0, metrics_port=0,
                                       session_timeout_s=1.5, max_games_per_session=10,
                                       max_sessions=3, max_total_games=20, max_workers=4)
    assert EnvironmentConfig(session_timeout_s=0.2).reap_interval_s == pytest.approx(0.05)
    with pytest.raises(SystemExit):
        parse_args(["--session-timeout-s", "0"])


def test_a_registered_game_that_does_not_load_is_unimplemented(servicer, monkeypatch):
    def make(name):
        raise ImportError(f"No module named 'games.{name}'")

    monkeypatch.setattr(games, "make", make)
    name = next(n for n in games.names() if n != "cartpole")
    servicer._games.pop(name, None)
    _, context = call(servicer, "Open", environment_pb2.OpenRequest(game=name, num_games=1))
    assert context.code == grpc.StatusCode.UNIMPLEMENTED
    assert context.details.startswith(f"game: {name!r} is registered but cannot be loaded")
    response, _ = call(servicer, "GetSpec", environment_pb2.GetSpecRequest())  # the default still works
    assert response.game == "cartpole"


def test_the_service_imports_no_tensorflow():
    code = ("import sys, services.environment.__main__, services.environment.client; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0
