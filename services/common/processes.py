"""Run MuFleet services as child processes: start, learn their ports, wait for readiness, stop.

Used by the local launcher and by integration tests alike. A service announces readiness with
one log event `ready` carrying its ports (`grpc_port`, `metrics_port`), so a service started
on port 0 tells its parent which port it got.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any, Sequence

from services.common.logs import parse_line

REPO_ROOT = Path(__file__).resolve().parents[2]


def die_with_parent_prefix() -> list[str]:
    """The command prefix that SIGTERMs a child when its parent dies, so a killed launcher, test
    or benchmark leaves no orphaned servers behind: util-linux's `setpriv --pdeathsig TERM`
    (Linux; [] where it is missing).

    A wrapper that sets the signal and then execs, rather than a `preexec_fn`: with a
    preexec_fn, subprocess must fork() and run Python in the child of a process whose gRPC and
    TensorFlow threads may hold locks at that moment, and such a start can hang forever (seen
    in the test suite: the parent blocked inside fork_exec). Without one it uses vfork.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM"] if setpriv else []


class ServiceProcess:
    """One `python -m <module> <args>` child whose log lines are read on a thread.

    Attributes:
      ready: the `ready` event (with `grpc_port`, `metrics_port`, ...) once it arrives.
      lines: the last log lines, for error messages.
    """

    def __init__(self, module: str, args: Sequence[str], log_path: str | Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.module = module
        self.args = list(args)
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        self.ready: dict[str, Any] | None = None
        self.lines: deque[str] = deque(maxlen=200)
        self.events: deque[dict[str, Any]] = deque(maxlen=1000)
        self._ready = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> "ServiceProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.env or {})
        self._process = subprocess.Popen(
            [*die_with_parent_prefix(), sys.executable, "-m", self.module, *self.args], cwd=REPO_ROOT,
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, start_new_session=True)
        self._reader = threading.Thread(target=self._read, name=f"{self.module}-log", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        log_file = open(self.log_path, "a") if self.log_path else None
        try:
            for line in self._process.stdout:
                self.lines.append(line.rstrip("\n"))
                if log_file:
                    log_file.write(line)
                    log_file.flush()
                event = parse_line(line)
                if event is None:
                    continue
                self.events.append(event)
                if event["event"] == "ready" and self.ready is None:
                    self.ready = event
                    self._ready.set()
        finally:
            if log_file:
                log_file.close()
            self._ready.set()  # wake waiters: the process has exited

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def poll(self) -> int | None:
        """The exit code, or None while running."""
        return self._process.poll() if self._process else None

    def wait_ready(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Blocks until the `ready` event; RuntimeError with the last log lines if it exits first."""
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"{self.module} not ready after {timeout_s:.0f}s:\n" + self.tail())
        if self.ready is None:
            self._process.wait()
            raise RuntimeError(f"{self.module} exited with code {self._process.returncode} "
                               f"before it was ready:\n" + self.tail())
        return self.ready

    @property
    def grpc_address(self) -> str:
        assert self.ready is not None, "wait_ready() first"
        return f"127.0.0.1:{self.ready['grpc_port']}"

    def wait(self, timeout_s: float) -> int:
        """Waits for the process to exit by itself; returns its exit code (TimeoutError if not)."""
        assert self._process is not None
        try:
            code = self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.module} still running after {timeout_s:.0f}s:\n" + self.tail()) from None
        if self._reader:
            self._reader.join(5)
        return code

    def tail(self, n: int = 40) -> str:
        return "\n".join(list(self.lines)[-n:])

    def signal(self, signum: int) -> None:
        if self._process and self._process.poll() is None:
            self._process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up (for crash tests)."""
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._reader:
            self._reader.join(5)
        return self._process.returncode

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
