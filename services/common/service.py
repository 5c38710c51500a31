"""What every service's `serve(config)` returns: a service running in this process.

A gRPC service's `serve` returns its `ServiceServer` (ports, `client()`, `stop()`, `wait()`);
a worker service (the agent, the trainer), which serves nothing but its /metrics, returns a
`Worker`: its main loop on a thread of this process, with the same `ports`, `stop()` and
`wait()`, plus the exit code the loop returned. `__main__` waits on it; the in-process launcher
and tests run several side by side.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Callable, Protocol

from services.common.failures import PermanentFailure
from services.common.logs import EventLogger
from services.common.metrics import MetricsEndpoint


class RunningService(Protocol):
    """The part of a running service that launchers use."""

    @property
    def ports(self) -> dict[str, int]:
        """Bound ports by endpoint ("grpc", "http", "metrics")."""

    def stop(self, grace_s: float | None = None) -> None:
        """Stops gracefully (idempotent)."""

    def wait(self, timeout_s: float | None = None) -> bool:
        """Blocks until the service stopped or ended; True once it has."""


class Worker:
    """A worker service's main loop, `run(stop, ready) -> exit code`, on a thread of this process.

    Args:
      name: the service, for the thread's name and logs.
      run: the loop; it sets the event `ready` once it logged `ready` (it does its work from
        then on), and returns when `stop` is set (or when its work is done) with the process's
        exit code (0 clean, 1 a permanent failure, 2 unusable configuration or state).
      log: the service's logger (an exception escaping `run` is logged as `crashed`, exit 1).
      metrics: the service's /metrics endpoint, closed when the loop ends.
      stop: the event that ends the loop (`__main__` passes the one its signal handlers set);
        a fresh one by default.
    """

    def __init__(self, name: str, run: Callable[[threading.Event, threading.Event], int], log: EventLogger,
                 metrics: MetricsEndpoint, stop: threading.Event | None = None) -> None:
        self.name = name
        self.log = log
        self.stop_event = stop if stop is not None else threading.Event()
        self.exit_code: int | None = None
        self.ready = threading.Event()
        self._run = run
        self._metrics = metrics
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> "Worker":
        self._thread.start()
        return self

    def _main(self) -> None:
        code = 1
        try:
            code = self._run(self.stop_event, self.ready)
        except BaseException as error:  # noqa: BLE001 - a bug in the loop: the service ends, loudly
            self.log.error("crashed", error=repr(error), traceback=traceback.format_exc())
        finally:
            self.exit_code = code
            self._metrics.close()

    @property
    def ports(self) -> dict[str, int]:
        return {"metrics": self._metrics.port}

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait_ready(self, timeout_s: float) -> bool:
        """Blocks until the loop is ready, has ended, or `timeout_s` passed; True if ready."""
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.1):
            if not self._thread.is_alive() or time.monotonic() >= deadline:
                return self.ready.is_set()
        return True

    def wait(self, timeout_s: float | None = None) -> bool:
        """Blocks until the loop ended (or `timeout_s` passed); True once it has. Waits in short
        slices so a signal handler of the main thread runs at once."""
        if timeout_s is None:
            while self._thread.is_alive():
                self._thread.join(0.5)
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self, grace_s: float | None = None) -> None:
        """Sets the stop event and waits for the loop to finish its own graceful stop (the
        agent's record flush, the trainer's checkpoint); `grace_s` bounds the wait."""
        self.stop_event.set()
        self.wait(grace_s)


def loop_worker(name: str, log: EventLogger, metrics: MetricsEndpoint, stop: threading.Event,
                loop: Callable[[threading.Event], None], finish: Callable[[int], int],
                **ready_fields) -> Worker:
    """Starts a `Worker` whose loop is the common shape of MuFleet's worker services (agent,
    reanalyse): log `ready` (with the metrics port and `ready_fields`), set ready, run
    `loop(stop)` until it returns; a `PermanentFailure` is logged `permanent_failure` and
    makes the exit code 1. `finish(code)` always runs last (it closes what the loop used,
    logs `stopped`) and returns the exit code, e.g. 1 when work was left undone.
    """

    def run(stop: threading.Event, ready: threading.Event) -> int:
        code = 0
        try:
            if not stop.is_set():
                log.info("ready", grpc_port=None, metrics_port=metrics.port, **ready_fields)
                ready.set()
                loop(stop)
        except PermanentFailure as failure:
            log.error("permanent_failure", **failure.log_fields())
            code = 1
        finally:
            code = finish(code)
        return code

    return Worker(name, run, log, metrics, stop).start()
