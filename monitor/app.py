"""The monitor's Flask app: the dashboard, the play page, their JSON API and /metrics.

    GET  /              dashboard: fleet health, throughput, learning curves, replay, versions
    GET  /play          play the fleet's board game against the current model (2048: watch it play)
    GET  /api/fleet     every service's state (always 200; unreachable services carry messages)
    GET  /api/series    the scraped history as parallel arrays (?max_points=N, ?since=UNIX_TIME)
    GET  /api/replay    the replay's GetStats (503 with an error when the replay is unreachable)
    GET  /api/play      what the play page plays (game, board size) or why it cannot
    POST /api/play      {"board": [[...]], "move": int | null, "model_player": 0 | 1} (othello:
                        and "to_play": 0 | 1, as the last answer said); 2048:
                        {"board": [[...]] | null, "move": 0..3 | null} (monitor.play); rate-limited
                        (MonitorConfig.play_rate_per_s, play_burst: 429 with Retry-After)
    GET  /metrics       the monitor's own Prometheus metrics (mufleet_monitor_*)
    GET  /healthz       200 while the monitor runs

Every /api/ error is JSON with an `error` field. An unexpected failure answers 500 with a
generic message and an id; the exception itself goes to the log only (event `request_failed`
with that id), never to the page.
"""

from __future__ import annotations

import json
import math
import threading
import time
import traceback
import uuid
from typing import Any

from flask import Flask, Response, g, render_template, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.config import MonitorConfig
from monitor.metrics import MonitorMetrics
from monitor.play import PlayError, Player
from monitor.ratelimit import TokenBucket, retry_after
from monitor.scraper import SERIES, Scraper
from services.common.logs import EventLogger

# The largest request body read; larger is a 413. A play request is well under 1 KiB: this only
# keeps memory bounded (refusing deep nesting is MAX_JSON_DEPTH's job).
MAX_BODY_BYTES = 1024 * 1024
# The deepest JSON accepted: a play request is an object holding a list of lists (depth 3).
MAX_JSON_DEPTH = 8
PLAY_REQUEST = ('{"board": [[...]], "move": int | null, "model_player": 0 | 1} '
                '(othello: and "to_play": 0 | 1; 2048: {"board": [[...]] | null, "move": 0..3 | null})')


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


def json_depth(value: Any, limit: int) -> int:
    """The nesting depth of parsed JSON (a scalar 0, [] 1, [[]] 2), counted without recursion and
    only up to `limit + 1`, so an answer above `limit` means "too deep"."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if deepest > limit:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json_body(data: bytes) -> tuple[Any, str | None]:
    """(the parsed body, None) or (None, why it is refused)."""
    try:
        body = json.loads(data)
    except RecursionError:  # JSON's decoder recurses once per level: 100,000 "[" get here
        return None, f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"
    except ValueError:  # not JSON, not UTF-8, an integer of thousands of digits
        return None, "the body is not JSON"
    if json_depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        return None, f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"
    return body, None


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
               player: Player | None = None, metrics: MonitorMetrics | None = None,
               play_limit: TokenBucket | None = None) -> Flask:
    """The app. `scraper` is not started here: the server starts it (tests call scrape_once).
    `play_limit`: the play endpoint's token bucket (default: from the config, on the monotonic
    clock; tests give one with a clock they step)."""
    metrics = metrics or (scraper.metrics if scraper else MonitorMetrics())
    scraper = scraper or Scraper(config, log, metrics)
    player = player or Player(config, metrics)
    play_limit = play_limit or TokenBucket(config.play_rate_per_s, config.play_burst)
    app = Flask(__name__)
    app.config["JSON_SORT_KEYS"] = False
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["mufleet"] = {"scraper": scraper, "player": player, "metrics": metrics,
                                 "in_flight": InFlight(), "config": config, "play_limit": play_limit}
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

        if isinstance(error, HTTPException):  # 400, 413, ...: werkzeug's own words, no internals
            if error.code is None or error.code < 400:
                return error
            if request.path.startswith("/api/"):
                return json_response({"error": error.description or error.name}, error.code or 500)
            return render_template("error.html", config=config, title=error.name,
                                   message=error.description or error.name), error.code or 500
        # The exception's text may hold paths, addresses or data of the process: it goes to the
        # log, and the page gets only an id to find it there.
        error_id = uuid.uuid4().hex[:12]
        log.error("request_failed", id=error_id, method=request.method, path=request.path, error=repr(error),
                  traceback="".join(traceback.format_exception(error)))
        message = f"internal error {error_id}: the monitor's log has the details (event request_failed)"
        if request.path.startswith("/api/"):
            return json_response({"error": message, "id": error_id}, 500)
        return render_template("error.html", config=config, title="Something went wrong", message=message), 500

    # -- pages ------------------------------------------------------------------------------------

    @app.get("/")
    def dashboard():
        return render_template("dashboard.html", config=config, fleet=clean(scraper.fleet()),
                               series=SERIES, active="dashboard", two_player=scraper.two_player)

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
            max_points, since = 0, math.nan
        if max_points < 1 or (since is not None and not math.isfinite(since)):
            return json_response({"error": "max_points must be an integer >= 1 and since a number (unix time)"}, 400)
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
        # Before reading the body: a flood is refused at the cost of a lock, not a parse or a search.
        wait_s = play_limit.take()
        if wait_s > 0:
            metrics.play_errors.labels("rate_limited").inc()
            response = json_response({"error": f"too many play requests (at most {config.play_rate_per_s:g}/s, "
                                               f"bursts of {config.play_burst}): retry in {retry_after(wait_s)} s"},
                                     429)
            response.headers["Retry-After"] = retry_after(wait_s)
            return response
        body, refused = parse_json_body(request.get_data(cache=False))
        if refused is not None or not isinstance(body, dict) or "board" not in body:
            metrics.play_errors.labels("invalid").inc()
            if refused is None and isinstance(body, dict):
                refused = "the body has no board"
            return json_response({"error": (f"{refused}: " if refused else "") + f"expected a JSON object {PLAY_REQUEST}"},
                                 400)
        try:
            # model_player absent: None (two-player games: the model moves second; 2048 has none)
            return json_response(player.play(body["board"], body.get("move"), body.get("model_player"),
                                             body.get("to_play")))
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
