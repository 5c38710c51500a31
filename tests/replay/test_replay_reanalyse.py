"""The replay side of reanalyse: UpdateTargets ordered by version per position, the reanalysed
targets kept beside the self-play ones and used by a fraction, SampleGames' orders, and the
off-policy correction of the n-step horizon. On the real buffer and a real in-process server."""

from __future__ import annotations

import collections

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from games.settings import ReplaySettings
from replay_helpers import ONE_PLAYER, arrays, record
from protos import replay_pb2
from services.common.logs import get_logger
from services.replay import metrics as replay_metrics
from services.replay.client import ReplayClient
from services.replay.config import ReplayConfig
from services.replay.metrics import ReplayMetrics
from services.replay.records import ReplayError
from services.replay.server import serve
from services.replay.wire import TargetsUpdate


def add(buffer, *messages):
    return buffer.add_games([arrays(buffer.spec, m) for m in messages])


def uniform(P: int) -> np.ndarray:
    return np.full((P, 2), 0.5)


# --- UpdateTargets ordered by version, per position ----------------------------------------------
def test_update_targets_is_ordered_by_version_per_position(make_buffer):
    buffer = make_buffer()
    add(buffer, record(ONE_PLAYER, "g", 4, values=[10, 20, 30, 40], model_version=2))
    stored = buffer.get_game("g")
    np.testing.assert_array_equal(stored.targets_versions, [-1, -1, -1, -1])  # never reanalysed
    assert stored.targets_model_version == 2
    assert buffer.update_targets("g", np.array([0, 1]), np.array([1.0, 2.0]), uniform(2), 5) == (2, 0)
    # position 1 holds v5 (newer than 3): skipped and counted; position 2 was never reanalysed
    result = buffer.update_targets("g", np.array([1, 2]), np.array([-2.0, -3.0]), uniform(2), 3)
    assert result == TargetsUpdate(updated=1, skipped=1)
    stored = buffer.get_game("g")
    np.testing.assert_array_equal(stored.targets_versions, [5, 5, 3, -1])
    np.testing.assert_array_equal(stored.game.root_values, [1.0, 2.0, -3.0, 40.0])
    assert stored.targets_model_version == 2  # position 3 still holds the self-play targets of v2
    # a retry of an applied call (the same version) overwrites with the same values: idempotent
    for _ in range(2):
        assert buffer.update_targets("g", np.array([0, 1]), np.array([1.0, 2.0]), uniform(2), 5) == (2, 0)
    assert buffer.get_game("g").game.root_values.tolist() == [1.0, 2.0, -3.0, 40.0]
    # equal overwrites (new values at v5), newer overwrites everything
    assert buffer.update_targets("g", np.array([0]), np.array([7.0]), np.array([[1.0, 0.0]]), 5) == (1, 0)
    assert buffer.update_targets("g", np.arange(4), np.array([9.0, 9, 9, 9]), uniform(4), 8) == (4, 0)
    stored = buffer.get_game("g")
    np.testing.assert_array_equal(stored.targets_versions, [8, 8, 8, 8])
    assert stored.targets_model_version == 8
    # all older: everything skipped, nothing changes
    assert buffer.update_targets("g", np.arange(4), np.zeros(4), uniform(4), 6) == (0, 4)
    np.testing.assert_array_equal(buffer.get_game("g").game.root_values, [9.0] * 4)
    stats = buffer.stats()
    assert (stats.reanalysed_positions, stats.newest_model_version, stats.reanalysed_mean_age) == (4, 8, 0.0)


def test_reanalysed_targets_and_versions_survive_a_restart(make_buffer, tmp_path):
    data_dir = tmp_path / "replay"
    buffer = make_buffer(data_dir=data_dir, capacity=12, num_unroll_steps=1, td_steps=1,
                         discount=0.5, reanalysed_target_fraction=0.0)
    add(buffer, record(ONE_PLAYER, "old", 4, model_version=9))  # the newest version; evicted below
    add(buffer, record(ONE_PLAYER, "g", 4, rewards=[1, 1, 1, 1], values=[0, 0, 0, 0], model_version=1))
    buffer.update_targets("g", np.array([1, 2]), np.array([4.0, 6.0]), np.array([[0.9, 0.1]] * 2), 3)
    buffer.update_targets("g", np.array([2]), np.array([8.0]), np.array([[0.2, 0.8]]), 4)
    add(buffer, record(ONE_PLAYER, "x", 8))  # evicts "old"
    before = buffer.get_game("g")
    buffer.close()
    for fraction, v1 in ((0.0, 0.0), (1.0, 4.0)):
        reopened = make_buffer(data_dir=data_dir, capacity=12, num_unroll_steps=1, td_steps=1,
                               discount=0.5, reanalysed_target_fraction=fraction)
        after = reopened.get_game("g")
        np.testing.assert_array_equal(after.targets_versions, [-1, 3, 4, -1])
        assert after.targets_model_version == 1
        np.testing.assert_array_equal(after.game.root_values, [0.0, 4.0, 8.0, 0.0])
        np.testing.assert_array_equal(after.game.root_values, before.game.root_values)
        np.testing.assert_array_equal(after.game.policies, before.game.policies)
        stats = reopened.stats()
        # the newest version outlives the record that brought it
        assert (stats.reanalysed_positions, stats.newest_model_version) == (2, 9)
        assert stats.reanalysed_mean_age == pytest.approx(9 - 3.5)
        # the self-play targets are on disk too: fraction 0 reads them, 1 the reanalysed ones
        batch = reopened.sample(256)
        at0 = batch.record_keys == after.key
        at0 &= batch.positions == 0
        assert at0.any()
        np.testing.assert_allclose(batch.target_value[at0, 0], 1 + 0.5 * v1)
        # a version ordering after the restart: v3 < the stored v4 at position 2
        assert reopened.update_targets("g", np.array([2]), np.array([0.0]), np.array([[1.0, 0.0]]), 3) == (0, 1)
        reopened.close()


def test_evicting_reanalysed_records_takes_them_out_of_the_counts(make_buffer):
    buffer = make_buffer(capacity=8)
    add(buffer, record(ONE_PLAYER, "a", 4), record(ONE_PLAYER, "b", 4))
    buffer.update_targets("a", np.arange(4), np.zeros(4), uniform(4), 2)
    buffer.update_targets("b", np.array([0]), np.zeros(1), uniform(1), 4)
    assert buffer.stats().reanalysed_positions == 5
    assert buffer.stats().reanalysed_mean_age == pytest.approx(4 - 12 / 5)
    add(buffer, record(ONE_PLAYER, "c", 4))  # evicts "a"
    stats = buffer.stats()
    assert (stats.reanalysed_positions, stats.reanalysed_mean_age) == (1, 0.0)


# --- the reanalysed fraction ---------------------------------------------------------------------
# One player, discount 0.5, n = 2, K = 1, a terminated 4-step game: rewards r = [1, 2, 3, 4],
# self-play values v = [10, 20, 30, 40], reanalysed values w = [-1, -2, -3, -4].
#   z_0 = r_0 + 0.5 r_1 + 0.25 v_2 = 2 + 0.25 v_2: self-play 9.5, reanalysed 1.25
#   z_1 = r_1 + 0.5 r_2 + 0.25 v_3 = 3.5 + 0.25 v_3: self-play 13.5, reanalysed 2.5
#   z_2 = 3 + 0.5 * 4 = 5 (u + 2 = T: no bootstrap), z_3 = 4: the same for both
SELF_PLAY_Z = {0: [9.5, 13.5], 1: [13.5, 5.0], 2: [5.0, 4.0], 3: [4.0, 0.0]}
REANALYSED_Z = {0: [1.25, 2.5], 1: [2.5, 5.0], 2: [5.0, 4.0], 3: [4.0, 0.0]}
SELF_PLAY_POLICY, REANALYSED_POLICY = [0.5, 0.5], [0.9, 0.1]


def fraction_buffer(make_buffer, fraction, **fields):
    buffer = make_buffer(num_unroll_steps=1, td_steps=2, discount=0.5,
                         reanalysed_target_fraction=fraction, **fields)
    add(buffer, record(ONE_PLAYER, "g", 4, rewards=[1, 2, 3, 4], values=[10, 20, 30, 40],
                       policies=np.full((4, 2), 0.5)))
    return buffer


def by_position(batch, expected):
    return np.array([expected[int(t)] for t in batch.positions])


@pytest.mark.parametrize("fraction, z, policy, reanalysed", [
    (0.0, SELF_PLAY_Z, SELF_PLAY_POLICY, False), (1.0, REANALYSED_Z, REANALYSED_POLICY, True)])
def test_the_fraction_picks_self_play_or_reanalysed_targets_exactly(make_buffer, fraction, z, policy,
                                                                   reanalysed):
    buffer = fraction_buffer(make_buffer, fraction)
    assert buffer.update_targets("g", np.arange(4), np.array([-1.0, -2, -3, -4]),
                                 np.array([REANALYSED_POLICY] * 4), 1) == (4, 0)
    batch = buffer.sample(256)
    np.testing.assert_allclose(batch.target_value, by_position(batch, z), rtol=1e-6)
    inside = batch.mask[:, :, None] > 0
    np.testing.assert_allclose(np.where(inside, batch.target_policy, 0),
                               np.where(inside, policy, 0), rtol=1e-6)
    np.testing.assert_array_equal(batch.reanalysed, np.full(256, reanalysed))


def test_a_fraction_draws_per_sampled_position(make_buffer):
    buffer = fraction_buffer(make_buffer, 0.5)
    buffer.update_targets("g", np.arange(4), np.array([-1.0, -2, -3, -4]),
                          np.array([REANALYSED_POLICY] * 4), 1)
    batch = buffer.sample(512)
    picked = np.where(batch.reanalysed[:, None], by_position(batch, REANALYSED_Z),
                      by_position(batch, SELF_PLAY_Z))
    np.testing.assert_allclose(batch.target_value, picked, rtol=1e-6)  # each sample one or the other
    assert 0 < batch.reanalysed.sum() < 512  # both kinds (chance of one kind only: 2 * 2**-512)
    np.testing.assert_allclose(batch.target_policy[:, 0],
                               np.where(batch.reanalysed[:, None], REANALYSED_POLICY, SELF_PLAY_POLICY))


def test_reanalysed_targets_are_used_per_position(make_buffer):
    """Only position 2 reanalysed: the bootstrap at 2 takes w_2 (z_0 = 2 + 0.25 * -3 = 1.25),
    the bootstrap at 3 keeps v_3 (z_1 = 13.5); position 0's own targets were not reanalysed,
    so its sample does not count as reanalysed."""
    buffer = fraction_buffer(make_buffer, 1.0)
    buffer.update_targets("g", np.array([2]), np.array([-3.0]), np.array([REANALYSED_POLICY]), 1)
    batch = buffer.sample(256)
    expected = {0: [1.25, 13.5], 1: [13.5, 5.0], 2: [5.0, 4.0], 3: [4.0, 0.0]}
    np.testing.assert_allclose(batch.target_value, by_position(batch, expected), rtol=1e-6)
    np.testing.assert_array_equal(batch.reanalysed, batch.positions == 2)
    at1 = batch.positions == 1
    np.testing.assert_allclose(batch.target_policy[at1, 1], [REANALYSED_POLICY] * int(at1.sum()))


def test_without_reanalysis_the_sample_stream_is_unchanged(make_buffer, tmp_path):
    """Nothing reanalysed: any fraction draws the same batches (no extra random draws)."""
    batches = []
    for i, fraction in enumerate((1.0, 0.5, 0.0)):
        buffer = make_buffer(data_dir=tmp_path / f"r{i}", reanalysed_target_fraction=fraction)
        add(buffer, *[record(ONE_PLAYER, f"g{j}", 30, seed=j) for j in range(5)])
        batches.append(buffer.sample(64))
    for other in batches[1:]:
        for name in ("record_keys", "positions", "target_value", "target_policy", "actions"):
            np.testing.assert_array_equal(getattr(other, name), getattr(batches[0], name), name)


# --- off-policy correction -------------------------------------------------------------------------
# One player, discount 1, n = 3, K = 1, records of 6 positions cut (not terminated), every
# reward 1, self-play values v_i = 10 i. With 2 versions per step, n = clip(3 - age // 2, 1, 3).
# The newest version is 5: "old" (v0, age 5) n = 1: z_0 = 1 + v_1 = 11, z_1 = 1 + v_2 = 21;
# "mid" (v2, age 3) n = 2: z_0 = 2 + v_2 = 22, z_1 = 32; "new" (v5, age 0) n = 3: z_0 = 33, z_1 = 43.
def off_policy_buffer(make_buffer, per_step, fraction=1.0):
    buffer = make_buffer(num_unroll_steps=1, td_steps=3, discount=1.0,
                         td_age_versions_per_step=per_step, reanalysed_target_fraction=fraction)
    keys = add(buffer, *[record(ONE_PLAYER, name, 6, rewards=np.ones(6), values=10.0 * np.arange(6),
                                model_version=version, terminated=False)
                         for name, version in (("old", 0), ("mid", 2), ("new", 5))]).keys
    return buffer, dict(zip(("old", "mid", "new"), keys))


def at_start(batch, key):
    rows = (batch.record_keys == key) & (batch.positions == 0)
    assert rows.any()  # the checks below are never vacuous
    return rows


def test_the_off_policy_n_shrinks_with_the_age_of_the_data(make_buffer):
    buffer, keys = off_policy_buffer(make_buffer, per_step=2)
    batch = buffer.sample(512)
    for name, n, z in (("old", 1, [11, 21]), ("mid", 2, [22, 32]), ("new", 3, [33, 43])):
        rows = at_start(batch, keys[name])
        assert rows.any(), name
        np.testing.assert_allclose(batch.target_value[rows], [z] * int(rows.sum()), err_msg=name)
        np.testing.assert_array_equal(batch.value_td_steps[batch.record_keys == keys[name]], n)
    assert batch.td_steps == 3
    # "old" reanalysed by v4 (age 1: n = 3) with values 100 i: z_0 = 3 + 300, z_1 = 3 + 400
    buffer.update_targets("old", np.arange(6), 100.0 * np.arange(6), uniform(6), 4)
    batch = buffer.sample(512)
    rows = at_start(batch, keys["old"])
    np.testing.assert_allclose(batch.target_value[rows], [[303, 403]] * int(rows.sum()))
    np.testing.assert_array_equal(batch.value_td_steps[rows], 3)
    # a reanalysis by v9 makes v9 the newest: "new" (v5, age 4) now has n = 1
    buffer.update_targets("old", np.array([5]), np.array([0.0]), uniform(1), 9)
    batch = buffer.sample(512)
    rows = at_start(batch, keys["new"])
    np.testing.assert_allclose(batch.target_value[rows], [[11, 21]] * int(rows.sum()))


def test_the_reanalysed_version_counts_only_where_the_reanalysis_is_used(make_buffer):
    buffer, keys = off_policy_buffer(make_buffer, per_step=2, fraction=0.0)
    buffer.update_targets("old", np.arange(6), 100.0 * np.arange(6), uniform(6), 5)
    batch = buffer.sample(512)
    rows = at_start(batch, keys["old"])  # self-play targets of v0 (age 5): n = 1
    np.testing.assert_allclose(batch.target_value[rows], [[11, 21]] * int(rows.sum()))


def test_off_is_the_fixed_n(make_buffer, tmp_path):
    buffer, keys = off_policy_buffer(make_buffer, per_step=0)
    batch = buffer.sample(512)
    for name in keys:
        rows = at_start(batch, keys[name])
        np.testing.assert_allclose(batch.target_value[rows], [[33, 43]] * int(rows.sum()))
    np.testing.assert_array_equal(batch.value_td_steps, 3)
    # and a schedule too slow to shorten anything gives the same batch as off, draw for draw
    slow = make_buffer(data_dir=tmp_path / "slow", num_unroll_steps=1, td_steps=3, discount=1.0,
                       td_age_versions_per_step=1000)
    fixed = make_buffer(data_dir=tmp_path / "fixed", num_unroll_steps=1, td_steps=3, discount=1.0)
    for b in (slow, fixed):
        add(b, *[record(ONE_PLAYER, f"g{j}", 20, seed=j, model_version=j, terminated=j % 2 == 0)
                 for j in range(4)])
    one, other = slow.sample(256), fixed.sample(256)
    for name in ("record_keys", "positions", "target_value", "value_td_steps"):
        np.testing.assert_array_equal(getattr(one, name), getattr(other, name), name)


# --- SampleGames orders ------------------------------------------------------------------------------
def ids(stored):
    return [g.game.id for g in stored]


def test_sample_games_orders(make_buffer):
    buffer = make_buffer()
    add(buffer, *[record(ONE_PLAYER, name, 3, model_version=version)
                  for name, version in (("a", 3), ("b", 1), ("c", 1), ("d", 2))])
    assert ids(buffer.sample_games(10, order="newest_first")) == ["d", "c", "b", "a"]
    assert ids(buffer.sample_games(2, order="newest_first")) == ["d", "c"]
    assert sorted(ids(buffer.sample_games(10, order="uniform"))) == ["a", "b", "c", "d"]
    drawn = ids(buffer.sample_games(3))
    assert len(set(drawn)) == 3  # without replacement
    # oldest targets first: the smallest minimum targets version, ties by the oldest key
    assert ids(buffer.sample_games(10, order="oldest_targets_first")) == ["b", "c", "d", "a"]
    assert ids(buffer.sample_games(1, order="oldest_targets_first")) == ["b"]
    buffer.update_targets("b", np.arange(3), np.zeros(3), uniform(3), 6)  # b is fresh now
    buffer.update_targets("c", np.array([0]), np.zeros(1), uniform(1), 9)  # c only in part
    assert ids(buffer.sample_games(10, order="oldest_targets_first")) == ["c", "d", "a", "b"]
    assert ids(buffer.sample_games(2, order="oldest_targets_first")) == ["c", "d"]
    assert [g.targets_model_version for g in buffer.sample_games(10, order="oldest_targets_first")] == [1, 2, 3, 6]


def test_prioritized_sample_games_draws_by_the_records_priority_sums(make_buffer):
    buffer = make_buffer()
    keys = add(buffer, *[record(ONE_PLAYER, name, 2) for name in "wxyz"]).keys
    key = dict(zip("wxyz", keys))
    # priority sums: w 1, x 3, y 6, z 0 (never drawn before the others)
    for name, pair in (("w", [0.5, 0.5]), ("x", [1.0, 2.0]), ("y", [3.0, 3.0]), ("z", [0.0, 0.0])):
        buffer.update_priorities(np.array([key[name]] * 2), np.array([0, 1]), np.array(pair))
    firsts = collections.Counter(ids(buffer.sample_games(1, order="prioritized"))[0] for _ in range(3000))
    assert firsts["z"] == 0
    for name, p in (("w", 0.1), ("x", 0.3), ("y", 0.6)):
        assert firsts[name] / 3000 == pytest.approx(p, abs=0.04), firsts
    for _ in range(50):
        drawn = ids(buffer.sample_games(4, order="prioritized"))
        assert sorted(drawn) == ["w", "x", "y", "z"] and drawn[-1] == "z"
    # the sums follow later updates (running, not rebuilt): now only z has priority
    buffer.update_priorities(np.array([key[n] for n in "wxyzz"]), np.array([0, 0, 0, 0, 1]),
                             np.array([0.0, 0.0, 0.0, 1.0, 1.0]))
    buffer.update_priorities(np.array([key[n] for n in "wxy"]), np.array([1, 1, 1]), np.zeros(3))
    assert all(ids(buffer.sample_games(1, order="prioritized")) == ["z"] for _ in range(20))


def test_a_bad_order_is_refused(make_buffer):
    buffer = make_buffer()
    add(buffer, record(ONE_PLAYER, "g", 3))
    with pytest.raises(ReplayError) as error:
        buffer.sample_games(1, order="newest")
    assert error.value.code == "INVALID_ARGUMENT" and error.value.message.startswith("order:")
    assert "'newest'" in error.value.message


# --- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    (dict(reanalysed_target_fraction=1.5), "ReplaySettings.reanalysed_target_fraction must be in [0, 1], got 1.5"),
    (dict(reanalysed_target_fraction=-0.1), "reanalysed_target_fraction must be in [0, 1], got -0.1"),
    (dict(reanalysed_target_fraction=float("nan")), "reanalysed_target_fraction must be in [0, 1], got nan"),
    (dict(td_age_versions_per_step=-1), "ReplaySettings.td_age_versions_per_step must be >= 0, got -1"),
])
def test_bad_settings_are_refused_naming_the_value(fields, message):
    with pytest.raises(ValueError) as error:
        ReplaySettings(**fields)
    assert message in str(error.value)


def test_the_settings_flow_from_the_game_into_the_config(tmp_path):
    from games.base import MuZeroSettings
    from services.replay.__main__ import parse_args

    settings = MuZeroSettings.of(architecture="fc", hidden_size=8, discount=0.9)
    settings = type(settings)(**{**settings.__dict__, "replay": ReplaySettings(
        reanalysed_target_fraction=0.25, td_age_versions_per_step=3)})
    config = ReplayConfig.for_game(ONE_PLAYER, str(tmp_path), settings)
    assert (config.reanalysed_target_fraction, config.td_age_versions_per_step) == (0.25, 3)
    default = parse_args(["--game", "cartpole", "--data-dir", str(tmp_path)])
    assert (default.reanalysed_target_fraction, default.td_age_versions_per_step) == (1.0, 0)
    flagged = parse_args(["--game", "cartpole", "--data-dir", str(tmp_path),
                          "--reanalysed-target-fraction", "0.5", "--td-age-versions-per-step", "4"])
    assert (flagged.reanalysed_target_fraction, flagged.td_age_versions_per_step) == (0.5, 4)


# --- through gRPC: the client, the stats and the metrics ---------------------------------------------
@pytest.fixture
def server(tmp_path):
    config = ReplayConfig(spec=ONE_PLAYER, data_dir=str(tmp_path / "replay"), capacity=1000,
                          min_positions=0, seed=0, port=0, metrics_port=0, discount=0.5,
                          num_unroll_steps=1, td_steps=2, td_age_versions_per_step=1)
    server = serve(config, get_logger("replay"), ReplayMetrics(CollectorRegistry()))
    try:
        yield server
    finally:
        server.stop(0)


def metric(server, name: str) -> float:
    value = server.servicer.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def test_reanalyse_through_the_client_moves_stats_and_metrics(server):
    with ReplayClient(f"127.0.0.1:{server.port}", timeout_s=10) as client:
        client.add_games([record(ONE_PLAYER, "g", 4, rewards=[1, 2, 3, 4], values=[10, 20, 30, 40],
                                 policies=np.full((4, 2), 0.5), model_version=1),
                          record(ONE_PLAYER, "h", 4, model_version=0)])
        batch = client.sample_batch(64)
        # no reanalysis yet; newest 1: "g" (age 0) n = 2, "h" (age 1) n = 1
        assert not batch.reanalysed.any()
        expected_n = np.where(batch.record_keys == 1, 2, 1)[:, None]
        np.testing.assert_array_equal(batch.value_td_steps, np.broadcast_to(expected_n, (64, 2)))
        assert metric(server, replay_metrics.SAMPLED_REANALYSED_POSITIONS_TOTAL) == 0
        inside = batch.mask > 0
        mean_n = float(np.broadcast_to(expected_n, (64, 2))[inside].mean())
        assert metric(server, replay_metrics.VALUE_TARGET_TD_STEPS) == pytest.approx(mean_n)

        result = client.update_targets("g", np.arange(4), [-1.0, -2, -3, -4], [[0.9, 0.1]] * 4, 1)
        assert result == (4, 0) and (result.updated, result.skipped) == (4, 0)
        assert client.update_targets("g", [0, 1], [5.0, 5.0], [[0.5, 0.5]] * 2, 0) == (0, 2)
        assert metric(server, replay_metrics.TARGET_UPDATES_SKIPPED_TOTAL) == 2
        assert metric(server, replay_metrics.REANALYSED_POSITIONS) == 4

        batch = client.sample_batch(256)
        from_g = batch.record_keys == 1
        np.testing.assert_array_equal(batch.reanalysed, from_g)
        at0 = from_g & (batch.positions == 0)
        assert at0.any()
        np.testing.assert_allclose(batch.target_value[at0, 0], 1.25)  # 2 + 0.25 w_2, n = 2
        assert metric(server, replay_metrics.SAMPLED_REANALYSED_POSITIONS_TOTAL) == from_g.sum()
        assert metric(server, replay_metrics.REANALYSED_TARGET_FRACTION) == pytest.approx(from_g.mean())

        stored = {g.game.id: g for g in client.sample_games(10, order="oldest_targets_first")}
        assert [g.game.id for g in client.sample_games(10, order="oldest_targets_first")] == ["h", "g"]
        np.testing.assert_array_equal(stored["g"].targets_versions, [1, 1, 1, 1])
        np.testing.assert_array_equal(stored["h"].targets_versions, [-1, -1, -1, -1])
        np.testing.assert_array_equal(stored["g"].game.root_values, [-1, -2, -3, -4])
        assert [g.game.id for g in client.sample_games(1, order="newest_first")] == ["h"]
        assert len(client.sample_games(2, order="prioritized")) == 2

        client.update_targets("h", [0], [0.0], [[0.5, 0.5]], 3)
        stats = client.get_stats()
        assert (stats.reanalysed_positions, stats.newest_model_version) == (5, 3)
        assert stats.reanalysed_mean_age == pytest.approx(3 - 7 / 5)

        with pytest.raises(ValueError, match="order: 'sideways' is not one of"):
            client.sample_games(1, order="sideways")


def test_an_unknown_order_on_the_wire_is_invalid_argument(server):
    with ReplayClient(f"127.0.0.1:{server.port}", timeout_s=10) as client:
        client.add_games([record(ONE_PLAYER, "g", 3)])
        with pytest.raises(grpc.RpcError) as error:
            client._stub.SampleGames(replay_pb2.SampleGamesRequest(num_games=1, order=7), timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith("order: unknown order 7")
        # field 2 was `bool newest_first`: true reads as NEWEST_FIRST
        assert replay_pb2.SampleGamesRequest.FromString(b"\x08\x01\x10\x01").order == \
            replay_pb2.SampleGamesRequest.NEWEST_FIRST
