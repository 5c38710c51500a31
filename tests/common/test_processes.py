"""ServiceProcess: readiness from the `ready` event, graceful stop, no orphans."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from services.common.channels import wait_until_serving
from services.common.processes import REPO_ROOT, ServiceProcess
from services.launcher.local import wait_for

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited too
        return stat.read().split()[2] != "Z"


def test_ready_event_gives_the_bound_port_and_sigterm_stops_cleanly(tmp_path):
    process = ServiceProcess("services.environment", ["--game", "cartpole", "--port", "0", "--metrics-port", "0"],
                             log_path=tmp_path / "environment.log").start()
    try:
        ready = process.wait_ready(60)
        assert ready["grpc_port"] > 0 and ready["metrics_port"] > 0
        wait_until_serving(process.grpc_address, timeout_s=30)
    finally:
        assert process.stop() == 0
    assert '"event": "ready"' in (tmp_path / "environment.log").read_text()


def test_a_service_dies_with_its_parent_when_the_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from services.common.processes import ServiceProcess
        child = ServiceProcess("services.environment", ["--game", "cartpole", "--port", "0",
                                                        "--metrics-port", "0"]).start()
        child.wait_ready(60)
        print(child.pid, flush=True)
        time.sleep(120)
        """)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    parent.kill()
    parent.wait(10)
    assert wait_for(lambda: not _alive(child_pid), timeout_s=30, poll_s=0.1), "the child outlived its parent"


def test_wait_ready_reports_a_service_that_exits_early(tmp_path):
    process = ServiceProcess("services.environment", ["--game", "no-such-game", "--port", "0"]).start()
    with pytest.raises(RuntimeError, match="exited with code"):
        process.wait_ready(60)
