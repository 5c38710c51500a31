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
