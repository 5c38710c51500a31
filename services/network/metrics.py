"""The network server's Prometheus metrics (all `mufleet_network_*`), and their names as they
appear in the /metrics text (the constants the monitor and the benchmarks read)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_S

REQUESTS_TOTAL = "mufleet_network_requests_total"
RPCS_TOTAL = "mufleet_network_rpcs_total"
REQUEST_ERRORS_TOTAL = "mufleet_network_request_errors_total"
REQUEST_SECONDS = "mufleet_network_request_seconds"
PREDICT_SECONDS = "mufleet_network_predict_seconds"
RUN_SECONDS = "mufleet_network_run_seconds"
BATCH_SIZE = "mufleet_network_batch_size"
BATCH_REQUESTS = "mufleet_network_batch_requests"
QUEUED_ROWS = "mufleet_network_queued_rows"
LOADED_VERSIONS = "mufleet_network_loaded_versions"
LATEST_VERSION = "mufleet_network_latest_version"
VERSION_LOADS_TOTAL = "mufleet_network_version_loads_total"
VERSION_POLLS_TOTAL = "mufleet_network_version_polls_total"
VERSION_LOAD_SECONDS = "mufleet_network_version_load_seconds"
NONFINITE_INPUTS_TOTAL = "mufleet_network_nonfinite_inputs_total"

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
REQUEST_COUNT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class NetworkMetrics:
    """The metrics, in `registry` (default: the process's, what `python -m services.network`
    serves; a fresh `CollectorRegistry()` per instance lets two servers run in one process,
    as tests do). The server's HTTP port serves `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else REGISTRY
        self.registry = registry
        self.requests = Counter(REQUESTS_TOTAL, "Predict requests received, by signature.",
                                ["signature"], registry=registry)
        self.rpcs = Counter(RPCS_TOTAL, "RPCs received, by method.", ["method"], registry=registry)
        # The same two metrics, with the same labels, as every MuFleet server (`serve_rpc`).
        self.request_errors = Counter(REQUEST_ERRORS_TOTAL,
                                      "RPCs answered with an error, by method and gRPC status code.",
                                      ["method", "code"], registry=registry)
        self.request_seconds = Histogram(REQUEST_SECONDS, "Time in the server's handler, by method.",
                                         ["method"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.predict_seconds = Histogram(PREDICT_SECONDS,
                                         "Predict time in the server, from decode to encoded response, "
                                         "of answered requests, by signature.",
                                         ["signature"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.run_seconds = Histogram(RUN_SECONDS,
                                     "Time of one model run (one merged batch, or one request without "
                                     "batching).", ["signature"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.batch_size = Histogram(BATCH_SIZE, "Rows per model run (before padding).",
                                    buckets=ROW_BUCKETS, registry=registry)
        self.batch_requests = Histogram(BATCH_REQUESTS, "Requests merged into one model run.",
                                        buckets=REQUEST_COUNT_BUCKETS, registry=registry)
        self.queued_rows = Gauge(QUEUED_ROWS, "Rows waiting in batch queues.", registry=registry)
        self.loaded_versions = Gauge(LOADED_VERSIONS, "Versions loaded and serving, by model.",
                                     ["model"], registry=registry)
        self.latest_version = Gauge(LATEST_VERSION,
                                    "The newest loaded version (what unpinned requests get), by model.",
                                    ["model"], registry=registry)
        self.version_loads = Counter(VERSION_LOADS_TOTAL,
                                     "Attempts to load a version, by model and result (ok or error).",
                                     ["model", "result"], registry=registry)
        self.version_polls = Counter(VERSION_POLLS_TOTAL,
                                     "Completed scans of a model's base path for versions, by model.",
                                     ["model"], registry=registry)
        self.version_load_seconds = Histogram(VERSION_LOAD_SECONDS, "Time to load and warm one version.",
                                              buckets=LATENCY_BUCKETS_S, registry=registry)
        self.nonfinite_inputs = Counter(NONFINITE_INPUTS_TOTAL,
                                        "Predict requests answered with NaN or inf in an input, by "
                                        "signature and input (answered as TensorFlow Serving answers "
                                        "them).", ["signature", "input"], registry=registry)
