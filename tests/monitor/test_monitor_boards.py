"""The play page's boards in a real headless Chromium, against a monitor and a network server
that serves a (randomly initialized) model; no whole fleet needed. And 2048's dashboard chart,
against an agent's metrics page on loopback."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.agent.metrics import AgentMetrics
from tests.monitor.conftest import MetricsPage, screenshot

pytestmark = pytest.mark.integration


def test_tictactoe_board_offline_assets(model_network, start_monitor, page):
    """Every asset the pages use comes from the monitor itself (no CDN): block everything else."""
    network = model_network("tictactoe")
    monitor = start_monitor(["--game", "tictactoe", "--network", network.grpc_address])
    base = f"http://127.0.0.1:{monitor.ready['http_port']}/"
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith(base):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.page.route("**/*", route)
    for path in ("", "play"):
        page.page.goto(base + path)
        page.page.wait_for_load_state("networkidle")
    assert outside == []
    assert page.page.evaluate("() => typeof Chart") == "undefined"  # the play page needs no charts
    page.page.goto(base)
    page.page.wait_for_function("() => typeof Chart === 'function' && Object.keys(window.monitorCharts).length >= 10")
    assert outside == []
    assert page.errors() == []


def test_connect4_board_in_the_browser(model_network, start_monitor, page, tmp_path):
    network = model_network("connect4")
    monitor = start_monitor(["--game", "connect4", "--network", network.grpc_address, "--play-simulations", "8"])
    page.page.goto(f"http://127.0.0.1:{monitor.ready['http_port']}/play")
    page.page.wait_for_selector('#board[data-state="human"]')
    assert page.page.locator(".cell").count() == 42
    page.page.click('.cell[data-row="0"][data-col="3"]')  # any cell of a column drops into it
    page.page.wait_for_function("() => window.playState.history.length >= 2 && !window.playState.busy",
                                timeout=60_000)
    board = page.page.evaluate("() => window.playState.board")
    assert board[5][3] == 1  # the piece fell to the bottom row
    assert sum(v == 2 for row in board for v in row) == 1
    model_col = next(c for c in range(7) if any(board[r][c] == 2 for r in range(6)))
    assert board[5][model_col] == 2 or board[4][model_col] == 2  # the model's piece rests on something
    screenshot(page.page, tmp_path, "play-connect4")
    assert page.errors() == []


def test_othello_board_in_the_browser(model_network, start_monitor, page, tmp_path):
    network = model_network("othello")
    monitor = start_monitor(["--game", "othello", "--network", network.grpc_address, "--play-simulations", "8"])
    page.page.goto(f"http://127.0.0.1:{monitor.ready['http_port']}/play")
    page.page.wait_for_selector('#board[data-state="human"]')
    assert page.page.locator(".cell").count() == 64
    assert page.page.locator(".cell.p1").count() == 2 and page.page.locator(".cell.p2").count() == 2
    assert page.page.locator(".cell.legal").count() == 4  # black's four opening moves, marked
    assert page.page.is_disabled("#pass")  # black has moves: no pass
    page.page.click('.cell[data-row="2"][data-col="3"]')  # d3
    page.page.wait_for_function("() => window.playState.history.length >= 2 && !window.playState.busy",
                                timeout=60_000)
    state = page.page.evaluate("() => window.playState")
    flat = [v for row in state["board"] for v in row]
    assert flat.count(1) + flat.count(2) == 6 and state["board"][2][3] == 1 and state["toPlay"] == 0
    assert int(page.page.inner_text("#discs-black")) == flat.count(1)
    assert int(page.page.inner_text("#discs-white")) == flat.count(2)
    assert page.page.locator(".cell.legal").count() == sum(state["legal"][:64]) > 0
    assert page.page.locator(".cell .prior").count() >= 1  # the model's search policy on the board
    assert page.page.inner_text("#model-version") == "v1"
    screenshot(page.page, tmp_path, "play-othello")
    assert page.errors() == []


def test_2048_a_person_moves_and_the_model_plays(model_network, start_monitor, page, tmp_path):
    network = model_network("2048")
    monitor = start_monitor(["--game", "2048", "--network", network.grpc_address, "--play-simulations", "4"])
    page.page.goto(f"http://127.0.0.1:{monitor.ready['http_port']}/play")
    page.page.wait_for_selector('#board[data-state="human"]')  # the server dealt a new game
    assert page.page.locator("#board .tile").count() == 16
    assert page.page.locator('#board .tile:not([data-exponent="0"])').count() == 2
    assert page.page.inner_text("#score") == "0"
    # A known position (the board lives in the page): left merges the two 2s into a 4.
    page.page.evaluate("() => { window.playState.board = [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]; }")
    page.page.keyboard.press("ArrowLeft")
    page.page.wait_for_function("() => window.playState.moves === 1 && !window.playState.busy", timeout=60_000)
    state = page.page.evaluate("() => window.playState")
    assert state["board"][0][0] == 2 and np.count_nonzero(state["board"]) == 2, state["board"]  # 4 and the spawn
    assert state["score"] == 4 and page.page.inner_text("#score") == "4"
    assert page.page.inner_text('#board .tile[data-row="0"][data-col="0"]') == "4"
    assert page.page.inner_text("#max-tile") == "4" and state["history"] == ["you ← +4"]
    # The model plays, one request after another, until stopped.
    page.page.click("#autoplay")
    page.page.wait_for_function("() => window.playState.autoplay && window.playState.history.length >= 3",
                                timeout=60_000)
    page.page.click("#autoplay")
    page.page.wait_for_function("() => !window.playState.autoplay && !window.playState.busy", timeout=60_000)
    state = page.page.evaluate("() => window.playState")
    assert all(h.startswith("model ") for h in state["history"][1:]), state["history"]
    assert state["moves"] == len(state["history"]) >= 3
    assert page.page.inner_text("#model-version") == "v1"
    assert page.page.locator("#policy div").count() == 4
    assert page.page.get_attribute("#board", "data-state") in ("human", "over")
    assert page.page.get_attribute("#autoplay", "aria-pressed") == "false"
    screenshot(page.page, tmp_path, "play-2048")
    assert page.errors() == []


def test_2048_dashboard_charts_the_largest_tile(start_monitor, page, tmp_path):
    metrics = AgentMetrics(CollectorRegistry())  # an agent's metrics after four finished games
    for tile in (256, 512, 512, 1024):
        metrics.episode_max_tile.observe(tile)
    metrics.recent_statistic.labels("max_tile").set(576)
    agent = MetricsPage(text=generate_latest(metrics.registry).decode())
    try:
        monitor = start_monitor(["--game", "2048", "--metrics", f"agent-0=127.0.0.1:{agent.port}"])
        page.page.goto(f"http://127.0.0.1:{monitor.ready['http_port']}/")
        assert "Score (mean of the last 100 games)" in page.page.inner_text(".section:has(#chart-returns)")
        page.page.wait_for_function(
            "() => { const c = (window.monitorCharts || {})['chart-max-tile'];"
            " return c && c.data.datasets.every(d => d.data.length >= 2); }", timeout=30_000)
        datasets = page.page.evaluate(
            "() => window.monitorCharts['chart-max-tile'].data.datasets.map(d => [d.key, d.data.at(-1).y])")
        assert dict(datasets) == {"agent_recent_max_tile": 576, "agent_max_tile_512_share": 0.75,
                                  "agent_max_tile_1024_share": 0.25, "agent_max_tile_2048_share": 0}
        card = page.page.locator('.card.service[data-service="agent-0"]')
        assert "largest tile" in card.inner_text() and "576" in card.inner_text()
        screenshot(page.page, tmp_path, "dashboard-2048")
        assert page.errors() == []
    finally:
        agent.close()
