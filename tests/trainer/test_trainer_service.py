"""The trainer as a real process against a real replay server on loopback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from models.export import INITIAL_INFERENCE, RECURRENT_INFERENCE, list_versions, load_version
from services.common.processes import REPO_ROOT, ServiceProcess
from services.replay import metrics as replay_metrics
from services.replay.client import ReplayClient, make_game_record
from services.trainer import metrics as trainer_metrics

pytestmark = pytest.mark.integration


def cartpole_game(id: str, T: int, seed: int):
    rng = np.random.default_rng(seed)
    return make_game_record(id, rng.normal(scale=0.05, size=(T, 4)).astype(np.float32),
                            rng.integers(0, 2, T), np.ones(T, np.float32),
                            np.linspace(T, 1, T).astype(np.float32),
                            rng.dirichlet([1, 1], size=T).astype(np.float32))


def trainer(tmp_path, replay: ServiceProcess, name: str, *flags: str) -> ServiceProcess:
    args = ["--game", "cartpole", "--replay", replay.grpc_address, "--models", str(tmp_path / "models"),
            "--checkpoint-dir", str(tmp_path / "checkpoints"), "--metrics-port", "0",
            "--batch-size", "32", "--export-interval", "10", "--log-interval", "5",
            "--sample-timeout", "1", "--seed", "0", *flags]
    return ServiceProcess("services.trainer", args, log_path=tmp_path / f"{name}.log").start()


def wait_for(condition, process: ServiceProcess, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met; trainer log:\n" + process.tail())
        threading.Event().wait(0.05)


def wait_exit(process: ServiceProcess, timeout_s: float = 180.0) -> int:
    wait_for(lambda: process.poll() is not None, process, timeout_s)
    process.stop()  # joins the log reader
    return process.poll()


def events(process: ServiceProcess, name: str) -> list[dict]:
    return [e for e in list(process.events) if e["event"] == name]


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def test_help():
    result = subprocess.run([sys.executable, "-m", "services.trainer", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--game", "--replay", "--models", "--checkpoint-dir", "--resume", "--steps",
                 "--batch-size", "--learning-rate", "--export-interval", "--checkpoint-interval",
                 "--keep-versions", "--metrics-port", "--seed", "--tensorboard-dir"):
        assert flag in result.stdout, flag


def test_trains_exports_checkpoints_resumes_and_stops_on_sigterm(start_service, tmp_path):
    replay = start_service("services.replay", ["--game", "cartpole", "--data-dir", str(tmp_path / "replay"),
                                               "--min-positions", "100", "--seed", "0"])
    client = ReplayClient(replay.grpc_address, timeout_s=10)
    try:
        # Run 1 starts before the replay has enough positions: it exports version 0, is ready,
        # and waits (rate limited) until games arrive.
        first = trainer(tmp_path, replay, "trainer-1", "--steps", "20", "--resume")
        ready = first.wait_ready(120)
        assert ready["grpc_port"] is None and ready["metrics_port"] > 0 and ready["step"] == 0
        assert list_versions(tmp_path / "models") == [0]
        device = events(first, "device")[0]
        assert device["device"] == ("/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0")
        wait_for(lambda: events(first, "waiting_for_replay"), first)
        assert "min_positions=100" in events(first, "waiting_for_replay")[0]["message"]
        client.add_games([cartpole_game(f"g{i}", 40, i) for i in range(4)])
        assert wait_exit(first) == 0, first.tail()
        assert list_versions(tmp_path / "models") == [0, 10, 20]
        for version in (0, 10, 20):
            model = load_version(tmp_path / "models", version)
            assert set(model.signatures) == {INITIAL_INFERENCE, RECURRENT_INFERENCE}
            out = model.initial_inference(np.zeros((2, 4), np.float32))
            step = model.recurrent_inference(out["hidden_state"], np.array([0, 1], np.int32))
            assert out["value"].shape == (2,) and step["policy_logits"].shape == (2, 2)
        assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-20")
        train_events = events(first, "train")
        assert [e["step"] for e in train_events] == [5, 10, 15, 20]
        assert not events(first, "version_exists")
        assert all(np.isfinite(e["loss"]) for e in train_events)
        stopped = events(first, "stopped")[0]
        assert stopped["exit_code"] == 0 and stopped["priority_updates_sent"] == 20 * 32
        replay_page = scrape(replay.ready["metrics_port"])
        assert f"{replay_metrics.PRIORITY_UPDATES_TOTAL} 640.0" in replay_page
        assert list((tmp_path / "tensorboard").iterdir())

        # Run 2 resumes at 20 and continues to 30.
        second = trainer(tmp_path, replay, "trainer-2", "--steps", "30", "--resume")
        assert second.wait_ready(120)["step"] == 20
        assert wait_exit(second) == 0, second.tail()
        assert events(second, "started")[0]["resumed"] is True
        assert events(second, "exported")[-1]["version"] == 30
        assert list_versions(tmp_path / "models") == [0, 10, 20, 30]
        assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-30")

        # Run 3 trains until SIGTERM: it finishes its step, checkpoints and exits 0.
        third = trainer(tmp_path, replay, "trainer-3", "--resume")
        assert third.wait_ready(120)["step"] == 30
        wait_for(lambda: events(third, "train"), third)
        metrics = scrape(third.ready["metrics_port"])
        for name in (trainer_metrics.STEPS_TOTAL, trainer_metrics.STEPS_PER_SECOND,
                     f'{trainer_metrics.LOSS}{{kind="policy"}}', trainer_metrics.LEARNING_RATE,
                     f"{trainer_metrics.EXPORTED_VERSION} 30.0", trainer_metrics.BATCH_WAIT_SECONDS + "_count",
                     trainer_metrics.STEP_SECONDS + "_count"):
            assert name in metrics, name
        third.signal(signal.SIGTERM)
        assert wait_exit(third) == 0, third.tail()
        final = events(third, "stopped")[0]["step"]
        assert final > 30
        assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith(f"ckpt-{final}")
        assert events(third, "finished")[0]["reason"] == "stopped"
    finally:
        client.close()


def unreachable() -> str:
    """A loopback address nothing listens on (a port bound once and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_sigterm_right_after_start_is_a_clean_exit(tmp_path):
    process = ServiceProcess("services.trainer", [
        "--game", "cartpole", "--replay", unreachable(), "--models", str(tmp_path / "models"),
        "--checkpoint-dir", str(tmp_path / "checkpoints"), "--metrics-port", "0"],
        log_path=tmp_path / "trainer.log").start()
    wait_for(lambda: events(process, "starting") or process.poll() is not None, process)
    process.signal(signal.SIGTERM)  # the stop handlers are in place: TensorFlow is loading now
    assert wait_exit(process) == 0, process.tail()
    stopped = events(process, "stopped")
    assert len(stopped) == 1 and stopped[0]["exit_code"] == 0, process.tail()


def test_a_second_run_on_the_same_directories_says_what_to_do(tmp_path):
    models, checkpoints = tmp_path / "models", tmp_path / "checkpoints"
    args = ["--game", "cartpole", "--replay", unreachable(), "--models", str(models),
            "--checkpoint-dir", str(checkpoints), "--metrics-port", "0", "--seed", "0"]
    first = ServiceProcess("services.trainer", args, log_path=tmp_path / "first.log").start()
    first.wait_ready(120)  # version 0 and checkpoint 0 are written; the replay is down
    wait_for(lambda: events(first, "replay_unavailable"), first)
    first.signal(signal.SIGTERM)
    assert wait_exit(first) == 0, first.tail()

    # The same command again (the README's, without --resume): refused with what to do.
    second = ServiceProcess("services.trainer", args, log_path=tmp_path / "second.log").start()
    assert wait_exit(second) == 2, second.tail()
    refused = events(second, "checkpoint_unusable")
    assert len(refused) == 1 and not events(second, "ready"), second.tail()
    message = refused[0]["message"]
    assert "pass --resume to continue that run" in message, message
    assert f"remove {checkpoints} and {models}" in message, message
    assert list_versions(models) == [0]  # nothing of the first run was touched

    # Passing --resume, as the message says, continues the run.
    third = ServiceProcess("services.trainer", args + ["--resume"], log_path=tmp_path / "third.log").start()
    assert third.wait_ready(120)["step"] == 0
    assert events(third, "started")[0]["resumed"] is True
    third.signal(signal.SIGTERM)
    assert wait_exit(third) == 0, third.tail()
