"""The buffer in-process: priorities, weights, idempotence, eviction, durability, rate limits,
reanalysed targets, statistics and bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from replay_helpers import ONE_PLAYER, TWO_PLAYER, arrays, record
from services.common.tensors import to_tensor
from services.replay.records import ReplayError, decode_many
from services.replay.wire import make_game_record


def add(buffer, *messages):
    return buffer.add_games([arrays(buffer.spec, m) for m in messages])


# --- prioritized sampling --------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_sampling_frequencies_follow_priority_to_the_alpha(make_buffer, alpha):
    buffer = make_buffer(priority_alpha=alpha, priority_beta=0.5)
    key = add(buffer, record(ONE_PLAYER, "g", 4)).keys[0]
    priorities = np.array([1.0, 2.0, 3.0, 4.0])
    buffer.update_priorities(np.full(4, key), np.arange(4), priorities)
    counts = np.zeros(4)
    for _ in range(80):
        counts += np.bincount(buffer.sample(256).positions, minlength=4)
    expected_p = priorities ** alpha / np.sum(priorities ** alpha)
    expected = expected_p * counts.sum()
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < 16.27, (counts, expected)  # chi-square, 3 degrees of freedom, p = 0.001


def test_importance_weights_are_exact(make_buffer):
    buffer = make_buffer(priority_alpha=1.0, priority_beta=0.5)
    key = add(buffer, record(ONE_PLAYER, "g", 4)).keys[0]
    priorities = np.array([1.0, 2.0, 3.0, 4.0])
    buffer.update_priorities(np.full(4, key), np.arange(4), priorities)
    b = buffer.sample(64)
    P = priorities[b.positions] / priorities.sum()
    w = (4 * P) ** -0.5
    np.testing.assert_allclose(b.importance_weight, w / w.max(), rtol=1e-6)
    assert b.importance_weight.max() == 1.0


def test_zero_priority_is_never_sampled_and_beta_zero_gives_unit_weights(make_buffer):
    buffer = make_buffer(priority_alpha=1.0, priority_beta=0.0)
    key = add(buffer, record(ONE_PLAYER, "g", 3)).keys[0]
    buffer.update_priorities(np.full(3, key), np.arange(3), np.array([0.0, 1.0, 5.0]))
    b = buffer.sample(512)
    assert 0 not in b.positions
    np.testing.assert_array_equal(b.importance_weight, 1.0)


def test_new_positions_enter_at_the_max_priority(make_buffer):
    buffer = make_buffer()
    key = add(buffer, record(ONE_PLAYER, "a", 3)).keys[0]
    np.testing.assert_array_equal(buffer.priorities("a"), [1.0, 1.0, 1.0])
    buffer.update_priorities(np.array([key, key]), np.array([0, 1]), np.array([7.0, 0.5]))
    add(buffer, record(ONE_PLAYER, "b", 4, num_sampleable=2, terminated=False))
    np.testing.assert_array_equal(buffer.priorities("b"), [7.0, 7.0, 0.0, 0.0])
    assert buffer.stats().max_priority == 7.0


def test_look_ahead_context_is_never_sampled(make_buffer):
    buffer = make_buffer()
    add(buffer, record(ONE_PLAYER, "c", 10, num_sampleable=3, terminated=False))
    assert buffer.num_positions == 3 and buffer.stored_positions == 10
    assert set(buffer.sample(512).positions.tolist()) == {0, 1, 2}


def test_priority_updates_skip_evicted_records(make_buffer):
    buffer = make_buffer(capacity=6)
    old = add(buffer, record(ONE_PLAYER, "old", 4)).keys[0]
    new = add(buffer, record(ONE_PLAYER, "new", 4)).keys[0]
    assert buffer.update_priorities(np.array([old, new]), np.array([0, 0]), np.array([2.0, 3.0])) == (1, 1)


# --- adds: idempotence, eviction, durability ------------------------------------------------
def test_adds_are_idempotent_by_id(make_buffer):
    buffer = make_buffer()
    first = add(buffer, record(ONE_PLAYER, "g1", 5), record(ONE_PLAYER, "g2", 5))
    again = add(buffer, record(ONE_PLAYER, "g2", 5, seed=9), record(ONE_PLAYER, "g3", 5),
                record(ONE_PLAYER, "g3", 5))
    assert (first.added, first.duplicates) == (2, 0)
    assert (again.added, again.duplicates) == (1, 2)
    assert again.keys == [first.keys[1], first.keys[1] + 1, first.keys[1] + 1]
    stats = buffer.stats()
    assert (stats.games, stats.positions, stats.duplicates_total, stats.games_added_total) == (3, 15, 2, 3)
    # the duplicate did not overwrite the stored record
    np.testing.assert_array_equal(buffer.get_game("g2").game.rewards,
                                  arrays(ONE_PLAYER, record(ONE_PLAYER, "g2", 5)).rewards)


def test_oldest_games_are_evicted_from_memory_and_disk(tmp_path, make_buffer):
    buffer = make_buffer(capacity=10)
    add(buffer, record(ONE_PLAYER, "a", 4), record(ONE_PLAYER, "b", 4))
    result = add(buffer, record(ONE_PLAYER, "c", 4))
    assert result.evicted == 1
    stats = buffer.stats()
    assert (stats.games, stats.stored_positions, stats.evicted_games_total) == (2, 8, 1)
    with pytest.raises(ReplayError) as error:
        buffer.get_game("a")
    assert error.value.code == "NOT_FOUND"
    assert {g.game.id for g in buffer.sample_games(5)} == {"b", "c"}
    # an evicted id stays known: a late retry of its add is a duplicate, not a new record
    assert add(buffer, record(ONE_PLAYER, "a", 4)).duplicates == 1
    # a request larger than the capacity keeps its newest records
    result = add(buffer, *[record(ONE_PLAYER, f"n{i}", 3) for i in range(4)])
    assert (result.added, result.evicted) == (4, 3)  # b, c and n0
    assert sorted(g.game.id for g in buffer.sample_games(10)) == ["n1", "n2", "n3"]
    buffer.close()
    reopened = make_buffer(capacity=10)
    assert sorted(g.game.id for g in reopened.sample_games(10)) == ["n1", "n2", "n3"]
    assert reopened.stored_positions == 9
    # a smaller capacity at restart evicts the oldest
    reopened.close()
    smaller = make_buffer(capacity=5)
    assert [g.game.id for g in smaller.sample_games(10, order="newest_first")] == ["n3"]


def test_restart_restores_records_targets_and_priorities(make_buffer):
    buffer = make_buffer(TWO_PLAYER)
    message = record(TWO_PLAYER, "g", 6, model_version=4, episode_id="ep", first_move=2,
                     num_sampleable=4, terminated=False)
    key = add(buffer, message).keys[0]
    buffer.update_priorities(np.array([key, key]), np.array([1, 3]), np.array([0.25, 9.0]))
    buffer.update_targets("g", np.array([5]), np.array([0.5]), np.full((1, 9), 1 / 9), 7)
    before = buffer.get_game("g")
    batch_before = buffer.sample(8)
    buffer.close()
    reopened = make_buffer(TWO_PLAYER)
    after = reopened.get_game("g")
    # the record's minimum targets version: positions 0-4 still hold the self-play targets of v4
    assert (after.key, after.targets_model_version) == (key, 4)
    np.testing.assert_array_equal(after.targets_versions, [-1, -1, -1, -1, -1, 7])
    for field in ("id", "episode_id", "first_move", "model_version", "num_sampleable", "terminated"):
        assert getattr(after.game, field) == getattr(before.game, field)
    for field in ("observations", "actions", "rewards", "to_play", "root_values", "policies",
                  "legal_actions"):
        np.testing.assert_array_equal(getattr(after.game, field), getattr(before.game, field))
    assert after.game.observations.dtype == np.uint8
    np.testing.assert_array_equal(reopened.priorities("g"), [1.0, 0.25, 1.0, 9.0, 0.0, 0.0])
    assert reopened.stats().max_priority == 9.0
    assert reopened.sample(8).target_value.shape == batch_before.target_value.shape
    # new keys continue after the old ones
    assert add(reopened, record(TWO_PLAYER, "h", 3)).keys == [key + 1]


def test_a_data_dir_of_another_game_is_refused(tmp_path, make_buffer):
    make_buffer(ONE_PLAYER, data_dir=tmp_path / "d").close()
    with pytest.raises(ValueError, match="holds records of"):
        make_buffer(TWO_PLAYER, data_dir=tmp_path / "d")


# --- reanalysed targets -----------------------------------------------------------------------
def test_update_targets_changes_later_targets(make_buffer):
    buffer = make_buffer(num_unroll_steps=1, td_steps=1, discount=0.5)
    add(buffer, record(ONE_PLAYER, "g", 3, rewards=[1, 1, 1], values=[0, 0, 0],
                       policies=np.full((3, 2), 0.5)))
    b = buffer.sample(64)
    np.testing.assert_allclose(b.target_value[b.positions == 0, 0], 1.0)
    buffer.update_targets("g", np.array([1]), np.array([4.0]), np.array([[0.9, 0.1]]), 3)
    b = buffer.sample(256)
    # z_0 = r_0 + 0.5 v_1 = 1 + 2 = 3; policy target at u = 1 is the new one
    np.testing.assert_allclose(b.target_value[b.positions == 0, 0], 3.0)
    np.testing.assert_allclose(b.target_policy[b.positions == 1, 0], [[0.9, 0.1]] * int((b.positions == 1).sum()))
    stored = buffer.get_game("g")
    # positions 0 and 2 keep the self-play targets of v0: the record's minimum version is 0
    assert stored.targets_model_version == 0 and stored.game.model_version == 0
    np.testing.assert_array_equal(stored.targets_versions, [-1, 3, -1])
    np.testing.assert_array_equal(stored.game.root_values, [0.0, 4.0, 0.0])


# --- rate limiter ------------------------------------------------------------------------------
def test_min_positions_blocks_until_enough_are_stored(make_buffer):
    buffer = make_buffer(min_positions=10)
    add(buffer, record(ONE_PLAYER, "a", 6))
    with pytest.raises(ReplayError) as error:
        buffer.sample(4, timeout_s=0.05)
    assert error.value.code == "DEADLINE_EXCEEDED"
    assert "positions=6" in error.value.message and "min_positions=10" in error.value.message
    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault("batch", buffer.sample(4, timeout_s=60)))
    waiter.start()
    add(buffer, record(ONE_PLAYER, "b", 6))  # wakes the waiting sampler
    waiter.join(60)
    assert result["batch"].target_value.shape == (4, 6)
    assert buffer.stats().rate_limited_total == 2


def test_samples_per_insert_limits_the_sampling_rate(make_buffer):
    # spi 2, min 4, error buffer 8: samples + B <= 2 * (inserts - 4) + 8
    buffer = make_buffer(min_positions=4, samples_per_insert=2.0, error_buffer=8.0)
    add(buffer, record(ONE_PLAYER, "a", 4))  # allowance 0 + 8 = 8
    buffer.sample(8)
    with pytest.raises(ReplayError) as error:
        buffer.sample(1, timeout_s=0.01)
    assert error.value.code == "DEADLINE_EXCEEDED" and "samples_per_insert=2" in error.value.message
    add(buffer, record(ONE_PLAYER, "b", 3))  # allowance 2 * 3 + 8 = 14
    buffer.sample(6)
    with pytest.raises(ReplayError):
        buffer.sample(1, timeout_s=0.01)


def _start_blocked_sampler(buffer):
    """A thread whose sample(1) waits in the rate limiter; returns it and the codes it gets."""
    errors = []

    def sample():
        try:
            buffer.sample(1, timeout_s=60)
        except ReplayError as error:
            errors.append(error.code)

    waiter = threading.Thread(target=sample)
    waiter.start()
    while not buffer.stats().rate_limited_total:
        threading.Event().wait(0.001)
    return waiter, errors


def test_release_waiters_answers_unavailable(make_buffer):
    buffer = make_buffer(min_positions=5)
    waiter, errors = _start_blocked_sampler(buffer)
    buffer.release_waiters()
    waiter.join(60)
    assert errors == ["UNAVAILABLE"]


def test_waiting_samplers_are_bounded(make_buffer):
    buffer = make_buffer(min_positions=5, max_workers=2)  # one waiter at most
    assert buffer.max_waiting_samplers == 1
    waiter, errors = _start_blocked_sampler(buffer)
    with pytest.raises(ReplayError) as error:
        buffer.sample(1, timeout_s=60)
    assert error.value.code == "RESOURCE_EXHAUSTED" and "already waiting" in error.value.message
    buffer.release_waiters()
    waiter.join(60)
    assert errors == ["UNAVAILABLE"]


# --- statistics ---------------------------------------------------------------------------------
def test_stats(make_buffer):
    buffer = make_buffer(TWO_PLAYER)
    add(buffer, record(TWO_PLAYER, "a", 3, rewards=[0, 0, 1], to_play=[0, 1, 0], model_version=1),
        record(TWO_PLAYER, "b", 2, rewards=[0, 1], to_play=[0, 1], model_version=2),
        record(TWO_PLAYER, "c", 4, rewards=[0, 0, 0, 0], model_version=2))
    buffer.sample(10)
    stats = buffer.stats()
    assert stats.games_per_model_version == {1: 1, 2: 2}
    assert (stats.games, stats.positions, stats.inserts_total) == (3, 9, 9)
    assert (stats.samples_total, stats.sample_batches_total) == (10, 1)
    assert stats.recent_games == 3
    assert stats.recent_mean_return == pytest.approx(0.0)  # player 0: +1, -1, 0
    assert stats.recent_max_return == 1.0
    assert stats.recent_mean_length == pytest.approx(3.0)


# --- bad input: the right code, a message naming the field, nothing stored -------------------
def _bad(spec, **changes):
    T = 3
    fields = dict(id="bad", observations=np.zeros((T, *spec.observation_shape), np.float32),
                  actions=np.zeros(T, np.int32), rewards=np.zeros(T, np.float32),
                  root_values=np.zeros(T, np.float32),
                  policies=np.full((T, spec.num_actions), 1 / spec.num_actions, np.float32),
                  to_play=np.zeros(T, np.int32), legal_actions=np.ones((T, spec.num_actions), bool))
    raw = {name[4:]: changes.pop(name) for name in list(changes) if name.startswith("raw_")}
    fields.update(changes)
    message = make_game_record(**fields)
    for name, array in raw.items():  # tensors as sent, bypassing make_game_record's casts
        getattr(message, name).CopyFrom(to_tensor(array))
    return message


BAD_RECORDS = [
    ({"id": ""}, "games[1].id"),
    ({"observations": np.zeros((3, 5), np.float32)}, "games[1].observations"),
    ({"observations": np.zeros((0, 4), np.float32), "actions": np.zeros(0, np.int32)},
     "games[1].observations"),
    ({"actions": np.zeros(2, np.int32)}, "games[1].actions"),
    ({"rewards": np.zeros(4, np.float32)}, "games[1].rewards"),
    ({"rewards": np.array([0, np.nan, 0], np.float32)}, "games[1].rewards"),
    ({"root_values": np.array([0, np.inf, 0], np.float32)}, "games[1].root_values"),
    ({"policies": np.full((3, 3), 1 / 3, np.float32)}, "games[1].policies"),
    ({"policies": np.array([[1, 0], [-0.5, 1.5], [1, 0]], np.float32)}, "games[1].policies"),
    ({"legal_actions": np.ones((3, 3), bool)}, "games[1].legal_actions"),
    ({"actions": np.array([0, 2, 0], np.int32)}, "games[1].actions"),
    ({"legal_actions": np.array([[0, 1], [1, 1], [1, 1]], bool)}, "games[1].actions"),
    ({"to_play": np.array([0, 1, 0], np.int32)}, "games[1].to_play"),
    ({"num_sampleable": 4}, "games[1].num_sampleable"),
    ({"num_sampleable": -1}, "games[1].num_sampleable"),
    ({"first_move": -1}, "games[1].first_move"),
    ({"model_version": -1}, "games[1].model_version"),
    ({"raw_rewards": np.zeros(3, bool)}, "games[1].rewards"),
    ({"raw_actions": np.zeros(3, np.float32)}, "games[1].actions"),
    ({"raw_legal_actions": np.full((3, 2), 2, np.int8)}, "games[1].legal_actions"),
]


@pytest.mark.parametrize("changes, field", BAD_RECORDS)
def test_bad_records_are_rejected_whole(make_buffer, changes, field):
    changes = dict(changes)
    buffer = make_buffer()
    good = record(ONE_PLAYER, "good", 3)
    with pytest.raises(ReplayError) as error:
        buffer.add_games(decode_many([good, _bad(ONE_PLAYER, **changes)], ONE_PLAYER, capacity=100))
    assert error.value.code == "INVALID_ARGUMENT"
    assert error.value.message.startswith(field + ":"), error.value.message
    assert buffer.num_games == 0


@pytest.mark.parametrize("spec", [ONE_PLAYER, TWO_PLAYER], ids=lambda s: s.name)
def test_a_request_decoded_joined_equals_its_records_decoded_one_by_one(spec):
    from services.replay.records import decode_record
    messages = [record(spec, f"g{i}", T, seed=i, num_sampleable=ns, terminated=ns == 0,
                       episode_id="ep" if i % 2 else "", first_move=3 * i, model_version=i)
                for i, (T, ns) in enumerate([(1, 0), (7, 4), (3, 0), (12, 12)])]
    joined = decode_many(messages, spec, capacity=100)
    for i, (got, message) in enumerate(zip(joined, messages)):
        expected = decode_record(message, spec, f"games[{i}]", 100)
        for field in ("id", "episode_id", "first_move", "model_version", "num_sampleable",
                      "terminated"):
            assert getattr(got, field) == getattr(expected, field), field
        for field in ("observations", "actions", "rewards", "to_play", "root_values", "policies",
                      "legal_actions"):
            a, b = getattr(got, field), getattr(expected, field)
            assert a.dtype == b.dtype and a.flags.c_contiguous, field
            np.testing.assert_array_equal(a, b, err_msg=field)


def test_observations_must_convert_exactly_to_the_stored_dtype(make_buffer):
    buffer = make_buffer(TWO_PLAYER)
    obs = np.zeros((3, 3, 3, 2), np.float32)
    buffer.add_games(decode_many([_bad(TWO_PLAYER, id="ok", observations=obs + 1)], TWO_PLAYER))
    obs[1, 0, 0, 0] = 0.5
    with pytest.raises(ReplayError, match=r"games\[0\].observations: float32 values do not convert"):
        decode_many([_bad(TWO_PLAYER, observations=obs)], TWO_PLAYER)
    with pytest.raises(ReplayError, match=r"games\[0\].observations: .*capacity 2"):
        decode_many([_bad(TWO_PLAYER)], TWO_PLAYER, capacity=2)
    missing = _bad(TWO_PLAYER)
    missing.ClearField("policies")
    with pytest.raises(ReplayError, match=r"games\[0\].policies: missing"):
        decode_many([missing], TWO_PLAYER)


@pytest.mark.parametrize("call, code, field", [
    (lambda b, k: b.update_priorities(np.array([k]), np.array([0]), np.array([np.nan])),
     "INVALID_ARGUMENT", "priorities"),
    (lambda b, k: b.update_priorities(np.array([k]), np.array([0]), np.array([-1.0])),
     "INVALID_ARGUMENT", "priorities"),
    (lambda b, k: b.update_priorities(np.array([k]), np.array([3]), np.array([1.0])),
     "INVALID_ARGUMENT", "positions"),  # position 3 is context, not sampleable
    (lambda b, k: b.update_priorities(np.array([k, k]), np.array([0]), np.array([1.0])),
     "INVALID_ARGUMENT", "positions"),
    (lambda b, k: b.update_priorities(np.array([k + 5]), np.array([0]), np.array([1.0])),
     "NOT_FOUND", "record_keys"),
    (lambda b, k: b.update_targets("nope", np.array([0]), np.array([0.0]), np.full((1, 2), 0.5), 1),
     "NOT_FOUND", "game_id"),
    (lambda b, k: b.update_targets("g", np.array([5]), np.array([0.0]), np.full((1, 2), 0.5), 1),
     "INVALID_ARGUMENT", "positions"),
    (lambda b, k: b.update_targets("g", np.array([0, 0]), np.zeros(2), np.full((2, 2), 0.5), 1),
     "INVALID_ARGUMENT", "positions"),
    (lambda b, k: b.update_targets("g", np.array([0]), np.array([0.0]), np.full((1, 3), 0.5), 1),
     "INVALID_ARGUMENT", "policies"),
    (lambda b, k: b.update_targets("g", np.array([0]), np.array([np.nan]), np.full((1, 2), 0.5), 1),
     "INVALID_ARGUMENT", "root_values"),
    (lambda b, k: b.update_targets("g", np.array([0]), np.array([0.0]), np.full((1, 2), 0.5), -1),
     "INVALID_ARGUMENT", "model_version"),
    (lambda b, k: b.update_targets("", np.array([0]), np.array([0.0]), np.full((1, 2), 0.5), 1),
     "INVALID_ARGUMENT", "game_id"),
    (lambda b, k: b.sample(0), "INVALID_ARGUMENT", "batch_size"),
    (lambda b, k: b.sample(-3), "INVALID_ARGUMENT", "batch_size"),
    (lambda b, k: b.sample(4, discount=1.5), "INVALID_ARGUMENT", "discount"),
    (lambda b, k: b.sample(4, num_unroll_steps=-1), "INVALID_ARGUMENT", "num_unroll_steps"),
    (lambda b, k: b.sample(4, td_steps=-1), "INVALID_ARGUMENT", "td_steps"),
    (lambda b, k: b.sample_games(0), "INVALID_ARGUMENT", "num_games"),
])
def test_bad_calls_change_nothing(make_buffer, call, code, field):
    buffer = make_buffer()
    key = add(buffer, record(ONE_PLAYER, "g", 5, num_sampleable=3, terminated=False)).keys[0]
    before = buffer.get_game("g")
    with pytest.raises(ReplayError) as error:
        call(buffer, key)
    assert error.value.code == code
    assert error.value.message.startswith(field + ":"), error.value.message
    after = buffer.get_game("g")
    np.testing.assert_array_equal(after.game.root_values, before.game.root_values)
    np.testing.assert_array_equal(after.game.policies, before.game.policies)
    np.testing.assert_array_equal(buffer.priorities("g"), [1, 1, 1, 0, 0])
    assert after.targets_model_version == before.targets_model_version
    assert buffer.stats().samples_total == 0
