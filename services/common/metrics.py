"""Prometheus metrics over HTTP. Every metric name starts with `mufleet_`; counters end in
`_total` and durations are `_seconds` histograms."""

from __future__ import annotations

from prometheus_client import start_http_server

PREFIX = "mufleet_"

# Seconds; from 100 us (in-process calls) to 10 s (blocked samples).
LATENCY_BUCKETS_S = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Serves /metrics of the default registry on host:port (0 picks a free port); returns the port."""
    httpd, _thread = start_http_server(port, addr=host)
    return httpd.server_port
