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
        first = not stop.is_set()
        stop.set()
        if first:
            # Logged from another thread: the handler runs on the main thread between any two of
            # its bytecodes, also while that thread holds the log's lock in the middle of a line,
            # and taking the lock here would then wait forever (a process deaf to SIGTERM).
            threading.Thread(target=log.info, args=("stopping",),
                             kwargs={"signal": signal.Signals(signum).name},
                             name="log-stopping", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
