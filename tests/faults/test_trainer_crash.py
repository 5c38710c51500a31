"""The trainer SIGKILLed while it trains resumes from its last checkpoint, and its exported model
versions go on from there: higher than every version before the kill, none half-written."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import numpy as np
import pytest

from models.export import list_versions
from services.common.processes import ServiceProcess
from services.replay.client import ReplayClient, make_game_record
from tests.faults.faults_helpers import events, wait_until

pytestmark = pytest.mark.integration

EXPORT_INTERVAL = 5


def cartpole_record(id: str, T: int, seed: int):
    rng = np.random.default_rng(seed)
    return make_game_record(id, rng.normal(scale=0.05, size=(T, 4)).astype(np.float32),
                            rng.integers(0, 2, T), np.ones(T, np.float32),
                            np.linspace(T, 1, T).astype(np.float32),
                            rng.dirichlet([1, 1], size=T).astype(np.float32))


def start_trainer(tmp_path: Path, replay: ServiceProcess, name: str) -> ServiceProcess:
    process = ServiceProcess("services.trainer", [
        "--game", "cartpole", "--replay", replay.grpc_address, "--models", str(tmp_path / "models"),
        "--checkpoint-dir", str(tmp_path / "checkpoints"), "--resume", "--metrics-port", "0",
        "--batch-size", "16", "--export-interval", str(EXPORT_INTERVAL), "--log-interval", "5",
        "--keep-versions", "100", "--sample-timeout", "2", "--seed", "0"],
        log_path=tmp_path / f"{name}.log")
    return process.start()


def latest_checkpoint_step(checkpoint_dir: Path) -> int:
    """The step of the checkpoint tf.train.CheckpointManager names newest in its state file."""
    state = (checkpoint_dir / "checkpoint").read_text()
    return int(re.search(r'^model_checkpoint_path: ".*ckpt-(\d+)"', state, re.M).group(1))


def complete_version(path: Path) -> bool:
    return (path / "saved_model.pb").is_file() and (path / "variables" / "variables.index").is_file()


def test_trainer_killed_resumes_from_its_checkpoint_and_versions_continue(start_service, tmp_path):
    replay = start_service("services.replay", ["--game", "cartpole", "--data-dir", str(tmp_path / "replay"),
                                               "--min-positions", "100", "--samples-per-insert", "0",
                                               "--seed", "0"])
    with ReplayClient(replay.grpc_address, timeout_s=10) as client:
        client.add_games([cartpole_record(f"g{i}", 40, i) for i in range(4)])
    models, checkpoints = tmp_path / "models", tmp_path / "checkpoints"

    first = start_trainer(tmp_path, replay, "trainer-1")
    second = None
    try:
        assert first.wait_ready(120)["step"] == 0
        wait_until(lambda: [e for e in events(first, "exported") if e["version"] >= 2 * EXPORT_INTERVAL],
                   "two exports after version 0", first)
        first.kill()  # SIGKILL while it trains: no checkpoint on the way out
        assert first.poll() == -signal.SIGKILL
        versions_before = list_versions(models)
        last_logged_checkpoint = max(e["step"] for e in events(first, "checkpoint"))
        last_trained = max(e["step"] for e in events(first, "train"))
        on_disk = latest_checkpoint_step(checkpoints)
        assert last_logged_checkpoint <= on_disk <= last_trained + EXPORT_INTERVAL

        second = start_trainer(tmp_path, replay, "trainer-2")
        ready = second.wait_ready(120)
        [started] = events(second, "started")
        assert started["resumed"] is True and started["step"] == ready["step"], started
        assert ready["step"] == on_disk > 0, "resumed from the newest checkpoint"
        assert ready["step"] >= max(versions_before), "a version is exported only after its checkpoint"
        wait_until(lambda: [e for e in events(second, "exported")
                            if e["version"] >= ready["step"] + EXPORT_INTERVAL],
                   "an export of the resumed run", second)
        second.signal(signal.SIGTERM)
        assert second.wait(120) == 0, second.tail()
    finally:
        for process in (second, first):
            if process is not None:
                process.stop()

    train_steps = [e["step"] for e in events(second, "train")]
    assert train_steps and min(train_steps) > ready["step"], "training continued from the resumed step"
    exported = [e["version"] for e in events(second, "exported")]
    assert exported and min(exported) > max(versions_before), (versions_before, exported)
    assert not events(second, "version_exists")
    versions_after = list_versions(models)
    assert versions_after[:len(versions_before)] == versions_before
    assert set(exported) <= set(versions_after) and max(versions_after) == max(exported)
    # No half-written version: leftovers of an interrupted export were never versions and are gone.
    assert [p.name for p in models.iterdir() if not p.name.isdigit()] == []
    for version in versions_after:
        assert complete_version(models / str(version)), version
    from models.export import load_version

    for version in (max(versions_before), max(versions_after)):
        model = load_version(models, version)
        out = model.initial_inference(np.zeros((2, 4), np.float32))
        assert out["value"].shape == (2,) and np.all(np.isfinite(out["value"]))
