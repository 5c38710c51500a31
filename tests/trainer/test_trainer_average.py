"""Exported versions from a moving average of the weights (`training.ema_decay`): the average
follows its formula step by step, versions hold it (not the step's weights), checkpoints carry
it across a resume, and without it nothing changes. Real TensorFlow and files, tiny networks."""

from __future__ import annotations

import numpy as np
import pytest

from models.export import list_versions, load_version
from services.trainer.trainer import CheckpointMismatch
import trainer_helpers as helpers
from trainer_helpers import TINY, batch

OBSERVATION = batch(B=3, seed=99)["observation"]
DECAY = 0.9


def make_trainer(tmp_path, ema_decay: float = DECAY, **fields):
    return helpers.make_trainer(tmp_path, settings=TINY.replace(ema_decay=ema_decay), **fields)


def weights(network) -> list[np.ndarray]:
    return [v.numpy().astype(np.float64) for v in network.variables]


def test_the_average_follows_its_warmed_up_formula_step_by_step(tmp_path):
    trainer, _ = make_trainer(tmp_path)
    trainer.start()
    expected = weights(trainer.network)  # a new run's average starts at the initial weights
    for a, b in zip(expected, weights(trainer.average_network)):
        np.testing.assert_array_equal(a, b)
    for i in range(6):
        trainer.train_step(batch(seed=i))
        step = i + 1
        decay = min(DECAY, (1 + step) / (10 + step))
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights(trainer.network))]
        for e, a in zip(expected, weights(trainer.average_network)):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    # The average lags the weights: it is neither the first nor the last of them.
    moved = [np.abs(w - a).max() for w, a in zip(weights(trainer.network), weights(trainer.average_network))]
    assert max(moved) > 1e-4


def test_versions_hold_the_average_and_not_the_steps_weights(tmp_path):
    trainer, sink = make_trainer(tmp_path, steps=6, keep_versions=10)  # export_interval 3
    trainer.start()
    trainer.train(batch(seed=i) for i in range(20))
    assert list_versions(tmp_path / "models") == [0, 3, 6]
    exported = load_version(tmp_path / "models", 6).initial_inference(OBSERVATION)["policy_logits"]
    average = trainer.average_network.initial_inference(OBSERVATION).policy_logits.numpy()
    live = trainer.network.initial_inference(OBSERVATION).policy_logits.numpy()
    np.testing.assert_allclose(exported, average, rtol=1e-5, atol=1e-6)
    assert np.abs(exported - live).max() > 1e-4
    assert sink.events("started")[0]["ema_decay"] == DECAY


def test_a_resumed_run_continues_its_average(tmp_path):
    trainer, _ = make_trainer(tmp_path, steps=4)
    trainer.start()
    trainer.train(batch(seed=i) for i in range(20))
    stopped = weights(trainer.average_network)
    trainer.close()
    resumed, _ = make_trainer(tmp_path, resume=True, seed=3)
    assert resumed.start() == 4
    for a, b in zip(stopped, weights(resumed.average_network)):
        np.testing.assert_array_equal(a, b)


def test_turning_the_average_on_in_a_resumed_run_is_refused_by_name(tmp_path):
    plain, _ = make_trainer(tmp_path, ema_decay=0.0, steps=2)
    plain.start()
    plain.train(batch(seed=i) for i in range(5))
    plain.close()
    with pytest.raises(CheckpointMismatch, match="with ema_decay > 0 the checkpoint holds the weights' moving average"):
        make_trainer(tmp_path, resume=True)[0].start()


def test_without_ema_decay_there_is_no_average(tmp_path):
    trainer, sink = make_trainer(tmp_path, ema_decay=0.0, steps=3)
    trainer.start()
    trainer.train(batch(seed=i) for i in range(5))
    assert trainer.average_network is None and trainer._average_pairs == []
    assert "ema_decay" not in sink.events("started")[0]
    exported = load_version(tmp_path / "models", 3).initial_inference(OBSERVATION)["policy_logits"]
    np.testing.assert_allclose(exported, trainer.network.initial_inference(OBSERVATION).policy_logits.numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan"), True])
def test_a_bad_ema_decay_is_refused_by_name(value):
    with pytest.raises(ValueError, match=r"TrainingSettings.ema_decay must be in \[0, 1\) \(0 = off\)"):
        TINY.replace(ema_decay=value)
