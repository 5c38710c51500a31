"""Runs the whole MuFleet fleet on this machine as separate processes on loopback.

    python -m services.launcher --game cartpole --run-dir runs/cartpole

Starts environment, replay, trainer, network, agent(s), reanalyse workers (`--reanalysers N`,
none by default), the evaluator (`--evaluator`, off by default) and the monitor, each once the
ones before it are healthy; shows one live status line; Ctrl-C stops everything cleanly. Launching
again on the same run directory resumes the run (replay data, trainer checkpoint, model versions).

Ports: by default the fixed ones of the README (gRPC 50000-50002, metrics 9100-9106, dashboard
5000). `--port-base P` moves them to one block: gRPC P..P+2, metrics P+10..P+16, dashboard P+20;
`--free-ports` lets every service pick a free one. Every fixed port is checked before anything
starts: a taken one stops the launcher (exit 1) with a message naming it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live

import games
from services.common.flags import config_or_exit
from services.common.logs import get_logger
from services.launcher.local import LocalFleet
from services.launcher.presets import PRESETS
from services.launcher.ports import taken_message, taken_ports
from services.launcher.status import FleetStatus
from services.launcher.topology import FleetConfig, build_topology


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, FleetConfig]:
    parser = argparse.ArgumentParser(prog="python -m services.launcher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="cartpole", choices=games.names(), help="game to train")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="directory of the run (default runs/<game>); reused to resume")
    parser.add_argument("--agents", dest="num_agents", type=int, default=1, help="self-play agent processes")
    parser.add_argument("--reanalysers", dest="num_reanalysers", type=int, default=0,
                        help="reanalyse worker processes (docs/reanalyse.md; 0 = none, or the preset's)")
    parser.add_argument("--preset", default="", choices=sorted(PRESETS),
                        help="a regime's settings on top of the game's defaults (services/launcher/presets.py): "
                             "'sample-efficient' is EfficientZero's, the most learning per environment step")
    parser.add_argument("--games-per-batch", type=int, default=0,
                        help="games each agent plays at once (0 = the game's default)")
    parser.add_argument("--simulations", type=int, default=0,
                        help="MCTS simulations per move (0 = the game's default)")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="stop after this many trainer steps (0 = run until Ctrl-C)")
    ports = parser.add_mutually_exclusive_group()
    ports.add_argument("--free-ports", action="store_true",
                       help="let every service pick a free port instead of the fixed defaults")
    ports.add_argument("--port-base", type=int, default=0, metavar="P",
                       help="fixed ports from P: gRPC P..P+2, metrics P+10..P+16, dashboard P+20 "
                            "(default: the README's ports, 50000-50002, 9100-9106, 5000)")
    parser.add_argument("--no-monitor", action="store_true", help="do not start the dashboard")
    parser.add_argument("--evaluator", action="store_true",
                        help="also run the evaluator: the newest version against the game's ladder, Elo "
                             "ratings in <run-dir>/evaluator (docs/evaluator.md)")
    args = parser.parse_args(argv)
    config = config_or_exit(parser, lambda: FleetConfig(
        game=args.game, run_dir=args.run_dir or Path("runs") / args.game, num_agents=args.num_agents,
        num_reanalysers=args.num_reanalysers, preset=args.preset, games_per_batch=args.games_per_batch, simulations=args.simulations, train_steps=args.train_steps,
        fixed_ports=not args.free_ports, port_base=args.port_base, monitor=not args.no_monitor,
        evaluator=args.evaluator))
    return args, config


def check_ports(config: FleetConfig) -> str | None:
    """None when every fixed port of the fleet is free; else the message that names the taken
    ones and how to choose others."""
    taken = taken_ports(config.planned_ports())
    return taken_message(taken) if taken else None


def main(argv: list[str] | None = None) -> int:
    _, config = parse_args(argv)
    problem = check_ports(config)
    if problem:
        print(f"python -m services.launcher: error: {problem}", file=sys.stderr)
        return 1
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    # The console shows the status line; the launcher's own events go to a file beside the logs.
    log = get_logger("launcher", stream=open(Path(config.run_dir) / "launcher.log", "a"))
    console = Console(stderr=True)
    fleet = LocalFleet(build_topology(config), log_dir=Path(config.run_dir) / "logs", log=log)
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    exit_code = 0
    try:
        with console.status("starting the fleet") as spinner:
            fleet.start(on_started=lambda spec: spinner.update(f"started {spec.name}"))
        console.print(f"fleet running in {config.run_dir} (logs in {config.run_dir}/logs); "
                      + (f"dashboard http://{fleet.http_addresses['monitor']}" if "monitor" in fleet.http_addresses
                         else "no dashboard") + "; Ctrl-C stops")
        status = FleetStatus(fleet)
        with Live(status.line(), console=console, refresh_per_second=1, transient=False) as live:
            while not stopping:
                exited = fleet.exited()
                if exited.get("trainer") == 0 and config.train_steps:
                    console.print(f"trainer finished {config.train_steps} steps")
                    break
                if exited:
                    console.print(f"[red]stopped unexpectedly: {exited}; see {config.run_dir}/logs[/red]")
                    exit_code = 1
                    break
                live.update(status.line())
                time.sleep(1.0)
    except (TimeoutError, RuntimeError) as error:
        console.print(f"[red]{error}[/red]")
        exit_code = 1
    finally:
        console.print("stopping the fleet")
        fleet.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
