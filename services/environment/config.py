"""The environment service's configuration."""

from __future__ import annotations

import dataclasses

import games
from games.validation import require

# The largest OpenRequest.num_games (an int32 on the wire).
INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class EnvironmentConfig:
    """What an environment server hosts and how much of it.

    Attributes:
      game: the server's default game: what an Open or GetSpec with an empty `game` gets and
        what the server advertises. It is loaded at start-up, so a server never comes up unable
        to play it. Every other registered game (`games.names()`) may be opened too.
      host: address the gRPC server binds (loopback by default).
      port: gRPC port; 0 picks a free one.
      metrics_port: port of the Prometheus /metrics endpoint; 0 picks a free one.
      session_timeout_s: a session unused (no call naming it) for this long is closed by the
        reaper thread; later calls naming it get NOT_FOUND.
      max_games_per_session: the largest num_games an Open may ask for; bounds one session's
        memory and the server's message limits (`limits.py`). At most max_total_games.
      max_sessions: the most sessions open at once; an Open beyond it gets RESOURCE_EXHAUSTED.
      max_total_games: the most games all open sessions together may hold; an Open that would
        go beyond it gets RESOURCE_EXHAUSTED. This, not max_sessions * max_games_per_session,
        bounds the process's memory: a game held in a session takes about 0.1 KB (cartpole,
        tictactoe) to 1.1 KB (2048) between calls and about twice that while it is stepped
        (docs/environment.md), so the default of 2^20 games is at most about 1.1 GB of 2048.
      max_workers: threads serving gRPC calls; calls on different sessions run in parallel.
    """

    game: str = "cartpole"
    host: str = "127.0.0.1"
    port: int = 50000
    metrics_port: int = 9100
    session_timeout_s: float = 600.0
    max_games_per_session: int = 65536
    max_sessions: int = 1024
    max_total_games: int = 1 << 20
    max_workers: int = 16

    def __post_init__(self) -> None:
        require(self.game in games.names(),
                f"EnvironmentConfig.game must be one of {', '.join(games.names())}, got {self.game!r}")
        require(bool(self.host), f"EnvironmentConfig.host must be non-empty, got {self.host!r}")
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            require(0 <= value <= 65535, f"EnvironmentConfig.{name} must be in [0, 65535], got {value}")
        require(self.session_timeout_s > 0,
                f"EnvironmentConfig.session_timeout_s must be > 0, got {self.session_timeout_s}")
        for name in ("max_games_per_session", "max_sessions", "max_total_games", "max_workers"):
            value = getattr(self, name)
            require(value >= 1, f"EnvironmentConfig.{name} must be >= 1, got {value}")
        require(self.max_games_per_session <= INT32_MAX,
                f"EnvironmentConfig.max_games_per_session must be <= {INT32_MAX}, "
                f"got {self.max_games_per_session}")
        require(self.max_games_per_session <= self.max_total_games,
                f"EnvironmentConfig.max_games_per_session must be <= max_total_games="
                f"{self.max_total_games}, got {self.max_games_per_session}")

    @property
    def reap_interval_s(self) -> float:
        """How often the reaper looks for idle sessions: a quarter of the timeout, 10 ms to 5 s."""
        return min(max(self.session_timeout_s / 4, 0.01), 5.0)
