"""Unit tests of sessions and the session store: in-process, no server."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import games
from environment_helpers import InProcess, assert_same, loadable_games, random_legal_actions
from services.environment.sessions import Session, SessionError, SessionStore

GAMES = loadable_games()


def snapshot(session: Session):
    """Everything a rejected call must leave alone: positions, done mask, time step, rng state."""
    return (session.game.positions(session.state).copy(), session.done.copy(), session.time_step(),
            session.num_steps, session.state.rng.bit_generator.state)


def assert_unchanged(session: Session, before) -> None:
    positions, done, time_step, num_steps, rng_state = before
    np.testing.assert_array_equal(session.game.positions(session.state), positions)
    np.testing.assert_array_equal(session.done, done)
    assert_same(session.time_step(), time_step)
    assert session.num_steps == num_steps
    assert session.state.rng.bit_generator.state == rng_state


def make_session(name: str, num_games: int, seed: int = 0) -> Session:
    return Session("s", name, games.make(name), num_games, seed, now=0.0)


@pytest.mark.parametrize("name", GAMES)
@pytest.mark.parametrize("auto_reset", [True, False])
def test_session_plays_like_the_game_in_process(name, auto_reset):
    session = make_session(name, num_games=16, seed=3)
    reference = InProcess(games.make(name), 16, seed=3)
    assert_same(session.time_step(), reference.time_step(), "after open")
    rng = np.random.default_rng(0)
    episodes = 0
    for t in range(40):
        if not auto_reset and session.done.any():
            ended = np.flatnonzero(session.done)
            assert_same(session.reset(ended), reference.reset(ended), f"after reset at {t}")
        actions = random_legal_actions(rng, session.time_step().legal_actions)
        time_step, num_ended = session.step(actions, auto_reset)
        assert_same(time_step, reference.step(actions, auto_reset), f"at step {t}")
        episodes += num_ended
        np.testing.assert_array_equal(session.done, np.zeros(16, bool) if auto_reset
                                      else time_step.terminated | time_step.truncated)
    if name in ("cartpole", "tictactoe"):  # random play ends these within 40 moves
        assert episodes > 0


def test_reset_of_a_subset_keeps_the_other_games():
    session = make_session("cartpole", num_games=6, seed=1)
    reference = InProcess(games.make("cartpole"), 6, seed=1)
    for _ in range(3):
        session.step(np.ones(6, np.int32), auto_reset=False)
        reference.step(np.ones(6, np.int32))
    before = session.time_step()
    after = session.reset([4, 1])
    assert_same(after, reference.reset([4, 1]))
    keep = [0, 2, 3, 5]
    np.testing.assert_array_equal(after.observation[keep], before.observation[keep])
    np.testing.assert_array_equal(after.reward, [1, 0, 1, 1, 0, 1])
    assert after.num_steps == 3
    assert_same(session.reset(), reference.reset(None))  # empty: all of them


def test_ended_game_must_be_reset_before_it_is_stepped_again():
    session = make_session("cartpole", num_games=3, seed=0)
    right = np.ones(3, np.int32)
    while not session.done.any():
        session.step(right, auto_reset=False)
    ended = int(np.flatnonzero(session.done)[0])
    before = snapshot(session)
    for auto_reset in (False, True):  # auto_reset restarts games that end on that step only
        with pytest.raises(SessionError) as error:
            session.step(right, auto_reset)
        assert error.value.code == "FAILED_PRECONDITION"
        assert error.value.message.startswith("actions:") and f"game {ended}" in error.value.message
        assert_unchanged(session, before)
    session.reset(np.flatnonzero(session.done))
    session.step(right, auto_reset=False)


@pytest.mark.parametrize("actions, message", [
    (np.zeros(4, np.float32), "actions: dtype must be an integer type (int32), got float32"),
    (np.zeros(4, bool), "actions: dtype must be an integer type (int32), got bool"),
    (np.zeros(3, np.int32), "actions: shape must be [4] (one action per game of the session), got [3]"),
    (np.zeros((4, 1), np.int32), "actions: shape must be [4] (one action per game of the session), got [4, 1]"),
    (np.array([0, 9, 0, 0], np.int32), "actions: action 9 of game 1 is out of range [0, 9)"),
    (np.array([0, 0, -1, 0], np.int64), "actions: action -1 of game 2 is out of range [0, 9)"),
])
def test_bad_actions_are_rejected_and_change_nothing(actions, message):
    session = make_session("tictactoe" if "tictactoe" in GAMES else pytest.skip("no tictactoe"), 4)
    before = snapshot(session)
    with pytest.raises(SessionError) as error:
        session.step(actions, auto_reset=True)
    assert (error.value.code, error.value.message) == ("INVALID_ARGUMENT", message)
    assert_unchanged(session, before)


def test_illegal_action_names_the_game_and_the_action():
    if "tictactoe" not in GAMES:
        pytest.skip("tictactoe does not load")
    session = make_session("tictactoe", 3)
    session.step(np.array([4, 0, 8], np.int32), auto_reset=False)
    before = snapshot(session)
    with pytest.raises(SessionError) as error:
        session.step(np.array([1, 2, 8], np.int32), auto_reset=False)  # game 2: cell 8 is taken
    assert error.value.code == "INVALID_ARGUMENT"
    assert error.value.message == ("actions: action 8 is illegal in game 2 "
                                   "(legal actions: [0, 1, 2, 3, 4, 5, 6, 7])")
    assert_unchanged(session, before)


@pytest.mark.parametrize("indices, message", [
    ([0, 5], "game_indices: index 5 is out of range [0, 5)"),
    ([-1], "game_indices: index -1 is out of range [0, 5)"),
    ([2, 3, 2], "game_indices: index 2 appears more than once"),
])
def test_bad_reset_indices_are_rejected_and_change_nothing(indices, message):
    session = make_session("cartpole", 5)
    session.step(np.zeros(5, np.int32), auto_reset=True)
    before = snapshot(session)
    with pytest.raises(SessionError) as error:
        session.reset(indices)
    assert (error.value.code, error.value.message) == ("INVALID_ARGUMENT", message)
    assert_unchanged(session, before)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_store_limits_and_ids():
    store = SessionStore(max_sessions=2, max_games_per_session=8)
    game = games.make("cartpole")
    for num_games, seed, message in [
            (0, 0, "num_games: must be in [1, 8] (the server's --max-games-per-session), got 0"),
            (9, 0, "num_games: must be in [1, 8] (the server's --max-games-per-session), got 9"),
            (1, -1, "seed: must be >= 0, got -1")]:
        with pytest.raises(SessionError) as error:
            store.open("cartpole", game, num_games, seed)
        assert (error.value.code, error.value.message) == ("INVALID_ARGUMENT", message)
    a = store.open("cartpole", game, 8, 0)
    b = store.open("cartpole", game, 1, 0)
    assert a.id != b.id and len(a.id) == 36  # uuid4
    with pytest.raises(SessionError) as error:
        store.open("cartpole", game, 1, 0)
    assert error.value.code == "RESOURCE_EXHAUSTED" and "2 sessions" in error.value.message
    assert (len(store), store.num_games()) == (2, 9)
    assert store.get(a.id) is a
    with pytest.raises(SessionError) as error:
        store.get("nope")
    assert (error.value.code, error.value.message) == ("NOT_FOUND", "session_id: unknown session 'nope'")
    with pytest.raises(SessionError) as error:
        store.get("")
    assert error.value.code == "INVALID_ARGUMENT" and error.value.message.startswith("session_id:")

    assert store.close(a.id) is a
    assert store.close(a.id) is None  # idempotent
    with pytest.raises(SessionError) as error:
        store.get(a.id)
    assert (error.value.code, error.value.message) == ("NOT_FOUND", f"session_id: session '{a.id}' was closed")
    with pytest.raises(SessionError) as error:
        store.close("never-issued")
    assert error.value.code == "NOT_FOUND"
    store.open("cartpole", game, 1, 0)  # a closed session frees its slot


def test_reaper_closes_idle_sessions_only():
    clock = FakeClock()
    store = SessionStore(max_sessions=10, max_games_per_session=8, clock=clock)
    game = games.make("cartpole")
    idle, used, busy = (store.open("cartpole", game, 2, 0) for _ in range(3))
    clock.now += 5
    store.get(used.id)  # a call naming it
    busy.lock.acquire()  # a call in progress
    clock.now += 6
    assert [(s.id, t) for s, t in store.reap(timeout_s=10)] == [(idle.id, 11.0)]
    busy.lock.release()
    assert store.reap(timeout_s=10) == [(busy, 11.0)]
    with pytest.raises(SessionError) as error:
        store.get(idle.id)
    assert error.value.code == "NOT_FOUND"
    assert error.value.message == (f"session_id: session '{idle.id}' expired after 10s without "
                                   f"calls (the server's --session-timeout-s)")
    assert store.close(idle.id) is None  # a late Close of an expired session succeeds
    assert [s.id for s, _ in store.reap(timeout_s=10)] == []
    clock.now += 10
    assert [s.id for s, _ in store.reap(timeout_s=10)] == [used.id]
    assert len(store) == 0


def test_use_gives_a_session_to_one_call_at_a_time():
    store = SessionStore(max_sessions=10, max_games_per_session=8)
    session = store.open("cartpole", games.make("cartpole"), 2, 0)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.use(session.id):
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(10)
    with pytest.raises(SessionError) as error:
        with store.use(session.id, timeout_s=0.0):
            pass
    assert error.value.code == "ABORTED" and session.id in error.value.message
    release.set()
    holder.join(10)
    with store.use(session.id, timeout_s=0.0) as again:
        assert again is session

    store.close(session.id)
    with pytest.raises(SessionError) as error:
        with store.use(session.id):
            pass
    assert error.value.code == "NOT_FOUND"


def test_store_bounds_the_games_of_all_sessions_together():
    clock = FakeClock()
    store = SessionStore(max_sessions=10, max_games_per_session=8, clock=clock, max_total_games=12)
    game = games.make("cartpole")
    a = store.open("cartpole", game, 8, 0)
    b = store.open("cartpole", game, 3, 0)
    with pytest.raises(SessionError) as error:
        store.open("cartpole", game, 2, 0)
    assert error.value.code == "RESOURCE_EXHAUSTED"
    assert error.value.message.startswith(
        "num_games: 2 more games would go beyond this server's maximum of 12 games in all "
        "sessions (--max-total-games): 11 are in use by 2 sessions, 1 are free")
    assert (len(store), store.num_games()) == (2, 11)
    c = store.open("cartpole", game, 1, 0)  # exactly up to the bound
    assert store.num_games() == 12
    store.close(a.id)
    store.close(a.id)  # closing again frees nothing twice
    assert store.num_games() == 4
    d = store.open("cartpole", game, 8, 0)
    clock.now += 100
    store.get(c.id)  # a call naming c: only b and d are idle
    assert {s.id for s, _ in store.reap(timeout_s=50)} == {b.id, d.id}
    assert (len(store), store.num_games()) == (1, 1)
    store.close_all()
    assert (len(store), store.num_games()) == (0, 0)


def test_a_session_that_fails_to_build_frees_its_games():
    store = SessionStore(max_sessions=2, max_games_per_session=8, max_total_games=8)
    game = games.make("cartpole")

    class Broken(type(game)):
        def reset(self, n, seed=None):
            raise RuntimeError("no games today")

    with pytest.raises(RuntimeError):
        store.open("cartpole", Broken(), 8, 0)
    assert (len(store), store.num_games()) == (0, 0)
    store.open("cartpole", game, 8, 0)  # the failed Open holds nothing


def test_default_total_is_every_session_full():
    store = SessionStore(max_sessions=3, max_games_per_session=4)
    assert store.max_total_games == 12
