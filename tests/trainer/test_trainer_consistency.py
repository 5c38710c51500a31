"""EfficientZero's temporal consistency loss: its definition, its stop-gradient, masking,
symmetry augmentation, the trainer with it on (export, checkpoints) and nothing changed with it
off. Real TensorFlow on tiny networks."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from prometheus_client import CollectorRegistry

from games.symmetry import Symmetries, dihedral_cells
from models.export import INITIAL_INFERENCE, RECURRENT_INFERENCE, load_version
from models.networks import MuZeroNetwork
from services.trainer.losses import (BATCH_KEYS, batch_keys, batch_signature, consistency_loss,
                                     consistency_targets, muzero_loss, negative_cosine_similarity,
                                     unroll)
from services.trainer.metrics import TrainerMetrics
from services.trainer.prefetch import augment_batch, prepare_batch
from services.trainer.trainer import CheckpointMismatch, Trainer
from trainer_helpers import BOARD, K, S, SPEC, TINY, TINY_RESNET, LogSink, batch, config

HEADS = dict(projection_hidden_size=16, projection_size=8, prediction_hidden_size=16)
ON = TINY.replace(consistency_weight=2.0, **HEADS)


def with_unroll(arrays: dict, spec=SPEC, seed: int = 1) -> dict:
    """`arrays` plus unroll_observations whose index 0 is the observation, as the replay sends."""
    rng = np.random.default_rng(seed)
    B, steps = len(arrays["observation"]), arrays["actions"].shape[1] + 1
    if spec.observation_dtype == "uint8":
        unroll = rng.integers(0, 2, (B, steps, *spec.observation_shape)).astype(np.float32)
    else:
        unroll = rng.normal(size=(B, steps, *spec.observation_shape)).astype(np.float32)
    unroll[:, 0] = arrays["observation"]
    return {**arrays, "unroll_observations": unroll}


def tensors(arrays: dict) -> dict:
    return {name: tf.constant(value) for name, value in arrays.items()}


def numpy_negative_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-5)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-5)
    return -(a * b).sum(-1)


def test_negative_cosine_similarity_by_hand():
    a = tf.constant([[1.0, 0.0], [3.0, 4.0], [0.0, 0.0], [1.0, 2.0]])
    b = tf.constant([[1.0, 1.0], [6.0, 8.0], [1.0, 0.0], [-2.0, -4.0]])
    np.testing.assert_allclose(negative_cosine_similarity(a, b).numpy(),
                               [-1 / np.sqrt(2), -1.0, 0.0, 1.0], rtol=1e-6, atol=1e-7)


def test_the_network_builds_heads_only_with_the_loss_on_and_keeps_its_seeded_weights():
    off, on = MuZeroNetwork(SPEC, TINY, seed=3), MuZeroNetwork(SPEC, ON, seed=3)
    assert off.consistency is None and on.consistency is not None
    # The three networks are the same with or without the heads; the heads come last.
    assert len(on.variables) > len(off.variables)
    for a, b in zip(off.variables, on.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    heads = on.consistency.trainable_weights
    assert on.trainable_variables[-len(heads):] == heads
    hidden = on.initial_inference(np.zeros((5, 4), np.float32)).hidden_state
    assert on.project(hidden).shape == (5, 8)
    assert on.predict_projection(on.project(hidden)).shape == (5, 8)
    with pytest.raises(ValueError, match="no consistency heads"):
        off.project(hidden)


def test_loss_equals_a_hand_computation_with_masks_and_importance_weights():
    network = MuZeroNetwork(SPEC, ON, seed=0)
    data = with_unroll(batch(B=6, seed=2))
    data["mask"][1] = [1, 1, 0]  # record ends after t+1: step 2 is past the end
    data["mask"][2] = [1, 0, 0]
    data["unroll_observations"][1, 2] = 0.0  # what the replay sends past the end
    data["unroll_observations"][2, 1:] = 0.0
    data["importance_weight"] = np.linspace(0.5, 1.0, 6).astype(np.float32)
    weight = 2.0
    losses = muzero_loss(network, tensors(data), S, consistency_weight=weight, training=False)
    base = muzero_loss(network, tensors(data), S, training=False)

    # By hand, one step at a time: p_k = predict(project(s_k)), z_k = project(repr(o_{t+k})).
    outputs = unroll(network, data["observation"], data["actions"], training=False)
    per_sample = np.zeros(6)
    for k in range(1, K + 1):
        p = network.predict_projection(network.project(outputs[k].hidden_state)).numpy()
        z = network.project(network.represent(data["unroll_observations"][:, k])).numpy()
        per_sample += (1.0 / K) * data["mask"][:, k] * numpy_negative_cosine(p, z)
    assert per_sample[2] == 0.0 and per_sample[0] != 0.0
    expected = np.mean(data["importance_weight"] * per_sample)
    np.testing.assert_allclose(losses.consistency.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses.per_sample.numpy(), base.per_sample.numpy() + weight * per_sample,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses.total.numpy(), base.total.numpy() + weight * expected, rtol=1e-5)
    # The other terms are untouched.
    for name in ("value", "reward", "policy", "priorities"):
        np.testing.assert_array_equal(getattr(losses, name).numpy(), getattr(base, name).numpy())


@pytest.mark.parametrize("training", [False, True])
def test_steps_past_the_end_count_for_nothing_whatever_the_padding(training):
    # Past the end the target is built from the record's last observation, not the padding, so
    # even batch norm in training mode does not see what the replay pads with.
    network = MuZeroNetwork(SPEC, ON, seed=0)
    data = with_unroll(batch(B=8, seed=4))
    data["mask"][:4] = [1, 1, 0]
    data["unroll_observations"][:4, 2] = 0.0
    padded = {**data, "unroll_observations": data["unroll_observations"].copy()}
    padded["unroll_observations"][:4, 2] = 123.0
    a = muzero_loss(network, tensors(data), S, consistency_weight=1.0, training=training)
    b = muzero_loss(network, tensors(padded), S, consistency_weight=1.0, training=training)
    np.testing.assert_allclose(a.per_sample.numpy(), b.per_sample.numpy(), rtol=1e-6)
    # With every step past the end masked, the term is exactly 0.
    data["mask"][:] = [1, 0, 0]
    assert muzero_loss(network, tensors(data), S, consistency_weight=1.0,
                       training=training).consistency.numpy() == 0.0


@pytest.mark.parametrize("settings, spec", [(ON, SPEC), (TINY_RESNET.replace(consistency_weight=2.0, **HEADS), BOARD)],
                         ids=["fc", "resnet"])
def test_the_target_branch_gets_no_gradient_and_the_online_branch_does(settings, spec):
    network = MuZeroNetwork(spec, settings, seed=0)
    data = with_unroll(batch(spec, B=8, seed=5), spec)
    unroll_observations = tf.constant(data["unroll_observations"])
    mask = tf.constant(data["mask"])
    representation = network.representation.trainable_weights
    # The prediction side's input fixed (constant hidden states): all that could reach the
    # representation (or the observations) is the target branch.
    rng = np.random.default_rng(0)
    fixed = [tf.constant(rng.uniform(size=(8, *network.hidden_shape)).astype(np.float32)) for _ in range(K)]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(unroll_observations)
        loss = tf.reduce_mean(consistency_loss(network, fixed, unroll_observations, mask, training=True))
    assert all(g is None for g in tape.gradient(loss, representation))
    assert tape.gradient(loss, unroll_observations) is None
    heads = tape.gradient(loss, network.consistency.trainable_weights)
    assert all(g is not None for g in heads)  # projection and prediction, via the online side
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in heads) > 0
    # The targets themselves carry no gradient at all.
    with tf.GradientTape() as tape:
        tape.watch(unroll_observations)
        target = tf.reduce_sum(consistency_targets(network, unroll_observations, mask))
    assert all(g is None for g in tape.gradient(target, [unroll_observations, *network.variables]))

    # Through the whole loss the representation learns from the consistency term via s_0 and
    # the dynamics (the online branch), and only that way: the same gradient as with the
    # targets frozen as constants.
    batch_tensors = tensors(data)
    state = representation + [v for v in network.dynamics.trainable_weights if "reward" not in v.path]
    with tf.GradientTape() as tape:
        online = muzero_loss(network, batch_tensors, settings.network.support_size,
                             consistency_weight=1.0, training=False).consistency
    through_loss = tape.gradient(online, state)
    assert all(g is not None for g in through_loss)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in through_loss) > 0
    frozen = consistency_targets(network, unroll_observations, mask, training=False)
    with tf.GradientTape() as tape:
        outputs = unroll(network, batch_tensors["observation"], batch_tensors["actions"], training=False)
        hidden = tf.stack([o.hidden_state for o in outputs[1:]], axis=1)
        flat = tf.reshape(hidden, [-1, *network.hidden_shape])
        p = tf.reshape(network.predict_projection(network.project(flat)), [8, K, -1])
        steps = negative_cosine_similarity(p, tf.constant(frozen.numpy()))
        by_hand = tf.reduce_mean(tf.reduce_sum(steps * mask[:, 1:] / K, axis=1))
    for a, b in zip(through_loss, tape.gradient(by_hand, state)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)


def test_with_weight_zero_nothing_changes():
    assert batch_keys(False) == BATCH_KEYS and "unroll_observations" not in batch_signature(SPEC, K)
    assert batch_signature(SPEC, K, unroll_observations=True)["unroll_observations"].shape.as_list() == [None, K + 1, 4]
    network = MuZeroNetwork(SPEC, TINY, seed=0)
    data = batch(B=8)
    plain = muzero_loss(network, tensors(data), S)
    extra = muzero_loss(network, tensors(with_unroll(data)), S, consistency_weight=0.0)
    for a, b in zip(plain, extra):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert plain.consistency.numpy() == 0.0
    # prepare_batch leaves unroll observations out unless asked for them.
    assert "unroll_observations" not in prepare_batch(with_unroll(data), SPEC, K)
    with pytest.raises(ValueError, match="unroll_observations is missing"):
        prepare_batch(data, SPEC, K, unroll_observations=True)
    with pytest.raises(ValueError, match=r"unroll_observations has shape \[8, 2, 4\]"):
        prepare_batch({**data, "unroll_observations": np.zeros((8, 2, 4))}, SPEC, K, unroll_observations=True)
    with pytest.raises(ValueError, match="needs the batch's unroll_observations"):
        muzero_loss(MuZeroNetwork(SPEC, ON, seed=0), tensors(data), S, consistency_weight=1.0)


class FakeReplay:
    """A replay client that records every SampleBatch request and answers synthetic batches."""

    def __init__(self, spec=SPEC) -> None:
        self.spec = spec
        self.requests: list[dict] = []
        self.updates = 0

    def sample_batch(self, batch_size, **kwargs):
        self.requests.append({"batch_size": batch_size, **kwargs})
        data = batch(self.spec, B=batch_size, seed=len(self.requests))
        if kwargs.get("include_unroll_observations"):
            data = with_unroll(data, self.spec, seed=len(self.requests))
        return data

    def update_priorities(self, keys, positions, priorities, timeout_s=None):
        self.updates += 1
        return len(keys), 0


@pytest.mark.parametrize("weight", [0.0, 2.0])
def test_the_service_asks_for_unroll_observations_only_with_the_loss_on(tmp_path, weight):
    from services.trainer.service import serve

    replay = FakeReplay()
    sink = LogSink()
    settings = TINY.replace(consistency_weight=weight, **HEADS)
    worker = serve(config(tmp_path, settings=settings, steps=4, metrics_port=0, sample_merge=1),
                   sink.log, registry=CollectorRegistry(), replay=replay)
    worker.wait()
    assert worker.exit_code == 0, sink.stream.getvalue()[-3000:]
    assert replay.requests
    for request in replay.requests:
        if weight:
            assert request == {"batch_size": 16, "num_unroll_steps": K, "timeout_s": 10.0,
                               "include_unroll_observations": True}
        else:  # exactly the request of before: the flag is not even passed
            assert request == {"batch_size": 16, "num_unroll_steps": K, "timeout_s": 10.0}
    train = sink.events("train")
    assert train and all(("consistency_loss" in e) == bool(weight) for e in train)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_a_trainer_step_with_the_loss_on_exports_the_same_two_signatures(tmp_path, jit):
    sink = LogSink()
    trainer = Trainer(config(tmp_path / "on", settings=ON, steps=3, jit_compile=jit), log=sink.log,
                      metrics=TrainerMetrics())
    data = [with_unroll(batch(seed=i), seed=i) for i in range(3)]
    first = trainer.train_step(data[0])
    assert np.isfinite(first.loss) and first.consistency_loss != 0.0
    assert np.isfinite(trainer.compute_losses(data[0]).consistency.numpy())
    assert trainer.run(data[1:]) == 3
    assert trainer.metrics.loss.labels("consistency")._value.get() != 0.0
    trainer.close()
    off = Trainer(config(tmp_path / "off", steps=0), log=LogSink().log, metrics=TrainerMetrics())
    off.export()
    off.close()
    on_model, off_model = load_version(tmp_path / "on" / "models", 3), load_version(tmp_path / "off" / "models", 0)
    assert sorted(on_model.signatures) == sorted(off_model.signatures) == sorted(
        [INITIAL_INFERENCE, RECURRENT_INFERENCE])
    assert sorted(on_model.signature_defs()) == [INITIAL_INFERENCE, RECURRENT_INFERENCE]
    for name in (INITIAL_INFERENCE, RECURRENT_INFERENCE):
        assert on_model.input_specs[name] == off_model.input_specs[name]
        assert on_model.output_specs[name] == off_model.output_specs[name]
    # The heads are no part of a version; the versions hold the same variables.
    names = lambda model: sorted(n for n, _ in tf.train.list_variables(str(model.path / "variables" / "variables")))  # noqa: E731
    assert not any("consistency" in n for n in names(on_model)) and names(on_model) == names(off_model)
    # And the version is the trained network.
    observation = data[0]["observation"][:4]
    np.testing.assert_allclose(on_model.initial_inference(observation)["value"],
                               trainer.network.initial_inference(observation).value.numpy(), atol=1e-5)


def test_checkpoints_round_trip_the_heads(tmp_path):
    first = Trainer(config(tmp_path, settings=ON, steps=2), log=LogSink().log, metrics=TrainerMetrics())
    assert first.run([with_unroll(batch(seed=i)) for i in range(2)]) == 2
    first.close()
    heads = [v.numpy() for v in first.network.consistency.weights]  # moving statistics included
    slots = [v.numpy() for v in first.optimizer.variables]
    resumed = Trainer(config(tmp_path, settings=ON, resume=True, seed=7), log=LogSink().log,
                      metrics=TrainerMetrics())
    assert resumed.restore() == 2
    for saved, restored in zip(heads, resumed.network.consistency.weights):
        np.testing.assert_array_equal(saved, restored.numpy())
    assert len(slots) == len(resumed.optimizer.variables)
    for saved, restored in zip(slots, resumed.optimizer.variables):
        np.testing.assert_array_equal(saved, restored.numpy())
    assert any(np.any(h != 0) for h in heads[-4:])
    resumed.close()
    # A run without the loss cannot silently continue from one with it into one with heads
    # missing from its checkpoint, and vice versa the heads are simply unused.
    no_heads_dir = tmp_path / "plain"
    plain = Trainer(config(no_heads_dir, steps=1), log=LogSink().log, metrics=TrainerMetrics())
    plain.run([batch()])
    plain.close()
    with pytest.raises(CheckpointMismatch, match="consistency"):
        Trainer(config(no_heads_dir, settings=ON, resume=True), log=LogSink().log,
                metrics=TrainerMetrics()).restore()


def test_symmetries_map_the_unroll_observations_with_the_observation():
    symmetries = Symmetries(dihedral_cells(3), dihedral_cells(3))
    data = with_unroll(batch(BOARD, B=32, seed=6), BOARD)
    data = prepare_batch(data, BOARD, K, unroll_observations=True)
    mapped = augment_batch(data, symmetries, np.random.default_rng(0))
    # Index 0 is the observation: it stays equal to the (mapped) observation.
    np.testing.assert_array_equal(mapped["unroll_observations"][:, 0], mapped["observation"])
    # Every board of a sample moved under the map its observation moved under.
    plain = augment_batch({k: v for k, v in data.items() if k != "unroll_observations"}, symmetries,
                          np.random.default_rng(0))
    np.testing.assert_array_equal(plain["observation"], mapped["observation"])
    np.testing.assert_array_equal(plain["actions"], mapped["actions"])
    np.testing.assert_array_equal(plain["target_policy"], mapped["target_policy"])
    which = np.random.default_rng(0).integers(len(symmetries), size=32)
    for k in range(K + 1):
        expected, _, _ = symmetries.augment(data["unroll_observations"][:, k], data["actions"],
                                            data["target_policy"], which)
        np.testing.assert_array_equal(mapped["unroll_observations"][:, k], expected)
    assert mapped["unroll_observations"].shape == data["unroll_observations"].shape


def test_settings_and_flags():
    from services.trainer.__main__ import parse_args

    base = ["--game", "cartpole", "--replay", "127.0.0.1:1", "--models", "m", "--checkpoint-dir", "c"]
    assert parse_args(base).consistency_weight == 0.0 and not parse_args(base).consistency
    config = parse_args(base + ["--consistency-weight", "2", "--projection-size", "32",
                                "--projection-hidden-size", "64", "--prediction-hidden-size", "16"])
    training = config.settings.training
    assert config.consistency and training.consistency_weight == 2.0
    assert (training.projection_size, training.projection_hidden_size, training.prediction_hidden_size) == (32, 64, 16)
    for flags, message in ((["--consistency-weight", "-1"], "consistency-weight must be a finite number >= 0"),
                           (["--projection-size", "0"], "projection-size must be an int >= 1, got 0")):
        with pytest.raises(SystemExit):
            parse_args(base + flags)
    with pytest.raises(ValueError, match="consistency_weight must be a finite number >= 0 .*got nan"):
        TINY.replace(consistency_weight=float("nan"))
