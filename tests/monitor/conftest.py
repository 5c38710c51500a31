"""Fixtures of the monitor's tests: free/closed ports, a network server over an exported model,
monitor processes, and a real headless Chromium driven by Playwright."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

from services.common.processes import REPO_ROOT, ServiceProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def closed_port() -> int:
    """A loopback port nothing listens on (bound once to pick it, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_model(game: str, base: Path, version: int = 1) -> Path:
    """Exports a randomly initialized MuZero network of `game` as <base>/<version>, in a child
    process (TensorFlow stays out of the test process)."""
    code = ("import sys, games\n"
            "from models.networks import MuZeroNetwork\n"
            "from models.export import export_version\n"
            "g = games.make(sys.argv[1])\n"
            "export_version(MuZeroNetwork(g.spec, g.settings, seed=1), sys.argv[2], int(sys.argv[3]))\n")
    subprocess.run([sys.executable, "-c", code, game, str(base), str(version)], cwd=REPO_ROOT, check=True,
                   env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2"),
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    return base / str(version)


@pytest.fixture(scope="session")
def model_network(tmp_path_factory) -> Iterator[Callable[[str], ServiceProcess]]:
    """model_network("tictactoe") -> a network server (loopback, free ports) serving version 1 of
    a randomly initialized model of that game; one per game for the whole session."""
    started: dict[str, ServiceProcess] = {}
    root = tmp_path_factory.mktemp("monitor-models")

    def start(game: str) -> ServiceProcess:
        if game not in started:
            base = root / game / "muzero"
            export_model(game, base)
            process = ServiceProcess("services.network", [
                "--model_name", "muzero", "--model_base_path", str(base), "--port", "0", "--metrics-port", "0"],
                log_path=root / f"network-{game}.log")
            started[game] = process
            process.start()
            process.wait_ready(180)
        return started[game]

    yield start
    for process in started.values():
        process.stop()


@pytest.fixture
def start_monitor(tmp_path) -> Iterator[Callable[..., ServiceProcess]]:
    """start_monitor(["--game", "tictactoe", ...]) -> a ready `python -m monitor` on a free port."""
    started: list[ServiceProcess] = []

    def start(args: list[str]) -> ServiceProcess:
        process = ServiceProcess("monitor", [*args, "--port", "0", "--scrape-interval-s", "0.5"],
                                 log_path=tmp_path / f"monitor-{len(started)}.log")
        started.append(process)
        process.start()
        process.wait_ready(60)
        return process

    yield start
    for process in reversed(started):
        process.stop()


def http_get(url: str, timeout_s: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def http_json(url: str, body: dict | None = None, timeout_s: float = 30.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class MetricsPage:
    """A tiny HTTP server on `host` answering /metrics with `self.text` (a stand-in for one
    replica's metrics endpoint)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, text: str = "") -> None:
        page = self
        self.text = text

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = page.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def browser():
    """A real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing (pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageWatcher:
    """A page plus every console message and uncaught error it produced."""

    def __init__(self, page) -> None:
        self.page = page
        self.console: list[tuple[str, str]] = []
        page.on("console", lambda m: self.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))

    def errors(self, allow: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        return [(kind, text) for kind, text in self.console
                if kind in ("error", "pageerror") and not any(a in text for a in allow)]


@pytest.fixture
def page(browser) -> Iterator[PageWatcher]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    watcher = PageWatcher(context.new_page())
    yield watcher
    context.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """Saves a full-page screenshot under tmp_path and, if the directory `tmp/screenshots` at the
    repository root exists, a copy there too (for people who want to look at them)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep = REPO_ROOT / "tmp" / "screenshots"
    if keep.is_dir():
        shutil.copy(path, keep / path.name)
    return path
