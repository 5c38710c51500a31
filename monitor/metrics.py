"""The monitor's own Prometheus metrics (`mufleet_monitor_*`), served at its /metrics.

They live in a registry of their own, so the monitor's /metrics holds the monitor's metrics
only (the play page runs the agent's search in this process, whose `mufleet_agent_*` counters
must not show up as a second agent), plus the standard process and Python collectors.
"""

from __future__ import annotations

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector,
                               ProcessCollector)

from services.common.metrics import LATENCY_BUCKETS_S


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter("mufleet_monitor_requests_total",
                                "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "code"], registry=registry)
        self.request_seconds = Histogram("mufleet_monitor_request_seconds",
                                         "Time to answer one HTTP request, by endpoint.", ["endpoint"],
                                         buckets=LATENCY_BUCKETS_S, registry=registry)
        self.scrapes = Counter("mufleet_monitor_scrapes_total",
                               "Probes of a target (metrics scrape, gRPC health check, GetStats).",
                               ["target"], registry=registry)
        self.scrape_errors = Counter("mufleet_monitor_scrape_errors_total",
                                     "Probes of a target that failed (unreachable, bad answer).",
                                     ["target"], registry=registry)
        self.scrape_seconds = Histogram("mufleet_monitor_scrape_seconds",
                                        "Time of one round of probes of every target.",
                                        buckets=LATENCY_BUCKETS_S, registry=registry)
        self.target_up = Gauge("mufleet_monitor_target_up",
                               "1 if the target answered its latest probe, else 0.", ["target"],
                               registry=registry)
        self.history_points = Gauge("mufleet_monitor_history_points",
                                    "Scrapes kept in memory for the charts.", registry=registry)
        self.play_moves = Counter("mufleet_monitor_play_moves_total",
                                  "Moves played on the play page, by who played them (human, model).",
                                  ["player"], registry=registry)
        self.play_errors = Counter("mufleet_monitor_play_errors_total",
                                   "Play requests refused, by reason (invalid, unavailable).",
                                   ["reason"], registry=registry)
        self.play_search_seconds = Histogram("mufleet_monitor_play_search_seconds",
                                             "Time of the model's search for one move on the play page.",
                                             buckets=LATENCY_BUCKETS_S, registry=registry)
