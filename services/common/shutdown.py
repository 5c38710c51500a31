"""Graceful stop: SIGTERM (docker, the launcher) and SIGINT (Ctrl-C) set one event."""

from __future__ import annotations

import signal
import threading

from services.common.logs import EventLogger


def stop_event_on_signals(log: EventLogger) -> threading.Event:
    """An event set by the first SIGTERM or SIGINT, which is logged as `stopping`.

    Call from the main thread (Python delivers signals there); the service's loops watch the
    event and wind down: finish in-flight work, flush, exit 0.
    """
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        if not stop.is_set():
            log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
