"""The monitor's view of the fleet: periodic probes of every service, kept as a bounded history.

Every `scrape_interval_s` one round probes, concurrently and each with a deadline:
  * every metrics endpoint (HTTP GET, Prometheus text), at every address its host resolves to
    (docker compose's DNS name of a scaled service resolves to one address per replica);
  * the standard gRPC health check of the environment, replay and network servers (the network
    also answers through `GetModelStatus`, which is all TensorFlow Serving has);
  * the replay's `GetStats`.
A separate thread asks the network for its model versions (`GetModelStatus`; its client loads
TensorFlow, seconds, so it stays off the scrape round).

Rates are counter deltas between two rounds of the same instance at the same address (a
counter that went down means the service restarted: its new value is the delta). Each round
appends one point of every series (`SERIES`) to a bounded history; the trainer's losses are
kept by training step.

Replicas of a scaled service come and go with new addresses, so they are not named by address
(every replacement would add series to the monitor's own metrics, without end): each address
holds a replica number while it resolves (`ReplicaNames`), and the series of a name that is no
longer scraped are dropped.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import games

from monitor.config import GRPC_ROLES, MetricsTarget, MonitorConfig
from monitor.metrics import MonitorMetrics
from services.agent import metrics as agent_metrics
from services.common.channels import service_config
from services.common.logs import EventLogger
from services.common.metrics import Sample, parse_metrics
from services.environment import metrics as environment_metrics
from services.evaluator import metrics as evaluator_metrics
from services.network import metrics as network_metrics
from services.reanalyse import metrics as reanalyse_metrics
from services.replay import metrics as replay_metrics
from services.trainer import metrics as trainer_metrics

LOSS_KINDS = trainer_metrics.LOSS_KINDS
# 2048: the tiles whose share of finished games the dashboard charts.
MAX_TILE_SHARES = (512, 1024, 2048)
# 2048: the tiles whose share of the evaluator's games the Strength panel charts.
EVALUATOR_TILES = (512, 1024, 2048)
# TensorFlow Serving's request counter (prometheus_client's parser adds `_total` to counters).
TF_SERVING_REQUESTS = (":tensorflow:serving:request_count_total", ":tensorflow:serving:request_count")


# ---------------------------------------------------------------------------------------------
# One probe's results.

class Samples:
    """The samples of one Prometheus text page: name -> [(labels, value)]."""

    def __init__(self, by_name: dict[str, list[Sample]] | None = None) -> None:
        self.by_name = by_name or {}

    @classmethod
    def parse(cls, text: str) -> "Samples":
        """The page's samples (services.common.metrics.parse_metrics, which the launcher reads
        through too); ValueError for text that is not Prometheus text."""
        return cls(parse_metrics(text))

    def _values(self, name: str, labels: dict[str, str] | None) -> list[float]:
        return [v for l, v in self.by_name.get(name, ())
                if not labels or all(l.get(k) == want for k, want in labels.items())]

    def has(self, name: str) -> bool:
        return name in self.by_name

    def sum(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """Sum over the label sets (matching `labels`), None if the metric is absent."""
        values = self._values(name, labels)
        return math.fsum(values) if values else None

    def max(self, name: str) -> float | None:
        values = self._values(name, None)
        return max(values) if values else None

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {l.get(label, ""): v for l, v in self.by_name.get(name, ())}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_name.values())


@dataclasses.dataclass
class InstanceScrape:
    """One metrics endpoint at one address, as its latest probe found it."""

    instance: str     # "agent-0", or "agent#1" for replica 1 of a scaled service (see ReplicaNames)
    target: str       # the --metrics name
    role: str
    address: str
    path: str
    time: float
    ok: bool
    error: str | None = None
    samples: Samples = dataclasses.field(default_factory=Samples)


@dataclasses.dataclass
class Health:
    """The gRPC side of one service: "SERVING", "NOT_SERVING", "UNREACHABLE", "UNKNOWN"."""

    address: str
    status: str
    error: str | None = None


@dataclasses.dataclass
class Round:
    """Everything one scrape round saw."""

    time: float
    instances: dict[str, InstanceScrape]
    health: dict[str, Health]
    replay_stats: dict[str, Any] | None
    replay_error: str | None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# Series: one value per round.

@dataclasses.dataclass(frozen=True)
class Series:
    key: str
    label: str
    unit: str
    compute: Callable[["_Deltas"], float | None]


class _Deltas:
    """Helpers over the previous and the current round, summed over the instances of a role."""

    def __init__(self, prev: Round | None, cur: Round, two_player: bool | None = None) -> None:
        """`two_player`: whether the fleet's game has two players (the evaluator's metrics mean
        Elo ratings, else mean returns); None: two-player where the evaluator exports Elo."""
        self.prev, self.cur = prev, cur
        self.two_player = two_player

    def _instances(self, role: str) -> list[InstanceScrape]:
        return [s for s in self.cur.instances.values() if s.role == role and s.ok]

    def _pairs(self, role: str):
        for cur in self._instances(role):
            prev = self.prev.instances.get(cur.instance) if self.prev else None
            # A replica number taken over by a new address is another process: no delta with it.
            if prev is not None and prev.ok and prev.address == cur.address and cur.time > prev.time:
                yield prev, cur

    @staticmethod
    def _delta(prev: float, cur: float) -> float:
        return cur - prev if cur >= prev else cur  # a counter that went down: the service restarted

    def rate(self, role: str, *names: str) -> float | None:
        """Sum over instances of d(counter)/dt; the first of `names` an instance has is used."""
        total, seen = 0.0, False
        for prev, cur in self._pairs(role):
            for name in names:
                a, b = prev.samples.sum(name), cur.samples.sum(name)
                if a is not None and b is not None:
                    total += self._delta(a, b) / (cur.time - prev.time)
                    seen = True
                    break
        return total if seen else None

    def interval_mean(self, role: str, base: str, scale: float = 1.0) -> float | None:
        """Mean of a histogram's observations between the two rounds (d sum / d count)."""
        sums = counts = 0.0
        for prev, cur in self._pairs(role):
            values = [s.samples.sum(base + suffix) for s in (prev, cur) for suffix in ("_sum", "_count")]
            if None in values:
                continue
            psum, pcount, csum, ccount = values
            if ccount < pcount:
                psum = pcount = 0.0
            sums += csum - psum
            counts += ccount - pcount
        return sums / counts * scale if counts > 0 else None

    def gauge(self, role: str, name: str, how: str = "sum", labels: dict[str, str] | None = None) -> float | None:
        """The instances' values of a gauge (the samples matching `labels`), combined by `how`."""
        values = [v for s in self._instances(role) if (v := s.samples.sum(name, labels)) is not None]
        if not values:
            return None
        return {"sum": math.fsum, "max": max, "min": min,
                "mean": lambda v: math.fsum(v) / len(v)}[how](values)

    def stat(self, field: str) -> float | None:
        stats = self.cur.replay_stats
        return float(stats[field]) if stats and field in stats else None


def _replay_size(d: _Deltas, field: str, metric: str) -> float | None:
    value = d.stat(field)
    return value if value is not None else d.gauge("replay", metric)


def _replay_recent(d: _Deltas, field: str) -> float | None:
    stats = d.cur.replay_stats
    return float(stats[field]) if stats and stats.get("recent_games", 0) > 0 else None


def _max_tile_share(d: _Deltas, tile: int) -> float | None:
    """The share of the agents' finished games (since each started) whose largest tile is at
    least `tile` (a power of two), from the buckets of `mufleet_agent_episode_max_tile`: one
    minus the count at le = tile / 2. None before any game ends (or for games without tiles)."""
    name = agent_metrics.EPISODE_MAX_TILE
    below = total = 0.0
    for scrape in d._instances("agent"):
        count = scrape.samples.sum(name + "_count")
        buckets = {float(l.get("le", "nan")): v for l, v in scrape.samples.by_name.get(name + "_bucket", ())}
        if not count or tile / 2 not in buckets:
            continue
        below += buckets[tile / 2]
        total += count
    return 1.0 - below / total if total > 0 else None


def _version(value: float | None) -> float | None:
    return value if value is not None and value >= 0 else None


# ---------------------------------------------------------------------------------------------
# The evaluator's view (services/evaluator/metrics.py): the Strength panel.

def evaluator_view(samples: Samples, two_player: bool) -> dict[str, Any] | None:
    """What one evaluator's metrics say about the newest rated version, or None before it has
    rated one. Two-player games: {"version", "elo", "standard_error", "opponents" (name -> Elo:
    the ladder), "anchors" (version -> Elo: the kept earlier versions), "win_rates" (opponent ->
    score per game, wins plus half the draws; anchors "v<n>" included)}. One-player games:
    {"version", "mean_return", "max_tile" (tile -> share of games, 2048 only)}.

    Rated means: two-player, `mufleet_evaluator_elo{player="v<rated_version>"}` exists (the
    labelled gauge appears only once the version is rated); one-player, a round or a match
    counted, or a rated version or mean return that is not the gauges' initial 0 (a restarted
    evaluator sets them from its history without counting anything)."""
    m = evaluator_metrics
    version = samples.max(m.RATED_VERSION)
    if version is None or not math.isfinite(version) or version < 0:
        return None
    version = int(version)
    if two_player:
        elos = samples.by_label(m.ELO, "player")
        player = f"v{version}"
        if player not in elos or not math.isfinite(elos[player]):
            return None
        errors = samples.by_label(m.ELO_STANDARD_ERROR, "player")
        opponents = {p: e for p, e in elos.items() if not p.startswith("v") and math.isfinite(e)}
        anchors = {int(p[1:]): e for p, e in elos.items()
                   if p.startswith("v") and p[1:].isdigit() and p != player and math.isfinite(e)}
        return {"version": version, "elo": elos[player], "standard_error": _finite(errors.get(player)),
                "opponents": dict(sorted(opponents.items(), key=lambda item: item[1])),
                "anchors": dict(sorted(anchors.items())),
                "win_rates": {o: r for o, r in samples.by_label(m.WIN_RATE, "opponent").items() if math.isfinite(r)}}
    mean_return = samples.sum(m.MEAN_RETURN)
    counted = (samples.sum(m.ROUNDS_TOTAL) or 0) > 0 or samples.has(m.MATCHES_TOTAL) and bool(
        samples.sum(m.MATCHES_TOTAL))
    if mean_return is None or not math.isfinite(mean_return) or not (counted or version > 0 or mean_return != 0):
        return None
    tiles = {}
    for label, share in samples.by_label(m.MAX_TILE_FRACTION, "tile").items():
        if label.isdigit() and math.isfinite(share):
            tiles[int(label)] = share
    return {"version": version, "mean_return": mean_return, "max_tile": dict(sorted(tiles.items()))}


def _evaluator(d: "_Deltas") -> dict[str, Any] | None:
    """The view of the first evaluator scraped in the current round (a fleet has one)."""
    for scrape in d._instances("evaluator"):
        two_player = d.two_player if d.two_player is not None else scrape.samples.has(evaluator_metrics.ELO)
        return evaluator_view(scrape.samples, two_player)
    return None


def _evaluator_value(d: "_Deltas", key: str) -> float | None:
    view = _evaluator(d)
    return float(view[key]) if view is not None and key in view else None


SERIES: tuple[Series, ...] = (
    # Throughput.
    Series("agent_simulations_per_s", "simulations/s (all agents)", "1/s",
           lambda d: d.rate("agent", agent_metrics.SIMULATIONS_TOTAL)),
    Series("agent_moves_per_s", "moves/s (all agents)", "1/s", lambda d: d.rate("agent", agent_metrics.MOVES_TOTAL)),
    Series("agent_games_per_s", "games finished/s", "1/s",
           lambda d: d.rate("agent", agent_metrics.GAMES_FINISHED_TOTAL)),
    Series("environment_steps_per_s", "environment steps/s", "1/s",
           lambda d: d.rate("environment", environment_metrics.STEPS_TOTAL)),
    Series("trainer_steps_per_s", "trainer steps/s", "1/s", lambda d: d.rate("trainer", trainer_metrics.STEPS_TOTAL)),
    # TensorFlow Serving's own counter is the fallback when the network is the real thing.
    Series("network_requests_per_s", "network requests/s", "1/s",
           lambda d: d.rate("network", network_metrics.REQUESTS_TOTAL, *TF_SERVING_REQUESTS)),
    Series("network_batch_size", "rows per model run", "rows",
           lambda d: d.interval_mean("network", network_metrics.BATCH_SIZE)),
    Series("network_latency_ms", "network Predict latency (server)", "ms",
           lambda d: d.interval_mean("network", network_metrics.PREDICT_SECONDS, 1e3)),
    Series("agent_request_latency_ms", "network request latency (agents)", "ms",
           lambda d: d.interval_mean("agent", agent_metrics.NETWORK_REQUEST_SECONDS, 1e3)),
    Series("agent_move_ms", "time of one move of B games", "ms",
           lambda d: d.interval_mean("agent", agent_metrics.MOVE_SECONDS, 1e3)),
    # Learning.
    Series("agent_recent_return", "mean return, last 100 games (agents)", "",
           lambda d: d.gauge("agent", agent_metrics.RECENT_MEAN_RETURN, "mean")),
    Series("agent_recent_length", "mean length, last 100 games (agents)", "moves",
           lambda d: d.gauge("agent", agent_metrics.RECENT_MEAN_LENGTH, "mean")),
    # Games that declare episode statistics (services.agent.selfplay): 2048's largest tile.
    Series("agent_recent_max_tile", "mean largest tile, last 100 games (agents)", "tile",
           lambda d: d.gauge("agent", agent_metrics.RECENT_MEAN_EPISODE_STATISTIC, "mean",
                             {"statistic": "max_tile"})),
    *(Series(f"agent_max_tile_{tile}_share", f"games reaching {tile} (agents, since they started)", "",
             lambda d, tile=tile: _max_tile_share(d, tile)) for tile in MAX_TILE_SHARES),
    Series("replay_recent_return", "mean return, last 100 stored games", "",
           lambda d: _replay_recent(d, "recent_mean_return")),
    Series("replay_recent_length", "mean length, last 100 stored games", "moves",
           lambda d: _replay_recent(d, "recent_mean_length")),
    Series("trainer_step", "trainer step", "steps", lambda d: d.gauge("trainer", trainer_metrics.STEPS_TOTAL, "max")),
    Series("trainer_learning_rate", "learning rate", "",
           lambda d: d.gauge("trainer", trainer_metrics.LEARNING_RATE, "max")),
    # Replay.
    Series("replay_positions", "sampleable positions", "positions",
           lambda d: _replay_size(d, "positions", replay_metrics.POSITIONS)),
    Series("replay_games", "stored games", "games", lambda d: _replay_size(d, "games", replay_metrics.GAMES)),
    Series("replay_inserts_per_s", "positions inserted/s", "1/s",
           lambda d: d.rate("replay", replay_metrics.POSITIONS_ADDED_TOTAL)),
    Series("replay_samples_per_s", "positions sampled/s", "1/s", lambda d: d.rate("replay", replay_metrics.SAMPLES_TOTAL)),
    # Reanalyse.
    Series("reanalyse_positions_per_s", "positions reanalysed/s", "1/s",
           lambda d: d.rate("reanalyse", reanalyse_metrics.POSITIONS_TOTAL)),
    Series("reanalyse_target_age", "mean age of the targets replaced", "versions",
           lambda d: d.gauge("reanalyse", reanalyse_metrics.MEAN_TARGET_AGE_VERSIONS, "mean")),
    Series("replay_reanalysed_fraction", "sampled targets from reanalysis", "",
           lambda d: d.gauge("replay", replay_metrics.REANALYSED_TARGET_FRACTION, "mean")),
    # Model versions.
    Series("trainer_exported_version", "trainer: newest exported", "version",
           lambda d: _version(d.gauge("trainer", trainer_metrics.EXPORTED_VERSION, "max"))),
    Series("network_latest_version", "network: newest served", "version",
           lambda d: _version(d.gauge("network", network_metrics.LATEST_VERSION, "max"))),
    Series("agent_model_version", "agents: newest used", "version",
           lambda d: _version(d.gauge("agent", agent_metrics.MODEL_VERSION, "max"))),
    Series("agent_oldest_model_version", "agents: oldest used", "version",
           lambda d: _version(d.gauge("agent", agent_metrics.MODEL_VERSION, "min"))),
    Series("evaluator_rated_version", "evaluator: newest rated", "version",
           lambda d: _evaluator_value(d, "version")),
    # Strength (the evaluator): the newest rated version's Elo, or its mean return (one player).
    Series("evaluator_newest_elo", "Elo of the newest rated version", "Elo",
           lambda d: _evaluator_value(d, "elo")),
    Series("evaluator_mean_return", "mean return of the newest rated version (evaluator)", "",
           lambda d: _evaluator_value(d, "mean_return")),
)
SERIES_BY_KEY = {s.key: s for s in SERIES}


# ---------------------------------------------------------------------------------------------
# Naming the replicas of a scaled service.

Resolver = Callable[[MetricsTarget], list[str]]


def resolve_addresses(target: MetricsTarget) -> list[str]:
    """Every "host:port" the target's host resolves to ([target.address] when it is one or none).

    IPv4 first: "localhost" must not become two instances (127.0.0.1 and ::1); docker's DNS
    answers a scaled service's name with one A record per replica.
    """
    host, _, port = target.address.rpartition(":")
    addresses: list[str] = []
    for family in (socket.AF_INET, socket.AF_UNSPEC):
        try:
            infos = socket.getaddrinfo(host.strip("[]"), int(port), family=family, type=socket.SOCK_STREAM)
        except OSError:
            continue
        addresses = sorted({info[4][0] for info in infos})
        if addresses:
            break
    if len(addresses) <= 1:
        return [target.address]
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]


class ReplicaNames:
    """Bounded, stable names for the addresses of targets that resolve to several.

    Every address holds a replica number while it keeps resolving: "agent#0", "agent#1", ...
    A new address takes the lowest number no current address holds, so a replica that replaces
    another takes over its number, and a target never has more names than it had replicas at
    once. A target with one address keeps its own name ("agent").
    """

    def __init__(self) -> None:
        self._numbers: dict[str, dict[str, int]] = {}  # target name -> address -> number

    def names(self, target: str, addresses: list[str]) -> list[tuple[str, str]]:
        """(instance name, address) for the addresses `target` resolves to now."""
        if len(addresses) <= 1:
            self._numbers.pop(target, None)
            return [(target, a) for a in addresses]
        held = {a: n for a, n in self._numbers.get(target, {}).items() if a in addresses}
        free = (n for n in itertools.count() if n not in held.values())
        for address in addresses:
            if address not in held:
                held[address] = next(free)
        self._numbers[target] = held
        return sorted(((f"{target}#{n}", a) for a, n in held.items()), key=lambda pair: held[pair[1]])


# ---------------------------------------------------------------------------------------------
# The scraper.

class Scraper:
    """Probes the fleet every `config.scrape_interval_s` on a background thread.

    `scrape_once()` runs one round synchronously (tests, and the first page before the thread's
    first round). Read the results with `fleet()`, `series()`, `latest()`.
    """

    def __init__(self, config: MonitorConfig, log: EventLogger, metrics: MonitorMetrics,
                 resolve: Resolver = resolve_addresses) -> None:
        """`resolve`: the addresses a target's host stands for (DNS; tests give their own)."""
        self.config = config
        self.log = log
        self.metrics = metrics
        self._lock = threading.Lock()
        self._round_lock = threading.Lock()
        self._stop = threading.Event()
        self._prev: Round | None = None
        self._cur: Round | None = None
        self._points: deque[tuple[float, dict[str, float | None]]] = deque(maxlen=config.history)
        self._losses: deque[tuple[float, dict[str, float | None]]] = deque(maxlen=config.history)
        # The evaluator's rated versions, one entry per version (`evaluator_view` + "time").
        self._strength: deque[dict[str, Any]] = deque(maxlen=config.history)
        self._strength_latest: dict[str, Any] | None = None
        self.two_player = games.make(config.game).spec.num_players == 2
        self._last_rates: dict[str, dict[str, float | None]] = {}
        self._network_versions: dict[int, str] | None = None
        self._network_versions_error: str | None = "not asked yet"
        self._channels: dict[str, grpc.Channel] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="probe")
        self._threads: list[threading.Thread] = []
        self._failing: set[str] = set()  # targets whose failure was logged (log changes only)
        self._resolve_addresses = resolve
        self._replicas = ReplicaNames()
        self._instance_names: set[str] = set()  # instance names with series in `metrics`

    # -- lifetime -----------------------------------------------------------------------------

    def start(self) -> None:
        for name, loop in (("scraper", self._loop), ("model-probe", self._model_loop)):
            thread = threading.Thread(target=loop, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.config.scrape_timeout_s + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for channel in self._channels.values():
            channel.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.scrape_once()
            except Exception as error:  # a bug in one round must not end the dashboard
                self.log.error("scrape_failed", error=repr(error))
            self._stop.wait(max(0.0, self.config.scrape_interval_s - (time.monotonic() - started)))

    def _model_loop(self) -> None:
        if not self.config.network:
            return
        client = None
        logged: str | None = None
        while not self._stop.is_set():
            try:
                if client is None:
                    from services.network.client import NetworkClient  # loads TensorFlow's protos

                    client = NetworkClient(self.config.network, model_name=self.config.model_name,
                                           channel=self.channel(self.config.network))
                statuses = client.model_status(timeout_s=self.config.scrape_timeout_s)
                versions, error = dict(statuses), None
            except grpc.RpcError as rpc_error:
                versions = {} if rpc_error.code() == grpc.StatusCode.NOT_FOUND else None
                error = _rpc_message(rpc_error)
            except Exception as other:  # noqa: BLE001 - never fatal; the page names the log event
                # The page shows no internal exception text (it may be anyone's browser): the log has it.
                if repr(other) != logged:  # once per new failure, not once per interval
                    logged = repr(other)
                    self.log.error("model_status_failed", network=self.config.network, error=logged)
                versions, error = None, "model status failed: see the monitor's log, event model_status_failed"
            with self._lock:
                self._network_versions, self._network_versions_error = versions, error
            self._stop.wait(self.config.scrape_interval_s)

    # -- probes -------------------------------------------------------------------------------

    def channel(self, address: str) -> grpc.Channel:
        """A probe channel that reconnects quickly once a service is back."""
        with self._lock:
            if address not in self._channels:
                # round_robin like every MuFleet channel: a name with several replicas behind it
                # is probed at one after another, not pinned to the first that answered.
                self._channels[address] = grpc.insecure_channel(address, options=[
                    ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 2000), ("grpc.enable_retries", 0),
                    ("grpc.service_config", service_config())])
            return self._channels[address]

    def _resolve(self, target: MetricsTarget) -> list[tuple[str, str]]:
        """(instance name, address) for every address the target's host resolves to."""
        try:
            addresses = self._resolve_addresses(target) or [target.address]
        except OSError:
            addresses = [target.address]  # scraped at its own name: the failure says why
        return self._replicas.names(target.name, addresses)

    def _scrape(self, target: MetricsTarget, instance: str, address: str) -> InstanceScrape:
        url = f"http://{address}{target.path}"
        started = time.time()
        try:
            with urllib.request.urlopen(url, timeout=self.config.scrape_timeout_s) as response:
                text = response.read().decode("utf-8", "replace")
            samples = Samples.parse(text)
            return InstanceScrape(instance, target.name, target.role, address, target.path, started, True,
                                  samples=samples)
        except urllib.error.HTTPError as error:
            message = f"HTTP {error.code} from {url}"
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            reason = getattr(reason, "strerror", None) or str(reason)
            message = f"{target.name} metrics unreachable at {address}{target.path} ({reason.lower()})"
        return InstanceScrape(instance, target.name, target.role, address, target.path, started, False,
                              error=message)

    def _health(self, role: str, address: str) -> Health:
        stub = health_pb2_grpc.HealthStub(self.channel(address))
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.config.scrape_timeout_s)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                # TensorFlow Serving has no health service: its model status (below) tells.
                return Health(address, "UNKNOWN", None)
            return Health(address, "UNREACHABLE", f"{role} unreachable at {address} ({_rpc_message(error)})")
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        error = None if status == "SERVING" else f"{role} at {address} reports {status}"
        return Health(address, status, error)

    def _replay_stats(self) -> dict[str, Any]:
        from google.protobuf import json_format

        from protos import replay_pb2, replay_pb2_grpc

        stub = replay_pb2_grpc.ReplayStub(self.channel(self.config.replay))
        stats = stub.GetStats(replay_pb2.GetStatsRequest(), timeout=self.config.scrape_timeout_s)
        out = json_format.MessageToDict(stats, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
        out["games_per_model_version"] = {int(k): int(v) for k, v in stats.games_per_model_version.items()}
        for key, value in list(out.items()):
            if isinstance(value, str) and key != "game":
                out[key] = int(value)  # int64 fields come back as strings
        return out

    def scrape_once(self) -> Round:
        """Probes everything once, appends a point to the history and returns the round."""
        with self._round_lock:
            started = time.monotonic()
            config = self.config
            jobs: dict[concurrent.futures.Future, tuple[str, str]] = {}
            optional: set[str] = set()  # instances of targets that may not run
            for target in config.metrics:
                for instance, address in self._resolve(target):
                    jobs[self._pool.submit(self._scrape, target, instance, address)] = ("metrics", instance)
                    if target.optional:
                        optional.add(instance)
            for role in GRPC_ROLES:
                if address := config.grpc_address(role):
                    jobs[self._pool.submit(self._health, role, address)] = ("health", role)
            if config.replay:
                jobs[self._pool.submit(self._replay_stats)] = ("stats", "replay")
            instances: dict[str, InstanceScrape] = {}
            health: dict[str, Health] = {}
            stats, stats_error = None, None
            for future in concurrent.futures.as_completed(jobs):
                kind, name = jobs[future]
                if kind == "metrics":
                    scrape = future.result()
                    instances[name] = scrape
                    self._count(name, scrape.ok, scrape.error, optional=name in optional)
                elif kind == "health":
                    health[name] = future.result()
                    self._count(f"{name}:grpc", health[name].status != "UNREACHABLE", health[name].error)
                else:
                    try:
                        stats = future.result()
                    except grpc.RpcError as error:
                        stats_error = f"replay unreachable at {config.replay} ({_rpc_message(error)})"
                    self._count("replay:stats", stats is not None, stats_error)
            order = [name for kind, name in jobs.values() if kind == "metrics"]
            ordered = {name: instances[name] for name in order}
            self._forget(self._instance_names - set(ordered))
            self._instance_names = set(ordered)
            current = Round(time.time(), ordered, health, stats, stats_error)
            with self._lock:
                self._prev, self._cur = self._cur, current
                self._append_point(self._prev, current)
            self.metrics.scrape_seconds.observe(time.monotonic() - started)
            self.metrics.history_points.set(len(self._points))
            return current

    def _forget(self, names: set[str]) -> None:
        """Drops the series of instances no longer scraped (replaced or scaled-down replicas)."""
        for name in names:
            for metric in (self.metrics.scrapes, self.metrics.scrape_errors, self.metrics.target_up):
                try:
                    metric.remove(name)
                except KeyError:
                    pass  # never failed: no error series
            self._failing.discard(name)

    def _count(self, target: str, ok: bool, error: str | None, optional: bool = False) -> None:
        self.metrics.scrapes.labels(target).inc()
        self.metrics.target_up.labels(target).set(1 if ok else 0)
        if not ok:
            self.metrics.scrape_errors.labels(target).inc()
            if target not in self._failing:
                self._failing.add(target)
                if optional:  # an optional service that is not started is no failure
                    self.log.info("target_off", target=target, error=error)
                else:
                    self.log.warning("target_down", target=target, error=error)
        elif target in self._failing:
            self._failing.discard(target)
            self.log.info("target_up", target=target)

    def _append_point(self, prev: Round | None, cur: Round) -> None:
        deltas = _Deltas(prev, cur, self.two_player)
        self._append_strength(deltas)
        point = {s.key: _finite(s.compute(deltas)) for s in SERIES}
        if point["network_latest_version"] is None and self._network_versions:
            available = [v for v, state in self._network_versions.items() if state == "AVAILABLE"]
            point["network_latest_version"] = float(max(available)) if available else None
        self._points.append((cur.time, point))
        step = point["trainer_step"]
        trainer = [s for s in cur.instances.values() if s.role == "trainer" and s.ok]
        if step and step > 0 and trainer and (not self._losses or self._losses[-1][0] != step):
            losses = trainer[0].samples.by_label(trainer_metrics.LOSS, "kind")
            if losses:
                self._losses.append((step, {k: _finite(losses.get(k)) for k in LOSS_KINDS}))
        # Per-instance rates for the fleet cards.
        self._last_rates = {}
        for name, scrape in cur.instances.items():
            single = Round(cur.time, {name: scrape}, {}, None, None)
            before = Round(prev.time, {name: prev.instances[name]}, {}, None, None) \
                if prev and name in prev.instances else None
            d = _Deltas(before, single)
            self._last_rates[name] = {
                "simulations_per_s": d.rate(scrape.role, agent_metrics.SIMULATIONS_TOTAL),
                "moves_per_s": d.rate(scrape.role, agent_metrics.MOVES_TOTAL),
                "steps_per_s": d.rate(scrape.role, environment_metrics.STEPS_TOTAL, trainer_metrics.STEPS_TOTAL),
                "requests_per_s": d.rate(scrape.role, network_metrics.REQUESTS_TOTAL, *TF_SERVING_REQUESTS),
                "inserts_per_s": d.rate(scrape.role, replay_metrics.POSITIONS_ADDED_TOTAL),
                "positions_per_s": d.rate(scrape.role, reanalyse_metrics.POSITIONS_TOTAL),
                "batch_size": d.interval_mean(scrape.role, network_metrics.BATCH_SIZE),
                "latency_ms": d.interval_mean(scrape.role, network_metrics.PREDICT_SECONDS, 1e3),
            }

    def _append_strength(self, deltas: _Deltas) -> None:
        """Keeps the evaluator's newest rated version: one entry per version (a version's entry
        follows its refits while it is the newest); a version lower than the last kept one is a
        new history (a new run, or an evaluator with a fresh state), which starts afresh."""
        view = _evaluator(deltas)
        if view is None:
            return
        entry = {**view, "time": deltas.cur.time}
        self._strength_latest = entry
        if self._strength and self._strength[-1]["version"] == view["version"]:
            self._strength[-1] = entry
            return
        if self._strength and self._strength[-1]["version"] > view["version"]:
            self._strength.clear()
        self._strength.append(entry)

    def strength(self, max_points: int = 400) -> dict[str, Any]:
        """The Strength panel's data: the rated versions in order (parallel arrays) and the
        newest one's ladder, anchors and scores per opponent (see docs/monitor.md)."""
        with self._lock:
            history = _thin(list(self._strength), max_points)
            latest = self._strength_latest
        tiles = sorted({t for e in history for t in e.get("max_tile", {})})
        latest = latest or {}
        anchors = latest.get("anchors", {})
        rates = latest.get("win_rates", {})
        return {
            "two_player": self.two_player,
            "version": [e["version"] for e in history],
            "time": [round(e["time"], 3) for e in history],
            "elo": [e.get("elo") for e in history],
            "standard_error": [e.get("standard_error") for e in history],
            "mean_return": [e.get("mean_return") for e in history],
            "max_tile": {str(t): [e.get("max_tile", {}).get(t) for e in history] for t in tiles},
            "opponents": latest.get("opponents", {}),
            "anchors": {"version": list(anchors), "elo": list(anchors.values())},
            "win_rates": {"opponent": list(rates), "win_rate": list(rates.values())},
        }

    # -- views --------------------------------------------------------------------------------

    def latest(self) -> Round | None:
        with self._lock:
            return self._cur

    def ensure_scraped(self) -> Round:
        """The latest round, running one now if there is none yet."""
        return self.latest() or self.scrape_once()

    def series(self, max_points: int = 400, since: float | None = None) -> dict[str, Any]:
        """The history as parallel arrays, thinned to at most `max_points` (newest kept)."""
        with self._lock:
            points = [p for p in self._points if since is None or p[0] > since]
            losses = list(self._losses)
            stats = self._cur.replay_stats if self._cur else None
        points = _thin(points, max_points)
        losses = _thin(losses, max_points)
        versions = (stats or {}).get("games_per_model_version", {})
        return {
            "interval_s": self.config.scrape_interval_s,
            "time": [round(t, 3) for t, _ in points],
            "series": {s.key: [p[s.key] for _, p in points] for s in SERIES},
            "labels": {s.key: s.label for s in SERIES},
            "losses": {"step": [s for s, _ in losses],
                       **{kind: [v[kind] for _, v in losses] for kind in LOSS_KINDS}},
            "replay_versions": {"version": sorted(versions),
                                "games": [versions[v] for v in sorted(versions)]},
            "strength": self.strength(max_points),
        }

    def fleet(self) -> dict[str, Any]:
        """Every service's state as of the latest round (see docs/monitor.md for the fields)."""
        current = self.ensure_scraped()
        with self._lock:
            rates = dict(self._last_rates)
            network_versions, network_error = self._network_versions, self._network_versions_error
            point = self._points[-1][1] if self._points else {}
        services: list[dict[str, Any]] = []
        config = self.config
        roles_listed = set()
        for target in config.metrics:
            scrapes = [s for s in current.instances.values() if s.target == target.name]
            service = self._service(target.name, target.role, scrapes, current, rates, network_versions,
                                    network_error)
            if target.optional and service["status"] == "down":
                # Not started (an optional profile): no alarm, and not counted among the fleet.
                service.update(status="off", messages=[],
                               note=f"optional: not running ({target.name} metrics unreachable at {target.address})")
            services.append(service)
            roles_listed.add(target.role)
        for role in GRPC_ROLES:  # a gRPC service whose metrics the monitor was not told about
            if config.grpc_address(role) and role not in roles_listed:
                services.append(self._service(role, role, [], current, rates, network_versions, network_error))
        errors = [message for s in services for message in s["messages"]]
        return {
            "game": config.game,
            "time": current.time,
            "scrape_interval_s": config.scrape_interval_s,
            "services": services,
            "up": sum(s["status"] == "up" for s in services),
            "total": sum(s["status"] != "off" for s in services),
            "errors": errors,
            "throughput": {k: point.get(k) for k in (
                "agent_simulations_per_s", "agent_moves_per_s", "environment_steps_per_s", "trainer_steps_per_s",
                "network_requests_per_s", "network_batch_size", "network_latency_ms", "agent_games_per_s")},
            "learning": {k: point.get(k) for k in (
                "trainer_step", "agent_recent_return", "replay_recent_return", "agent_recent_length",
                "agent_recent_max_tile",
                "trainer_exported_version", "network_latest_version", "agent_model_version")},
            "replay": current.replay_stats,
            "replay_error": current.replay_error,
        }

    def _service(self, name: str, role: str, scrapes: list[InstanceScrape], current: Round,
                 rates: dict[str, dict[str, float | None]], network_versions: dict[int, str] | None,
                 network_error: str | None) -> dict[str, Any]:
        messages: list[str] = []
        health = current.health.get(role) if self.config.grpc_address(role) and name == role else None
        metrics_ok = [s.ok for s in scrapes]
        for scrape in scrapes:
            if not scrape.ok:
                messages.append(scrape.error or f"{name} metrics unreachable at {scrape.address}")
        grpc_ok = True
        if health is not None:
            if health.status == "UNKNOWN" and role == "network":
                # TensorFlow Serving (no health service): reachable if GetModelStatus answers.
                grpc_ok = network_versions is not None
                health = dataclasses.replace(health, status="REACHABLE" if grpc_ok else "UNREACHABLE")
                if not grpc_ok:
                    messages.append(f"network unreachable at {health.address} ({network_error})")
            elif health.status != "SERVING":
                grpc_ok = False
                messages.insert(0, health.error or f"{role} unreachable at {health.address}")
        if scrapes and all(metrics_ok) and grpc_ok:
            status = "up"
        elif (health is not None and health.status == "SERVING") or any(metrics_ok):
            status = "degraded"
        else:
            status = "down"
        model_version = None
        samples = [s.samples for s in scrapes if s.ok]
        metric = {"agent": (agent_metrics.MODEL_VERSION, max), "trainer": (trainer_metrics.EXPORTED_VERSION, max),
                  "network": (network_metrics.LATEST_VERSION, max),
                  "reanalyse": (reanalyse_metrics.MODEL_VERSION, max)}.get(role)
        if metric:
            values = [v for s in samples if (v := s.max(metric[0])) is not None and v >= 0]
            model_version = int(metric[1](values)) if values else None
        if role == "evaluator":  # the newest rated version (none before its first round)
            views = [v for s in samples if (v := evaluator_view(s, self.two_player)) is not None]
            model_version = max(v["version"] for v in views) if views else None
        versions = None
        if role == "network" and network_versions is not None:
            available = sorted(v for v, state in network_versions.items() if state == "AVAILABLE")
            versions = available
            model_version = available[-1] if available else model_version
            if not available and grpc_ok:
                messages.append("network serves no model version yet (waiting for the trainer's first export)")
        if role == "replay" and current.replay_stats:
            stored = current.replay_stats.get("games_per_model_version") or {}
            model_version = max(stored) if stored else None
        instance_rates = [rates.get(s.instance, {}) for s in scrapes if s.ok]
        return {
            "name": name,
            "role": role,
            "status": status,
            "grpc": None if health is None else dataclasses.asdict(health),
            "instances": [{"instance": s.instance, "address": s.address, "path": s.path, "up": s.ok,
                           "error": s.error} for s in scrapes],
            "model_version": model_version,
            "versions_available": versions,
            "facts": _facts(role, samples, instance_rates, current.replay_stats, self.two_player),
            "messages": messages,
        }


def _sum_rates(rates: list[dict[str, float | None]], key: str) -> float | None:
    values = [r[key] for r in rates if r.get(key) is not None]
    return math.fsum(values) if values else None


def _mean_rates(rates: list[dict[str, float | None]], key: str) -> float | None:
    values = [r[key] for r in rates if r.get(key) is not None]
    return math.fsum(values) / len(values) if values else None


def _facts(role: str, samples: list[Samples], rates: list[dict[str, float | None]],
           stats: dict[str, Any] | None, two_player: bool = True) -> list[tuple[str, float | None, str]]:
    """A few (label, value, unit) facts for a service's card."""
    def gauge(name: str, how=sum) -> float | None:
        values = [v for s in samples if (v := s.sum(name)) is not None]
        return how(values) if values else None

    if role == "environment":
        return [("steps/s", _sum_rates(rates, "steps_per_s"), "/s"),
                ("sessions", gauge(environment_metrics.SESSIONS), ""),
                ("games", gauge(environment_metrics.GAMES), "")]
    if role == "replay":
        positions = (stats or {}).get("positions", gauge(replay_metrics.POSITIONS))
        games_stored = (stats or {}).get("games", gauge(replay_metrics.GAMES))
        return [("positions", positions, ""), ("games", games_stored, ""),
                ("inserts/s", _sum_rates(rates, "inserts_per_s"), "/s")]
    if role == "network":
        return [("requests/s", _sum_rates(rates, "requests_per_s"), "/s"),
                ("rows/run", _mean_rates(rates, "batch_size"), ""),
                ("latency ms", _mean_rates(rates, "latency_ms"), "")]
    if role == "trainer":
        loss = [v for s in samples if (v := s.sum(trainer_metrics.LOSS, {"kind": "total"})) is not None]
        return [("step", gauge(trainer_metrics.STEPS_TOTAL, max), ""),
                ("steps/s", _sum_rates(rates, "steps_per_s"), "/s"),
                ("loss", loss[0] if loss else None, "")]
    if role == "agent":
        returns = [v for s in samples if (v := s.sum(agent_metrics.RECENT_MEAN_RETURN)) is not None]
        facts = [("sims/s", _sum_rates(rates, "simulations_per_s"), "/s"),
                 ("moves/s", _sum_rates(rates, "moves_per_s"), "/s"),
                 ("return", sum(returns) / len(returns) if returns else None, "")]
        tiles = [v for s in samples
                 if (v := s.sum(agent_metrics.RECENT_MEAN_EPISODE_STATISTIC, {"statistic": "max_tile"})) is not None]
        if tiles:  # 2048: the mean largest tile of the last 100 games (of the agents' means)
            facts.append(("largest tile", sum(tiles) / len(tiles), ""))
        return facts
    if role == "evaluator":
        views = [v for s in samples if (v := evaluator_view(s, two_player)) is not None]
        view = views[0] if views else {}
        strength = (("Elo", view.get("elo"), "") if two_player else ("mean return", view.get("mean_return"), ""))
        return [strength, ("rounds", gauge(evaluator_metrics.ROUNDS_TOTAL), ""),
                ("matches", gauge(evaluator_metrics.MATCHES_TOTAL), "")]
    if role == "reanalyse":
        ages = [v for s in samples if (v := s.sum(reanalyse_metrics.MEAN_TARGET_AGE_VERSIONS)) is not None]
        return [("positions/s", _sum_rates(rates, "positions_per_s"), "/s"),
                ("target age", sum(ages) / len(ages) if ages else None, "versions"),
                ("simulations", gauge(reanalyse_metrics.SIMULATIONS_TOTAL), "")]
    return []


def _thin(points: list, max_points: int) -> list:
    """Every k-th point so that at most `max_points` remain, the newest always kept."""
    if max_points <= 0 or len(points) <= max_points:
        return points
    stride = math.ceil(len(points) / max_points)
    return points[::-1][::stride][::-1]


def _rpc_message(error: grpc.RpcError) -> str:
    """A short reason: "connection refused", "no answer within the deadline", or CODE: details."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else str(error)) or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        lowered = details.lower()
        for known in ("connection refused", "dns resolution failed", "no route to host", "connection reset"):
            if known in lowered:
                return known
        return "unavailable"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer within the deadline"
    name = code.name if code is not None else "ERROR"
    return f"{name}: {details}" if details else name
