"""Structured logs: one JSON line per event on stderr, each naming its service.

    log = get_logger("environment")
    log.info("session_opened", session_id=sid, num_games=256)
    -> {"ts": "2026-11-21T12:00:00.123Z", "service": "environment", "level": "info",
        "event": "session_opened", "session_id": "...", "num_games": 256}
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
from typing import Any, TextIO

_lock = threading.Lock()


class EventLogger:
    """Writes one JSON object per line; thread-safe."""

    def __init__(self, service: str, stream: TextIO | None = None) -> None:
        self.service = service
        self._stream = stream

    def _write(self, level: str, event: str, fields: dict[str, Any]) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        record = {"ts": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                  "service": self.service, "level": level, "event": event, **fields}
        line = json.dumps(record, default=str)
        stream = self._stream or sys.stderr
        with _lock:
            stream.write(line + "\n")
            stream.flush()

    def info(self, event: str, **fields: Any) -> None:
        self._write("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._write("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._write("error", event, fields)


def get_logger(service: str, stream: TextIO | None = None) -> EventLogger:
    """A logger whose every line names `service`."""
    return EventLogger(service, stream)


def parse_line(line: str) -> dict[str, Any] | None:
    """The event of one log line, or None for a line that is not a MuFleet event."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "event" in record else None
