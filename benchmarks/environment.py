"""Environment throughput: game steps per second, in-process and through the gRPC service.

For each game and batch size B, random legal actions are played for about `MEASURE_S` seconds:
  * in-process: game.step + auto reset of ended games + observation + legal_actions, the work
    the server does per Step;
  * service: one client Step(auto_reset=True) after another against a server process on
    loopback (started on port 0), actions chosen from the returned legal mask.
One Step of B games counts B steps. Games that do not load yet are skipped with a note.

    python -m benchmarks environment
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

import games
from games.base import Game
from services.common.processes import ServiceProcess
from services.environment.client import EnvironmentClient

GAMES = ["cartpole", "connect4"]
BATCH_SIZES = [1, 64, 256, 4096]
MEASURE_S = 1.0


def random_legal_actions(rng: np.random.Generator, legal: np.ndarray) -> np.ndarray:
    return np.argmax(np.where(legal, rng.random(legal.shape), -1.0), axis=1).astype(np.int32)


def measure(step: Callable[[], None], seconds: float, on_progress: Callable[[int, float], None]) -> tuple[int, float]:
    """Calls `step` (after one warm-up call) until `seconds` have passed: (calls, seconds)."""
    step()
    calls, started = 0, time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        step()
        calls += 1
        elapsed = time.perf_counter() - started
        if calls % 16 == 0:
            on_progress(calls, elapsed)
    return calls, elapsed


def in_process(game: Game, num_games: int, on_progress) -> tuple[int, float]:
    rng = np.random.default_rng(0)
    box = {"state": game.reset(num_games, seed=0)}
    box["legal"] = game.legal_actions(box["state"])

    def step() -> None:
        state, _reward, terminated, truncated = game.step(box["state"], random_legal_actions(rng, box["legal"]))
        ended = np.flatnonzero(terminated | truncated)
        if len(ended):
            state = state.put(ended, game.reset(len(ended), seed=state.rng))
        game.observation(state)
        box["state"], box["legal"] = state, game.legal_actions(state)

    return measure(step, MEASURE_S, on_progress)


def through_service(env: EnvironmentClient, name: str, num_games: int, on_progress) -> tuple[int, float]:
    rng = np.random.default_rng(0)
    session, _spec, time_step = env.open(name, num_games, seed=0)
    box = {"legal": time_step.legal_actions}

    def step() -> None:
        box["legal"] = env.step(session, random_legal_actions(rng, box["legal"]), auto_reset=True).legal_actions

    try:
        return measure(step, MEASURE_S, on_progress)
    finally:
        env.close(session)


def main() -> None:
    console = Console()
    loaded: dict[str, Game] = {}
    for name in GAMES:
        try:
            loaded[name] = games.make(name)
        except Exception as error:  # noqa: BLE001 - a game still being written
            console.print(f"note: {name} skipped, it does not load yet ({error!r})")
    rows = []
    with console.status("starting the environment server") as status:
        with ServiceProcess("services.environment",
                            ["--port", "0", "--metrics-port", "0", "--max-games-per-session", "4096"]) as server:
            server.wait_ready(60)
            with EnvironmentClient(server.grpc_address, timeout_s=60) as env:
                for name, game in loaded.items():
                    for num_games in BATCH_SIZES:
                        results = []
                        for mode, run in (("in-process", lambda: in_process(game, num_games, progress)),
                                          ("service", lambda: through_service(env, name, num_games, progress))):
                            def progress(calls: int, elapsed: float, mode=mode) -> None:
                                status.update(f"{name} B={num_games} {mode}: {calls} calls, "
                                              f"{calls * num_games / elapsed:,.0f} steps/s")
                            progress(0, 1.0)
                            calls, elapsed = run()
                            results.append((calls * num_games / elapsed, elapsed / calls))
                        rows.append((name, num_games, *results))
    table = Table(title=f"environment steps per second ({os.cpu_count()} cores, {MEASURE_S:g} s each)")
    for column in ("game", "B", "in-process steps/s", "ms/call", "service steps/s", "ms/call",
                   "ratio"):
        table.add_column(column, justify="left" if column == "game" else "right")
    for name, num_games, (local_rate, local_s), (remote_rate, remote_s) in rows:
        table.add_row(name, str(num_games), f"{local_rate:,.0f}", f"{local_s * 1e3:.3f}",
                      f"{remote_rate:,.0f}", f"{remote_s * 1e3:.3f}", f"{remote_rate / local_rate:.2f}")
    console.print(table)
    console.print("ms/call: one call for all B games (in-process: step + reset + observation + "
                  "legal_actions; service: a Step round trip on loopback); ratio: service / in-process")


if __name__ == "__main__":
    main()
