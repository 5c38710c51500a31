"""Checkpoints and versions written off the training thread, from a snapshot of their step.

Real TensorFlow and files, tiny networks. To show that a write runs while training goes on, a
test holds the writer thread inside the real write (an Event it waits on, set by the batch
iterator a few steps later): the live weights have moved on by then, and what is written must
still be the step it was taken at.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import tensorflow as tf

from models import export
from models.export import VersionExporter, list_versions, load_version
from models.networks import MuZeroNetwork
from services.trainer.trainer import Trainer
from tests.models.tolerances import assert_decoded_matches_logits
from trainer_helpers import SPEC, TINY, LogSink, batch, config, make_trainer

OBSERVATION = batch(B=3, seed=99)["observation"]


def state(trainer: Trainer) -> dict:
    """Everything a checkpoint holds, as NumPy: weights, optimizer variables, step."""
    return {"weights": [v.numpy() for v in trainer.network.variables],
            "optimizer": [v.numpy() for v in trainer.optimizer.variables],
            "step": int(trainer.step.numpy()),
            "value_logits": trainer.network.initial_inference(OBSERVATION).value_logits.numpy(),
            "policy_logits": trainer.network.initial_inference(OBSERVATION).policy_logits.numpy()}


def held(function, release: threading.Event, entered: threading.Event):
    """`function`, run only once `release` is set (`entered` is set when the call starts)."""

    def wrapper(*args, **kwargs):
        entered.set()
        assert release.wait(60), "the batch iterator never released the write"
        return function(*args, **kwargs)

    return wrapper


def batches_recording(trainer: Trainer, states: dict, release_at: int | None = None,
                      release: threading.Event | None = None, count: int = 20):
    """Batches; before handing out the batch of step s+1 it records the state after step s
    (the loop has read step s's outputs by then, so on a CPU step s is complete), and at
    step `release_at` sets `release`."""
    for i in range(count):
        step = int(trainer.step.numpy())
        states[step] = state(trainer)
        if release is not None and step == release_at:
            release.set()
        yield batch(seed=i)


def test_an_exported_version_is_its_step_although_training_went_on(tmp_path):
    trainer, sink = make_trainer(tmp_path, steps=7, keep_versions=10)  # export_interval 3
    trainer.start()  # version 0, synchronously
    release, entered = threading.Event(), threading.Event()
    trainer._exporter.export = held(trainer._exporter.export, release, entered)
    states: dict[int, dict] = {}
    # The export of step 3 waits until step 5 is done: it writes while steps 4 and 5 train.
    assert trainer.train(batches_recording(trainer, states, release_at=5, release=release)) == 7
    states[7] = state(trainer)
    assert entered.is_set()
    assert list_versions(tmp_path / "models") == [0, 3, 6, 7]
    assert [e["version"] for e in sink.events("exported")] == [0, 3, 6, 7]
    assert not np.allclose(states[3]["policy_logits"], states[5]["policy_logits"])
    for version in (3, 6, 7):
        exported = load_version(tmp_path / "models", version).initial_inference(OBSERVATION)
        np.testing.assert_allclose(exported["policy_logits"], states[version]["policy_logits"],
                                   rtol=1e-5, atol=1e-6)
        assert_decoded_matches_logits(exported["value"], states[version]["value_logits"],
                                      TINY.network.support_size, logit_atol=1e-5, logit_rtol=1e-5)
    # The export of 6 waited for the held export of 3 (at most one write in flight).
    assert trainer.metrics.exports._value.get() == 4
    assert trainer.metrics.exported_version._value.get() == 7
    assert trainer.metrics.snapshot_wait_seconds._sum.get() >= 0
    assert trainer.latest_version == 7


def test_a_checkpoint_holds_the_optimizer_state_and_step_of_its_step(tmp_path):
    trainer, sink = make_trainer(tmp_path, steps=7, keep_checkpoints=10)
    trainer.start()
    release, entered = threading.Event(), threading.Event()
    trainer.manager.save = held(trainer.manager.save, release, entered)
    states: dict[int, dict] = {}
    assert trainer.train(batches_recording(trainer, states, release_at=5, release=release)) == 7
    assert [e["step"] for e in sink.events("checkpoint")] == [0, 3, 6, 7]
    assert trainer.metrics.checkpoints._value.get() == 4

    # ckpt-3, restored into a fresh trainer, is step 3's weights, Adam moments and count.
    fresh, _ = make_trainer(tmp_path / "fresh", seed=5)
    tf.train.Checkpoint(network=fresh.network, optimizer=fresh.optimizer, step=fresh.step).restore(
        str(tmp_path / "checkpoints" / "ckpt-3")).assert_existing_objects_matched()
    restored = state(fresh)
    assert restored["step"] == 3 and int(fresh.optimizer.iterations.numpy()) == 3
    for name in ("weights", "optimizer"):
        for a, b in zip(states[3][name], restored[name]):
            np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(states[5]["optimizer"], restored["optimizer"]))


def test_a_stopped_run_resumes_at_its_step_with_its_weights(tmp_path):
    trainer, sink = make_trainer(tmp_path)  # steps=0: until stopped
    trainer.start()
    stop = threading.Event()

    def batches():
        for i in range(100):
            if i == 5:
                stop.set()  # as SIGTERM would, while an export of step 3 may still be written
            yield batch(seed=i)

    assert trainer.train(batches(), stop=stop) == 5  # returns with ckpt-5 on disk
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-5")
    assert list_versions(tmp_path / "models") == [0, 3]
    stopped = state(trainer)
    trainer.close()

    resumed, sink2 = make_trainer(tmp_path, resume=True, seed=7)
    assert resumed.start() == 5
    assert sink2.events("started")[0]["resumed"] is True
    again = state(resumed)
    assert again["step"] == 5 and int(resumed.optimizer.iterations.numpy()) == 5
    for name in ("weights", "optimizer"):
        for a, b in zip(stopped[name], again[name]):
            np.testing.assert_array_equal(a, b)
    assert list_versions(tmp_path / "models") == [0, 3, 5]  # the stopped step, exported at start
    np.testing.assert_allclose(load_version(tmp_path / "models", 5).initial_inference(OBSERVATION)["policy_logits"],
                               stopped["policy_logits"], rtol=1e-5, atol=1e-6)


def test_a_crash_in_a_background_export_leaves_no_half_version(tmp_path, monkeypatch):
    trainer, sink = make_trainer(tmp_path, steps=7)
    trainer.start()

    def crashing_rename(src, dst):
        raise OSError("crash before the rename")

    monkeypatch.setattr(export.os, "rename", crashing_rename)  # every export from now on fails
    with pytest.raises(OSError, match="crash before the rename"):
        trainer.train(batch(seed=i) for i in range(20))  # the failure surfaces in the loop
    monkeypatch.undo()
    assert list_versions(tmp_path / "models") == [0]
    assert sorted(os.listdir(tmp_path / "models")) == ["0"]  # the temporary was removed
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-3")  # written first
    trainer.close()

    # A temporary that a kill -9 would leave is removed at the next start, which resumes
    # from ckpt-3 and exports that step.
    (tmp_path / "models" / ".tmp-6-deadbeef" / "variables").mkdir(parents=True)
    resumed, sink2 = make_trainer(tmp_path, resume=True)
    assert resumed.start() == 3
    assert sink2.events("started")[0]["removed_temporaries"] == [".tmp-6-deadbeef"]
    assert sorted(os.listdir(tmp_path / "models")) == ["0", "3"]


def test_a_non_finite_step_is_never_snapshotted(tmp_path):
    trainer, sink = make_trainer(tmp_path, steps=7)
    trainer.start()

    def batches():
        for i in range(20):
            data = batch(seed=i)
            if i == 2:  # step 3, an export step
                data["target_value"][0, 0] = np.nan
            yield data

    with pytest.raises(FloatingPointError):
        trainer.train(batches())
    assert sink.events("non_finite_loss")[0]["step"] == 3
    assert list_versions(tmp_path / "models") == [0]
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-0")


def test_version_exporter_writes_each_versions_weights(tmp_path):
    network = MuZeroNetwork(SPEC, TINY, seed=0)
    exporter = VersionExporter(network)
    outputs = {}
    for version in (1, 2, 3):
        for variable in network.trainable_variables:
            variable.assign(variable + 0.05 * tf.random.normal(variable.shape, seed=version))
        outputs[version] = network.initial_inference(OBSERVATION).policy_logits.numpy()
        assert exporter.export(tmp_path, version, keep=2) == tmp_path / str(version)
    assert exporter.fast
    assert list_versions(tmp_path) == [2, 3]
    for version in (2, 3):
        path = tmp_path / str(version)
        assert {p.name for p in path.iterdir()} == {"saved_model.pb", "variables", "assets",
                                                     "fingerprint.pb"}
        model = load_version(tmp_path, version)
        assert set(model.signatures) == {export.INITIAL_INFERENCE, export.RECURRENT_INFERENCE}
        np.testing.assert_allclose(model.initial_inference(OBSERVATION)["policy_logits"],
                                   outputs[version], rtol=1e-5, atol=1e-6)
        step = model.recurrent_inference(np.zeros((2, *network.hidden_shape), np.float32),
                                         np.array([0, 1], np.int32))
        assert step["policy_logits"].shape == (2, SPEC.num_actions)
    with pytest.raises(FileExistsError):
        exporter.export(tmp_path, 3)
    with pytest.raises(ValueError, match="version"):
        exporter.export(tmp_path, -1)
    # A version of the full save and one of the exporter hold the same model.
    export.export_version(network, tmp_path, 4)
    exporter.export(tmp_path, 5)
    full, fast = load_version(tmp_path, 4), load_version(tmp_path, 5)
    np.testing.assert_allclose(full.initial_inference(OBSERVATION)["hidden_state"],
                               fast.initial_inference(OBSERVATION)["hidden_state"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("crash_in", ["variables", "rename"])
def test_a_crash_mid_export_of_the_exporter_leaves_no_version(tmp_path, monkeypatch, crash_in):
    network = MuZeroNetwork(SPEC, TINY, seed=0)
    exporter = VersionExporter(network)
    exporter.export(tmp_path, 1)  # builds the template
    if crash_in == "variables":
        saved_model_pb, saver = exporter._template

        class HalfWrittenSaver:
            def save(self, prefix):
                saver.save(prefix)
                os.remove(prefix + ".index")  # half written
                raise OSError("disk full")

        exporter._template = (saved_model_pb, HalfWrittenSaver())
    else:
        def crashing_rename(src, dst):
            raise OSError("crash before the rename")

        monkeypatch.setattr(export.os, "rename", crashing_rename)
    with pytest.raises(OSError):
        exporter.export(tmp_path, 2)
    assert list_versions(tmp_path) == [1]
    assert os.listdir(tmp_path) == ["1"]


def test_the_service_splits_merged_samples_and_falls_back_when_refused(tmp_path):
    """serve() with a replay stand-in that refuses calls over 16 positions: one
    `sample_merge_refused` line, then one batch per call; training and its writes go on."""
    import grpc
    from prometheus_client import CollectorRegistry

    from services.trainer.service import serve
    from tests.grpc_fakes import FakeRpcError

    class Replay:
        def __init__(self) -> None:
            self.sizes: list[int] = []
            self.updated = 0

        def sample_batch(self, batch_size, num_unroll_steps=0, timeout_s=None):
            self.sizes.append(batch_size)
            if batch_size > 16:
                raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, f"batch_size: {batch_size} too big")
            return batch(B=batch_size, seed=len(self.sizes))

        def update_priorities(self, keys, positions, priorities, timeout_s=None):
            self.updated += len(keys)

    replay, sink = Replay(), LogSink()
    worker = serve(config(tmp_path, steps=4, metrics_port=0, sample_merge=2), sink.log,
                   registry=CollectorRegistry(), replay=replay)
    assert worker.wait(120) and worker.exit_code == 0, sink.events()
    assert replay.sizes[0] == 32 and set(replay.sizes[1:]) == {16}
    [refused] = sink.events("sample_merge_refused")
    assert refused["sample_merge"] == 2 and "too big" in refused["message"]
    assert replay.updated == 4 * 16  # every step's priorities, flushed at the end
    assert list_versions(tmp_path / "models") == [0, 3, 4]
