"""TrajectoryRecorder: whole games, chunks of long games with look-ahead, ids; ReplayWriter: no loss."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

import games
from services.agent.replay_writer import ReplayWriter
from services.agent.trajectories import TrajectoryRecorder
from services.common.logs import get_logger
from services.common.tensors import from_tensor


def _move(recorder, spec, t, ended):
    B, A = recorder.batch_size, spec.num_actions
    observation = np.full((B, *spec.observation_shape), t, np.float32)
    return recorder.record_move(
        observation, np.ones((B, A), bool), np.zeros(B, np.int32), np.full(B, t % A, np.int32),
        np.full(B, 0.5 * t, np.float32), np.full((B, A), 1.0 / A, np.float32), 7,
        np.ones(B, np.float32), ended, np.zeros(B, bool))


def test_whole_game_record_holds_every_move():
    spec = games.make("cartpole").spec
    recorder = TrajectoryRecorder(spec, batch_size=3, chunk_length=100, lookahead=10, agent_id="a")
    for t in range(4):
        records, finished = _move(recorder, spec, t, np.array([t == 3, False, False]))
    assert len(records) == 1 and len(finished) == 1
    record = records[0]
    assert record.id == "a-1-0" and record.episode_id == "a-1" and record.terminated
    assert record.num_sampleable == 0 and record.first_move == 0 and record.model_version == 7
    np.testing.assert_array_equal(from_tensor(record.actions), [0, 1, 0, 1])
    np.testing.assert_array_equal(from_tensor(record.observations)[:, 0], [0, 1, 2, 3])
    assert finished[0].length == 4 and finished[0].total_reward[0] == 4
    # The slot starts a new episode with a new id; the other slots go on.
    assert recorder.cursor.tolist() == [0, 4, 4]
    assert recorder.episode_ids[0] != "a-1"


def test_long_game_is_cut_into_chunks_with_lookahead():
    spec = games.make("cartpole").spec
    recorder = TrajectoryRecorder(spec, batch_size=1, chunk_length=5, lookahead=3, agent_id="a")
    emitted = []
    for t in range(14):
        records, _ = _move(recorder, spec, t, np.array([t == 13]))
        emitted += records
    # Chunk 0 at 8 moves: sampleable 0..4, context 5..7; chunk 1 at moves 5..12 (8 moves):
    # sampleable 5..9, context 10..12; the final record holds moves 10..13, all sampleable.
    assert [r.id for r in emitted] == ["a-1-0", "a-1-1", "a-1-2"]
    assert [r.first_move for r in emitted] == [0, 5, 10]
    assert [r.num_sampleable for r in emitted] == [5, 5, 0]
    assert [r.terminated for r in emitted] == [False, False, True]
    firsts = [from_tensor(r.observations)[:, 0].tolist() for r in emitted]
    assert firsts == [list(range(0, 8)), list(range(5, 13)), list(range(10, 14))]


def test_replay_writer_retries_until_acknowledged_and_never_duplicates_a_send():
    sent: list[str] = []
    failures = {"left": 3}

    class Unavailable(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "replay restarting"

    def add_games(records, timeout_s=None):
        if failures["left"]:
            failures["left"] -= 1
            raise Unavailable()
        sent.extend(r.id for r in records)

    spec = games.make("cartpole").spec
    recorder = TrajectoryRecorder(spec, batch_size=4, chunk_length=50, lookahead=2, agent_id="w")
    records, _ = _move(recorder, spec, 0, np.ones(4, bool))
    writer = ReplayWriter(add_games, get_logger("test", stream=open("/dev/null", "w")))
    writer.put(records)
    assert writer.close(timeout_s=30) == 0
    assert sorted(sent) == sorted(r.id for r in records)
    assert writer.acked == 4


def test_replay_writer_blocks_producers_when_too_much_is_pending():
    release = threading.Event()

    def add_games(records, timeout_s=None):
        release.wait(30)

    spec = games.make("cartpole").spec
    recorder = TrajectoryRecorder(spec, batch_size=2, chunk_length=50, lookahead=2, agent_id="b")
    writer = ReplayWriter(add_games, get_logger("test", stream=open("/dev/null", "w")), max_pending=2)
    records, _ = _move(recorder, spec, 0, np.ones(2, bool))
    writer.put(records)
    more, _ = _move(recorder, spec, 0, np.ones(2, bool))
    blocked = threading.Thread(target=writer.put, args=(more,))
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive(), "put must wait while max_pending records are unacknowledged"
    release.set()
    blocked.join(30)
    assert not blocked.is_alive()
    assert writer.close(timeout_s=30) == 0 and writer.acked == 4
