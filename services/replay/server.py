"""The replay servicer: gRPC `mufleet.Replay` over a `ReplayBuffer`.

Every call is validated whole before anything changes (INVALID_ARGUMENT / NOT_FOUND naming the
field). A SampleBatch (or, with --block-inserts, an AddGames) that the rate limiter holds back
waits on the buffer's condition variable until shortly before the call's deadline and then
fails with DEADLINE_EXCEEDED, its message naming the limiter's state ("rate limiter: ..."), so
the client sees why rather than a bare deadline.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, TypeVar

import grpc
from prometheus_client import REGISTRY, CollectorRegistry

from protos import replay_pb2, replay_pb2_grpc
from services.common.errors import serve_rpc
from services.common.logs import EventLogger, get_logger
from services.common.metrics import serve_metrics
from services.common.server import ServiceServer
from services.replay.buffer import ReplayBuffer
from services.replay.config import ReplayConfig
from services.replay.metrics import ReplayMetrics
from services.replay.records import decode_many, decode_tensor, invalid
from services.replay.wire import (SAMPLE_GAMES_ORDERS, SERVICE_NAME, batch_to_proto,
                                  stats_to_proto, stored_game_to_proto)

if TYPE_CHECKING:
    from services.replay.client import ReplayClient

T = TypeVar("T")


def _array(request, name: str):
    if not request.HasField(name):
        raise invalid(f"{name}: missing")
    return decode_tensor(getattr(request, name), name)


def sample_timeout(time_remaining: float | None) -> float | None:
    """How long a SampleBatch (or a held-back AddGames) may wait for the rate limiter: the
    call's time left, less a margin (a tenth, at most 250 ms) so that our DEADLINE_EXCEEDED,
    with its message, arrives first."""
    if time_remaining is None:
        return None
    return max(0.0, time_remaining - min(0.25, 0.1 * time_remaining))


class ReplayServicer(replay_pb2_grpc.ReplayServicer):
    """Serves `mufleet.Replay` over `buffer`.

    Args:
      buffer: the store; the servicer does not close it.
      log: where events go (request_rejected, internal_error); adds are counted in metrics,
        not logged one by one.
      metrics: a fresh `ReplayMetrics` per process by default.
    """

    def __init__(self, buffer: ReplayBuffer, log: EventLogger,
                 metrics: ReplayMetrics | None = None) -> None:
        self.buffer = buffer
        self.log = log
        self.metrics = metrics or ReplayMetrics()
        self._rate_limited_seen = buffer.rate_limited_total
        self._retries_seen = buffer.sample_retries
        self._rate_limited_lock = threading.Lock()
        self.metrics.inserts_waiting.set_function(lambda: buffer.inserts_waiting)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.games.set(self.buffer.num_games)
        self.metrics.positions.set(self.buffer.num_positions)
        self.metrics.stored_positions.set(self.buffer.stored_positions)
        self.metrics.reanalysed_positions.set(self.buffer.reanalysed_positions)

    def _serve(self, method: str, context: grpc.ServicerContext, body: Callable[[], T]) -> T:
        """Runs `body`, timing it; a ReplayError (or a crash: INTERNAL) aborts the call."""
        return serve_rpc(method, context, body, self.log, self.metrics.request_seconds, self.metrics.errors)

    # --- RPCs ------------------------------------------------------------------------------

    def AddGames(self, request: replay_pb2.AddGamesRequest, context) -> replay_pb2.AddGamesResponse:
        def body() -> replay_pb2.AddGamesResponse:
            games = decode_many(request.games, self.buffer.spec, self.buffer.config.capacity)
            result = self.buffer.add_games(games, sample_timeout(context.time_remaining()))
            self.metrics.games_added.inc(result.added)
            self.metrics.duplicates.inc(result.duplicates)
            self.metrics.evicted_games.inc(result.evicted)
            self.metrics.positions_added.inc(result.positions_added)
            self._update_gauges()
            return replay_pb2.AddGamesResponse(added=result.added, duplicates=result.duplicates,
                                               keys=result.keys, evicted=result.evicted,
                                               positions_added=result.positions_added)
        return self._serve("AddGames", context, body)

    def SampleBatch(self, request: replay_pb2.SampleBatchRequest, context) -> replay_pb2.SampleBatchResponse:
        def body() -> replay_pb2.SampleBatchResponse:
            try:
                batch = self.buffer.sample(
                    request.batch_size, request.num_unroll_steps, request.td_steps, request.discount,
                    request.include_unroll_observations, sample_timeout(context.time_remaining()))
            finally:
                self._count_rate_limited()
            B = len(batch.record_keys)
            self.metrics.samples.inc(B)
            self.metrics.sample_batches.inc()
            reanalysed = int(batch.reanalysed.sum())
            self.metrics.sampled_reanalysed.inc(reanalysed)
            self.metrics.reanalysed_target_fraction.set(reanalysed / B)
            # the mean n of the batch's value targets inside their records (u < T)
            self.metrics.value_target_td_steps.set(
                float((batch.value_td_steps * batch.mask).sum() / batch.mask.sum()))
            return batch_to_proto(batch)
        return self._serve("SampleBatch", context, body)

    def _count_rate_limited(self) -> None:
        with self._rate_limited_lock:
            total = self.buffer.rate_limited_total
            if total > self._rate_limited_seen:
                self.metrics.rate_limited.inc(total - self._rate_limited_seen)
                self._rate_limited_seen = total
            retries = self.buffer.sample_retries
            if retries > self._retries_seen:
                self.metrics.sample_retries.inc(retries - self._retries_seen)
                self._retries_seen = retries

    def UpdatePriorities(self, request: replay_pb2.UpdatePrioritiesRequest,
                         context) -> replay_pb2.UpdatePrioritiesResponse:
        def body() -> replay_pb2.UpdatePrioritiesResponse:
            updated, skipped = self.buffer.update_priorities(
                _array(request, "record_keys"), _array(request, "positions"),
                _array(request, "priorities"))
            self.metrics.priority_updates.inc(updated)
            return replay_pb2.UpdatePrioritiesResponse(updated=updated, skipped=skipped)
        return self._serve("UpdatePriorities", context, body)

    def UpdateTargets(self, request: replay_pb2.UpdateTargetsRequest,
                      context) -> replay_pb2.UpdateTargetsResponse:
        def body() -> replay_pb2.UpdateTargetsResponse:
            updated, skipped = self.buffer.update_targets(
                request.game_id, _array(request, "positions"), _array(request, "root_values"),
                _array(request, "policies"), request.model_version)
            self.metrics.target_updates.inc(updated)
            self.metrics.target_updates_skipped.inc(skipped)
            self._update_gauges()
            return replay_pb2.UpdateTargetsResponse(updated=updated, skipped=skipped)
        return self._serve("UpdateTargets", context, body)

    def SampleGames(self, request: replay_pb2.SampleGamesRequest,
                    context) -> replay_pb2.SampleGamesResponse:
        def body() -> replay_pb2.SampleGamesResponse:
            if not 0 <= request.order < len(SAMPLE_GAMES_ORDERS):  # proto3 keeps unknown values
                names = ", ".join(f"{o.upper()} ({i})" for i, o in enumerate(SAMPLE_GAMES_ORDERS))
                raise invalid(f"order: unknown order {request.order}; expected one of {names}")
            stored = self.buffer.sample_games(request.num_games, SAMPLE_GAMES_ORDERS[request.order])
            return replay_pb2.SampleGamesResponse(games=[stored_game_to_proto(s) for s in stored])
        return self._serve("SampleGames", context, body)

    def GetStats(self, request: replay_pb2.GetStatsRequest, context) -> replay_pb2.ReplayStats:
        return self._serve("GetStats", context, lambda: stats_to_proto(self.buffer.stats()))


class ReplayServer(ServiceServer):
    """A `ServiceServer` that, on stop, first releases the calls waiting on the rate limiter
    (so in-flight calls end at once, UNAVAILABLE), then finishes in-flight calls, then closes
    the buffer (pending priorities written, WAL checkpointed)."""

    def __init__(self, buffer: ReplayBuffer, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.buffer = buffer
        self.servicer: ReplayServicer | None = None

    def stop(self, grace_s: float | None = None) -> None:
        if self.stopped:
            return
        self.buffer.release_waiters()
        super().stop(grace_s)
        self.buffer.close()

    def client(self, timeout_s: float | None = None) -> "ReplayClient":
        """A client of this server (the caller closes it)."""
        from services.replay.client import ReplayClient
        return ReplayClient(self.address) if timeout_s is None else \
            ReplayClient(self.address, timeout_s=timeout_s)


def serve(config: ReplayConfig, log: EventLogger | None = None, metrics: ReplayMetrics | None = None,
          registry: CollectorRegistry = REGISTRY) -> ReplayServer:
    """Opens the buffer of `config.data_dir` and starts the replay service in this process: a
    gRPC server on `config.host` and `config.port` (0: a free one), with `config.max_workers`
    threads and the message limits `config.receive_limit` / `config.send_limit`, and /metrics
    on `config.metrics_port`. Logs `ready` with the bound ports; `stop()` closes the buffer.

    `metrics` defaults to a `ReplayMetrics` in `registry` (the process's by default; pass a
    fresh `CollectorRegistry` to run several services in one process), and the /metrics
    endpoint serves `metrics.registry`.

    Raises ValueError or RuntimeError for a data dir it cannot use (another game's, damaged),
    leaving nothing running.
    """
    log = log or get_logger("replay")
    metrics = metrics or ReplayMetrics(registry)
    buffer = ReplayBuffer(config, log, on_flush=metrics.observe_flush,
                          on_insert_wait=metrics.observe_insert_wait)
    try:
        server = ReplayServer(buffer, log, host=config.host, port=config.port,
                              max_workers=config.max_workers,
                              max_receive_bytes=config.receive_limit,
                              max_send_bytes=config.send_limit)
        server.servicer = ReplayServicer(buffer, log, metrics)
        replay_pb2_grpc.add_ReplayServicer_to_server(server.servicer, server.grpc_server)
    except BaseException:
        buffer.close()
        raise
    try:
        server.start([SERVICE_NAME])
        server.metrics_endpoint = serve_metrics(config.metrics_port, config.host, metrics.registry)
    except BaseException:
        server.stop(0)  # closes the buffer
        raise
    log.info("ready", grpc_port=server.port, metrics_port=server.metrics_endpoint.port,
             game=config.spec.name, data_dir=config.data_dir, games=buffer.num_games,
             positions=buffer.num_positions, capacity=config.capacity,
             min_positions=config.min_positions, samples_per_insert=config.samples_per_insert,
             block_inserts=config.inserts_may_block, waiting_samplers=config.waiting_samplers,
             waiting_inserters=buffer.max_waiting_inserters, error_buffer=config.error_buffer,
             priority_alpha=config.priority_alpha,
             priority_beta=config.priority_beta, num_unroll_steps=config.num_unroll_steps,
             td_steps=config.td_steps, synchronous=config.synchronous,
             max_workers=config.max_workers, max_receive_bytes=config.receive_limit,
             max_send_bytes=config.send_limit, max_sample_bytes=config.max_sample_bytes,
             priority_limit=config.priority_limit, id_window=config.id_window,
             reanalysed_target_fraction=config.reanalysed_target_fraction,
             td_age_versions_per_step=config.td_age_versions_per_step)
    return server
