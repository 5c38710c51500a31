"""The one check every config's validation uses. A leaf: it imports nothing of MuFleet, so any
module (games, models, services, the monitor) can use it without import cycles."""

from __future__ import annotations


def require(condition: bool, message: str) -> None:
    """Raises ValueError(message) unless `condition`. The message names the field and the bad
    value: "ReplayConfig.capacity must be >= 1, got 0"."""
    if not condition:
        raise ValueError(message)
