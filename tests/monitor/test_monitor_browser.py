"""The dashboard and the play page in a real headless Chromium, against a running fleet.

The fleet (tictactoe, small batches, free ports) is started once for the module by the local
launcher; Chromium is Debian's, driven by Playwright. Screenshots go to the test's tmp_path (and
to <repo>/tmp/screenshots/ when that directory exists).
"""

from __future__ import annotations

import io
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.logs import get_logger
from services.launcher.local import LocalFleet
from services.launcher.topology import FleetConfig, build_topology
from services.replay.client import ReplayClient
from tests.monitor.conftest import closed_port, screenshot

pytestmark = pytest.mark.e2e

CHARTS_WITH_DATA_JS = """() => {
  const charts = window.monitorCharts || {};
  const out = {};
  for (const [id, chart] of Object.entries(charts)) {
    out[id] = chart.data.datasets.reduce((n, d) => n + d.data.length, 0);
  }
  return out;
}"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fleet-tictactoe")
    config = FleetConfig(game="tictactoe", run_dir=run_dir, fixed_ports=False, monitor=True,
                         games_per_batch=16, simulations=4, num_reanalysers=1,
                         extra_args=(("monitor", ("--scrape-interval-s", "1")),
                                     ("reanalyse-0", ("--batch-size", "64", "--max-positions-per-s", "300"))))
    fleet = LocalFleet(build_topology(config), log_dir=Path(run_dir) / "logs",
                       log=get_logger("launcher", stream=io.StringIO()), ready_timeout_s=240)
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


def dashboard_url(fleet) -> str:
    return f"http://{fleet.http_addresses['monitor']}/"


def test_dashboard_renders_live_charts(fleet, page, tmp_path):
    page.page.goto(dashboard_url(fleet))
    page.page.wait_for_selector(".card.service")
    # Bounded wait until every chart has points: throughput after two scrapes, returns after
    # finished games, losses once the trainer trains (tictactoe needs 500 stored positions).
    page.page.wait_for_function(
        "() => { const c = window.monitorCharts || {}; const ids = Object.keys(c);"
        " return ids.length >= 10 && ids.every(id => c[id].data.datasets.some(d => d.data.length >= 2)); }",
        timeout=180_000, polling=1000)
    points = page.page.evaluate(CHARTS_WITH_DATA_JS)
    assert all(n >= 2 for n in points.values()), points
    cards = page.page.locator(".card.service")
    names = sorted(cards.nth(i).get_attribute("data-service") for i in range(cards.count()))
    assert names == ["agent-0", "environment", "network", "reanalyse-0", "replay", "trainer"]
    assert page.page.locator(".card.service.status-up").count() == 6
    assert page.page.inner_text("#fleet-pill").strip() == "6/6 services up"
    kpi = page.page.inner_text('.kpi[data-key="agent_simulations_per_s"] b')
    assert kpi not in ("–", "0"), kpi
    path = screenshot(page.page, tmp_path, "dashboard-tictactoe")
    print(f"screenshot: {path}")
    assert page.errors() == []


def trainer_steps(fleet) -> float:
    """mufleet_trainer_steps_total from the trainer's /metrics."""
    with urllib.request.urlopen(f"http://{fleet.metrics_addresses['trainer']}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == "mufleet_trainer_steps_total")


def test_the_reanalyser_updates_targets_while_training_goes_on(fleet):
    """The whole fleet with a reanalyser: stored targets get replaced by newer versions' and
    the trainer keeps training on them (bounded waits on observable state, no fixed sleeps)."""
    deadline = time.monotonic() + 180
    with ReplayClient(fleet.grpc_addresses["replay"]) as replay:
        while True:
            stats = replay.get_stats()
            if stats.reanalysed_positions > 0 and trainer_steps(fleet) > 0:
                break
            assert time.monotonic() < deadline, f"no reanalysed targets or no training: {stats}"
            time.sleep(0.5)
        first_steps, first_reanalysed = trainer_steps(fleet), stats.reanalysed_positions
        while True:
            stats = replay.get_stats()
            steps = trainer_steps(fleet)
            if steps > first_steps and stats.samples_total > 0:
                break
            assert time.monotonic() < deadline, f"training stopped at step {steps}: {stats}"
            time.sleep(0.5)
    assert first_reanalysed > 0 and stats.reanalysed_positions > 0


def test_play_page_answers_with_a_legal_model_move(fleet, page, tmp_path):
    page.page.goto(dashboard_url(fleet) + "play")
    page.page.wait_for_selector('#board[data-state="human"]')
    page.page.click('.cell[data-action="4"]')
    page.page.wait_for_function("() => window.playState.history.length >= 2 && !window.playState.busy",
                                timeout=60_000)
    state = page.page.evaluate("() => window.playState")
    flat = [v for row in state["board"] for v in row]
    assert flat[4] == 1 and flat.count(1) == 1 and flat.count(2) == 1, state["board"]
    model_cell = flat.index(2)
    assert model_cell != 4
    assert page.page.locator(f'.cell[data-action="{model_cell}"]').inner_text().startswith("O")
    assert page.page.inner_text("#model-value") != "–"
    assert page.page.inner_text("#model-version").startswith("v")
    assert page.page.locator("#policy div").count() == 9
    assert page.page.inner_text("#play-status") == "Your move."
    # An occupied cell: the server's rules refuse it with a clear message; nothing changes.
    page.page.click(f'.cell[data-action="{model_cell}"]')
    page.page.wait_for_function("() => document.getElementById('play-error').textContent.length > 0")
    assert "illegal move: the cell at row" in page.page.inner_text("#play-error")
    assert page.page.evaluate("() => window.playState.board") == state["board"]
    screenshot(page.page, tmp_path, "play-tictactoe")
    # The only console error: the browser's note about the refused move's HTTP 400.
    assert page.errors(allow=("status of 400",)) == []


def test_play_to_the_end_and_model_opening(fleet, page):
    page.page.goto(dashboard_url(fleet) + "play")
    page.page.wait_for_selector('#board[data-state="human"]')
    for _ in range(5):  # at most 5 human moves in tictactoe
        if page.page.evaluate("() => window.playState.over"):
            break
        empty = page.page.evaluate(
            "() => window.playState.board.flat().map((v, i) => v === 0 ? i : -1).filter(i => i >= 0)")
        page.page.click(f'.cell[data-action="{empty[0]}"]')
        page.page.wait_for_function("() => !window.playState.busy", timeout=60_000)
    assert page.page.evaluate("() => window.playState.over")
    assert page.page.inner_text("#play-status") in ("You win!", "The model wins.", "Draw.")
    assert page.page.get_attribute("#board", "data-state") == "over"
    page.page.click("#new-model-first")
    page.page.wait_for_function("() => window.playState.history.length === 1 && !window.playState.busy",
                                timeout=60_000)
    flat = [v for row in page.page.evaluate("() => window.playState.board") for v in row]
    assert flat.count(1) == 1 and flat.count(2) == 0  # the model played X, first
    assert page.errors() == []


def test_dashboard_names_an_unreachable_service(fleet, start_monitor, page, tmp_path):
    """A second monitor, told of a replay that is not there, next to the fleet's real services."""
    replay_port = closed_port()
    monitor = start_monitor(["--game", "tictactoe", "--environment", fleet.grpc_addresses["environment"],
                             "--replay", f"127.0.0.1:{replay_port}",
                             "--metrics", f"environment={fleet.metrics_addresses['environment']}",
                             "--metrics", f"agent-0={fleet.metrics_addresses['agent-0']}"])
    page.page.goto(f"http://127.0.0.1:{monitor.ready['http_port']}/")
    alert = page.page.locator("#alerts .alert", has_text=f"replay unreachable at 127.0.0.1:{replay_port}")
    alert.first.wait_for()
    assert page.page.locator('.card.service[data-service="replay"].status-down').count() == 1
    assert page.page.locator('.card.service[data-service="environment"].status-up').count() == 1
    # The page keeps updating (the charts fill from the live services) with the alert in place.
    page.page.wait_for_function(
        "() => (window.monitorCharts['chart-selfplay'] || {data: {datasets: []}}).data.datasets"
        ".some(d => d.data.length >= 2)", timeout=60_000)
    assert page.page.locator("#alerts .alert", has_text="replay unreachable").count() >= 1
    screenshot(page.page, tmp_path, "dashboard-replay-down")
    assert page.errors() == []
