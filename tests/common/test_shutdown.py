"""SIGTERM is honoured even when it arrives while the main thread is writing a log line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# The child holds the log's lock, as the main thread does in the middle of writing a line, and
# signals itself: the handler must set the stop event and return, and `stopping` is logged once
# the line in progress is done. Before the fix the handler waited for the lock forever.
CHILD = textwrap.dedent("""
    import io, signal, sys
    from services.common import logs
    from services.common.logs import EventLogger
    from services.common.shutdown import stop_event_on_signals

    stream = io.StringIO()
    log = EventLogger("test", stream=stream)
    stop = stop_event_on_signals(log)
    with logs._lock:
        signal.raise_signal(signal.SIGTERM)
        assert stop.is_set()
    for thread in __import__("threading").enumerate():
        if thread.name == "log-stopping":
            thread.join(10)
    assert '"event": "stopping"' in stream.getvalue(), stream.getvalue()
    assert '"signal": "SIGTERM"' in stream.getvalue()
    print("ok")
""")


def test_a_signal_while_a_log_line_is_written_still_stops():
    completed = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0 and completed.stdout.strip() == "ok", completed.stderr
