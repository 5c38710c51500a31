"""The network server's Prometheus metrics (all `mufleet_network_*`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_S

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
REQUEST_COUNT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)

REQUESTS = Counter("mufleet_network_requests_total", "Predict requests received, by signature.",
                   ["signature"])
RPCS = Counter("mufleet_network_rpcs_total", "RPCs received, by method.", ["method"])
REQUEST_ERRORS = Counter("mufleet_network_request_errors_total",
                         "RPCs answered with an error, by gRPC status code.", ["code"])
REQUEST_SECONDS = Histogram("mufleet_network_request_seconds",
                            "Predict time in the server, from decode to encoded response.",
                            ["signature"], buckets=LATENCY_BUCKETS_S)
RUN_SECONDS = Histogram("mufleet_network_run_seconds",
                        "Time of one model run (one merged batch, or one request without batching).",
                        ["signature"], buckets=LATENCY_BUCKETS_S)
BATCH_SIZE = Histogram("mufleet_network_batch_size", "Rows per model run (before padding).",
                       buckets=ROW_BUCKETS)
BATCH_REQUESTS = Histogram("mufleet_network_batch_requests", "Requests merged into one model run.",
                           buckets=REQUEST_COUNT_BUCKETS)
QUEUED_ROWS = Gauge("mufleet_network_queued_rows", "Rows waiting in batch queues.")
LOADED_VERSIONS = Gauge("mufleet_network_loaded_versions", "Versions loaded and serving, by model.",
                        ["model"])
LATEST_VERSION = Gauge("mufleet_network_latest_version",
                       "The newest loaded version (what unpinned requests get), by model.", ["model"])
VERSION_LOADS = Counter("mufleet_network_version_loads_total",
                        "Attempts to load a version, by model and result (ok or error).",
                        ["model", "result"])
VERSION_POLLS = Counter("mufleet_network_version_polls_total",
                        "Completed scans of a model's base path for versions, by model.", ["model"])
VERSION_LOAD_SECONDS = Histogram("mufleet_network_version_load_seconds",
                                 "Time to load and warm one version.", buckets=LATENCY_BUCKETS_S)
NONFINITE_INPUTS = Counter("mufleet_network_nonfinite_inputs_total",
                           "Predict requests answered with NaN or inf in an input, by signature and "
                           "input (answered as TensorFlow Serving answers them).",
                           ["signature", "input"])
