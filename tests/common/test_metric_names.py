"""Every metric name constant of `services/<name>/metrics.py` and `monitor/metrics.py` is a
name in a real scrape of that service's metrics (so the monitor, the launcher and the
benchmarks, which look metrics up by these constants, read what the services write), and the
one Prometheus text parser that the monitor and the launcher share."""

from __future__ import annotations

import importlib

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.common.metrics import PREFIX, flat_metrics, parse_metrics, sample_key, sum_samples

# module -> how to build its metrics in a fresh registry
SERVICES = {
    "services.agent.metrics": lambda m: m.AgentMetrics(CollectorRegistry()),
    "services.environment.metrics": lambda m: m.EnvironmentMetrics(CollectorRegistry()),
    "services.evaluator.metrics": lambda m: m.EvaluatorMetrics(CollectorRegistry()),
    "services.network.metrics": lambda m: m.NetworkMetrics(CollectorRegistry()),
    "services.replay.metrics": lambda m: m.ReplayMetrics(CollectorRegistry()),
    "services.trainer.metrics": lambda m: m.TrainerMetrics(CollectorRegistry()),
    "monitor.metrics": lambda m: m.MonitorMetrics(),
}


def name_constants(module) -> dict[str, str]:
    return {k: v for k, v in vars(module).items()
            if k.isupper() and isinstance(v, str) and v.startswith(PREFIX)}


def touch_every_child(registry: CollectorRegistry) -> None:
    """Gives every labelled metric one child, so that its samples appear in the text."""
    for collector in list(registry._collector_to_names):  # noqa: SLF001 - test of our own metrics
        labels = getattr(collector, "_labelnames", ())
        if labels:
            collector.labels(*["x"] * len(labels))


@pytest.mark.parametrize("module_name", sorted(SERVICES))
def test_every_name_constant_is_in_a_scrape_of_its_service(module_name):
    module = importlib.import_module(module_name)
    metrics = SERVICES[module_name](module)
    touch_every_child(metrics.registry)
    scraped = parse_metrics(generate_latest(metrics.registry).decode())
    histograms = {name[:-len("_count")] for name in scraped if name.endswith("_count")}
    constants = name_constants(module)
    assert constants, module_name
    for constant, name in constants.items():
        assert name in scraped or name in histograms, (module_name, constant, name, sorted(scraped))
    # and every metric the service declares has its constant (prometheus_client names a
    # counter's family without the `_total` its samples carry)
    families = {f.name for f in metrics.registry.collect() if f.name.startswith(PREFIX)}
    named = set(constants.values())
    unnamed = {f for f in families if f not in named and f + "_total" not in named}
    assert not unnamed, (module_name, sorted(unnamed))

def test_two_instances_in_fresh_registries_coexist():
    from services.agent.metrics import AgentMetrics
    from services.network.metrics import NetworkMetrics

    for cls in (AgentMetrics, NetworkMetrics):
        first, second = cls(CollectorRegistry()), cls(CollectorRegistry())
        assert first.registry is not second.registry


def test_parse_metrics_and_its_flat_view():
    text = ("# TYPE mufleet_x_total counter\nmufleet_x_total{b=\"2\",a=\"1\"} 3.0\n"
            "mufleet_x_total{a=\"4\"} 5.0\n# TYPE mufleet_g gauge\nmufleet_g 7\n")
    parsed = parse_metrics(text)
    assert parsed == {"mufleet_x_total": [({"a": "1", "b": "2"}, 3.0), ({"a": "4"}, 5.0)],
                      "mufleet_g": [({}, 7.0)]}
    flat = flat_metrics(text)
    assert flat == {"mufleet_x_total{a=1,b=2}": 3.0, "mufleet_x_total{a=4}": 5.0, "mufleet_g": 7.0}
    assert sample_key("mufleet_g", {}) == "mufleet_g"
    assert sum_samples(flat, "mufleet_x_total") == 8.0
    assert sum_samples(flat, "mufleet_g") == 7.0
    assert sum_samples(flat, "mufleet_x") == 0.0  # a prefix of a name is not the name
