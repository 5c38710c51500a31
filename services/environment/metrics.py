"""The environment's Prometheus metrics (`mufleet_environment_*`), and their names as they
appear in the /metrics text (the constants the monitor reads)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_S

STEPS_TOTAL = "mufleet_environment_steps_total"
STEP_REQUESTS_TOTAL = "mufleet_environment_step_requests_total"
EPISODES_TOTAL = "mufleet_environment_episodes_total"
SESSIONS = "mufleet_environment_sessions"
GAMES = "mufleet_environment_games"
SESSIONS_OPENED_TOTAL = "mufleet_environment_sessions_opened_total"
SESSIONS_EXPIRED_TOTAL = "mufleet_environment_sessions_expired_total"
REQUEST_SECONDS = "mufleet_environment_request_seconds"
ERRORS_TOTAL = "mufleet_environment_errors_total"


class EnvironmentMetrics:
    """The service's Prometheus metrics, in `registry` (default: the process's; a fresh one per
    servicer in unit tests)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.steps = Counter(STEPS_TOTAL, "Game steps played: B per Step call.", ["game"], registry=registry)
        self.step_requests = Counter(STEP_REQUESTS_TOTAL, "Step calls served.", ["game"], registry=registry)
        self.episodes = Counter(EPISODES_TOTAL, "Games that ended (terminated or truncated).", ["game"],
                                registry=registry)
        self.sessions = Gauge(SESSIONS, "Open sessions.", registry=registry)
        self.games = Gauge(GAMES, "Games held by the open sessions.", registry=registry)
        self.sessions_opened = Counter(SESSIONS_OPENED_TOTAL, "Sessions opened.", ["game"], registry=registry)
        self.sessions_expired = Counter(
            SESSIONS_EXPIRED_TOTAL,
            "Sessions closed by the reaper after --session-timeout-s without calls.",
            ["game"], registry=registry)
        self.request_seconds = Histogram(
            REQUEST_SECONDS, "Time to serve one call, by method (errors included).", ["method"],
            buckets=LATENCY_BUCKETS_S, registry=registry)
        self.errors = Counter(ERRORS_TOTAL, "Calls that failed, by method and gRPC status code.",
                              ["method", "code"], registry=registry)
