"""The network server's HTTP port (`--rest_api_port`, alias `--metrics-port`).

  GET /metrics                              Prometheus text (every MuFleet service has it)
  GET <prometheus path>                     the same, at monitoring.config's path
  GET /v1/models/<name>                     status of every version, as TensorFlow Serving's REST API
  GET /v1/models/<name>/versions/<v>        status of one version
  GET /v1/models/<name>/labels/<label>      status of a labelled version
  GET /v1/models/<name>[/versions/<v>]/metadata   signature defs (JSON)
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.network.servables import NotFound
from services.network.server import NetworkService

_MODEL_PATH = re.compile(r"^/v1/models/([^/]+)(?:/versions/(\d+)|/labels/([^/]+))?(/metadata)?/?$")


class _Handler(BaseHTTPRequestHandler):
    service: NetworkService
    metric_paths: frozenset[str]

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path in self.metric_paths:
            self._send(200, generate_latest(self.service.metrics.registry), CONTENT_TYPE_LATEST)
            return
        match = _MODEL_PATH.match(path)
        if match is None:
            self._json(404, {"error": f"unknown path {path}"})
            return
        name, version, label, metadata = match.groups()
        manager = self.service.managers.get(name)
        if manager is None:
            self._json(404, {"error": f"Servable not found for request: model '{name}' "
                                      f"(serving: {', '.join(self.service.managers)})"})
            return
        if label is not None:
            if label not in manager.labels:
                self._json(404, {"error": f"model '{name}' has no label '{label}'"})
                return
            version = str(manager.labels[label])
        if metadata:
            try:
                servable = manager.get(int(version) if version else None)
            except NotFound as error:
                self._json(404, {"error": str(error)})
                return
            self._json(200, {
                "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
                "metadata": {"signature_def": json_format.MessageToDict(servable.signature_def_map)}})
            return
        statuses = manager.statuses()
        versions = [int(version)] if version else sorted(statuses, reverse=True)
        versions = [v for v in versions if v in statuses]
        if not versions:
            which = f"version {version} of model {name}" if version else f"any versions of model {name}"
            self._json(404, {"error": f"Could not find {which}"})
            return
        self._json(200, {"model_version_status": [
            {"version": str(v), "state": statuses[v].state,
             "status": {"error_code": "UNKNOWN" if statuses[v].error else "OK",
                        "error_message": statuses[v].error}}
            for v in versions]})

    def _json(self, code: int, body: dict) -> None:
        self._send(code, (json.dumps(body, indent=1) + "\n").encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet: scrapes are frequent
        pass


def start_rest_server(service: NetworkService, host: str, port: int,
                      prometheus_path: str | None = None) -> ThreadingHTTPServer:
    """Serves the HTTP endpoints on host:port (0 picks a free port) on a daemon thread.
    The bound port is `server.server_port`; stop with `server.shutdown()`."""
    paths = {"/metrics"} | ({prometheus_path} if prometheus_path else set())
    handler = type("NetworkHttpHandler", (_Handler,), {"service": service,
                                                       "metric_paths": frozenset(paths)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="rest-api",
                     daemon=True).start()
    return server
