"""The monitor's own Prometheus metrics (`mufleet_monitor_*`), served at its /metrics.

They live in a registry of their own (one per MonitorMetrics), so the monitor's /metrics holds
the monitor's metrics only, plus the standard process and Python collectors, and tests can run
several monitors in one process. The play page's search counts in a private registry of the
agent's metrics that nothing serves (services/agent/metrics.py).
"""

from __future__ import annotations

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector,
                               ProcessCollector)

from services.common.metrics import LATENCY_BUCKETS_S

REQUESTS_TOTAL = "mufleet_monitor_requests_total"
REQUEST_SECONDS = "mufleet_monitor_request_seconds"
SCRAPES_TOTAL = "mufleet_monitor_scrapes_total"
SCRAPE_ERRORS_TOTAL = "mufleet_monitor_scrape_errors_total"
SCRAPE_SECONDS = "mufleet_monitor_scrape_seconds"
TARGET_UP = "mufleet_monitor_target_up"
HISTORY_POINTS = "mufleet_monitor_history_points"
PLAY_MOVES_TOTAL = "mufleet_monitor_play_moves_total"
PLAY_ERRORS_TOTAL = "mufleet_monitor_play_errors_total"
PLAY_SEARCH_SECONDS = "mufleet_monitor_play_search_seconds"


class MonitorMetrics:
    """The metrics, in `registry` (default: a fresh one, which the monitor's /metrics serves)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter(REQUESTS_TOTAL,
                                "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "code"], registry=registry)
        self.request_seconds = Histogram(REQUEST_SECONDS,
                                         "Time to answer one HTTP request, by endpoint.", ["endpoint"],
                                         buckets=LATENCY_BUCKETS_S, registry=registry)
        self.scrapes = Counter(SCRAPES_TOTAL,
                               "Probes of a target (metrics scrape, gRPC health check, GetStats).",
                               ["target"], registry=registry)
        self.scrape_errors = Counter(SCRAPE_ERRORS_TOTAL,
                                     "Probes of a target that failed (unreachable, bad answer).",
                                     ["target"], registry=registry)
        self.scrape_seconds = Histogram(SCRAPE_SECONDS,
                                        "Time of one round of probes of every target.",
                                        buckets=LATENCY_BUCKETS_S, registry=registry)
        self.target_up = Gauge(TARGET_UP,
                               "1 if the target answered its latest probe, else 0.", ["target"],
                               registry=registry)
        self.history_points = Gauge(HISTORY_POINTS,
                                    "Scrapes kept in memory for the charts.", registry=registry)
        self.play_moves = Counter(PLAY_MOVES_TOTAL,
                                  "Moves played on the play page, by who played them (human, model).",
                                  ["player"], registry=registry)
        self.play_errors = Counter(PLAY_ERRORS_TOTAL,
                                   "Play requests refused, by reason (invalid, unavailable).",
                                   ["reason"], registry=registry)
        self.play_search_seconds = Histogram(PLAY_SEARCH_SECONDS,
                                             "Time of the model's search for one move on the play page.",
                                             buckets=LATENCY_BUCKETS_S, registry=registry)
