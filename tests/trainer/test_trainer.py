"""The Trainer without servers: fitting, priorities, export, checkpoints and resume."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tensorflow as tf

from games.cartpole import CartPole
from models.export import INITIAL_INFERENCE, RECURRENT_INFERENCE, list_versions, load_version
from services.trainer.config import TrainerConfig
from tests.models.tolerances import assert_decoded_matches_logits
from services.trainer.trainer import CheckpointExists, learning_rate_at, select_device
from trainer_helpers import BOARD, SPEC, TINY, TINY_RESNET, LogSink, batch, config, make_trainer


def test_fitting_one_batch_lowers_the_loss(tmp_path):
    trainer, _ = make_trainer(tmp_path, settings=TINY.replace(weight_decay=0.0))
    data = batch(B=16, learnable=True)
    first = trainer.train_step(data)
    for _ in range(49):
        last = trainer.train_step(data)
    assert last.step == 50 and trainer.optimizer.iterations.numpy() == 50
    assert last.loss < 0.7 * first.loss, (first.loss, last.loss)
    assert last.value_loss < first.value_loss and last.policy_loss < first.policy_loss
    assert last.reward_loss < first.reward_loss
    assert first.gradient_norm > 0 and first.priorities.shape == (16,)


def test_train_loop_exports_checkpoints_sends_priorities_and_resumes(tmp_path):
    # Run 1: steps 0..5 with export_interval 3 -> versions 0, 3 and the final 5.
    trainer, sink = make_trainer(tmp_path, steps=5, keep_versions=3)
    sent = []
    assert trainer.run([batch(seed=i) for i in range(10)],
                       lambda keys, positions, priorities: sent.append((keys, positions, priorities)),
                       on_ready=lambda step: sent.append(("ready", step))) == 5
    assert sent[0] == ("ready", 0) and len(sent) == 6
    keys, positions, priorities = sent[1]
    np.testing.assert_array_equal(keys, np.arange(16) + 100)
    assert priorities.shape == (16,) and np.all(priorities >= 0)
    assert list_versions(tmp_path / "models") == [0, 3, 5]
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-5")
    assert [e["version"] for e in sink.events("exported")] == [0, 3, 5]
    assert [e["step"] for e in sink.events("train")] == [2, 4]
    assert sink.events("finished")[0]["reason"] == "steps" and not sink.events("version_exists")
    evaluated = trainer.compute_losses(batch(seed=0))  # no update
    assert np.isfinite(evaluated.total.numpy()) and trainer.current_step == 5
    assert trainer.metrics.steps._value.get() == 5
    assert list((tmp_path / "tensorboard").iterdir())  # event files, without the tensorboard package

    # The exported version 5 is this network: both signatures, same outputs.
    model = load_version(tmp_path / "models")
    assert model.version == 5 and set(model.signatures) == {INITIAL_INFERENCE, RECURRENT_INFERENCE}
    observation = batch(B=3)["observation"]
    exported = model.initial_inference(observation)
    # Compared before the support decode, which amplifies another CPU's rounding of the logits.
    assert_decoded_matches_logits(exported["value"],
                                  trainer.network.initial_inference(observation).value_logits.numpy(),
                                  trainer.config.settings.network.support_size, logit_atol=1e-5, logit_rtol=1e-5)
    step = model.recurrent_inference(exported["hidden_state"], np.array([0, 1, 0], np.int32))
    assert step["policy_logits"].shape == (3, 2)

    weights = trainer.network.get_weights()
    slots = [v.numpy() for v in trainer.optimizer.variables]
    assert len(slots) > 1

    # Without --resume, a directory with checkpoints is refused.
    with pytest.raises(CheckpointExists):
        make_trainer(tmp_path, steps=8)[0].start()

    # Run 2 resumes: step, weights and Adam state continue; version 5 is not exported again.
    resumed, sink2 = make_trainer(tmp_path, steps=8, keep_versions=3, resume=True, seed=7)
    assert resumed.start() == 5
    assert resumed.optimizer.iterations.numpy() == 5
    for a, b in zip(weights, resumed.network.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(slots, resumed.optimizer.variables):
        np.testing.assert_array_equal(a, b.numpy())
    assert sink2.events("exported") == [] and sink2.events("started")[0]["resumed"] is True
    assert resumed.metrics.steps._value.get() == 5  # the counter continues the run's steps
    np.testing.assert_allclose(resumed.learning_rate(), learning_rate_at(TINY, 5))
    assert resumed.train([batch(seed=i) for i in range(10)]) == 8
    assert list_versions(tmp_path / "models") == [5, 6, 8]  # pruned to keep_versions = 3
    assert resumed.optimizer.iterations.numpy() == 8


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    trainer, sink = make_trainer(tmp_path, resume=True)
    assert trainer.start() == 0
    assert sink.events("started")[0]["resumed"] is False
    assert list_versions(tmp_path / "models") == [0]
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-0")
    # A checkpoint of another network is refused with a message, not half restored.
    other, _ = make_trainer(tmp_path, settings=TINY.replace(hidden_size=12), resume=True)
    with pytest.raises(ValueError, match="does not fit"):
        other.start()


def test_stop_finishes_with_a_checkpoint(tmp_path):
    trainer, sink = make_trainer(tmp_path)  # steps=0: until stopped
    trainer.start()
    stop = threading.Event()

    def batches():
        for i in range(100):
            if i == 4:
                stop.set()  # as SIGTERM would, while the loop waits for batch 5
            yield batch(seed=i)

    assert trainer.train(batches(), stop=stop) == 4
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-4")
    assert sink.events("finished")[0]["reason"] == "stopped"
    assert list_versions(tmp_path / "models") == [0, 3]  # no export on stop


def test_non_finite_loss_raises(tmp_path):
    trainer, sink = make_trainer(tmp_path)
    data = batch()
    data["target_value"][0, 0] = np.nan
    with pytest.raises(FloatingPointError):
        trainer.train_step(data)
    assert sink.events("non_finite_loss")


def test_device_is_logged():
    sink = LogSink()
    device = select_device(sink.log)
    event = sink.events("device")[0]
    assert event["device"] == device
    assert device == ("/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0")


def test_config_validation_and_overrides(tmp_path):
    cfg = TrainerConfig.for_game("cartpole", str(tmp_path / "m"), str(tmp_path / "c"), batch_size=32,
                                 learning_rate=None, export_interval=7, steps=3)
    assert (cfg.settings.training.batch_size, cfg.settings.training.export_interval, cfg.steps) == (32, 7, 3)
    assert cfg.settings.training.learning_rate == CartPole.settings.training.learning_rate  # None: the game's
    assert cfg.summary_dir == str((tmp_path / "tensorboard").resolve())
    with pytest.raises(ValueError, match="keep_versions must be >= 1, got 0"):
        config(tmp_path, keep_versions=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainerConfig.for_game("cartpole", "m", "c", batch_size=0)
    assert config(tmp_path).spec == SPEC


def test_resnet_trains_batch_norm_statistics_and_exports_them(tmp_path):
    trainer, _ = make_trainer(tmp_path, spec=BOARD, settings=TINY_RESNET, steps=2)
    moving = [v for v in trainer.network.variables if "moving_mean" in v.path]
    assert moving and all(np.all(v.numpy() == 0) for v in moving)
    assert trainer.run([batch(BOARD, B=8, seed=i) for i in range(2)]) == 2
    assert any(np.any(v.numpy() != 0) for v in moving)  # updated by the training steps
    observation = batch(BOARD, B=3)["observation"]
    exported = load_version(tmp_path / "models", 2).initial_inference(observation)
    np.testing.assert_allclose(exported["policy_logits"],
                               trainer.network.initial_inference(observation).policy_logits.numpy(),
                               rtol=1e-4, atol=1e-5)
