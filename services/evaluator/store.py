"""The evaluator's durable state: the results of every match so far, one JSON object per line
in an append-only file, each line flushed and fsynced before the next match starts (a kill -9
loses at most the match in progress). Reading it back tolerates a torn last line (a write cut
by the kill), which is dropped and cut off the file so the next append starts a clean line.

A record (two-player games; counts from the model's view):
    {"version": 12, "opponent": "random", "games": 20, "wins": 17, "draws": 1, "losses": 2,
     "first": {"wins": 9, "draws": 0, "losses": 1}, "second": {"wins": 8, "draws": 1, "losses": 1},
     "simulations": 16, "mean_length": 7.4, "seconds": 1.9, "time": "2026-12-02T15:00:00.000Z"}
One-player games: "opponent": "none", "mean_return", and for 2048 "max_tile_at_least"
({"256": games, ...}) and "max_tile_largest" in place of wins, draws and losses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from models.durable import fsync_directory, write_text_atomically

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"


class StateError(ValueError):
    """The state directory holds something the evaluator cannot read (not a torn last line)."""


class ResultsStore:
    """The append-only results file `<state_dir>/results.jsonl`; `records` holds what is in it."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / RESULTS_FILE
        self.torn = 0  # bytes of a torn last line dropped when it was read
        self.records: list[dict[str, Any]] = self._read()

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        *complete, tail = data.split(b"\n")  # tail: what follows the last newline
        last_line = max((i for i, line in enumerate(complete) if line.strip()), default=-1)
        records, good = [], 0
        for number, line in enumerate(complete, start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict) or "version" not in record or "opponent" not in record:
                        raise ValueError("not a match record")
                except ValueError as error:
                    if number - 1 == last_line and not tail.strip():
                        break  # the last line is torn: cut off below
                    raise StateError(f"{self.path}:{number}: not a match record ({error}); only a torn "
                                     "last line is dropped: move the file away to start a new "
                                     "history") from error
                records.append(record)
            good += len(line) + 1
        if good < len(data):  # a torn last line (with or without its newline)
            self.torn = len(data) - good
            with open(self.path, "r+b") as file:
                file.truncate(good)
                file.flush()
                os.fsync(file.fileno())
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Writes `record` as one line and makes it durable (flush + fsync) before returning."""
        line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
        new = not self.path.exists()
        with open(self.path, "ab") as file:
            file.write(line.encode())
            file.flush()
            os.fsync(file.fileno())
        if new:
            fsync_directory(self.dir)
        self.records.append(record)

    def played(self, version: int) -> set[str]:
        """The opponents `version` has a recorded match against."""
        return {r["opponent"] for r in self.records if r["version"] == version}

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Writes `<state_dir>/summary.json` atomically (a temporary file renamed into place)."""
        return write_text_atomically(self.dir / SUMMARY_FILE, json.dumps(summary, indent=1, sort_keys=True))
