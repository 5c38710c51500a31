"""Replicas of a scaled service keep a bounded set of names: replacing them (new addresses, as
docker compose gives every new container) does not grow the monitor's series."""

from __future__ import annotations

import io

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor import metrics as monitor_metrics
from monitor.app import create_app
from monitor.config import MetricsTarget, MonitorConfig
from monitor.metrics import MonitorMetrics
from monitor.scraper import ReplicaNames, Scraper
from services.agent import metrics as agent_metrics
from services.common.logs import get_logger
from tests.monitor.conftest import MetricsPage, closed_port

OWN_SERIES = (monitor_metrics.SCRAPES_TOTAL, monitor_metrics.SCRAPE_ERRORS_TOTAL, monitor_metrics.TARGET_UP)


def test_a_replacement_takes_the_number_of_the_replica_it_replaces():
    names = ReplicaNames()
    assert names.names("agent", ["10.0.0.1:9103"]) == [("agent", "10.0.0.1:9103")]
    assert names.names("agent", ["10.0.0.1:9103", "10.0.0.2:9103", "10.0.0.3:9103"]) == [
        ("agent#0", "10.0.0.1:9103"), ("agent#1", "10.0.0.2:9103"), ("agent#2", "10.0.0.3:9103")]
    assert names.names("agent", ["10.0.0.1:9103", "10.0.0.3:9103", "10.0.0.9:9103"]) == [
        ("agent#0", "10.0.0.1:9103"), ("agent#1", "10.0.0.9:9103"), ("agent#2", "10.0.0.3:9103")]
    live = ["10.0.0.1:9103", "10.0.0.3:9103", "10.0.0.9:9103"]
    seen: set[str] = set()
    for i in range(200):  # replicas replaced one after another, each with an address never seen
        live = live[1:] + [f"10.1.{i // 250}.{i % 250}:9103"]
        seen |= {name for name, _ in names.names("agent", sorted(live))}
    assert seen == {"agent#0", "agent#1", "agent#2"}
    # Another target's numbers are its own.
    assert [n for n, _ in names.names("replay", ["a:1", "b:1"])] == ["replay#0", "replay#1"]


def own_series(client) -> dict[str, set[str]]:
    """The `target` label values of the monitor's own per-target series, by metric."""
    text = client.get("/metrics").data.decode()
    found: dict[str, set[str]] = {name: set() for name in OWN_SERIES}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found:
                found[sample.name].add(sample.labels["target"])
    return found


@pytest.mark.integration
def test_replacing_replicas_keeps_the_series_bounded():
    """Three replicas' metrics pages (real HTTP on loopback), the name `agent` resolving to the
    live ones (the role of docker's DNS); every round one replica is replaced by a new one."""
    pages = [MetricsPage() for _ in range(3)]
    live = list(pages)
    counts: dict[int, int] = {}

    def resolve(target: MetricsTarget) -> list[str]:
        return [f"127.0.0.1:{p.port}" for p in live] if target.name == "agent" else [target.address]

    def advance() -> None:  # every live replica did 10 more simulations
        for page in live:
            counts[page.port] = counts.get(page.port, 0) + 10
            page.text = f"{agent_metrics.SIMULATIONS_TOTAL} {counts[page.port]}\n"

    config = MonitorConfig(game="cartpole", metrics=(MetricsTarget("agent", "agent.compose.test:9103"),))
    log, metrics = get_logger("monitor", stream=io.StringIO()), MonitorMetrics()
    scraper = Scraper(config, log, metrics, resolve=resolve)
    client = create_app(config, log, scraper=scraper, metrics=metrics).test_client()
    numbers = {"agent#0", "agent#1", "agent#2"}
    try:
        advance()
        previous = scraper.scrape_once()
        for i in range(12):
            replaced = i % 3
            old = live[replaced]
            if i == 4:
                old.close()  # this one dies first and is still in DNS for a round: scraped, down
                advance()
                down = scraper.scrape_once()
                assert not down.instances["agent#1"].ok
                assert own_series(client)[monitor_metrics.SCRAPE_ERRORS_TOTAL] == {"agent#1"}
                previous = down
            else:
                old.close()
            new = MetricsPage()
            counts[new.port] = 1_000_000 - 10  # far above the replica it replaces: a wrong delta shows
            pages.append(new)
            live[replaced] = new
            advance()
            current = scraper.scrape_once()
            assert set(current.instances) == numbers
            assert current.instances[f"agent#{replaced}"].address == f"127.0.0.1:{new.port}"
            series = own_series(client)
            assert series[monitor_metrics.TARGET_UP] == numbers == series[monitor_metrics.SCRAPES_TOTAL]
            assert series[monitor_metrics.SCRAPE_ERRORS_TOTAL] <= numbers
            # Rates pair an instance only with itself at the same address: the new replica adds
            # nothing until its second round; the two others add 10 simulations each.
            kept = [n for n in numbers if n != f"agent#{replaced}" and previous.instances[n].ok]
            expected = sum(10 / (current.instances[n].time - previous.instances[n].time) for n in kept)
            rate = client.get("/api/series").get_json()["series"]["agent_simulations_per_s"][-1]
            assert rate == pytest.approx(expected), i
            previous = current
        # Scaled down to one replica: the numbered series go, the service's own name stays.
        live[:] = live[:1]
        advance()
        assert set(scraper.scrape_once().instances) == {"agent"}
        assert all(values == {"agent"} for name, values in own_series(client).items()
                   if name != monitor_metrics.SCRAPE_ERRORS_TOTAL)
        assert own_series(client)[monitor_metrics.SCRAPE_ERRORS_TOTAL] == set()
        card = client.get("/api/fleet").get_json()["services"][0]
        assert [i["instance"] for i in card["instances"]] == ["agent"] and card["status"] == "up"
    finally:
        for page in pages:
            page.close()


def test_a_name_that_does_not_resolve_is_scraped_under_its_own_name():
    def resolve(target: MetricsTarget) -> list[str]:
        raise OSError("name does not resolve")

    port = closed_port()
    config = MonitorConfig(game="cartpole", metrics=(MetricsTarget("agent", f"127.0.0.1:{port}"),),
                           scrape_timeout_s=1.0)
    log = get_logger("monitor", stream=io.StringIO())
    scraper = Scraper(config, log, MonitorMetrics(), resolve=resolve)
    current = scraper.scrape_once()
    assert list(current.instances) == ["agent"] and not current.instances["agent"].ok
    assert f"127.0.0.1:{port}" in current.instances["agent"].error


def test_health_probes_of_a_name_with_two_replicas_reach_both():
    """The monitor's probe channel balances round-robin like every MuFleet channel: a target
    naming two replicas (a headless Service in Kubernetes; here an `ipv4:` list of two servers
    on loopback) has both probed, not the first that answered only."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    class CountingHealth(health.HealthServicer):
        def __init__(self) -> None:
            super().__init__()
            self.checks = 0

        def Check(self, request, context):
            self.checks += 1
            return super().Check(request, context)

    servers, servicers, ports = [], [], []
    try:
        for _ in range(2):
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            servicer = CountingHealth()
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
            ports.append(server.add_insecure_port("127.0.0.1:0"))
            server.start()
            servers.append(server)
            servicers.append(servicer)
        config = MonitorConfig(game="tictactoe", scrape_timeout_s=5.0)
        scraper = Scraper(config, get_logger("monitor", stream=io.StringIO()), MonitorMetrics())
        target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
        statuses = [scraper._health("replay", target).status for _ in range(12)]
        assert statuses == ["SERVING"] * 12
        assert sum(s.checks for s in servicers) == 12
        # round_robin alternates over READY subchannels; the first probes may all go to the one
        # that connected first, so both are asked for a share, not for exactly half.
        assert all(s.checks >= 1 for s in servicers), [s.checks for s in servicers]
    finally:
        for server in servers:
            server.stop(0)
        for channel in getattr(locals().get("scraper"), "_channels", {}).values():
            channel.close()
