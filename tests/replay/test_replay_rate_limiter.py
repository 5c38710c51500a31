"""The rate limiter on its own: the ratio, the minimum, the messages, the waiters (a fake clock
for timeouts; a condition that announces its waits instead of sleeps)."""

from __future__ import annotations

import threading

import pytest

from services.replay.rate_limiter import RateLimiter
from services.replay.records import ReplayError


class AnnouncingCondition(threading.Condition):
    """A condition whose every wait first wakes the others: a test waiting on it learns that
    a sampler has parked, without polling."""

    def wait(self, timeout=None):
        self.notify_all()
        return super().wait(timeout)


class SteppingClock:
    """Each reading is `step` seconds after the previous one."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def limiter(min_size=0, spi=0.0, error_buffer=0.0, max_waiters=4, clock=None,
            condition=None) -> RateLimiter:
    return RateLimiter(condition or threading.Condition(), min_size, spi, error_buffer,
                       max_waiters, **({"clock": clock} if clock else {}))


def test_min_size_and_at_least_one_position():
    rl = limiter(min_size=10)
    assert not rl.can_sample(1)
    assert rl.describe(1) == "positions=0 sampleable positions stored < min_positions=10"
    with rl.condition:
        rl.insert(9)
    assert not rl.can_sample(1)
    with rl.condition:
        rl.insert(1)
    assert rl.can_sample(1000)  # no ratio: any batch once the minimum is there
    rl.delete(5)
    assert not rl.can_sample(1) and rl.size == 5 and rl.inserts == 10
    empty = limiter(min_size=0)
    assert not empty.can_sample(1)  # nothing to draw from
    assert "min_positions=1" in empty.describe(1)


def test_samples_per_insert_arithmetic_and_its_message():
    # samples + B <= 2 * (inserts - 4) + 8
    rl = limiter(min_size=4, spi=2.0, error_buffer=8.0)
    with rl.condition:
        rl.insert(4)
    assert rl.can_sample(8) and not rl.can_sample(9)
    rl.sample(8)
    assert not rl.can_sample(1)
    assert rl.describe(1) == ("samples_per_insert=2: 8 positions sampled + batch_size=1 > "
                              "samples_per_insert * (4 inserted - min_positions=4) + "
                              "error_buffer=8; positions=4")
    with rl.condition:
        rl.insert(3)
    assert rl.can_sample(6) and not rl.can_sample(7)
    rl.delete(7)  # evictions do not give the samplers credit back
    assert rl.inserts == 7 and rl.size == 0


def test_restore_starts_balanced():
    rl = limiter(min_size=100, spi=4.0, error_buffer=50.0)
    rl.restore(1000)
    assert (rl.size, rl.inserts, rl.samples) == (1000, 1000.0, 3600.0)
    assert rl.can_sample(50) and not rl.can_sample(51)  # only the error buffer is left
    small = limiter(min_size=100, spi=4.0)
    small.restore(10)
    assert small.samples == 0.0


def test_an_allowed_sample_returns_at_once_and_is_not_counted_as_waiting():
    rl = limiter()
    with rl.condition:
        rl.insert(1)
        rl.await_can_sample(1, timeout_s=0.0)
    assert rl.waited_total == 0


def test_a_sample_past_its_timeout_gets_deadline_exceeded_with_the_state():
    rl = limiter(min_size=10, clock=SteppingClock(0.3))
    with rl.condition:
        rl.insert(6)
        with pytest.raises(ReplayError) as error:
            rl.await_can_sample(4, timeout_s=0.5)
    assert error.value.code == "DEADLINE_EXCEEDED"
    assert error.value.message.startswith("rate limiter: waited ")
    assert error.value.message.endswith("s and sampling is still not allowed: positions=6 "
                                        "sampleable positions stored < min_positions=10")
    assert (rl.waited_total, rl.waiting) == (1, 0)


def _park(rl: RateLimiter, batch_size: int) -> tuple[threading.Thread, list]:
    """A thread waiting in the limiter for `batch_size` (no timeout); returns once it waits."""
    outcome: list = []

    def sample() -> None:
        with rl.condition:
            try:
                rl.await_can_sample(batch_size, timeout_s=None)
                outcome.append("sampled")
            except ReplayError as error:
                outcome.append(error.code)

    thread = threading.Thread(target=sample)
    with rl.condition:
        waiting = rl.waiting
        thread.start()
        assert rl.condition.wait_for(lambda: rl.waiting == waiting + 1, timeout=60)
    return thread, outcome


def test_an_insert_wakes_a_waiting_sampler():
    rl = limiter(min_size=5, condition=AnnouncingCondition())
    thread, outcome = _park(rl, 1)
    with rl.condition:
        rl.insert(5)
    thread.join(60)
    assert outcome == ["sampled"] and rl.waited_total == 1


def test_waiters_are_bounded_and_cancel_answers_unavailable():
    rl = limiter(min_size=5, max_waiters=1, condition=AnnouncingCondition())
    thread, outcome = _park(rl, 1)
    with rl.condition:
        with pytest.raises(ReplayError) as error:
            rl.await_can_sample(1, timeout_s=None)
    assert error.value.code == "RESOURCE_EXHAUSTED"
    assert error.value.message.startswith("rate limiter: 1 SampleBatch calls are already waiting")
    with rl.condition:
        rl.cancel()
    thread.join(60)
    assert outcome == ["UNAVAILABLE"] and rl.waited_total == 2
    with rl.condition, pytest.raises(ReplayError) as later:
        rl.await_can_sample(1, timeout_s=None)
    assert later.value.code == "UNAVAILABLE"
    assert limiter(max_waiters=0).max_waiters == 1


# --- inserts that wait (block_inserts) -----------------------------------------------------------
def blocking(min_size=0, spi=1.0, error_buffer=0.0, max_insert_waiters=4, clock=None):
    return RateLimiter(threading.Condition(), min_size, spi, error_buffer, 4,
                       block_inserts=True, max_insert_waiters=max_insert_waiters,
                       **({"clock": clock} if clock else {}))


def test_insert_rule_arithmetic_and_its_message():
    # an insert waits while the minimum is reached and 2 * (inserts - 4) > samples + 8
    rl = blocking(min_size=4, spi=2.0, error_buffer=8.0)
    with rl.condition:
        rl.insert(3)
        assert rl.can_insert()  # below the minimum: always
        rl.insert(5)  # D = 2 * 4 - 0 = 8 <= 8
        assert rl.can_insert()
        rl.insert(1)  # D = 10 > 8
        assert not rl.can_insert()
        assert rl.describe_insert() == (
            "samples_per_insert=2: samples_per_insert * (9 inserted - min_positions=4) > 0 "
            "positions sampled + error_buffer=8 (the trainer is behind); positions=9")
        rl.sample(1)  # D = 9
        assert not rl.can_insert()
        rl.sample(1)  # D = 8
        assert rl.can_insert()
        rl.delete(6)  # evicted below the minimum: inserts go whatever the counts
        rl.insert(100)
        rl.delete(100)
        assert rl.size == 3 and rl.can_insert()


def test_inserts_are_never_blocked_when_off_or_without_a_ratio():
    off = limiter(spi=1.0)
    no_ratio = RateLimiter(threading.Condition(), 0, 0.0, 0.0, 4, block_inserts=True)
    for rl in (off, no_ratio):
        with rl.condition:
            rl.insert(1000)
            assert rl.can_insert()
            assert rl.await_can_insert(timeout_s=0.0) is not None
        assert (rl.block_inserts, rl.insert_waited_total, rl.inserts_waiting) == (False, 0, 0)


def test_deadlock_freedom_holds_exactly_when_error_buffer_is_at_least_half_the_batch():
    """In every state at or above the minimum, an insert or a sample of B may go when
    E >= B / 2; with E < B / 2 some state holds both (why the buffer refuses B > 2 E)."""
    B, spi, m = 8, 3.0, 5
    for E, ok in ((4.0, True), (5.0, True), (3.5, False)):
        both_blocked = []
        for inserts in range(m, 60):
            for samples in range(0, 200):
                rl = blocking(min_size=m, spi=spi, error_buffer=E)
                rl.size, rl.inserts, rl.samples = inserts, float(inserts), float(samples)
                if not rl.can_insert() and not rl.can_sample(B):
                    both_blocked.append((inserts, samples))
        assert (not both_blocked) == ok, (E, both_blocked[:3])


def test_restore_lets_the_first_insert_go_and_holds_the_next():
    rl = blocking(min_size=100, spi=4.0, error_buffer=50.0)
    rl.restore(1000)  # D = 0: balanced
    assert rl.can_insert() and rl.can_sample(50)
    with rl.condition:
        rl.insert(20)  # D = 80 > 50
    assert not rl.can_insert()
    rl.sample(30)  # D = 50
    assert rl.can_insert()
    small = blocking(min_size=100, spi=4.0, error_buffer=0.0)
    small.restore(10)  # below the minimum: inserts go
    assert small.can_insert() and not small.can_sample(1)


def test_an_insert_past_its_timeout_gets_deadline_exceeded_with_the_state():
    rl = blocking(spi=1.0, error_buffer=2.0, clock=SteppingClock(0.3))
    with rl.condition:
        rl.insert(5)
        with pytest.raises(ReplayError) as error:
            rl.await_can_insert(timeout_s=0.5)
    assert error.value.code == "DEADLINE_EXCEEDED"
    assert error.value.message.startswith("rate limiter: waited ")
    assert error.value.message.endswith(
        "s and inserting is still not allowed: samples_per_insert=1: samples_per_insert * (5 "
        "inserted - min_positions=0) > 0 positions sampled + error_buffer=2 (the trainer is "
        "behind); positions=5")
    assert (rl.insert_waited_total, rl.inserts_waiting) == (1, 0)


def _park_inserter(rl: RateLimiter) -> tuple[threading.Thread, list]:
    """A thread waiting in the limiter to insert (no timeout); returns once it waits (entering
    the wait notifies the condition)."""
    outcome: list = []

    def insert() -> None:
        with rl.condition:
            try:
                rl.await_can_insert(timeout_s=None)
                outcome.append("inserted")
            except ReplayError as error:
                outcome.append(error.code)

    thread = threading.Thread(target=insert)
    with rl.condition:
        waiting = rl.inserts_waiting
        thread.start()
        assert rl.condition.wait_for(lambda: rl.inserts_waiting == waiting + 1, timeout=60)
    return thread, outcome


def test_samples_wake_a_waiting_inserter_once_enough_are_sampled():
    rl = blocking(spi=1.0, error_buffer=2.0)
    with rl.condition:
        rl.insert(6)  # D = 6 > 2
    thread, outcome = _park_inserter(rl)
    with rl.condition:
        rl.sample(3)  # D = 3: wakes it, still not allowed
    with rl.condition:
        assert rl.inserts_waiting == 1 and outcome == []
        rl.sample(1)  # D = 2: allowed
    thread.join(60)
    assert outcome == ["inserted"] and rl.insert_waited_total == 1 and rl.inserts_waiting == 0


def test_waiting_inserters_are_bounded_and_cancel_answers_unavailable():
    rl = blocking(spi=1.0, max_insert_waiters=1)
    with rl.condition:
        rl.insert(1)
    thread, outcome = _park_inserter(rl)
    with rl.condition, pytest.raises(ReplayError) as error:
        rl.await_can_insert(timeout_s=None)
    assert error.value.code == "RESOURCE_EXHAUSTED"
    assert error.value.message.startswith("rate limiter: 1 AddGames calls are already waiting")
    with rl.condition:
        rl.cancel()
    thread.join(60)
    assert outcome == ["UNAVAILABLE"] and rl.insert_waited_total == 2
    with rl.condition, pytest.raises(ReplayError) as later:
        rl.await_can_insert(timeout_s=None)
    assert later.value.code == "UNAVAILABLE"
