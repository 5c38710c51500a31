"""The dashboard's Strength panel: the evaluator's metrics (services/evaluator/metrics.py) as the
scraper's series and by-version history, the panel on the page only when the fleet has an
evaluator, and (in a real headless Chromium) its charts' points from a fake evaluator page."""

from __future__ import annotations

import io

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor.app import create_app
from monitor.config import MetricsTarget, MonitorConfig
from monitor.metrics import MonitorMetrics
from monitor.scraper import SERIES_BY_KEY, Samples, Scraper, _Deltas, evaluator_view
from services.common.logs import get_logger
from services.evaluator.metrics import EvaluatorMetrics
from services.launcher.program import Join
from services.launcher.topology import FleetConfig, build_topology
from tests.monitor.conftest import MetricsPage, screenshot


def quiet_log():
    return get_logger("monitor", stream=io.StringIO())


def rated(version: int, elo: float, ladder: dict[str, float], rates: dict[str, float],
          anchors: dict[int, float] | None = None, rounds: int = 1) -> EvaluatorMetrics:
    """A two-player evaluator's metrics after `rounds` rounds, the newest rating `version`."""
    m = EvaluatorMetrics(CollectorRegistry())
    m.rounds.inc(rounds)
    m.rated_version.set(version)
    m.newest_elo.set(elo)
    for player, value in {**ladder, f"v{version}": elo, **{f"v{v}": e for v, e in (anchors or {}).items()}}.items():
        m.elo.labels(player).set(value)
        m.elo_error.labels(player).set(25.0)
    for opponent, rate in rates.items():
        m.matches.labels(opponent).inc()
        m.win_rate.labels(opponent).set(rate)
    return m


def text(metrics: EvaluatorMetrics) -> str:
    return generate_latest(metrics.registry).decode()


LADDER = {"random": 0.0, "mcts100": 420.0, "minimax": 910.0}


def test_view_of_a_two_player_evaluator():
    fresh = Samples.parse(text(EvaluatorMetrics(CollectorRegistry())))
    assert evaluator_view(fresh, two_player=True) is None  # nothing rated: the gauges' 0 are no rating
    metrics = rated(300, 512.5, LADDER, {"random": 0.95, "minimax": 0.25, "mcts100": 0.6, "v100": 0.7},
                    anchors={100: 250.0})
    view = evaluator_view(Samples.parse(text(metrics)), two_player=True)
    assert view == {"version": 300, "elo": 512.5, "standard_error": 25.0,
                    "opponents": {"random": 0.0, "mcts100": 420.0, "minimax": 910.0},  # weakest first
                    "anchors": {100: 250.0},
                    "win_rates": {"random": 0.95, "minimax": 0.25, "mcts100": 0.6, "v100": 0.7}}


def test_view_of_a_one_player_evaluator():
    fresh = EvaluatorMetrics(CollectorRegistry())
    assert evaluator_view(Samples.parse(text(fresh)), two_player=False) is None
    fresh.rounds.inc()  # version 0 rated, mean return 0 (possible): a round says it is a rating
    assert evaluator_view(Samples.parse(text(fresh)), two_player=False) == {
        "version": 0, "mean_return": 0.0, "max_tile": {}}
    game2048 = EvaluatorMetrics(CollectorRegistry())
    game2048.rated_version.set(40)  # a restarted evaluator: set from its history, nothing counted
    game2048.mean_return.set(2500.0)
    for tile, share in (("256", 0.9), ("512", 0.5), ("1024", 0.1), ("2048", 0.0)):
        game2048.max_tile_fraction.labels(tile).set(share)
    assert evaluator_view(Samples.parse(text(game2048)), two_player=False) == {
        "version": 40, "mean_return": 2500.0, "max_tile": {256: 0.9, 512: 0.5, 1024: 0.1, 2048: 0.0}}


def scraper_of(game: str, page: MetricsPage) -> Scraper:
    config = MonitorConfig(game=game, metrics=(MetricsTarget("evaluator", f"127.0.0.1:{page.port}"),))
    return Scraper(config, quiet_log(), MonitorMetrics())


def test_scrapes_build_the_elo_history_by_version():
    page = MetricsPage(text=text(EvaluatorMetrics(CollectorRegistry())))
    scraper = scraper_of("tictactoe", page)
    try:
        scraper.scrape_once()  # not rated yet: no point, an empty history
        page.text = text(rated(10, 300.0, LADDER, {"random": 0.9, "minimax": 0.0, "mcts100": 0.4}))
        scraper.scrape_once()
        scraper.scrape_once()  # the same version again: one entry, not two
        page.text = text(rated(20, 450.0, LADDER, {"random": 1.0, "minimax": 0.1, "mcts100": 0.55}, rounds=2))
        scraper.scrape_once()
        body = scraper.series()
        assert body["series"]["evaluator_newest_elo"] == [None, 300.0, 300.0, 450.0]
        assert body["series"]["evaluator_rated_version"] == [None, 10.0, 10.0, 20.0]
        assert body["series"]["evaluator_mean_return"] == [None] * 4  # a two-player game has none
        strength = body["strength"]
        assert strength["two_player"] is True
        assert (strength["version"], strength["elo"]) == ([10, 20], [300.0, 450.0])
        assert strength["standard_error"] == [25.0, 25.0]
        assert strength["opponents"] == LADDER
        assert strength["win_rates"] == {"opponent": ["random", "minimax", "mcts100"], "win_rate": [1.0, 0.1, 0.55]}
        assert strength["anchors"] == {"version": [], "elo": []}
        # A lower version than the last kept one is a new history: it starts afresh.
        page.text = text(rated(5, 100.0, LADDER, {"random": 0.7}))
        scraper.scrape_once()
        assert scraper.strength()["version"] == [5]
        # The fleet card: the newest rated version and its Elo.
        card = next(s for s in scraper.fleet()["services"] if s["name"] == "evaluator")
        assert card["status"] == "up" and card["model_version"] == 5
        assert card["facts"][0] == ("Elo", 100.0, "")
    finally:
        scraper.stop()
        page.close()


def test_one_player_history_is_mean_returns_and_tiles():
    metrics = EvaluatorMetrics(CollectorRegistry())
    page = MetricsPage(text=text(metrics))
    scraper = scraper_of("2048", page)
    try:
        for version, score, share in ((1, 900.0, 0.0), (7, 2400.0, 0.25)):
            metrics.rounds.inc()
            metrics.rated_version.set(version)
            metrics.mean_return.set(score)
            for tile in ("256", "512", "1024", "2048"):
                metrics.max_tile_fraction.labels(tile).set(share)
            page.text = text(metrics)
            scraper.scrape_once()
        body = scraper.series()
        assert body["series"]["evaluator_mean_return"] == [900.0, 2400.0]
        assert body["series"]["evaluator_newest_elo"] == [None, None]
        strength = body["strength"]
        assert strength["two_player"] is False
        assert (strength["version"], strength["mean_return"]) == ([1, 7], [900.0, 2400.0])
        assert strength["max_tile"]["2048"] == [0.0, 0.25] and set(strength["max_tile"]) == {"256", "512", "1024", "2048"}
        assert strength["elo"] == [None, None] and strength["opponents"] == {}
    finally:
        scraper.stop()
        page.close()


def test_no_evaluator_no_points():
    d = _Deltas(None, scraper_round({}))
    for key in ("evaluator_newest_elo", "evaluator_rated_version", "evaluator_mean_return"):
        assert SERIES_BY_KEY[key].compute(d) is None


def scraper_round(instances):
    from monitor.scraper import Round

    return Round(0.0, instances, {}, None, None)


def test_the_panel_is_on_the_page_only_with_an_evaluator():
    plain = create_app(MonitorConfig(game="tictactoe"), quiet_log()).test_client().get("/").data
    assert b'id="strength"' not in plain
    target = (MetricsTarget("evaluator", "127.0.0.1:1"),)
    two = create_app(MonitorConfig(game="tictactoe", metrics=target), quiet_log()).test_client().get("/").data
    assert b"chart-strength-elo" in two and b"chart-strength-scores" in two and b"chart-strength-return" not in two
    one = create_app(MonitorConfig(game="2048", metrics=target), quiet_log()).test_client().get("/").data
    assert b'id="chart-strength-return" data-tiles="1"' in one and b"chart-strength-elo" not in one


def test_the_fleet_passes_the_evaluators_metrics_to_the_monitor():
    def metrics_flags(evaluator: bool) -> list[str]:
        specs = build_topology(FleetConfig(game="tictactoe", run_dir="/tmp/unused", evaluator=evaluator))
        monitor = next(s for s in specs if s.name == "monitor")
        return [a.parts[0] for a in monitor.args if isinstance(a, Join)]

    assert "evaluator=" in metrics_flags(True)
    assert "evaluator=" not in metrics_flags(False)  # off: no target that is never up


@pytest.mark.integration
def test_strength_panel_charts_the_evaluators_metrics(start_monitor, page, tmp_path):
    evaluator = MetricsPage(text=text(rated(100, 350.0, LADDER, {"random": 0.95, "minimax": 0.2, "mcts100": 0.5})))
    try:
        monitor = start_monitor(["--game", "tictactoe", "--metrics", f"evaluator=127.0.0.1:{evaluator.port}"])
        page.page.goto(f"http://127.0.0.1:{monitor.ready['http_port']}/")
        assert page.page.inner_text("#strength h2").lower() == "strength"
        page.page.wait_for_function(
            "() => { const c = (window.monitorCharts || {})['chart-strength-scores'];"
            " return c && c.data.datasets[0].data.length === 3; }", timeout=30_000)
        # A newer version rated: the Elo history gains a point.
        evaluator.text = text(rated(200, 480.0, LADDER, {"random": 1.0, "minimax": 0.3, "mcts100": 0.6},
                                    anchors={100: 360.0}, rounds=2))
        page.page.wait_for_function(
            "() => window.monitorCharts['chart-strength-elo'].data.datasets[0].data.length === 2", timeout=30_000)
        charts = page.page.evaluate("""() => {
          const elo = window.monitorCharts['chart-strength-elo'].data.datasets;
          const bars = window.monitorCharts['chart-strength-scores'].data;
          return {elo: Object.fromEntries(elo.map(d => [d.key, d.data.map(p => [p.x, p.y])])),
                  bars: [bars.labels, bars.datasets[0].data]};
        }""")
        assert charts["elo"] == {"elo": [[100, 350], [200, 480]],
                                 "opponent:random": [[100, 0], [200, 0]],
                                 "opponent:mcts100": [[100, 420], [200, 420]],
                                 "opponent:minimax": [[100, 910], [200, 910]],
                                 "anchors": [[100, 360]]}
        assert charts["bars"] == [["random", "minimax", "mcts100"], [1, 0.3, 0.6]]
        card = page.page.locator('.card.service[data-service="evaluator"]')
        assert "v200" in card.inner_text()
        screenshot(page.page, tmp_path, "dashboard-strength")
        assert page.errors() == []
    finally:
        evaluator.close()
