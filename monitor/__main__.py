"""MuFleet's dashboard: fleet health, throughput, learning curves, replay, model versions, and a
page to play the fleet's board game against its current model.

    python -m monitor --port 5000 --game cartpole --environment 127.0.0.1:50000 \\
        --replay 127.0.0.1:50001 --network 127.0.0.1:50002 \\
        --metrics environment=127.0.0.1:9100 --metrics replay=127.0.0.1:9101 \\
        --metrics network=127.0.0.1:9102 --metrics agent-0=127.0.0.1:9103 \\
        --metrics trainer=127.0.0.1:9104

The monitor serves its own Prometheus metrics at /metrics on the same port (it has no
--metrics-port). `--metrics NAME=HOST:PORT[/PATH]` names one endpoint to scrape (PATH defaults
to /metrics; TensorFlow Serving's is /monitoring/prometheus/metrics); a NAME of the form
"agent-3" has the role "agent". A HOST that resolves to several addresses (docker compose's name
of a scaled service) is scraped at each, as replicas "agent#0", "agent#1", ... (numbers, not
addresses, so replaced replicas add no series). `--optional-metrics` names a service that may
not run (compose's optional profiles): its card says "off" while it is unreachable, without an
alert. `POST /api/play` is rate-limited
(--play-rate-per-s, --play-burst: 429 with Retry-After past it). Port 0 picks a free port; the `ready` log event tells
which (`http_port`, and `metrics_port`, the same). SIGTERM: stop accepting, finish the requests
in flight, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

import games
from monitor.config import MetricsTarget, MonitorConfig
from services.common.flags import config_or_exit


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, MonitorConfig]:
    parser = argparse.ArgumentParser(prog="python -m monitor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", required=True, choices=games.names(), help="the fleet's game")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5000,
                        help="HTTP port of the dashboard and its /metrics; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--environment", default="", metavar="HOST:PORT", help="environment server (gRPC)")
    parser.add_argument("--replay", default="", metavar="HOST:PORT", help="replay server (gRPC)")
    parser.add_argument("--network", default="", metavar="HOST:PORT",
                        help="network server or TensorFlow Serving (gRPC)")
    parser.add_argument("--metrics", action="append", default=[], metavar="NAME=HOST:PORT[/PATH]",
                        help="a Prometheus endpoint to scrape; repeat for every service")
    parser.add_argument("--optional-metrics", action="append", default=[], metavar="NAME=HOST:PORT[/PATH]",
                        help="the endpoint of a service that may not run (an optional compose profile): "
                             "'off' while unreachable, not 'down'")
    parser.add_argument("--scrape-interval-s", type=float, default=2.0,
                        help="seconds between scrapes; rates are deltas between two (default: %(default)s)")
    parser.add_argument("--scrape-timeout-s", type=float, default=1.5,
                        help="deadline of one scrape or probe (default: %(default)s)")
    parser.add_argument("--history", type=int, default=1800,
                        help="scrapes kept in memory for the charts (default: %(default)s, an hour at 2 s)")
    parser.add_argument("--model-name", default="muzero", help="the served model (default: %(default)s)")
    parser.add_argument("--play-simulations", type=int, default=0,
                        help="simulations per model move on the play page (default: the game's)")
    parser.add_argument("--play-timeout-s", type=float, default=10.0,
                        help="deadline of each network request of the play page (default: %(default)s)")
    parser.add_argument("--play-rate-per-s", type=float, default=5.0,
                        help="POST /api/play requests per second, all clients together; past it 429 "
                             "with Retry-After; 0 = no limit (default: %(default)s)")
    parser.add_argument("--play-burst", type=int, default=30,
                        help="play requests allowed at once above that rate (default: %(default)s)")
    args = parser.parse_args(argv)
    config = config_or_exit(parser, lambda: MonitorConfig(
        game=args.game, environment=args.environment, replay=args.replay, network=args.network,
        metrics=(*(MetricsTarget.parse(m) for m in args.metrics),
                 *(MetricsTarget.parse(m, optional=True) for m in args.optional_metrics)),
        scrape_interval_s=args.scrape_interval_s, scrape_timeout_s=args.scrape_timeout_s,
        history=args.history, model_name=args.model_name, play_simulations=args.play_simulations,
        play_timeout_s=args.play_timeout_s, play_rate_per_s=args.play_rate_per_s, play_burst=args.play_burst))
    return args, config


def main(argv: list[str] | None = None) -> int:
    args, config = parse_args(argv)

    from werkzeug.serving import make_server

    from monitor.app import create_app
    from monitor.metrics import MonitorMetrics
    from monitor.scraper import Scraper
    from services.common.logs import get_logger
    from services.common.shutdown import stop_event_on_signals

    log = get_logger("monitor")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no unstructured access log lines
    metrics = MonitorMetrics()
    scraper = Scraper(config, log, metrics)
    app = create_app(config, log, scraper=scraper, metrics=metrics)
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except OSError as error:
        log.error("bind_failed", host=args.host, port=args.port, error=str(error))
        return 1
    port = server.server_port
    stop = stop_event_on_signals(log)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                               name="http", daemon=True)
    serving.start()
    scraper.start()
    log.info("ready", grpc_port=None, http_port=port, metrics_port=port, host=args.host, game=config.game,
             targets=[f"{t.name}={t.address}{t.path}" for t in config.metrics],
             environment=config.environment, replay=config.replay, network=config.network)
    while not stop.wait(0.5):
        pass
    server.shutdown()  # no new requests; then let those in flight finish
    finished = app.extensions["mufleet"]["in_flight"].wait_idle(10.0)
    server.server_close()
    scraper.stop()
    app.extensions["mufleet"]["player"].close()
    log.info("stopped", requests_finished=finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
