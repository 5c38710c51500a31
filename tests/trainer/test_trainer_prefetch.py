"""The prefetch thread and the priority sender, against fake replay calls (no servers)."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from services.common.failures import PermanentFailure
from services.trainer.metrics import TrainerMetrics
from services.trainer.prefetch import Prefetcher, PrioritySender, ReplayFailed, prepare_batch, split_batch
from trainer_helpers import K, SPEC, LogSink, batch
from tests.grpc_fakes import FakeRpcError


def scripted(*outcomes):
    """A sample function that raises or returns `outcomes` in order, then keeps returning
    batches; records the timeouts it was called with."""
    calls = []
    remaining = list(outcomes)

    def sample(timeout_s):
        calls.append(timeout_s)
        outcome = remaining.pop(0) if remaining else batch(seed=len(calls))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return sample, calls


def prefetcher(sample, **kwargs):
    sink = LogSink()
    metrics = TrainerMetrics()
    fetcher = Prefetcher(sample, lambda b: prepare_batch(b, SPEC, K), sink.log, metrics,
                         backoff_s=(0.01, 0.02), sample_timeout_s=3.0, **kwargs)
    return fetcher.start(), sink, metrics


def test_waits_while_rate_limited_or_unavailable_then_delivers():
    limited = FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           "rate limiter: positions=60 < min_positions=100")
    down = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    sample, calls = scripted(limited, limited, down, down, batch(seed=7))
    fetcher, sink, metrics = prefetcher(sample)
    try:
        got = next(fetcher)
    finally:
        fetcher.close()
    np.testing.assert_array_equal(got["observation"], batch(seed=7)["observation"])
    assert got["actions"].dtype == np.int32 and got["record_keys"].dtype == np.int64
    assert calls[:5] == [3.0] * 5
    waits = sink.events("waiting_for_replay")
    assert len(waits) == 2 and "min_positions=100" in waits[0]["message"]
    unavailable = sink.events("replay_unavailable")
    assert [e["retry_in_s"] for e in unavailable] == [0.01, 0.02]
    assert sink.events("replay_ready")
    assert metrics.replay_waits.labels("rate_limited")._value.get() == 2
    assert metrics.replay_waits.labels("unavailable")._value.get() == 2


def test_invalid_argument_is_fatal():
    sample, _ = scripted(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "batch_size: must be >= 1"))
    fetcher, sink, _ = prefetcher(sample)
    with pytest.raises(ReplayFailed, match="batch_size") as raised:
        next(fetcher)
    # A PermanentFailure that says what to fix; __main__ logs it in one line (permanent_failure).
    failure = raised.value
    assert isinstance(failure, PermanentFailure)
    assert (failure.peer, failure.method, failure.code) == ("replay", "SampleBatch", "INVALID_ARGUMENT")
    assert "--game" in failure.hint and not sink.events("replay_failed")


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN])
def test_a_bug_in_the_replay_is_permanent_not_transient(code):
    sample, calls = scripted(FakeRpcError(code, "SampleBatch failed: KeyError(3)"))
    fetcher, sink, _ = prefetcher(sample)
    with pytest.raises(ReplayFailed) as raised:
        next(fetcher)
    fetcher.close()
    assert raised.value.code == code.name and "log" in raised.value.hint
    assert len(calls) == 1 and not sink.events("replay_unavailable")


def test_the_other_transient_codes_are_waited_out():
    sample, calls = scripted(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many samplers"),
                             FakeRpcError(grpc.StatusCode.ABORTED), FakeRpcError(grpc.StatusCode.CANCELLED),
                             batch(seed=3))
    fetcher, sink, _ = prefetcher(sample)
    try:
        next(fetcher)
    finally:
        fetcher.close()
    assert [e["code"] for e in sink.events("replay_unavailable")] == ["RESOURCE_EXHAUSTED", "ABORTED",
                                                                       "CANCELLED"]


def test_a_batch_of_the_wrong_game_is_fatal():
    wrong = batch(seed=0)
    wrong["target_policy"] = np.zeros((16, K + 1, 9), np.float32)
    sample, _ = scripted(wrong)
    fetcher, sink, _ = prefetcher(sample)
    with pytest.raises(ReplayFailed, match="target_policy has shape") as raised:
        next(fetcher)
    assert raised.value.code is None and "--game" in raised.value.hint


@pytest.mark.parametrize("served, trained", [(True, False), (False, True)])
def test_reward_targets_of_the_other_kind_are_refused(served, trained):
    arrays = dict(batch(seed=0), value_prefix=served)
    with pytest.raises(ValueError, match="same --value-prefix"):
        prepare_batch(arrays, SPEC, K, value_prefix=trained)
    assert prepare_batch(arrays, SPEC, K, value_prefix=served)["target_reward"].shape == (16, K + 1)
    assert "target_reward" in prepare_batch(batch(seed=0), SPEC, K, value_prefix=trained)  # says nothing: taken


def test_value_prefixes_of_another_horizon_are_refused():
    arrays = dict(batch(seed=0), value_prefix=True, value_prefix_horizon=3)
    with pytest.raises(ValueError, match="restart every 3 steps, but the trainer's network resets every 5: "
                                         "start both with the same --value-prefix-horizon"):
        prepare_batch(arrays, SPEC, K, value_prefix=True, value_prefix_horizon=5)
    assert prepare_batch(arrays, SPEC, K, value_prefix=True, value_prefix_horizon=3)["target_reward"].shape == (16, K + 1)
    # A batch that does not say (hand-made, or an older replay: 0) is taken.
    assert "target_reward" in prepare_batch(dict(batch(seed=0), value_prefix=True), SPEC, K, value_prefix=True,
                                            value_prefix_horizon=5)


def test_stop_ends_the_iterator():
    stop = threading.Event()
    blocked = threading.Event()

    def sample(timeout_s):
        blocked.set()
        raise FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "rate limiter")

    fetcher, _, _ = prefetcher(sample, stop=stop)
    blocked.wait(10)
    stop.set()
    with pytest.raises(StopIteration):
        next(fetcher)
    fetcher.close()


def test_the_queue_is_bounded():
    sample, calls = scripted()
    fetcher, _, metrics = prefetcher(sample, capacity=2)
    first = next(fetcher)
    while fetcher.qsize() < 2:
        threading.Event().wait(0.01)
    assert fetcher.batches_fetched <= 4  # one taken, two queued, at most one waiting to be put
    fetcher.close()
    assert first["observation"].shape == (16, 4)


def test_prepare_batch_names_the_bad_entry():
    data = batch()
    del data["mask"]
    with pytest.raises(ValueError, match="mask is missing"):
        prepare_batch(data, SPEC, K)
    with pytest.raises(ValueError, match=r"actions has shape \[16, 2\], expected \[16, 3\]"):
        prepare_batch(batch(), SPEC, 3)


def test_priority_sender_sends_off_thread_and_survives_failures():
    received = []
    failing = threading.Event()

    def update(keys, positions, priorities, timeout_s):
        if failing.is_set():
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")
        received.append((keys.copy(), positions.copy(), priorities.copy()))

    sink = LogSink()
    metrics = TrainerMetrics()
    sender = PrioritySender(update, sink.log, metrics)
    sender(np.array([1, 2]), np.array([0, 5]), np.array([0.5, np.nan], np.float32))
    assert sender.close(timeout_s=10)
    keys, positions, priorities = received[0]
    assert keys.dtype == np.int64 and positions.dtype == np.int32
    np.testing.assert_array_equal(priorities, [0.5, 0.0])  # never a NaN priority on the wire
    assert metrics.priority_updates._value.get() == 2

    failing.set()
    sender = PrioritySender(update, sink.log, metrics)
    sender(np.array([3]), np.array([1]), np.array([1.0]))
    assert sender.close(timeout_s=10)
    assert sender.dropped == 1 and sink.events("priority_update_failed")


def test_one_call_split_into_batches_with_their_own_importance_weights():
    drawn = prepare_batch(batch(B=48, seed=3), SPEC, K)
    drawn["importance_weight"] = np.linspace(0.1, 1.0, 48).astype(np.float32)  # max in the last
    parts = split_batch(drawn, 16)
    assert [len(p["observation"]) for p in parts] == [16, 16, 16]
    for i, part in enumerate(parts):
        np.testing.assert_array_equal(part["record_keys"], drawn["record_keys"][16 * i:16 * (i + 1)])
        np.testing.assert_array_equal(part["target_policy"], drawn["target_policy"][16 * i:16 * (i + 1)])
        weights = drawn["importance_weight"][16 * i:16 * (i + 1)]
        np.testing.assert_allclose(part["importance_weight"], weights / weights.max(), rtol=1e-6)
        assert part["importance_weight"].max() == 1.0 and part["importance_weight"].dtype == np.float32
    assert split_batch(parts[0], 16) == [parts[0]]  # one batch: unchanged
    with pytest.raises(ValueError, match="not a multiple of the batch size 20"):
        split_batch(drawn, 20)

    # The prefetcher hands out every part of a call, in order.
    sample, _ = scripted(batch(B=32, seed=1))
    fetcher = Prefetcher(sample, lambda b: split_batch(prepare_batch(b, SPEC, K), 16), LogSink().log,
                         TrainerMetrics(), backoff_s=(0.01, 0.02)).start()
    try:
        first, second = next(fetcher), next(fetcher)
        np.testing.assert_array_equal(np.concatenate([first["positions"], second["positions"]]),
                                      batch(B=32, seed=1)["positions"])
    finally:
        fetcher.close()


def test_priority_sender_merges_steps_into_one_call_in_order():
    received = []

    def update(keys, positions, priorities, timeout_s):
        received.append((keys.copy(), positions.copy(), priorities.copy()))

    metrics = TrainerMetrics()
    # A long max delay: each call waits for `merge` updates; close() sends the rest.
    sender = PrioritySender(update, LogSink().log, metrics, merge=3, max_delay_s=60.0)
    for step in range(7):
        sender(np.array([10 + step, 7]), np.array([step, 0]), np.array([step, step], np.float32))
    assert sender.close(timeout_s=10)
    assert [len(keys) for keys, _, _ in received] == [6, 6, 2]
    keys = np.concatenate([k for k, _, _ in received])
    priorities = np.concatenate([p for _, _, p in received])
    np.testing.assert_array_equal(keys[0::2], np.arange(7) + 10)  # oldest first
    # Position (7, 0) is in every update; within a call its newest priority comes last, which
    # is the one the replay keeps.
    np.testing.assert_array_equal(received[0][2][[1, 3, 5]], [0, 1, 2])
    assert sender.sent == 14 and metrics.priority_updates._value.get() == 14
    assert priorities.dtype == np.float32


def test_priority_sender_sends_a_partial_merge_after_its_delay():
    received = threading.Event()
    calls = []

    def update(keys, positions, priorities, timeout_s):
        calls.append(len(keys))
        received.set()

    sender = PrioritySender(update, LogSink().log, merge=100, max_delay_s=0.01)
    sender(np.array([1]), np.array([0]), np.array([1.0]))
    assert received.wait(30)  # sent without 99 more updates and without close()
    assert calls == [1]
    assert sender.close(timeout_s=10)


def test_prepare_augments_with_the_games_symmetries_when_asked(tmp_path):
    """A tic-tac-toe config with augment_symmetries trains every sample under one of the 8
    board maps: the board, the unrolled actions and the policy targets move together, and
    the value, reward, masks and priority keys stay those of the stored position."""
    import games
    from services.trainer.config import TrainerConfig
    from services.trainer.trainer import prepare

    game = games.make("tictactoe")
    plain = TrainerConfig.for_game("tictactoe", str(tmp_path / "m"), str(tmp_path / "c"),
                                   settings=game.settings.replace(augment_symmetries=False))
    assert plain.symmetries is None
    config = TrainerConfig.for_game("tictactoe", str(tmp_path / "m"), str(tmp_path / "c"), seed=3,
                                    settings=game.settings.replace(augment_symmetries=True))
    symmetries = config.symmetries
    assert symmetries is not None and len(symmetries) == 8
    B, K, A = 256, config.num_unroll_steps, 9
    rng = np.random.default_rng(0)
    # One piece per board, and each sample's actions and policy point at that piece's cell.
    cell = rng.integers(9, size=B)
    observation = np.zeros((B, 9, 2), np.float32)
    observation[np.arange(B), cell, 0] = 1
    policy = np.zeros((B, K + 1, A), np.float32)
    policy[np.arange(B), :, cell] = 1
    raw = {"observation": observation.reshape(B, 3, 3, 2), "actions": np.repeat(cell[:, None], K, 1),
           "target_value": rng.normal(size=(B, K + 1)), "target_reward": rng.normal(size=(B, K + 1)),
           "target_policy": policy, "mask": np.ones((B, K + 1)), "policy_mask": np.ones((B, K + 1)),
           "importance_weight": rng.random(B), "record_keys": np.arange(B), "positions": np.zeros(B)}
    out = prepare(config)(raw)
    moved_to = out["observation"].reshape(B, 9, 2)[:, :, 0].argmax(axis=1)
    np.testing.assert_array_equal(out["actions"], np.repeat(moved_to[:, None], K, 1))
    np.testing.assert_array_equal(out["target_policy"].argmax(axis=2), np.repeat(moved_to[:, None], K + 1, 1))
    # Each image is one of the declared maps of the original cell, and several maps are used.
    assert all(moved_to[b] in symmetries.cells[:, cell[b]] for b in range(B))
    assert (moved_to != cell).mean() > 0.5
    for name in ("target_value", "target_reward", "mask", "policy_mask", "importance_weight", "record_keys"):
        np.testing.assert_allclose(out[name], raw[name], err_msg=name)


def test_symmetries_of_another_game_are_refused(tmp_path):
    import games
    from services.trainer.config import TrainerConfig

    tictactoe = TrainerConfig.for_game("tictactoe", str(tmp_path / "m"), str(tmp_path / "c"))
    connect4 = games.make("connect4")
    with pytest.raises(ValueError, match="symmetries map 9 cells and 9 actions, but game connect4"):
        TrainerConfig(spec=connect4.spec, settings=connect4.settings, models_dir="m", checkpoint_dir="c",
                      symmetries=tictactoe.symmetries)
