"""The whole fleet as real processes on loopback, training cartpole for a short while."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.agent import metrics as agent_metrics
from services.common.logs import get_logger
from services.common.metrics import sum_samples
from services.common.processes import REPO_ROOT
from services.launcher.local import LocalFleet, wait_for
from services.launcher.topology import FleetConfig, build_topology
from services.replay.client import ReplayClient
from services.trainer import metrics as trainer_metrics

pytestmark = pytest.mark.e2e

TRAIN_STEPS = 150


def _train_losses(log_path: Path) -> list[tuple[int, float]]:
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    return [(e["step"], e["loss"]) for e in events if e.get("event") == "train"]


def test_fleet_trains_cartpole_versions_advance_and_agents_follow(tmp_path):
    config = FleetConfig(
        game="cartpole", run_dir=tmp_path / "run", games_per_batch=32, simulations=8, fixed_ports=False,
        monitor=False,
        extra_args=(("trainer", ("--export-interval", "25", "--log-interval", "1", "--batch-size", "64")),
                    ("replay", ("--min-positions", "300"))))
    fleet = LocalFleet(build_topology(config), log_dir=tmp_path / "logs",
                       log=get_logger("test", stream=open(tmp_path / "launcher.log", "w")))
    try:
        fleet.start()
        with ReplayClient(fleet.grpc_addresses["replay"]) as replay:
            assert wait_for(lambda: replay.get_stats().positions > 0, timeout_s=120), "no game reached replay"
            positions_early = replay.get_stats().positions
            trained = wait_for(
                lambda: sum_samples(fleet.scrape("trainer"), trainer_metrics.STEPS_TOTAL) >= TRAIN_STEPS,
                timeout_s=300)
            assert trained, "trainer did not reach %d steps:\n%s" % (TRAIN_STEPS, fleet.processes["trainer"].tail())
            # The agent picks up the trainer's newer versions and plays games with them.
            assert wait_for(lambda: fleet.scrape("agent-0").get(agent_metrics.MODEL_VERSION, 0) >= 50,
                            timeout_s=120), fleet.processes["agent-0"].tail()
            assert wait_for(lambda: max(replay.get_stats().games_per_model_version or {0: 0}) >= 50,
                            timeout_s=120)
            stats = replay.get_stats()
            assert stats.positions > positions_early, "replay keeps growing"
        assert fleet.scrape("trainer")[trainer_metrics.EXPORTED_VERSION] >= 100
        versions = sorted(int(p.name) for p in (config.run_dir / "models" / "muzero").iterdir() if p.name.isdigit())
        assert versions[-1] >= 100 and 0 < len(versions)
        assert not fleet.exited(), f"a service stopped: {fleet.exited()}"
    finally:
        fleet.stop()
    codes = {name: process.poll() for name, process in fleet.processes.items()}
    assert set(codes.values()) == {0}, f"every service stops cleanly on SIGTERM: {codes}"
    # Against the untrained network's first steps, not a later logged step: the value and policy
    # targets move as play improves (longer games, higher returns), so two losses of the training
    # run far from its start differ by noise as much as by learning.
    losses = [loss for _, loss in _train_losses(tmp_path / "logs" / "trainer.log")]
    assert len(losses) >= TRAIN_STEPS
    first, last = sum(losses[:3]) / 3, sum(losses[-25:]) / 25
    assert last < 0.5 * first, f"the trainer's loss goes down: first steps {losses[:3]}, last {losses[-25:]}"


def test_launcher_help_lists_its_flags():
    completed = subprocess.run([sys.executable, "-m", "services.launcher", "--help"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0
    for flag in ("--game", "--run-dir", "--agents", "--train-steps", "--free-ports"):
        assert flag in completed.stdout
