"""Bad input from outside, through the raw protobuf stubs of a real replay server (built by
`services.replay.server.serve`, as `python -m services.replay` builds it, in this process on a
loopback port): every case gets its status code and a message naming the field, the server
stays SERVING, and nothing changes (GetStats, the stored records and their priorities are the
same before and after). Also: bad flags are usage errors naming the flag, not tracebacks."""

from __future__ import annotations

import dataclasses
from typing import Callable

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from replay_helpers import TWO_PLAYER, record
from protos import replay_pb2, replay_pb2_grpc, tensor_pb2
from services.common.logs import get_logger
from services.common.tensors import to_tensor
from services.replay import __main__ as replay_main
from services.replay.config import ReplayConfig
from services.replay.records import MAX_ID_BYTES
from services.replay.metrics import ReplayMetrics
from services.replay.server import serve

SPEC = TWO_PLAYER  # [3, 3, 2] boards stored as uint8, 9 actions, two players
A = SPEC.num_actions
CAPACITY = 1000
OK, INVALID, NOT_FOUND, EXHAUSTED = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                                     grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED)
# Field 1 as length-delimited with a truncated length varint: no request message parses it.
UNPARSABLE = b"\x0a\xff\xff\xff"


@dataclasses.dataclass
class Replay:
    server: object
    stub: replay_pb2_grpc.ReplayStub
    channel: grpc.Channel
    key: int  # the stored record "g": T = 5, num_sampleable = 3, not terminated

    def snapshot(self):
        """What a rejected call must leave as it was."""
        stats = self.stub.GetStats(replay_pb2.GetStatsRequest(), timeout=10)
        games = self.stub.SampleGames(replay_pb2.SampleGamesRequest(
            num_games=100, order=replay_pb2.SampleGamesRequest.NEWEST_FIRST), timeout=10)
        return (stats.SerializeToString(deterministic=True), games.SerializeToString(deterministic=True),
                self.server.buffer.priorities("g").tolist())

    def serving(self) -> bool:
        response = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service="mufleet.Replay"), timeout=10)
        return response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def replay(tmp_path):
    config = ReplayConfig(spec=SPEC, data_dir=str(tmp_path / "replay"), capacity=CAPACITY,
                          min_positions=0, seed=0, port=0, metrics_port=0, discount=1.0)
    server = serve(config, get_logger("replay"), ReplayMetrics(CollectorRegistry()))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}",
                                    options=[("grpc.max_send_message_length", 64 << 20)])
    stub = replay_pb2_grpc.ReplayStub(channel)
    added = stub.AddGames(replay_pb2.AddGamesRequest(games=[
        record(SPEC, "g", 5, num_sampleable=3, terminated=False)]), timeout=10)
    try:
        yield Replay(server, stub, channel, added.keys[0])
    finally:
        channel.close()
        server.stop(0)


# --- request builders ---------------------------------------------------------------------------
def tensor(dtype=tensor_pb2.FLOAT32, shape=(), content=b"") -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(dtype=dtype, shape=list(shape), content=content)


OVERFLOW = tensor(shape=[2**62, 4])  # 2**64 elements: int64 products wrap to 0 = len(content)
NUMPY_TOO_BIG = tensor(shape=[2**63 - 1, 0])  # no elements, but NumPy cannot make the shape
TOO_MANY_DIMS = tensor(shape=[1] * 65, content=b"\x00" * 4)
NEGATIVE_DIM = tensor(shape=[-1, 4])
UNKNOWN_DTYPE = tensor(dtype=99, shape=[1], content=b"\x00" * 4)
SHORT_BYTES = tensor(shape=[5], content=b"\x00" * 7)
MALFORMED = {"overflowing shape": (OVERFLOW, "0 bytes for shape [4611686018427387904, 4]"),
             "shape NumPy cannot make": (NUMPY_TOO_BIG, "shape [9223372036854775807, 0]"),
             "65 dimensions": (TOO_MANY_DIMS, "shape [1, 1, 1"),
             "negative dimension": (NEGATIVE_DIM, "negative dimension"),
             "unknown dtype": (UNKNOWN_DTYPE, "unknown dtype 99"),
             "bytes that disagree with the shape": (SHORT_BYTES, "7 bytes for shape [5]")}
RECORD_FIELDS = ("observations", "actions", "rewards", "to_play", "root_values", "policies",
                 "legal_actions")


def game(id: str = "new", T: int = 4, **fields) -> replay_pb2.GameRecord:
    return record(SPEC, id, T, **fields)


def changed(message, **tensors):
    """`message` with some tensor fields replaced (arrays are sent exactly as given)."""
    for name, value in tensors.items():
        getattr(message, name).CopyFrom(value if isinstance(value, tensor_pb2.Tensor) else to_tensor(value))
    return message


def without(message, *names):
    for name in names:
        message.ClearField(name)
    return message


def add(*records) -> Callable[[Replay], object]:
    return lambda r: r.stub.AddGames(replay_pb2.AddGamesRequest(games=list(records)), timeout=10)


def add_good_then(bad: replay_pb2.GameRecord) -> Callable[[Replay], object]:
    return add(game("fine"), bad)  # a good record first: the request is rejected whole


def sample(**fields) -> Callable[[Replay], object]:
    return lambda r: r.stub.SampleBatch(replay_pb2.SampleBatchRequest(**fields), timeout=10)


def _replace(request, replace: dict | None):
    """Fields of `request` replaced by tensors (or cleared, for None), exactly as given."""
    for name, value in (replace or {}).items():
        if value is None:
            request.ClearField(name)
        else:
            getattr(request, name).CopyFrom(value)
    return request


def priorities(keys=None, positions=(0,), values=(2.0,), replace=None) -> Callable[[Replay], object]:
    def call(r: Replay):
        request = replay_pb2.UpdatePrioritiesRequest(
            record_keys=to_tensor(np.asarray([r.key] if keys is None else keys(r), np.int64)),
            positions=to_tensor(np.asarray(positions, np.int32)),
            priorities=to_tensor(np.asarray(values, np.float32)))
        return r.stub.UpdatePriorities(_replace(request, replace), timeout=10)
    return call


def targets(game_id="g", positions=(0,), values=(0.5,), policies=None, model_version=1,
            replace=None) -> Callable[[Replay], object]:
    def call(r: Replay):
        request = replay_pb2.UpdateTargetsRequest(
            game_id=game_id, positions=to_tensor(np.asarray(positions, np.int32)),
            root_values=to_tensor(np.asarray(values, np.float32)),
            policies=to_tensor(np.full((len(positions), A), 1 / A, np.float32)
                               if policies is None else np.asarray(policies)),
            model_version=model_version)
        return r.stub.UpdateTargets(_replace(request, replace), timeout=10)
    return call


def sample_games(**fields) -> Callable[[Replay], object]:
    return lambda r: r.stub.SampleGames(replay_pb2.SampleGamesRequest(**fields), timeout=10)


def raw(method: str) -> Callable[[Replay], object]:
    return lambda r: r.channel.unary_unary(f"/mufleet.Replay/{method}", request_serializer=lambda b: b,
                                           response_deserializer=lambda b: b)(UNPARSABLE, timeout=10)


# --- the cases: (name, call, code, message prefix, words in the message) -------------------------
CASES: list[tuple[str, Callable[[Replay], object], grpc.StatusCode, str, tuple[str, ...]]] = []


def case(name, call, code, prefix, *words):
    CASES.append((name, call, code, prefix, words))


# AddGames: malformed tensors in every array field, as the first and as a later record
for field in RECORD_FIELDS:
    for label, (bad, words) in MALFORMED.items():
        case(f"AddGames {field}: {label}", add(changed(game(), **{field: bad})), INVALID,
             f"games[0].{field}:", words)
    case(f"AddGames {field}: missing", add(without(game(), field)), INVALID, f"games[0].{field}:",
         "missing")
case("AddGames: overflowing shape in the 2nd record", add_good_then(changed(game(), observations=OVERFLOW)),
     INVALID, "games[1].observations:", "bytes for shape")
# AddGames: records that decode but are not valid
T = 4
for label, bad, prefix, words in [
    ("empty id", game(""), "games[1].id:", ("non-empty",)),
    ("id too long", game("x" * (MAX_ID_BYTES + 1)), "games[1].id:", (f"at most {MAX_ID_BYTES}",)),
    ("episode id too long", game(episode_id="e" * (MAX_ID_BYTES + 1)), "games[1].episode_id:",
     (f"at most {MAX_ID_BYTES}",)),
    ("negative first_move", game(first_move=-1), "games[1].first_move:", (">= 0",)),
    ("negative model_version", game(model_version=-1), "games[1].model_version:", (">= 0",)),
    ("num_sampleable over T", game(num_sampleable=T + 1), "games[1].num_sampleable:", ("[0, T = 4]",)),
    ("negative num_sampleable", game(num_sampleable=-1), "games[1].num_sampleable:", ("got -1",)),
    ("observation shape", changed(game(), observations=np.zeros((T, 9), np.float32)),
     "games[1].observations:", ("expected [T, 3, 3, 2]",)),
    ("no positions", changed(game(), observations=np.zeros((0, 3, 3, 2), np.float32)),
     "games[1].observations:", ("at least 1 position",)),
    ("longer than the capacity", game(T=CAPACITY + 1), "games[1].observations:", ("capacity 1000",)),
    ("observations not exact in uint8", changed(game(), observations=np.full((T, 3, 3, 2), 0.5, np.float32)),
     "games[1].observations:", ("do not convert exactly",)),
    ("non-finite observations", changed(game(), observations=np.full((T, 3, 3, 2), np.nan, np.float32)),
     "games[1].observations:", ("finite",)),
    ("actions length", changed(game(), actions=np.zeros(T + 1, np.int32)), "games[1].actions:",
     ("expected [T] = [4]",)),
    ("actions out of range", changed(game(), actions=np.array([0, 9, 0, 0], np.int32)), "games[1].actions:",
     ("[0, 9)",)),
    ("float actions", changed(game(), actions=np.zeros(T, np.float32)), "games[1].actions:",
     ("not an integer dtype",)),
    ("illegal action", changed(game(), legal_actions=np.zeros((T, A), bool)), "games[1].actions:",
     ("not legal",)),
    ("to_play out of range", changed(game(), to_play=np.full(T, 2, np.int32)), "games[1].to_play:",
     ("[0, 2)",)),
    ("non-finite rewards", changed(game(), rewards=np.array([0, np.inf, 0, 0], np.float32)),
     "games[1].rewards:", ("finite",)),
    ("rewards that overflow float32", changed(game(), rewards=np.array([0, 1e39, 0, 0])),
     "games[1].rewards:", ("finite (as float32)",)),
    ("bool rewards", changed(game(), rewards=np.zeros(T, bool)), "games[1].rewards:", ("not numeric",)),
    ("NaN root values", changed(game(), root_values=np.full(T, np.nan, np.float32)),
     "games[1].root_values:", ("finite",)),
    ("policies shape", changed(game(), policies=np.full((T, A + 1), 0.1, np.float32)),
     "games[1].policies:", ("[T, num_actions] = [4, 9]",)),
    ("negative policies", changed(game(), policies=np.full((T, A), -0.1, np.float32)),
     "games[1].policies:", (">= 0",)),
    ("legal mask shape", changed(game(), legal_actions=np.ones((T, 2), bool)), "games[1].legal_actions:",
     ("[T, num_actions]",)),
    ("legal mask not 0/1", changed(game(), legal_actions=np.full((T, A), 2, np.int8)),
     "games[1].legal_actions:", ("bool",)),
]:
    case(f"AddGames: {label}", add_good_then(bad), INVALID, prefix, *words)
# 41 records of 1000 positions, ~5.4 MB: over the 4 MiB that capacity 1000 derives; refused by
# gRPC before the handler
case("AddGames: over the receive limit", add(*[game(f"big{i}", T=CAPACITY) for i in range(41)]),
     EXHAUSTED, "", "larger than max")

# SampleBatch
for label, fields, prefix, words in [
    ("batch_size 0", dict(batch_size=0), "batch_size:", ("[1, 65536]", "got 0")),
    ("negative batch_size", dict(batch_size=-3), "batch_size:", ("got -3",)),
    ("batch_size over 65536", dict(batch_size=65537), "batch_size:", ("got 65537",)),
    ("negative K", dict(batch_size=4, num_unroll_steps=-1), "num_unroll_steps:", ("got -1",)),
    ("K over 1000", dict(batch_size=4, num_unroll_steps=1001), "num_unroll_steps:", ("[0, 1000]",)),
    ("negative n", dict(batch_size=4, td_steps=-1), "td_steps:", ("got -1",)),
    ("n over 10000", dict(batch_size=4, td_steps=10001), "td_steps:", ("[0, 10000]",)),
    ("discount over 1", dict(batch_size=4, discount=1.5), "discount:", ("(0, 1]",)),
    ("negative discount", dict(batch_size=4, discount=-0.5), "discount:", ("(0, 1]",)),
    ("NaN discount", dict(batch_size=4, discount=float("nan")), "discount:", ("nan",)),
]:
    case(f"SampleBatch: {label}", sample(**fields), INVALID, prefix, *words)
case("SampleBatch: B = 4096, K = 50, n = 1000 (GBs of temporaries)",
     sample(batch_size=4096, num_unroll_steps=50, td_steps=1000), INVALID, "batch_size:",
     "max_sample_bytes = 67108864", "MiB of arrays")
case("SampleBatch: the largest B with the largest K and n",
     sample(batch_size=65536, num_unroll_steps=1000, td_steps=10000, include_unroll_observations=True),
     INVALID, "batch_size:", "unroll observations", "max_sample_bytes")

# UpdatePriorities
never = lambda r: [r.key + 5]  # noqa: E731
for label, call, code, prefix, words in [
    ("no fields", lambda r: r.stub.UpdatePriorities(replay_pb2.UpdatePrioritiesRequest(), timeout=10),
     INVALID, "record_keys:", ("missing",)),
    ("no positions", priorities(replace={"positions": None}), INVALID, "positions:", ("missing",)),
    ("no priorities", priorities(replace={"priorities": None}), INVALID, "priorities:", ("missing",)),
    ("NaN", priorities(values=[np.nan]), INVALID, "priorities:", ("priorities[0] = nan", "not finite")),
    ("inf", priorities(values=[np.inf]), INVALID, "priorities:", ("priorities[0] = inf", "not finite")),
    ("negative", priorities(lambda r: [r.key] * 2, [0, 1], [1.0, -1.0]), INVALID, "priorities:",
     ("priorities[1] = -1", "negative")),
    ("1e39 as float64 (inf in float32)", priorities(replace={"priorities": to_tensor(np.array([1e39]))}), INVALID,
     "priorities:", ("priorities[0] = 1e+39", "over the limit 1e+06")),
    ("over the limit", priorities(lambda r: [r.key] * 3, [0, 1, 2], [1, 1, 2e6]), INVALID, "priorities:",
     ("priorities[2] = 2e+06", "priority_limit")),
    ("huge integers", priorities(replace={"priorities": to_tensor(np.array([2**62], np.int64))}), INVALID,
     "priorities:", ("over the limit",)),
    ("bool priorities", priorities(replace={"priorities": to_tensor(np.array([True]))}), INVALID, "priorities:",
     ("not numeric",)),
    ("overflowing priorities tensor", priorities(replace={"priorities": OVERFLOW}), INVALID, "priorities:",
     ("bytes for shape",)),
    ("65-dimensional keys", priorities(replace={"record_keys": TOO_MANY_DIMS}), INVALID, "record_keys:",
     ("shape [1, 1, 1",)),
    ("2-D keys", priorities(replace={"record_keys": to_tensor(np.ones((1, 1), np.int64))}), INVALID, "record_keys:",
     ("expected [P]",)),
    ("lengths differ", priorities(positions=[0, 1]), INVALID, "positions:", ("like record_keys",)),
    ("float keys", priorities(replace={"record_keys": to_tensor(np.array([1.0]))}), INVALID, "record_keys:",
     ("not an integer dtype",)),
    ("float positions", priorities(replace={"positions": to_tensor(np.array([0.0], np.float32))}),
     INVALID, "positions:", ("not an integer dtype",)),
    ("key never issued", priorities(keys=never), NOT_FOUND, "record_keys:", ("never issued",)),
    ("key 0", priorities(keys=lambda r: [0]), NOT_FOUND, "record_keys:", ("key 0",)),
    ("context position", priorities(positions=[3]), INVALID, "positions:", ("not sampleable", "[0, 3)")),
    ("negative position", priorities(positions=[-1]), INVALID, "positions:", ("position -1",)),
]:
    case(f"UpdatePriorities: {label}", call, code, prefix, *words)

# UpdateTargets
for label, call, code, prefix, words in [
    ("empty game_id", targets(game_id=""), INVALID, "game_id:", ("non-empty",)),
    ("unknown game_id", targets(game_id="nope"), NOT_FOUND, "game_id:", ("'nope'",)),
    ("negative model_version", targets(model_version=-1), INVALID, "model_version:", (">= 0",)),
    ("no positions", targets(replace={"positions": None}), INVALID, "positions:",
     ("missing",)),
    ("no policies", targets(replace={"policies": None}), INVALID, "policies:", ("missing",)),
    ("2-D positions", targets(replace={"positions": to_tensor(np.zeros((1, 1), np.int32))}), INVALID,
     "positions:", ("expected [P]",)),
    ("root_values length", targets(values=[0.5, 0.5]), INVALID, "root_values:", ("expected [P] = [1]",)),
    ("policies shape", targets(policies=np.full((1, 3), 0.3, np.float32)), INVALID, "policies:",
     ("[1, 9]",)),
    ("float positions", targets(replace={"positions": to_tensor(np.array([0.0], np.float32))}), INVALID,
     "positions:", ("not an integer dtype",)),
    ("repeated positions", targets(positions=(0, 0), values=(0.1, 0.2)), INVALID, "positions:",
     ("distinct",)),
    ("NaN root value", targets(values=[np.nan]), INVALID, "root_values:", ("finite",)),
    ("inf policy", targets(policies=np.full((1, A), np.inf, np.float32)), INVALID, "policies:", ("finite",)),
    ("negative policy", targets(policies=np.full((1, A), -1.0, np.float32)), INVALID, "policies:", (">= 0",)),
    ("position past the end", targets(positions=(5,)), INVALID, "positions:", ("[0, T = 5)", "got 5")),
    ("negative position", targets(positions=(-1,)), INVALID, "positions:", ("got -1",)),
    ("overflowing policies tensor", targets(replace={"policies": OVERFLOW}), INVALID, "policies:",
     ("bytes for shape",)),
    ("shape NumPy cannot make", targets(replace={"root_values": NUMPY_TOO_BIG}), INVALID, "root_values:",
     ("shape [9223372036854775807, 0]",)),
    ("unknown dtype", targets(replace={"positions": UNKNOWN_DTYPE}), INVALID, "positions:", ("unknown dtype",)),
]:
    case(f"UpdateTargets: {label}", call, code, prefix, *words)

# SampleGames
case("SampleGames: num_games 0", sample_games(num_games=0), INVALID, "num_games:", ">= 1")
case("SampleGames: negative num_games", sample_games(num_games=-5), INVALID, "num_games:", "got -5")
case("SampleGames: unknown order", sample_games(num_games=1, order=7), INVALID, "order:",
     "unknown order 7", "OLDEST_TARGETS_FIRST (2)")
case("SampleGames: negative order", sample_games(num_games=1, order=-1), INVALID, "order:",
     "unknown order -1")

# Unparsable request bytes, every method
for method in ("AddGames", "SampleBatch", "UpdatePriorities", "UpdateTargets", "SampleGames", "GetStats"):
    case(f"{method}: unparsable bytes", raw(method), INVALID, "request:", "do not parse",
         f"/mufleet.Replay/{method}")


@pytest.mark.parametrize("call, code, prefix, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(replay, call, code, prefix, words):
    before = replay.snapshot()
    with pytest.raises(grpc.RpcError) as caught:
        call(replay)
    details = caught.value.details() or ""
    assert caught.value.code() == code, details
    assert details.startswith(prefix), details
    for word in words:
        assert word in details, (word, details)
    assert replay.serving()
    assert replay.snapshot() == before
    internal = replay.server.servicer.metrics.errors.collect()[0].samples
    assert not [s for s in internal if s.labels.get("code") == "INTERNAL" and s.value], internal


def test_good_requests_still_work_after_bad_ones(replay):
    """The builders above make valid requests when nothing is changed: each case is rejected
    for the one thing it changes."""
    for call in (add(game("fresh")), sample(batch_size=4), priorities(), targets(), sample_games(num_games=2)):
        call(replay)
    stats = replay.stub.GetStats(replay_pb2.GetStatsRequest(), timeout=10)
    assert (stats.games, stats.sample_batches_total, stats.max_priority) == (2, 1, 2.0)


def test_an_update_older_than_the_stored_reanalysis_changes_nothing(replay):
    """Not an error (a slow worker's late answer), but skipped and counted: nothing changes."""
    response = targets(positions=(0, 1), values=(0.5, 0.5), model_version=4)(replay)
    assert (response.updated, response.skipped) == (2, 0)
    before = replay.snapshot()
    response = targets(positions=(0, 1), values=(-9.0, -9.0), model_version=3)(replay)
    assert (response.updated, response.skipped) == (0, 2)
    assert replay.snapshot() == before


def test_a_rejected_hostile_priority_leaves_sampling_finite(replay):
    stub = replay.stub
    with pytest.raises(grpc.RpcError):
        priorities(keys=lambda r: [r.key] * 3, positions=[0, 1, 2],
                   replace={"priorities": to_tensor(np.array([1.0, 1e39, 1e39]))})(replay)
    stub.AddGames(replay_pb2.AddGamesRequest(games=[game("after")]), timeout=10)
    response = stub.SampleBatch(replay_pb2.SampleBatchRequest(batch_size=256), timeout=10)
    weights = np.frombuffer(response.importance_weight.content, np.float32)
    assert np.all(np.isfinite(weights)) and weights.max() == 1.0
    assert stub.GetStats(replay_pb2.GetStatsRequest(), timeout=10).max_priority == 1.0
    np.testing.assert_array_equal(replay.server.buffer.priorities("after"), [1.0] * 4)


# --- flags ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--capacity", "0"], "error: --capacity must be >= 1, got 0"),
    (["--priority-beta", "2"], "error: --priority-beta must be in [0, 1], got 2"),
    (["--priority-limit", "inf"], "error: --priority-limit must be finite and >= 1"),
    (["--priority-limit", "0.5"], "error: --priority-limit must be finite and >= 1"),
    (["--priority-alpha", "100"], "error: --priority-alpha = 100 with --priority-limit = 1e+06"),
    (["--max-sample-bytes", "1000"], "error: --max-sample-bytes must be >= 1048576"),
    (["--id-window", "0"], "error: --id-window must be >= 1, got 0"),
    (["--max-receive-bytes", "100"], "error: --max-receive-bytes must be 0 (derived) or in"),
    (["--max-send-bytes", "-1"], "error: --max-send-bytes must be 0 (derived) or in"),
    (["--port", "70000"], "error: --port must be in [0, 65535], got 70000"),
    (["--td-steps", "0"], "error: --td-steps must be >= 1, got 0"),
    (["--value-prefix-horizon", "0"], "error: --value-prefix-horizon must be >= 1, got 0"),
    (["--reanalysed-target-fraction", "2"], "error: --reanalysed-target-fraction must be in [0, 1], got 2"),
    (["--reanalysed-target-fraction", "nan"], "error: --reanalysed-target-fraction must be in [0, 1], got nan"),
    (["--td-age-versions-per-step", "-1"], "error: --td-age-versions-per-step must be >= 0, got -1"),
    (["--game-spec", "{not json"], "error: game spec: not JSON"),
])
def test_a_bad_flag_is_a_usage_error_naming_it(tmp_path, capsys, flags, message):
    data_dir = tmp_path / "replay"
    argv = ["--data-dir", str(data_dir), *flags]
    if "--game-spec" not in flags:
        argv += ["--game", "cartpole"]
    with pytest.raises(SystemExit) as exited:
        replay_main.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m services.replay"), err
    assert message in err, err
    assert "Traceback" not in err
    assert not data_dir.exists()  # refused before anything was opened
