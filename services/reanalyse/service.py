"""The reanalyse worker as a library: `serve(config)` runs it in this process;
`python -m services.reanalyse` only parses flags and calls it."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry

from services.common.logs import EventLogger, get_logger
from services.common.metrics import serve_metrics
from services.common.service import Worker, loop_worker
from services.reanalyse.config import ReanalyseConfig


def serve(config: ReanalyseConfig, log: EventLogger | None = None, stop: threading.Event | None = None,
          registry: CollectorRegistry = REGISTRY, replay=None, network=None) -> Worker:
    """Starts reanalysing in this process: /metrics on `config.host`:`config.metrics_port` (0: a
    free one) serving `registry`, and the loop of `Reanalyser` on a thread, until `stop` is set
    or `config.max_batches` batches are done. Logs `ready`, then `stopped`.

    `replay`, `network`: clients of the peers (`ReplayClient`, `NetworkClient` or anything with
    their methods); default: made from the config's addresses. The worker's exit code is 0
    after a clean stop, 1 after a permanent failure (logged `permanent_failure`).
    """
    from services.network.client import NetworkClient
    from services.reanalyse.metrics import ReanalyseMetrics
    from services.reanalyse.worker import Reanalyser
    from services.replay.client import ReplayClient

    log = log or get_logger("reanalyse")
    stop = stop if stop is not None else threading.Event()
    metrics = serve_metrics(config.metrics_port, config.host, registry)
    own_replay = replay is None
    own_network = network is None
    try:
        replay = replay or ReplayClient(config.replay, timeout_s=config.request_timeout_s)
        network = network or NetworkClient(config.network, model_name=config.model_name,
                                           timeout_s=config.request_timeout_s)
        reanalyser = Reanalyser(config, log, replay, network, metrics=ReanalyseMetrics(registry), stop=stop)
    except BaseException:
        metrics.close()
        raise

    def finish(code: int) -> int:
        if own_network:
            network.close()
        if own_replay:
            replay.close()
        log.info("stopped", batches=reanalyser.batches, positions=reanalyser.positions)
        return code

    return loop_worker("reanalyse", log, metrics, stop, reanalyser.run, finish, batch_size=config.batch_size,
                       simulations=config.search_simulations, order=config.order, seed=config.seed)
