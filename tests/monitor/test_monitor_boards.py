"""The play page's boards in a real headless Chromium, against a monitor and a network server
that serves a (randomly initialized) model; no whole fleet needed."""

from __future__ import annotations

import pytest

from tests.monitor.conftest import screenshot

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
