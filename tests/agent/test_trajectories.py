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


def _move_restarting(recorder, spec, t, ended, restart):
    B, A = recorder.batch_size, spec.num_actions
    return recorder.record_move(
        np.full((B, *spec.observation_shape), t, np.float32), np.ones((B, A), bool),
        np.zeros(B, np.int32), np.full(B, t % A, np.int32), np.full(B, 0.5 * t, np.float32),
        np.full((B, A), 1.0 / A, np.float32), 7, np.ones(B, np.float32), ended, np.zeros(B, bool),
        restart=restart)


def test_a_restart_drops_the_moves_held_and_the_record_starts_at_the_next_move():
    spec = games.make("cartpole").spec
    recorder = TrajectoryRecorder(spec, batch_size=2, chunk_length=100, lookahead=10, agent_id="a")
    emitted, finished = [], []
    for t in range(6):
        # Slot 0 restarts after its move 2; slot 1 restarts at move 5, the move that ends it.
        records, done = _move_restarting(recorder, spec, t, ended=np.array([t == 5, t == 5]),
                                         restart=np.array([t == 2, t == 5]))
        emitted, finished = emitted + records, finished + done
        if t == 2:
            assert recorder.cursor.tolist() == [0, 3] and recorder.first_move.tolist() == [3, 0]
    # Slot 0 sends moves 3..5 alone, as its episode's first record; slot 1 sends nothing.
    assert len(emitted) == 1
    record = emitted[0]
    assert record.id == "a-1-0" and record.episode_id == "a-1" and record.first_move == 3
    assert record.terminated and record.num_sampleable == 0
    np.testing.assert_array_equal(from_tensor(record.observations)[:, 0], [3, 4, 5])
    np.testing.assert_array_equal(from_tensor(record.actions), [3 % spec.num_actions, 4 % spec.num_actions,
                                                                 5 % spec.num_actions])
    # Both games still count as finished, with their whole length and return.
    assert [(g.episode_id, g.length, float(g.total_reward[0])) for g in finished] == [
        ("a-1", 6, 6.0), ("a-2", 6, 6.0)]
    assert recorder.cursor.tolist() == [0, 0] and recorder.first_move.tolist() == [0, 0]


def test_a_restart_after_a_chunk_keeps_what_was_sent_and_drops_the_rest():
    spec = games.make("cartpole").spec
    recorder = TrajectoryRecorder(spec, batch_size=1, chunk_length=5, lookahead=3, agent_id="a")
    emitted = []
    for t in range(12):
        records, _ = _move_restarting(recorder, spec, t, ended=np.array([t == 11]),
                                      restart=np.array([t == 8]))
        emitted += records
    # Chunk 0 (moves 0..7) was sent at move 7; the restart at move 8 drops moves 5..8 (the
    # kept look-ahead and move 8); the last record holds moves 9..11.
    assert [r.id for r in emitted] == ["a-1-0", "a-1-1"]
    assert [r.first_move for r in emitted] == [0, 9]
    assert from_tensor(emitted[1].observations)[:, 0].tolist() == [9, 10, 11]
