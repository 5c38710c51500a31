"""The shared failure policy: transient or permanent, backoff, give-up, stop, the failure's words."""

from __future__ import annotations

import threading

import grpc
import pytest

from services.common.failures import (TRANSIENT_CODES, PermanentFailure, RetryPolicy, retry_call,
                                      status_code, wait_unless_stopped)
from tests.grpc_fakes import FakeRpcError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
                                  grpc.StatusCode.CANCELLED])
def test_peer_down_slow_or_busy_is_transient(code):
    assert code in TRANSIENT_CODES
    assert RetryPolicy().is_transient(FakeRpcError(code))


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.UNKNOWN, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED])
def test_a_wrong_request_or_a_bug_is_permanent(code):
    assert not RetryPolicy().is_transient(FakeRpcError(code))


def test_callers_add_their_context_specific_codes():
    not_found = FakeRpcError(grpc.StatusCode.NOT_FOUND, "no version loaded")
    assert RetryPolicy().is_transient(not_found, also={grpc.StatusCode.NOT_FOUND})
    assert not RetryPolicy().is_transient(ValueError("not an RPC error"))
    assert status_code(ValueError("x")) is None


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_success():
    backoff = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=3.0).backoff()
    down = FakeRpcError(grpc.StatusCode.UNAVAILABLE)
    assert [backoff.failed(down, "replay", "AddGames") for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.failed(down, "replay", "AddGames") == 0.5


def test_a_permanent_failure_names_peer_method_code_details_and_what_to_fix():
    backoff = RetryPolicy().backoff()
    error = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "games[0].observations: T = 900 exceeds")
    with pytest.raises(PermanentFailure) as raised:
        backoff.failed(error, "replay", "AddGames", "127.0.0.1:50001", hint="raise --capacity")
    failure = raised.value
    assert (failure.peer, failure.method, failure.code, failure.address) == (
        "replay", "AddGames", "INVALID_ARGUMENT", "127.0.0.1:50001")
    assert failure.details == "games[0].observations: T = 900 exceeds" and failure.hint == "raise --capacity"
    assert str(failure) == ("replay at 127.0.0.1:50001: AddGames failed with INVALID_ARGUMENT: "
                            "games[0].observations: T = 900 exceeds; raise --capacity")
    assert failure.log_fields() == {"peer": "replay", "address": "127.0.0.1:50001", "method": "AddGames",
                                    "code": "INVALID_ARGUMENT", "details": failure.details,
                                    "hint": "raise --capacity"}


def test_without_a_hint_the_code_says_where_to_look():
    failure = PermanentFailure.from_error(FakeRpcError(grpc.StatusCode.INTERNAL, "boom"), "replay", "SampleBatch")
    assert failure.code == "INTERNAL" and "log" in failure.hint


def test_hints_per_code_fall_back_to_the_codes_default():
    hints = {grpc.StatusCode.INVALID_ARGUMENT: "use the same --game"}
    invalid = PermanentFailure.from_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT), "replay", "AddGames",
                                          hint=hints)
    internal = PermanentFailure.from_error(FakeRpcError(grpc.StatusCode.INTERNAL), "replay", "AddGames",
                                           hint=hints)
    assert invalid.hint == "use the same --game" and "log" in internal.hint


def test_the_give_up_time_turns_a_long_outage_into_a_permanent_failure():
    clock = FakeClock()
    backoff = RetryPolicy(give_up_after_s=60.0).backoff(clock=clock)
    down = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    backoff.failed(down, "environment", "Open", "127.0.0.1:50000")
    clock.now += 59.0
    backoff.failed(down, "environment", "Open", "127.0.0.1:50000")
    clock.now += 1.0
    with pytest.raises(PermanentFailure, match="gave up after 60s") as raised:
        backoff.failed(down, "environment", "Open", "127.0.0.1:50000")
    assert raised.value.code == "UNAVAILABLE" and "127.0.0.1:50000" in raised.value.hint


def test_a_wait_ends_when_the_stop_event_is_set():
    stop = threading.Event()
    backoff = RetryPolicy().backoff(stop)
    result = []
    waiter = threading.Thread(target=lambda: result.append(backoff.pause(60.0)))
    waiter.start()
    stop.set()
    waiter.join(30)
    assert result == [False], "pause must return False (stopped), not wait out its 60 s"
    assert backoff.pause(60.0) is False  # already stopped: no wait at all


def test_a_wait_on_several_events_ends_with_any_of_them():
    first, second = threading.Event(), threading.Event()
    result = []
    waiter = threading.Thread(target=lambda: result.append(wait_unless_stopped(60.0, (first, second))))
    waiter.start()
    second.set()
    waiter.join(30)
    assert result == [False]
    assert wait_unless_stopped(0.0, (threading.Event(), threading.Event())) is True


def test_retry_call_waits_out_transient_failures_then_returns():
    outcomes = [FakeRpcError(grpc.StatusCode.UNAVAILABLE), FakeRpcError(grpc.StatusCode.ABORTED), "opened"]
    retries = []

    def call():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    policy = RetryPolicy(initial_backoff_s=0.0, max_backoff_s=0.0)
    assert retry_call(call, policy=policy, peer="environment", method="Open",
                      on_retry=lambda error, delay: retries.append(error.code())) == "opened"
    assert retries == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED]


def test_retry_call_raises_a_permanent_failure_at_once():
    calls = []

    def call():
        calls.append(1)
        raise FakeRpcError(grpc.StatusCode.INTERNAL, "bug")

    with pytest.raises(PermanentFailure, match="Open failed with INTERNAL"):
        retry_call(call, policy=RetryPolicy(initial_backoff_s=0.0, max_backoff_s=0.0),
                   peer="environment", method="Open")
    assert len(calls) == 1, "a permanent failure is never retried"


def test_retry_call_returns_none_once_stopped():
    stop = threading.Event()

    def call():
        stop.set()  # as SIGTERM would, while the peer is down
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)

    assert retry_call(call, policy=RetryPolicy(initial_backoff_s=60.0, max_backoff_s=60.0), stop=stop,
                      peer="environment", method="Open") is None


def test_policy_values_are_checked():
    with pytest.raises(ValueError, match="RetryPolicy.max_backoff_s must be >= initial_backoff_s=2"):
        RetryPolicy(initial_backoff_s=2.0, max_backoff_s=1.0)
    with pytest.raises(ValueError, match="RetryPolicy.give_up_after_s must be None or >= 0, got -1"):
        RetryPolicy(give_up_after_s=-1)


def test_a_message_over_the_size_limit_is_not_transient():
    too_large = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             "SERVER: Received message larger than max (5242990 vs. 4194304)")
    assert not RetryPolicy().is_transient(too_large)
    assert RetryPolicy().is_transient(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"))
