"""`make run`'s ports: the launcher checks every fixed port before it starts anything, and a
taken one stops it with a message naming the port and how to choose others (PORT_BASE, PORTS).
No fleet is started here: the port is taken by the test itself, on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.processes import REPO_ROOT
from services.launcher.__main__ import check_ports, parse_args
from services.launcher.ports import is_taken
from services.launcher.topology import DEFAULT_PORTS, PORT_SPAN, FleetConfig, build_topology


@pytest.fixture
def taken_port():
    """A port some other program listens on (127.0.0.1), for the length of the test."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        if port + PORT_SPAN > 65536:
            pytest.skip(f"the free port {port} is too close to 65535 for a port base")
        yield port


def config_with_base(base: int, **kwargs) -> FleetConfig:
    return FleetConfig(game="cartpole", run_dir=Path("unused"), port_base=base, **kwargs)


def test_port_base_moves_every_fixed_port_into_one_block():
    config = config_with_base(51000, num_agents=2)
    ports = dict(config.planned_ports())
    assert ports == {"environment gRPC": 51000, "replay gRPC": 51001, "network gRPC": 51002,
                     "environment metrics": 51010, "replay metrics": 51011, "network metrics": 51012,
                     "agent-0 metrics": 51013, "trainer metrics": 51014, "monitor HTTP": 51020}
    # The services get exactly those ports; the second agent picks a free one.
    args = {spec.name: spec.args for spec in build_topology(config)}
    assert args["replay"][args["replay"].index("--port") + 1] == "51001"
    assert args["agent-0"][args["agent-0"].index("--metrics-port") + 1] == "51013"
    assert args["agent-1"][args["agent-1"].index("--metrics-port") + 1] == "0"
    assert args["monitor"][args["monitor"].index("--port") + 1] == "51020"
    # No base: the README's ports; free ports: none to check.
    default = dict(FleetConfig(game="cartpole", run_dir=Path("unused")).planned_ports())
    assert default["replay gRPC"] == DEFAULT_PORTS["replay"][0] and default["monitor HTTP"] == 5000
    assert FleetConfig(game="cartpole", run_dir=Path("unused"), fixed_ports=False).planned_ports() == []
    assert "monitor HTTP" not in dict(config_with_base(51000, monitor=False).planned_ports())


def test_a_taken_port_is_named_with_the_variables_to_choose_others(taken_port):
    assert is_taken(taken_port)
    # The port is the replay's metrics port of the fleet with base taken_port - 11.
    base = taken_port - 11
    if base < 1024:
        pytest.skip(f"the free port {taken_port} is too low for a port base")
    _, config = parse_args(["--port-base", str(base)])
    message = check_ports(config)
    assert message is not None
    assert f"port {taken_port} (replay metrics) is taken on 127.0.0.1" in message
    assert "nothing was started" in message
    assert "make run PORT_BASE=" in message and "make run PORTS=free" in message and "--free-ports" in message
    _, free = parse_args(["--free-ports"])
    assert check_ports(free) is None


def test_launcher_exits_before_starting_anything(taken_port, tmp_path):
    """`python -m services.launcher` itself: exit 1, the message on stderr, no run directory.
    The taken port is the environment's, the first service started, so a launcher that did not
    check would fail too (on the bind) but without naming PORT_BASE."""
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "services.launcher", "--port-base", str(taken_port), "--run-dir", str(run_dir)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    try:
        out, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:  # it went on to start a fleet: stop all of it
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode == 1, (out, err)
    assert f"port {taken_port} (environment gRPC) is taken on 127.0.0.1" in err
    assert "PORT_BASE" in err and "PORTS=free" in err and "Traceback" not in err
    assert not run_dir.exists()


@pytest.mark.parametrize("flags, message", [
    (["--agents", "0"], "--agents must be >= 1, got 0"),
    (["--simulations", "-1"], "--simulations must be >= 0, got -1"),
    (["--port-base", "80"], "--port-base must be 0 (the default ports) or in [1024, "),
    (["--port-base", "51000", "--free-ports"], "not allowed with argument"),
])
def test_launcher_config_errors_name_the_flag(capsys, flags, message):
    with pytest.raises(SystemExit) as exited:
        parse_args(flags)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m services.launcher" in err and message in err
    assert "FleetConfig" not in err and "Traceback" not in err


def make_run(*variables: str) -> subprocess.CompletedProcess:
    """`make -n run VAR=...`: the launcher command `make run` would run (nothing is run)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is missing")
    return subprocess.run([make, "-n", "run", *variables], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if k not in ("PORTS", "PORT_BASE")})


def launcher_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return next(line for line in result.stdout.splitlines() if "-m services.launcher" in line)


def test_make_run_passes_the_port_variables():
    assert "--port" not in launcher_line(make_run()) and "--free-ports" not in launcher_line(make_run())
    assert launcher_line(make_run("PORT_BASE=51000")).endswith("--port-base 51000")
    assert launcher_line(make_run("PORTS=free")).endswith("--free-ports")
    wrong = make_run("PORTS=any")
    assert wrong.returncode != 0 and 'PORTS must be fixed or free, got "any"' in wrong.stderr
