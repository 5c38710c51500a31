"""The monitor's Flask app: the dashboard, the play page, their JSON API and /metrics.

    GET  /              dashboard: fleet health, throughput, learning curves, replay, versions
    GET  /play          play the fleet's board game against the current model
    GET  /api/fleet     every service's state (always 200; unreachable services carry messages)
    GET  /api/series    the scraped history as parallel arrays (?max_points=N, ?since=UNIX_TIME)
    GET  /api/replay    the replay's GetStats (503 with an error when the replay is unreachable)
    GET  /api/play      what the play page plays (game, board size) or why it cannot
    POST /api/play      {"board": [[...]], "move": int | null, "model_player": 0 | 1}
    GET  /metrics       the monitor's own Prometheus metrics (mufleet_monitor_*)
    GET  /healthz       200 while the monitor runs

Every /api/ error is JSON with an `error` field.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

from flask import Flask, Response, g, render_template, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.config import MonitorConfig
from monitor.metrics import MonitorMetrics
from monitor.play import PlayError, Player
from monitor.scraper import SERIES, Scraper
from services.common.logs import EventLogger


def clean(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(clean(body), separators=(",", ":")), status=status,
                    mimetype="application/json", headers={"Cache-Control": "no-store"})


class InFlight:
    """Counts requests being answered, so a graceful stop can wait for them."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def enter(self) -> None:
        with self._idle:
            self._count += 1

    def leave(self) -> None:
        with self._idle:
            self._count -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout=timeout_s)


def create_app(config: MonitorConfig, log: EventLogger, scraper: Scraper | None = None,
               player: Player | None = None, metrics: MonitorMetrics | None = None) -> Flask:
    """The app. `scraper` is not started here: the server starts it (tests call scrape_once)."""
    metrics = metrics or (scraper.metrics if scraper else MonitorMetrics())
    scraper = scraper or Scraper(config, log, metrics)
    player = player or Player(config, metrics)
    app = Flask(__name__)
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["mufleet"] = {"scraper": scraper, "player": player, "metrics": metrics,
                                 "in_flight": InFlight(), "config": config}
    in_flight: InFlight = app.extensions["mufleet"]["in_flight"]

    @app.before_request
    def _started() -> None:
        in_flight.enter()
        g.started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = request.url_rule.endpoint if request.url_rule else "not_found"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.teardown_request
    def _finished(_error: BaseException | None) -> None:
        in_flight.leave()

    @app.errorhandler(404)
    def _not_found(_error):
        if request.path.startswith("/api/"):
            return json_response({"error": f"no such API endpoint: {request.method} {request.path}"}, 404)
        return render_template("error.html", config=config, title="Not found",
                               message=f"There is no page at {request.path}."), 404

    @app.errorhandler(405)
    def _not_allowed(_error):
        return json_response({"error": f"{request.method} is not allowed on {request.path}"}, 405)

    @app.errorhandler(Exception)
    def _failed(error: Exception):
        from werkzeug.exceptions import HTTPException

        if isinstance(error, HTTPException):
            return error
        log.error("request_failed", path=request.path, error=repr(error))
        if request.path.startswith("/api/"):
            return json_response({"error": f"internal error: {error!r}"}, 500)
        return render_template("error.html", config=config, title="Something went wrong",
                               message=repr(error)), 500

    # -- pages ------------------------------------------------------------------------------------

    @app.get("/")
    def dashboard():
        return render_template("dashboard.html", config=config, fleet=clean(scraper.fleet()),
                               series=SERIES, active="dashboard")

    @app.get("/play")
    def play_page():
        return render_template("play.html", config=config, info=player.info(), active="play")

    # -- API --------------------------------------------------------------------------------------

    @app.get("/api/fleet")
    def api_fleet():
        return json_response(scraper.fleet())

    @app.get("/api/series")
    def api_series():
        try:
            max_points = int(request.args.get("max_points", 400))
            since = request.args.get("since")
            since = float(since) if since is not None else None
        except ValueError:
            return json_response({"error": "max_points must be an integer and since a number (unix time)"}, 400)
        scraper.ensure_scraped()
        return json_response(scraper.series(max_points=max_points, since=since))

    @app.get("/api/replay")
    def api_replay():
        current = scraper.ensure_scraped()
        if not config.replay:
            return json_response({"error": "no replay service configured (--replay)"}, 503)
        if current.replay_stats is None:
            return json_response({"error": current.replay_error or f"replay unreachable at {config.replay}",
                                  "address": config.replay}, 503)
        return json_response({"address": config.replay, "stats": current.replay_stats})

    @app.get("/api/play")
    def api_play_info():
        return json_response(player.info())

    @app.post("/api/play")
    def api_play():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            metrics.play_errors.labels("invalid").inc()
            return json_response({"error": 'expected a JSON object {"board": [[...]], "move": int | null, '
                                           '"model_player": 0 | 1}'}, 400)
        try:
            return json_response(player.play(body.get("board"), body.get("move"), body.get("model_player", 1)))
        except PlayError as error:
            if error.status == 400:
                metrics.play_errors.labels("invalid").inc()
            return json_response({"error": error.message}, error.status)

    @app.get("/metrics")
    def prometheus_metrics():
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz():
        return json_response({"status": "ok"})

    return app
