"""Every bad request of every environment RPC, against a real server process: its status code,
the words its message must hold, and afterwards a server that still serves with nothing changed
(the sessions' time steps and step counts, the number of sessions and of games they hold).

The server runs at small limits (8 games per session, 12 games and 2 sessions in all) and holds
two tic-tac-toe sessions, so that every limit can be hit without opening anything:
  * A: 8 games, stepped once (cells 4, 0, 8, 2, ... taken);
  * B: 2 games that both ended (player 0 won the top row) and were not reset;
  * a third session that was opened and closed (its id is known to be closed).
"""

from __future__ import annotations

import urllib.request
from typing import Callable, NamedTuple

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from environment_helpers import assert_same
from protos import environment_pb2, environment_pb2_grpc, tensor_pb2
from services.common.channels import is_serving, make_channel
from services.common.processes import ServiceProcess
from services.common.tensors import to_tensor
from services.environment import metrics as environment_metrics
from services.environment.client import EnvironmentClient
from services.environment.limits import REQUEST_SLACK_BYTES, request_bytes
from services.environment.wire import SERVICE_NAME

pytestmark = pytest.mark.integration

GAME = "tictactoe"
PER_SESSION, TOTAL, SESSIONS = 8, 12, 2
A_GAMES, B_GAMES = 8, 2
A_FIRST = np.array([4, 0, 8, 2, 4, 0, 8, 2], np.int32)
B_WIN = [0, 3, 1, 4, 2]  # X takes the top row while O plays the middle one: X wins on move 5
UNKNOWN = "00000000-0000-4000-8000-000000000000"
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
EXHAUSTED, PRECONDITION = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION


class World(NamedTuple):
    server: ServiceProcess
    channel: grpc.Channel
    client: EnvironmentClient
    a: str  # session ids
    b: str
    closed: str


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    log_path = tmp_path_factory.mktemp("environment-bad-input") / "environment.log"
    server = ServiceProcess("services.environment", [
        "--game", GAME, "--port", "0", "--metrics-port", "0",
        "--max-games-per-session", str(PER_SESSION), "--max-total-games", str(TOTAL),
        "--max-sessions", str(SESSIONS)], log_path=log_path)
    server.start()
    try:
        server.wait_ready(60)
        with make_channel(server.grpc_address) as channel, \
                EnvironmentClient(server.grpc_address, timeout_s=20.0) as client:
            closed, _, _ = client.open(GAME, 1, seed=0)
            client.close(closed)
            a, _, _ = client.open(GAME, A_GAMES, seed=1)
            client.step(a, A_FIRST)
            b, _, _ = client.open(GAME, B_GAMES, seed=2)
            for action in B_WIN:
                time_step = client.step(b, np.full(B_GAMES, action, np.int32))
            assert time_step.terminated.all() and time_step.reward.tolist() == [1.0, 1.0]
            yield World(server, channel, client, a, b, closed)
    finally:
        server.stop()


def gauges(world: World) -> tuple[float, float]:
    """(open sessions, games they hold) as the server's /metrics reports them."""
    url = f"http://127.0.0.1:{world.server.ready['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return samples[environment_metrics.SESSIONS], samples[environment_metrics.GAMES]


def tensor(dtype: int, shape: list[int], content: bytes) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(dtype=dtype, shape=shape, content=content)


def step(session: str, actions: tensor_pb2.Tensor | np.ndarray | None = None,
         auto_reset: bool = False, expected_num_steps: int | None = None,
         ) -> Callable[[World], environment_pb2.StepRequest]:
    def build(world: World) -> environment_pb2.StepRequest:
        request = environment_pb2.StepRequest(session_id=getattr(world, session, session),
                                              auto_reset=auto_reset,
                                              expected_num_steps=expected_num_steps)
        if actions is not None:
            request.actions.CopyFrom(actions if isinstance(actions, tensor_pb2.Tensor)
                                     else to_tensor(actions))
        return request
    return build


def reset(session: str, indices: list[int] = ()) -> Callable[[World], environment_pb2.ResetRequest]:
    return lambda world: environment_pb2.ResetRequest(session_id=getattr(world, session, session),
                                                      game_indices=list(indices))


def fixed(request) -> Callable[[World], object]:
    return lambda world: request


def by_session(message_type, session: str) -> Callable[[World], object]:
    return lambda world: message_type(session_id=getattr(world, session, session))


# The largest Step the server reads for 8 games, plus 1000 bytes: refused before any handler.
OVERSIZED = request_bytes(PER_SESSION) + REQUEST_SLACK_BYTES + 1000

CASES = [  # id, method, request (bytes: sent as they are), code, words the message holds
    # GetSpec
    ("getspec-unknown-game", "GetSpec", fixed(environment_pb2.GetSpecRequest(game="chess")),
     INVALID, ["game: unknown game 'chess'", "tictactoe"]),
    ("getspec-unparsable", "GetSpec", fixed(b"\x0a\x05ab"), INVALID, ["request:", "do not parse", "GetSpec"]),
    # Open
    ("open-unknown-game", "Open", fixed(environment_pb2.OpenRequest(game="chess", num_games=1)),
     INVALID, ["game: unknown game 'chess'"]),
    ("open-zero-games", "Open", fixed(environment_pb2.OpenRequest(num_games=0)),
     INVALID, ["num_games: must be in [1, 8]", "--max-games-per-session", "got 0"]),
    ("open-negative-games", "Open", fixed(environment_pb2.OpenRequest(num_games=-3)),
     INVALID, ["num_games: must be in [1, 8]", "got -3"]),
    ("open-too-many-games-per-session", "Open", fixed(environment_pb2.OpenRequest(num_games=9)),
     INVALID, ["num_games: must be in [1, 8]", "got 9"]),
    ("open-negative-seed", "Open", fixed(environment_pb2.OpenRequest(num_games=1, seed=-1)),
     INVALID, ["seed: must be >= 0, got -1"]),
    ("open-over-total-games", "Open", fixed(environment_pb2.OpenRequest(num_games=3)),
     EXHAUSTED, ["num_games: 3 more games", "maximum of 12 games", "--max-total-games",
                 "10 are in use by 2 sessions", "2 are free"]),
    ("open-over-sessions", "Open", fixed(environment_pb2.OpenRequest(num_games=1)),
     EXHAUSTED, ["maximum of 2 sessions", "--max-sessions"]),
    ("open-unparsable", "Open", fixed(b"\x10"), INVALID, ["request:", "do not parse", "Open"]),
    # Reset
    ("reset-empty-session", "Reset", reset(""), INVALID, ["session_id: empty"]),
    ("reset-unknown-session", "Reset", reset(UNKNOWN), NOT_FOUND, [f"session_id: unknown session '{UNKNOWN}'"]),
    ("reset-closed-session", "Reset", reset("closed"), NOT_FOUND, ["session_id: session", "was closed"]),
    ("reset-index-out-of-range", "Reset", reset("a", [8]), INVALID, ["game_indices: index 8 is out of range [0, 8)"]),
    ("reset-negative-index", "Reset", reset("a", [1, -1]), INVALID, ["game_indices: index -1 is out of range"]),
    ("reset-repeated-index", "Reset", reset("a", [3, 3]), INVALID, ["game_indices: index 3 appears more than once"]),
    ("reset-unparsable", "Reset", fixed(b"\x12\x02\x01"), INVALID, ["request:", "do not parse", "Reset"]),
    # Step: the actions tensor
    ("step-no-actions", "Step", step("a"), INVALID, ["actions: missing"]),
    ("step-unknown-dtype", "Step", step("a", tensor(99, [8], b"\0" * 32)), INVALID, ["actions: unknown dtype 99"]),
    ("step-no-dtype", "Step", step("a", tensor(0, [8], b"\0" * 32)), INVALID, ["actions: unknown dtype 0"]),
    ("step-bytes-disagree", "Step", step("a", tensor(tensor_pb2.INT32, [8], b"\0" * 31)),
     INVALID, ["actions: 31 bytes for shape [8] of int32 (expected 32)"]),
    ("step-element-count-overflows-int64", "Step", step("a", tensor(tensor_pb2.INT32, [2**62, 4], b"")),
     INVALID, ["actions:", "0 bytes for shape [4611686018427387904, 4]"]),
    ("step-huge-dimensions", "Step", step("a", tensor(tensor_pb2.INT64, [2**63 - 1, 2**63 - 1], b"")),
     INVALID, ["actions:", "[9223372036854775807, 9223372036854775807]"]),
    ("step-negative-dimension", "Step", step("a", tensor(tensor_pb2.INT32, [-8], b"")),
     INVALID, ["actions: negative dimension"]),
    ("step-empty-with-huge-dimension", "Step", step("a", tensor(tensor_pb2.INT32, [0, 2**63 - 1], b"")),
     INVALID, ["actions:", "shape"]),
    ("step-too-many-dimensions", "Step", step("a", tensor(tensor_pb2.INT32, [1] * 70, b"\0" * 4)),
     INVALID, ["actions:", "shape"]),
    ("step-float-actions", "Step", step("a", np.zeros(8, np.float32)),
     INVALID, ["actions: dtype must be an integer type (int32), got float32"]),
    ("step-bool-actions", "Step", step("a", np.zeros(8, bool)),
     INVALID, ["actions: dtype must be an integer type (int32), got bool"]),
    ("step-too-few-actions", "Step", step("a", np.zeros(7, np.int32)),
     INVALID, ["actions: shape must be [8] (one action per game of the session), got [7]"]),
    ("step-too-many-actions", "Step", step("a", np.zeros(9, np.int64)),
     INVALID, ["actions: shape must be [8]", "got [9]"]),
    ("step-actions-of-rank-2", "Step", step("a", np.zeros((8, 1), np.int32)),
     INVALID, ["actions: shape must be [8]", "got [8, 1]"]),
    ("step-scalar-action", "Step", step("a", np.int32(1)), INVALID, ["actions: shape must be [8]", "got []"]),
    ("step-action-too-large", "Step", step("a", np.array([1, 1, 9, 1, 1, 1, 1, 1], np.int32)),
     INVALID, ["actions: action 9 of game 2 is out of range [0, 9)"]),
    ("step-negative-action", "Step", step("a", np.array([1, -2, 1, 1, 1, 1, 1, 1], np.int16)),
     INVALID, ["actions: action -2 of game 1 is out of range [0, 9)"]),
    ("step-action-past-int32", "Step", step("a", np.full(8, 2**40, np.int64)),
     INVALID, [f"actions: action {2**40} of game 0 is out of range [0, 9)"]),
    ("step-illegal-action", "Step", step("a", np.array([4, 1, 1, 1, 1, 1, 1, 1], np.int32), auto_reset=True),
     INVALID, ["actions: action 4 is illegal in game 0 (legal actions: [0, 1, 2, 3, 5, 6, 7, 8])"]),
    ("step-ended-game", "Step", step("b", np.array([5, 5], np.int32)),
     PRECONDITION, ["actions: game 0 has ended (terminated)", "Reset"]),
    ("step-ended-game-auto-reset", "Step", step("b", np.array([5, 5], np.int32), auto_reset=True),
     PRECONDITION, ["actions: game 0 has ended (terminated)"]),
    ("step-expected-steps-differ", "Step", step("a", np.ones(8, np.int32), expected_num_steps=7),
     grpc.StatusCode.FAILED_PRECONDITION, ["expected_num_steps: the session has played", "steps, not 7",
                                           "nothing was played"]),
    # Step: the session
    ("step-empty-session", "Step", step("", np.zeros(8, np.int32)), INVALID, ["session_id: empty"]),
    ("step-unknown-session", "Step", step(UNKNOWN, np.zeros(8, np.int32)),
     NOT_FOUND, [f"session_id: unknown session '{UNKNOWN}'"]),
    ("step-closed-session", "Step", step("closed", np.zeros(1, np.int32)),
     NOT_FOUND, ["session_id: session", "was closed"]),
    # Step: the message
    ("step-oversized", "Step", step("a", tensor(tensor_pb2.INT8, [OVERSIZED], b"\1" * OVERSIZED)),
     EXHAUSTED, ["larger than max"]),
    ("step-unparsable", "Step", fixed(b"\x1a\x7f\x08"), INVALID, ["request:", "do not parse", "Step"]),
    # Observe
    ("observe-empty-session", "Observe", by_session(environment_pb2.ObserveRequest, ""),
     INVALID, ["session_id: empty"]),
    ("observe-unknown-session", "Observe", by_session(environment_pb2.ObserveRequest, UNKNOWN),
     NOT_FOUND, ["session_id: unknown session"]),
    ("observe-unparsable", "Observe", fixed(b"\xff\xff\xff"), INVALID, ["request:", "do not parse"]),
    # Close
    ("close-empty-session", "Close", by_session(environment_pb2.CloseRequest, ""),
     INVALID, ["session_id: empty"]),
    ("close-never-issued", "Close", by_session(environment_pb2.CloseRequest, "never-issued"),
     NOT_FOUND, ["session_id: unknown session 'never-issued'"]),
    ("close-unparsable", "Close", fixed(b"\x0a"), INVALID, ["request:", "do not parse", "Close"]),
]


def send(world: World, method: str, request) -> None:
    """Calls `method` with `request` (a message, or bytes sent as they are)."""
    response_type = {"GetSpec": environment_pb2.GameSpec, "Open": environment_pb2.OpenResponse,
                     "Close": environment_pb2.CloseResponse}.get(method, environment_pb2.TimeStep)
    call = world.channel.unary_unary(
        f"/{SERVICE_NAME}/{method}",
        request_serializer=None if isinstance(request, bytes) else type(request).SerializeToString,
        response_deserializer=response_type.FromString)
    call(request, timeout=20)


@pytest.mark.parametrize("method, build, code, words",
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_request_is_refused_by_name_and_changes_nothing(world, method, build, code, words):
    stub = environment_pb2_grpc.EnvironmentStub(world.channel)
    before = {s: world.client.observe(s) for s in (world.a, world.b)}
    counts = gauges(world)
    with pytest.raises(grpc.RpcError) as error:
        send(world, method, build(world))
    assert error.value.code() == code, error.value.details()
    for word in words:
        assert word in error.value.details(), (word, error.value.details())
    assert is_serving(world.channel, SERVICE_NAME, timeout_s=10)
    for session, time_step in before.items():
        after = world.client.observe(session)
        assert after.num_steps == time_step.num_steps
        assert_same(after, time_step, f"session {session}")
    assert gauges(world) == counts == (SESSIONS, A_GAMES + B_GAMES)
    assert stub.GetSpec(environment_pb2.GetSpecRequest(), timeout=20).game == GAME


def test_the_cases_cover_every_rpc():
    methods = {case[1] for case in CASES}
    assert methods == set(environment_pb2.DESCRIPTOR.services_by_name["Environment"].methods_by_name)
