"""The evaluator as a library: `serve(config)` runs it in this process;
`python -m services.evaluator` only parses flags and calls it."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry

from services.common.logs import EventLogger, get_logger
from services.common.metrics import serve_metrics
from services.common.service import Worker, loop_worker
from services.evaluator.config import EvaluatorConfig


def serve(config: EvaluatorConfig, log: EventLogger | None = None, stop: threading.Event | None = None,
          registry: CollectorRegistry = REGISTRY, environment=None, network=None, opponents=None) -> Worker:
    """Starts evaluating in this process: /metrics on `config.host`:`config.metrics_port` (0: a
    free one) serving `registry`, and the loop of `Evaluator` on a thread, until `stop` is set
    or `config.max_rounds` rounds are done. Logs `ready`, then `stopped`.

    `environment`, `network`: clients of the peers (default: made from the config's addresses);
    `opponents`: name -> opponent (default: services.agent.opponents.OPPONENTS). The worker's
    exit code is 0 after a clean stop, 1 after a permanent failure (logged
    `permanent_failure`). Raises StateError (a ValueError) when the results file is unreadable.
    """
    from services.environment.client import EnvironmentClient
    from services.evaluator.evaluator import Evaluator
    from services.evaluator.metrics import EvaluatorMetrics
    from services.network.client import NetworkClient

    log = log or get_logger("evaluator")
    stop = stop if stop is not None else threading.Event()
    metrics = serve_metrics(config.metrics_port, config.host, registry)
    own_environment = environment is None
    own_network = network is None
    try:
        environment = environment or EnvironmentClient(config.environment, timeout_s=config.request_timeout_s)
        network = network or NetworkClient(config.network, model_name=config.model_name,
                                           timeout_s=config.request_timeout_s)
        evaluator = Evaluator(config, log, environment, network, metrics=EvaluatorMetrics(registry),
                              opponents=opponents, stop=stop)
    except BaseException:
        metrics.close()
        raise

    def finish(code: int) -> int:
        if own_network:
            network.close()
        if own_environment:
            environment.close_channel()
        log.info("stopped", rounds=evaluator.rounds, matches=evaluator.matches, rated=evaluator.last_version)
        return code

    worker = loop_worker("evaluator", log, metrics, stop, evaluator.run, finish, game=config.game,
                         ladder=list(evaluator.ladder_for(0)) if config.two_player else [],
                         state_dir=config.state_dir)
    worker.evaluator = evaluator
    return worker
