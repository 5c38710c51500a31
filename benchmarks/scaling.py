"""Scaling out: total simulations per second of 1, 2 and 4 agents against one network server,
with the server's cross-request batching off and on, and a reanalyser beside self-play.

Every service is its own process started from its command line, as the local fleet starts it
(the network server's TensorFlow on one thread), on cartpole networks of the game's default
size with random weights (no trainer: the work of acting alone). Each agent plays B games with
S simulations per move. The numbers are counters the services export, read from their
/metrics over a steady window after a warm-up: the agents' `mufleet_agent_simulations_total`,
the network server's requests, model runs and rows per run, the reanalyser's positions; and
each process's CPU time from /proc.

From the network server's CPU time per request and per row, the last table estimates what N
agents on N machines would get from one network server that does nothing else: a sketch from
this machine's per-request costs, not a measurement of a GPU server (docs/kubernetes.md).

On a 2-core machine the agents share the cores with the server: more agents cannot add
simulations, only show whether merged requests (batching) cost the server less per row.

    python -m benchmarks scaling
    python -m benchmarks.scaling --seconds 20 --agents 1,2,4 --report docs/scaling.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import games
from benchmarks.fleet import AGENT_SIMULATIONS, GAME, ONE_THREAD, REANALYSE_POSITIONS, Fleet
from models.export import export_version
from services.common.metrics import sum_samples

BATCHING_CONFIG = Path(__file__).resolve().parents[1] / "models" / "batching.config"
NETWORK_REQUESTS = "mufleet_network_requests_total"
NETWORK_RUNS = "mufleet_network_batch_size_count"  # one observation per model run
NETWORK_ROWS = "mufleet_network_batch_size_sum"
REANALYSE_SIMULATIONS = "mufleet_reanalyse_simulations_total"


def _total(scrapes: dict[str, dict[str, float]], prefix: str, metric: str) -> float:
    return sum(sum_samples(s, metric) for name, s in scrapes.items() if name.startswith(prefix))


def measure(fleet: Fleet, warmup_s: float, seconds: float) -> dict[str, float]:
    """Rates over a window of `seconds` after every agent (and reanalyser) has started working
    and `warmup_s` more."""
    fleet.wait_working()
    time.sleep(warmup_s)
    before, cpu_before, started = fleet.scrape(), fleet.cpu(), time.perf_counter()
    time.sleep(seconds)
    after, cpu_after, elapsed = fleet.scrape(), fleet.cpu(), time.perf_counter() - started
    fleet.check_running()

    def rate(prefix: str, metric: str) -> float:
        return (_total(after, prefix, metric) - _total(before, prefix, metric)) / elapsed

    cpu = {name: (cpu_after[name] - cpu_before[name]) / elapsed for name in cpu_after}
    requests, runs, rows = rate("network", NETWORK_REQUESTS), rate("network", NETWORK_RUNS), rate("network", NETWORK_ROWS)
    return {"simulations_per_s": rate("agent-", AGENT_SIMULATIONS),
            "requests_per_s": requests, "runs_per_s": runs, "rows_per_run": rows / runs if runs else 0.0,
            "network_cpu_ms_per_request": 1000 * cpu["network"] / requests if requests else 0.0,
            "network_cpu_ms_per_row": 1000 * cpu["network"] / rows if rows else 0.0,
            "network_cores": cpu["network"], "agents_cores": sum(v for n, v in cpu.items() if n.startswith("agent-")),
            "total_cores": sum(cpu.values()),
            "reanalysed_positions_per_s": rate("reanalyse-", REANALYSE_POSITIONS),
            "reanalyse_simulations_per_s": rate("reanalyse-", REANALYSE_SIMULATIONS)}


def write_report(rows: list[tuple[str, dict[str, float]]], batch: int, simulations: int, path: Path) -> None:
    """The rows as JSON (`path`) and a bar chart beside it (same name, .png): simulations/s of
    every fleet, and the reanalyser's positions/s next to self-play."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.write_text(json.dumps({"game": GAME, "batch": batch, "simulations": simulations, "cores": os.cpu_count(),
                                "rows": [{"fleet": label, **r} for label, r in rows]}, indent=2) + "\n")
    figure, axis = plt.subplots(figsize=(8, 4), dpi=100)
    labels = [label.replace(", ", "\n") for label, _ in rows]
    bars = axis.bar(range(len(rows)), [r["simulations_per_s"] / 1000 for _, r in rows],
                    color=["tab:blue" if "batching off" in label else "tab:orange" for label, _ in rows])
    for bar, (label, r) in zip(bars, rows):
        text = f"{r['simulations_per_s'] / 1000:.0f}k"
        if r["reanalysed_positions_per_s"]:
            text += f"\n+{r['reanalysed_positions_per_s']:.0f} reanalysed\npositions/s"
        axis.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                      fontsize=8)
    axis.set_xticks(range(len(rows)), labels, fontsize=8)
    axis.set_ylabel("self-play simulations/s (thousands, all agents)")
    axis.set_title(f"one network server, {GAME} networks, B={batch} per agent, S={simulations}, "
                   f"{os.cpu_count()} cores (blue: batching off, orange: on)", fontsize=9)
    axis.set_ylim(0, max(r["simulations_per_s"] for _, r in rows) / 1000 * 1.3)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path.with_suffix(".png"))
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default="1,2,4", help="comma-separated numbers of agents")
    parser.add_argument("--batch", type=int, default=256, help="B, games per agent")
    parser.add_argument("--simulations", type=int, default=32, help="S, simulations per move")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window of each row, s")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="warm-up before each window, s")
    parser.add_argument("--report", type=Path, default=None,
                        help="also write the rows as JSON here and a chart beside it (.png), e.g. docs/scaling.json")
    args = parser.parse_args(argv if argv is not None else [])
    counts = [int(n) for n in args.agents.split(",") if n.strip()]
    console = Console(width=160)
    game = games.make(GAME)
    B, S = args.batch, args.simulations
    rows: list[tuple[str, dict[str, float]]] = []
    from models.networks import MuZeroNetwork

    with tempfile.TemporaryDirectory() as tmp_name, console.status("measuring") as status:
        tmp = Path(tmp_name)
        export_version(MuZeroNetwork(game.spec, game.settings, seed=0), tmp / "muzero", 1)
        variants = [(n, batching, 0) for n in counts for batching in (False, True)] + [(1, False, 1)]
        for agents, batching, reanalysers in variants:
            label = (f"{agents} agent{'s' if agents > 1 else ''}, batching {'on' if batching else 'off'}"
                     + (f", {reanalysers} reanalyser" if reanalysers else ""))
            status.update(label)
            batching_flags = ("--enable_batching", "--batching_parameters_file", str(BATCHING_CONFIG))
            fleet = Fleet(tmp / "muzero", tmp / label.replace(" ", "-").replace(",", ""), agents, B, S,
                          network_flags=ONE_THREAD + (batching_flags if batching else ()), reanalysers=reanalysers)
            try:
                rows.append((label, measure(fleet, args.warmup_s, args.seconds)))
            finally:
                fleet.stop()
            console.print(f"{label}: {rows[-1][1]}")
    table = Table(title=f"scaling out on {os.cpu_count()} cores: {GAME} networks, B={B} per agent, S={S}, "
                        f"one network server (TensorFlow on one thread)")
    for column in ("fleet", "simulations/s (all agents)", "per agent", "requests/s", "rows per model run",
                   "server CPU ms/request", "server CPU µs/row", "cores: server / agents / all",
                   "reanalysed positions/s"):
        table.add_column(column, justify="right")
    for label, r in rows:
        agents = int(label.split()[0])
        table.add_row(label, f"{r['simulations_per_s']:,.0f}", f"{r['simulations_per_s'] / agents:,.0f}",
                      f"{r['requests_per_s']:,.0f}", f"{r['rows_per_run']:,.0f}",
                      f"{r['network_cpu_ms_per_request']:.2f}", f"{1000 * r['network_cpu_ms_per_row']:.1f}",
                      f"{r['network_cores']:.2f} / {r['agents_cores']:.2f} / {r['total_cores']:.2f}",
                      f"{r['reanalysed_positions_per_s']:,.0f}" if "reanalyser" in label else "-")
    console.print(table)
    if args.report:
        write_report(rows, B, S, args.report)
    # The sketch: one agent's requests per second when it has a machine of its own is the
    # one-agent row's; a server doing only network work serves 1000 / (ms per request) of them
    # per core at the best per-request cost measured (batching on or off).
    one = next((r for label, r in rows if label.startswith("1 agent,") and "reanalyser" not in label), None)
    if one and one["requests_per_s"]:
        best = min((r for label, r in rows if "reanalyser" not in label), key=lambda r: r["network_cpu_ms_per_row"])
        per_request_ms = best["network_cpu_ms_per_row"] * B
        capacity = 1000.0 / per_request_ms if per_request_ms else float("inf")
        sketch = Table(title="estimate: N agents on N machines against one network server of this machine's "
                             "per-row cost (not measured: a sketch)")
        for column in ("agents", "requests/s asked", "server cores needed", "simulations/s if served"):
            sketch.add_column(column, justify="right")
        for n in (1, 2, 4, 8, 16, 32):
            asked = n * one["requests_per_s"]
            sketch.add_row(str(n), f"{asked:,.0f}", f"{asked / capacity:.1f}", f"{n * one['simulations_per_s']:,.0f}")
        console.print(sketch)
        console.print(f"server cost: {1000 * best['network_cpu_ms_per_row']:.1f} µs of CPU per row "
                      f"({per_request_ms:.1f} ms per request of {B} rows) -> {capacity:,.0f} requests/s per core")


if __name__ == "__main__":
    main(sys.argv[1:])
