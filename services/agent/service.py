"""The agent as a library: `serve(config)` runs self-play in this process, `evaluate_once`
plays one evaluation; `python -m services.agent` only parses flags and calls them."""

from __future__ import annotations

import json
import threading

from prometheus_client import REGISTRY, CollectorRegistry

from services.agent.config import AgentConfig, EvaluationConfig
from services.common.failures import PermanentFailure
from services.common.logs import EventLogger, get_logger
from services.common.metrics import serve_metrics
from services.common.service import Worker, loop_worker


def serve(config: AgentConfig, log: EventLogger | None = None, stop: threading.Event | None = None,
          registry: CollectorRegistry = REGISTRY, environment=None, network=None,
          replay=None) -> Worker:
    """Starts self-play in this process: /metrics on `config.host`:`config.metrics_port` (0: a
    free one) serving `registry`, and the loop of `SelfPlay` on a thread, until `stop` is set
    or `config.max_moves` moves were played. Logs `ready`, then `stopped` with the records
    left unsent.

    `environment`, `network`, `replay`: clients of the peers (`EnvironmentClient`,
    `NetworkClient`, `ReplayClient` or anything with their methods); default: made from the
    config's addresses. The worker's exit code is 0 after a clean stop, 1 after a permanent
    failure (logged `permanent_failure`) or when records stayed unsent.
    """
    from services.agent.metrics import AgentMetrics
    from services.agent.selfplay import SelfPlay

    log = log or get_logger("agent")
    stop = stop if stop is not None else threading.Event()
    metrics = serve_metrics(config.metrics_port, config.host, registry)
    try:
        selfplay = SelfPlay(config, log, environment=environment, network=network, replay=replay,
                            stop=stop, metrics=AgentMetrics(registry))
    except BaseException:
        metrics.close()
        raise

    def finish(code: int) -> int:
        unsent = selfplay.close()
        log.info("stopped", moves=selfplay.moves, games_finished=selfplay.games_finished,
                 unsent_records=unsent)
        return code if unsent == 0 else 1

    return loop_worker("agent", log, metrics, stop, selfplay.run, finish,
                       games_per_batch=config.games_per_batch, simulations=config.simulations,
                       groups=config.groups, seed=config.seed)


def evaluate_once(config: EvaluationConfig, stop: threading.Event, log: EventLogger) -> int:
    """Plays `config.num_games` greedy games with one model version, logs `evaluated` and prints
    its summary as one JSON line; returns the exit code (1: a permanent failure, or no version
    came up in time)."""
    from services.agent.evaluate import EvaluationStopped, evaluate
    from services.agent.opponents import OPPONENTS
    from services.agent.search.config import searcher_changes
    from services.environment.client import EnvironmentClient
    from services.network.client import NetworkClient

    try:
        with EnvironmentClient(config.environment, timeout_s=config.request_timeout_s) as environment, \
                NetworkClient(config.network, model_name=config.model_name,
                              timeout_s=config.request_timeout_s) as network:
            result = evaluate(config.game, environment, network, config.num_games, config.simulations,
                              version=config.version, seed=config.seed, groups=1,
                              opponent=OPPONENTS[config.opponent_name], stop=stop,
                              search_changes=searcher_changes(config))
    except EvaluationStopped:
        log.info("stopped", evaluated=False)
        return 0
    except PermanentFailure as failure:
        log.error("permanent_failure", **failure.log_fields())
        return 1
    except TimeoutError as error:  # no model version came up in time
        log.error("network_not_ready", address=config.network, message=str(error))
        return 1
    summary = result.summary()
    log.info("evaluated", **summary)
    print(json.dumps(summary))
    return 0
