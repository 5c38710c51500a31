"""One failure policy for every client-side retry loop in MuFleet.

A failed call is either *transient* (the peer is down, restarting, overloaded or slow: waiting
and asking again can succeed) or *permanent* (the request itself is wrong for that peer: asking
again gives the same answer forever). Transient failures are retried with exponential backoff,
capped, optionally until a give-up time, in waits that a stop event (SIGTERM) interrupts.
Permanent failures become a `PermanentFailure` that names the peer, the method, the status code,
the peer's message and a hint of what to fix; a process's `__main__` logs it in one line and
exits non-zero.

    policy = RetryPolicy()
    value = retry_call(lambda: client.open(...), policy=policy, stop=stop, peer="environment",
                       method="Open", address=address, on_retry=log_retry)

Codes whose meaning depends on the call stay with the caller and are passed as `also`, e.g.
NOT_FOUND on the network's Predict (no version loaded yet) is worth waiting out, while NOT_FOUND
on the environment's Step means the session is gone, and DEADLINE_EXCEEDED from the replay's
SampleBatch means its rate limiter held the call (ask again at once).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Collection, Iterable, Mapping, TypeVar, Union

import grpc

from games.validation import require

T = TypeVar("T")
# A hint of what to fix: one for every code, or one per code (codes without one get HINTS').
Hint = Union[str, Mapping[grpc.StatusCode, str], None]

# The peer is down or restarting (UNAVAILABLE), slow or busy (DEADLINE_EXCEEDED,
# RESOURCE_EXHAUSTED), lost a race (ABORTED), or went away mid-call (CANCELLED). INTERNAL and
# UNKNOWN are not here: MuFleet's servers answer INTERNAL for a bug (serve_rpc), and a bug
# answers the same way every time.
TRANSIENT_CODES: frozenset[grpc.StatusCode] = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED})

# What to look at when a peer answers a code that retrying cannot fix. Callers pass a more
# precise hint where they know what the request was.
HINTS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.INVALID_ARGUMENT: "the peer refuses this request as it is: check that this "
                                      "process and the peer were started for the same game and "
                                      "with sizes that fit (the message names the field)",
    grpc.StatusCode.NOT_FOUND: "the peer does not have what the request names: check the names "
                               "this process was given (model, session, record)",
    grpc.StatusCode.FAILED_PRECONDITION: "the peer is not in a state to serve this request: see "
                                         "its message",
    grpc.StatusCode.OUT_OF_RANGE: "the request asks for something beyond what the peer holds",
    grpc.StatusCode.ALREADY_EXISTS: "the peer already holds what this request creates",
    grpc.StatusCode.UNIMPLEMENTED: "the address does not serve this method: check that the "
                                   "address flag points at the right service",
    grpc.StatusCode.PERMISSION_DENIED: "the peer refuses this client: check its access settings",
    grpc.StatusCode.UNAUTHENTICATED: "the peer refuses this client: check its access settings",
    grpc.StatusCode.INTERNAL: "the peer failed on this request (a bug there): its log has the "
                              "traceback (event internal_error)",
    grpc.StatusCode.UNKNOWN: "the peer failed on this request (a bug there): see its log",
    grpc.StatusCode.DATA_LOSS: "the peer lost or corrupted data: see its log",
}


def status_code(error: BaseException) -> grpc.StatusCode | None:
    """The gRPC status code of `error` (None for an exception that carries none)."""
    code = getattr(error, "code", None)
    if not callable(code):
        return None
    value = code()
    return value if isinstance(value, grpc.StatusCode) else None


def is_message_too_large(error: BaseException) -> bool:
    """Whether `error` is grpcio's refusal of a message over a size limit ("Received message
    larger than max"): a RESOURCE_EXHAUSTED that waiting cannot fix, unlike a busy peer's."""
    return (status_code(error) == grpc.StatusCode.RESOURCE_EXHAUSTED
            and "larger than max" in status_details(error))


def status_details(error: BaseException) -> str:
    """The peer's message of `error` (str(error) when it carries none)."""
    details = getattr(error, "details", None)
    value = details() if callable(details) else None
    return value if isinstance(value, str) and value else str(error)


class PermanentFailure(RuntimeError):
    """A call that retrying cannot fix (or whose retries gave up), and what to do about it.

    Attributes:
      peer: which service was called ("replay", "environment", "network").
      method: the RPC, e.g. "AddGames".
      code: name of the gRPC status code ("INVALID_ARGUMENT"), or None for a failure that is
        not a status (e.g. an answer that does not fit).
      details: the peer's message.
      hint: what to change so that it works.
      address: "host:port" of the peer ("" when unknown).
    """

    def __init__(self, peer: str, method: str, code: str | None, details: str, hint: str,
                 address: str = "") -> None:
        self.peer = peer
        self.method = method
        self.code = code
        self.details = details
        self.hint = hint
        self.address = address
        where = f"{peer} at {address}" if address else peer
        super().__init__(f"{where}: {method} failed with {code or 'an unusable answer'}: {details}; "
                         f"{hint}")

    @classmethod
    def from_error(cls, error: BaseException, peer: str, method: str, address: str = "",
                   hint: Hint = None) -> "PermanentFailure":
        """The failure of `error` (a grpc.RpcError); `hint` (or its entry for the code)
        defaults to the code's entry in HINTS."""
        code = status_code(error)
        if isinstance(hint, Mapping):
            hint = hint.get(code)
        if hint is None:
            hint = HINTS.get(code, "see the peer's log") if code not in TRANSIENT_CODES else (
                f"the {peer} did not answer: check that it is running and reachable")
        return cls(peer, method, code.name if code else None, status_details(error), hint, address)

    def log_fields(self) -> dict[str, Any]:
        """The fields of the one log line that reports it (event `permanent_failure`)."""
        return {"peer": self.peer, "address": self.address, "method": self.method, "code": self.code,
                "details": self.details, "hint": self.hint}


def _as_events(stop: threading.Event | Iterable[threading.Event] | None) -> tuple[threading.Event, ...]:
    if stop is None:
        return ()
    if isinstance(stop, threading.Event):
        return (stop,)
    return tuple(stop)


def wait_unless_stopped(seconds: float,
                        stop: threading.Event | Iterable[threading.Event] | None = None) -> bool:
    """Waits `seconds` unless a stop event is (or gets) set; True if the wait ran to its end.

    One event is waited on directly (its `set()` ends the wait at once); several are looked at
    every 0.1 s, since an Event cannot wake a wait on another one.
    """
    events = _as_events(stop)
    if not events:
        time.sleep(max(seconds, 0.0))
        return True
    if len(events) == 1:
        return not events[0].wait(max(seconds, 0.0))
    end = time.monotonic() + seconds
    while not any(e.is_set() for e in events):
        left = end - time.monotonic()
        if left <= 0:
            return True
        events[0].wait(min(left, 0.1))
    return False


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Which failures to wait out and how long to wait between attempts.

    Attributes:
      initial_backoff_s: wait after the first failure, seconds.
      max_backoff_s: the cap of the wait, seconds.
      multiplier: factor of the wait after each further failure.
      give_up_after_s: stop retrying once this many seconds have passed since the first failure
        of a run of failures (None: retry until stopped); the failure then becomes permanent.
      transient_codes: the codes that are waited out.
    """

    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    give_up_after_s: float | None = None
    transient_codes: frozenset[grpc.StatusCode] = TRANSIENT_CODES

    def __post_init__(self) -> None:
        require(self.initial_backoff_s >= 0,
                f"RetryPolicy.initial_backoff_s must be >= 0, got {self.initial_backoff_s}")
        require(self.max_backoff_s >= self.initial_backoff_s,
                f"RetryPolicy.max_backoff_s must be >= initial_backoff_s={self.initial_backoff_s}, "
                f"got {self.max_backoff_s}")
        require(self.multiplier >= 1, f"RetryPolicy.multiplier must be >= 1, got {self.multiplier}")
        require(self.give_up_after_s is None or self.give_up_after_s >= 0,
                f"RetryPolicy.give_up_after_s must be None or >= 0, got {self.give_up_after_s}")

    def is_transient(self, error: BaseException, also: Collection[grpc.StatusCode] = ()) -> bool:
        """Whether `error` is worth waiting out (`also`: the caller's context-specific codes)."""
        code = status_code(error)
        if is_message_too_large(error):
            return False  # the same message is refused again, however long one waits
        return code is not None and (code in self.transient_codes or code in also)

    def backoff(self, stop: threading.Event | Iterable[threading.Event] | None = None,
                clock: Callable[[], float] = time.monotonic) -> "Backoff":
        """The state of one retry loop under this policy."""
        return Backoff(self, stop, clock)


class Backoff:
    """The waits of one retry loop: initial, times multiplier after each failure, capped.

    `failed(error, ...)` classifies a failure: it raises PermanentFailure for a permanent one
    (or once the give-up time has passed) and otherwise returns the wait before the next
    attempt; `pause(seconds)` waits it unless stopped. `reset()` after a success.
    """

    def __init__(self, policy: RetryPolicy,
                 stop: threading.Event | Iterable[threading.Event] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.stop = _as_events(stop)
        self.clock = clock
        self.attempts = 0  # failures since the last success
        self.first_failure: float | None = None
        self._delay = policy.initial_backoff_s

    def reset(self) -> None:
        self.attempts = 0
        self.first_failure = None

    def stopped(self) -> bool:
        return any(e.is_set() for e in self.stop)

    def next_delay(self) -> float:
        """The wait after one more failure, seconds (advances the count)."""
        p = self.policy
        # Grown step by step, not as multiplier ** attempts, which overflows in a long outage.
        self._delay = p.initial_backoff_s if self.attempts == 0 else min(self._delay * p.multiplier,
                                                                         p.max_backoff_s)
        self.attempts += 1
        return min(self._delay, p.max_backoff_s)

    def failed(self, error: BaseException, peer: str, method: str, address: str = "",
               also: Collection[grpc.StatusCode] = (), hint: Hint = None) -> float:
        """After a failed call: the wait before the next attempt, seconds.

        Raises PermanentFailure (with `hint`, or the code's default) when `error` is not
        transient, or when the policy's give-up time has passed since the first failure.
        """
        if not self.policy.is_transient(error, also):
            raise PermanentFailure.from_error(error, peer, method, address, hint)
        now = self.clock()
        if self.first_failure is None:
            self.first_failure = now
        give_up = self.policy.give_up_after_s
        if give_up is not None and now - self.first_failure >= give_up:
            where = f" at {address}" if address else ""
            raise PermanentFailure.from_error(
                error, peer, method, address,
                f"gave up after {now - self.first_failure:.0f}s of failures: check that the {peer}"
                f"{where} is running and reachable")
        return self.next_delay()

    def pause(self, seconds: float) -> bool:
        """Waits `seconds` unless the stop event is set; True to go on, False when stopped."""
        if self.stopped():
            return False
        return wait_unless_stopped(seconds, self.stop)


def retry_call(call: Callable[[], T], *, policy: RetryPolicy, peer: str, method: str,
               stop: threading.Event | Iterable[threading.Event] | None = None, address: str = "",
               also: Collection[grpc.StatusCode] = (), hint: Hint = None,
               on_retry: Callable[[grpc.RpcError, float], None] | None = None) -> T | None:
    """`call()` until it succeeds; None if stopped first.

    Transient failures (the policy's codes and `also`) call `on_retry(error, delay_s)` and are
    retried after the backoff; anything else raises PermanentFailure (see `Backoff.failed`).
    Only for calls that are safe to repeat.
    """
    backoff = policy.backoff(stop)
    while not backoff.stopped():
        try:
            return call()
        except grpc.RpcError as error:
            delay = backoff.failed(error, peer, method, address, also, hint)
            if on_retry is not None:
                on_retry(error, delay)
            if not backoff.pause(delay):
                break
    return None
