"""Prometheus metrics over HTTP, and the one parser of the Prometheus text that the monitor
and the launcher read. Every metric name starts with `mufleet_`; counters end in `_total` and
durations are `_seconds` histograms. Each service declares its metrics once, in
`services/<name>/metrics.py`, whose module constants are the names as they appear in the
/metrics text (what `parse_metrics` returns and what scrapers look up)."""

from __future__ import annotations

import dataclasses
import socket
import threading

from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "mufleet_"

# Seconds; from 100 us (in-process calls) to 10 s (blocked samples).
LATENCY_BUCKETS_S = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0)

# One sample: its labels and its value.
Sample = tuple[dict[str, str], float]


# How often the endpoint's serving loop looks for a stop: prometheus_client's own server polls
# every 0.5 s, which a stop waits for; services stop often in tests and in-process fleets.
_STOP_POLL_S = 0.02


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # no unstructured access lines
        pass


@dataclasses.dataclass
class MetricsEndpoint:
    """A running /metrics HTTP endpoint (a daemon thread) that can be closed again, so several
    services in one process (the in-process launcher, tests) each serve their own registry.

    Attributes:
      port: the bound port.
    """

    port: int
    _httpd: ThreadingWSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stops serving and frees the port; idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()


def serve_metrics(port: int, host: str = "127.0.0.1",
                  registry: CollectorRegistry = REGISTRY) -> MetricsEndpoint:
    """Serves /metrics (and any path) of `registry` on host:port (0 picks a free port), as
    prometheus_client's `start_http_server` does, on a thread that stops within 20 ms."""
    class Server(ThreadingWSGIServer):
        pass  # its own class: the address family is set per endpoint (IPv4 or IPv6 host)

    Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    httpd = make_server(host, port, make_wsgi_app(registry), Server, handler_class=_QuietHandler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": _STOP_POLL_S},
                              name=f"metrics-{httpd.server_port}", daemon=True)
    thread.start()
    return MetricsEndpoint(port=httpd.server_port, _httpd=httpd, _thread=thread)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Serves /metrics of the default registry on host:port (0 picks a free port) for the rest
    of the process; returns the port."""
    return serve_metrics(port, host).port


def parse_metrics(text: str) -> dict[str, list[Sample]]:
    """The samples of one Prometheus text page, by sample name as the text writes it (a
    counter's `_total`, a histogram's `_bucket`, `_sum` and `_count`): name -> [(labels, value)].
    Raises ValueError for text that is not Prometheus text."""
    by_name: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            by_name.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return by_name


def sample_key(name: str, labels: dict[str, str]) -> str:
    """`name{k=v,...}` (labels sorted), or `name` without labels: the keys of `flat_metrics`."""
    if not labels:
        return name
    return name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def flat_metrics(text: str) -> dict[str, float]:
    """`parse_metrics(text)` as {sample_key(name, labels): value}: one entry per series."""
    return {sample_key(name, labels): value
            for name, samples in parse_metrics(text).items() for labels, value in samples}


def sum_samples(samples: dict[str, float], name: str) -> float:
    """Sum of every sample of metric `name` in a `flat_metrics` dict, over its label sets."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))
