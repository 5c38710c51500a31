"""Stochastic MuZero in the trainer: the unroll through afterstates with the encoder's
straight-through codes, the three extra loss terms against a hand computation, where gradients
flow, and a trainer that fits a batch, exports four-signature versions and serves them to the
agent's search over TensorFlow Serving's API."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from prometheus_client import CollectorRegistry

from models.export import AFTERSTATE_INFERENCE, NUM_CHANCE_CODES, load_version
from models.networks import MuZeroNetwork
from models.support import scalar_to_support
from services.agent.inference import INITIAL_INFERENCE, RECURRENT_INFERENCE
from services.agent.pipeline import PipelinedSearch
from services.agent.search import SearchConfig
from services.common.logs import get_logger
from services.network.__main__ import build_config, build_parser
from services.network.client import NetworkClient
from services.network.metrics import NetworkMetrics
from services.network.server import serve
from services.trainer.losses import UNROLL_OBSERVATIONS, muzero_loss, observations_inside, unroll_stochastic
from services.trainer.metrics import TrainerMetrics
from services.trainer.trainer import Trainer
from tests.trainer.trainer_helpers import K, S, SPEC, TINY, LogSink, batch, config

C = 3
STOCHASTIC = TINY.replace(chance_codes=C, export_interval=2)


def stochastic_batch(seed: int = 0, B: int = 16, learnable: bool = False) -> dict[str, np.ndarray]:
    """`batch` with unroll_observations [B, K+1, 4] (index 0 the observation)."""
    arrays = batch(seed=seed, B=B, learnable=learnable)
    later = np.random.default_rng(seed + 100).normal(size=(B, K, *SPEC.observation_shape)).astype(np.float32)
    arrays[UNROLL_OBSERVATIONS] = np.concatenate([arrays["observation"][:, None], later], axis=1)
    return arrays


@pytest.fixture(scope="module")
def network():
    network = MuZeroNetwork(SPEC, STOCHASTIC, seed=3)
    rng = np.random.default_rng(3)
    network.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype(np.float32) for w in network.get_weights()])
    return network


def tensors(arrays):
    return {name: tf.constant(value) for name, value in arrays.items()
            if name not in ("record_keys", "positions", "model_version")}


def test_the_unroll_alternates_states_and_afterstates_with_the_encoders_codes(network):
    data = stochastic_batch()
    unrolled = unroll_stochastic(network, tf.constant(data["observation"]), tf.constant(data["actions"]),
                                 tf.constant(data[UNROLL_OBSERVATIONS]), tf.constant(data["mask"]), training=False)
    assert len(unrolled.outputs) == K + 1 and len(unrolled.afterstates) == K
    codes = unrolled.codes.numpy()
    assert codes.shape == (16, K, C) and np.all(codes.sum(axis=-1) == 1) and set(np.unique(codes)) <= {0.0, 1.0}
    probabilities = unrolled.code_probabilities.numpy()
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(codes.argmax(axis=-1), probabilities.argmax(axis=-1))
    # Step by step by hand: afterstate of (s_k, a_k), then the next state of (afterstate, code).
    hidden = network.initial_inference(data["observation"]).hidden_state
    for k in range(K):
        after = network.afterstate_inference(hidden, data["actions"][:, k])
        np.testing.assert_allclose(unrolled.afterstates[k].chance_logits.numpy(), after.chance_logits.numpy(),
                                   rtol=1e-5, atol=1e-5)
        encoded = network.encode_chance(data[UNROLL_OBSERVATIONS][:, k], data[UNROLL_OBSERVATIONS][:, k + 1])
        np.testing.assert_array_equal(encoded.numpy().argmax(axis=-1), codes[:, k].argmax(axis=-1))
        hidden = network.chance_inference(after.afterstate, codes[:, k].argmax(axis=-1)).hidden_state
        np.testing.assert_allclose(unrolled.outputs[k + 1].hidden_state.numpy(), hidden.numpy(), rtol=1e-5, atol=1e-5)


def test_past_the_end_the_encoder_sees_the_last_real_observation():
    observations = np.arange(2 * (K + 1) * 4, dtype=np.float32).reshape(2, K + 1, 4)
    mask = np.array([[1, 1, 1], [1, 0, 0]], np.float32)
    inside = observations_inside(tf.constant(observations), tf.constant(mask)).numpy()
    np.testing.assert_array_equal(inside[0], observations[0])
    np.testing.assert_array_equal(inside[1], np.repeat(observations[1, :1], K + 1, axis=0))


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_the_three_terms_match_a_hand_computation(network):
    data = stochastic_batch(seed=4)
    data["mask"][3, 2:] = 0.0   # sample 3 ends after one move: o_{t+2} does not exist
    data["mask"][5, 1:] = 0.0   # sample 5 ends at once
    data[UNROLL_OBSERVATIONS][5, 1:] = 1e3  # what the replay sends past the end is never read
    data["importance_weight"] = np.linspace(0.5, 1.5, 16).astype(np.float32)
    weights = dict(value_loss_weight=0.25, chance_loss_weight=0.7, commitment_weight=0.3)
    losses = muzero_loss(network, tensors(data), S, training=False, train_past_end=False, **weights)
    plain = muzero_loss(network, tensors(data), S, training=False, train_past_end=False,
                        **{**weights, "chance_loss_weight": 0.0, "commitment_weight": 0.0})

    unrolled = unroll_stochastic(network, tf.constant(data["observation"]), tf.constant(data["actions"]),
                                 tf.constant(data[UNROLL_OBSERVATIONS]), tf.constant(data["mask"]), training=False)
    mask, importance = data["mask"].astype(np.float64), data["importance_weight"].astype(np.float64)
    codes, probabilities = unrolled.codes.numpy(), unrolled.code_probabilities.numpy()
    q_ce = np.stack([-(scalar_to_support(tf.constant(data["target_value"][:, k]), S).numpy()
                       * _log_softmax(unrolled.afterstates[k].value_logits.numpy())).sum(axis=-1)
                     for k in range(K)], axis=1)
    chance_ce = np.stack([-(codes[:, k] * _log_softmax(unrolled.afterstates[k].chance_logits.numpy())).sum(axis=-1)
                          for k in range(K)], axis=1)
    afterstate_value = (mask[:, :K] * q_ce).sum(axis=1) / K
    chance = (mask[:, 1:] * chance_ce).sum(axis=1) / K
    commitment = (mask[:, 1:] * ((codes - probabilities) ** 2).sum(axis=-1)).sum(axis=1) / K
    np.testing.assert_allclose(losses.afterstate_value.numpy(), np.mean(importance * afterstate_value), rtol=1e-4)
    np.testing.assert_allclose(losses.chance.numpy(), np.mean(importance * chance), rtol=1e-4)
    np.testing.assert_allclose(losses.commitment.numpy(), np.mean(importance * commitment), rtol=1e-4)
    # Over the batch's real transitions: how evenly the encoder's distribution and its codes spread.
    real = mask[:, 1:, None]
    mean_probability = (real * probabilities).sum(axis=(0, 1)) / real.sum()
    usage = (real * codes).sum(axis=(0, 1)) / real.sum()
    np.testing.assert_allclose(losses.diversity.numpy(), np.log(C) + np.sum(mean_probability * np.log(mean_probability)),
                               rtol=1e-4, atol=1e-6)
    used = usage[usage > 0]
    np.testing.assert_allclose(losses.code_perplexity.numpy(), np.exp(-np.sum(used * np.log(used))), rtol=1e-4)
    with_diversity = muzero_loss(network, tensors(data), S, training=False, train_past_end=False, diversity_weight=2.0,
                                 **weights)
    np.testing.assert_allclose(with_diversity.total.numpy() - losses.total.numpy(), 2.0 * losses.diversity.numpy(),
                               rtol=1e-4, atol=1e-6)
    # The afterstate value term is in both; the other two only where weighted.
    np.testing.assert_allclose(losses.per_sample.numpy() - plain.per_sample.numpy(),
                               0.7 * chance + 0.3 * commitment, rtol=1e-4, atol=1e-5)
    value_only = muzero_loss(network, tensors(data), S, training=False, train_past_end=False, value_loss_weight=0.25,
                             chance_loss_weight=0.0, commitment_weight=0.0)
    np.testing.assert_allclose(plain.per_sample.numpy(), value_only.per_sample.numpy(), rtol=1e-6)
    assert 0.25 * afterstate_value.mean() > 0 and losses.total.numpy() > plain.total.numpy()


def _gradient_norms(network, data, **weights):
    encoder = network.chance_encoder.trainable_weights
    prediction = network.afterstate_prediction.trainable_weights
    with tf.GradientTape() as tape:
        losses = muzero_loss(network, tensors(data), S, training=False, **weights)
    gradients = tape.gradient(losses.total, [*encoder, *prediction])

    def norm(grads):
        return float(sum(0.0 if g is None else tf.reduce_sum(tf.square(g)).numpy() for g in grads))

    return norm(gradients[:len(encoder)]), norm(gradients[len(encoder):])


def test_the_encoder_learns_through_the_straight_through_code_and_the_commitment(network):
    data = stochastic_batch(seed=5)
    # Only the losses downstream of the code: the straight-through estimator carries them.
    through_code, _ = _gradient_norms(network, data, chance_loss_weight=0.0, commitment_weight=0.0)
    assert through_code > 1e-8
    # The chance loss trains the afterstate prediction towards the code, not the code towards the
    # prediction: with every record ending after one move only sigma_0 is trained, which no
    # code precedes (later ones reach the encoder legitimately, through the states before them).
    data["mask"][:, 2:] = 0.0
    base, base_prediction = _gradient_norms(network, data, chance_loss_weight=0.0, commitment_weight=0.0)
    with_chance, with_chance_prediction = _gradient_norms(network, data, chance_loss_weight=5.0, commitment_weight=0.0)
    np.testing.assert_allclose(with_chance, base, rtol=1e-5)
    assert with_chance_prediction > base_prediction
    # The commitment loss pulls on the encoder.
    with_commitment, _ = _gradient_norms(network, data, chance_loss_weight=0.0, commitment_weight=5.0)
    assert abs(with_commitment - base) > 1e-6 * max(base, 1.0)


def test_the_diversity_term_spreads_a_collapsed_encoder(network):
    """All codes one: perplexity 1, and the diversity term's gradient pushes the encoder's mean
    distribution towards the others."""
    data = stochastic_batch(seed=6)
    encoder = network.chance_encoder
    saved = [w.numpy() for w in encoder.trainable_weights]
    try:
        out = encoder.mlp.out   # the last Dense: bias +10 on code 0, no kernel: every input says 0
        out.kernel.assign(np.zeros(out.kernel.shape, np.float32))
        out.bias.assign(np.eye(C, dtype=np.float32)[0] * 10.0)
        with tf.GradientTape() as tape:
            losses = muzero_loss(network, tensors(data), S, training=False, diversity_weight=1.0,
                                 chance_loss_weight=0.0, commitment_weight=0.0)
            collapsed = losses.diversity
        assert float(losses.code_perplexity) == pytest.approx(1.0)
        assert float(collapsed) > 0.9 * np.log(C) - 1e-3
        gradient = tape.gradient(collapsed, out.bias).numpy()
        assert gradient[0] > 0 and np.all(gradient[1:] < 0)  # descent lowers code 0, raises the others
    finally:
        for variable, value in zip(encoder.trainable_weights, saved):
            variable.assign(value)


def test_a_stochastic_loss_without_unroll_observations_says_why(network):
    data = stochastic_batch()
    del data[UNROLL_OBSERVATIONS]
    with pytest.raises(ValueError, match="a stochastic network needs the batch's unroll_observations"):
        muzero_loss(network, tensors(data), S)


@pytest.fixture(scope="module", params=[False, True], ids=["graph", "xla"])
def trained(request, tmp_path_factory):
    """A stochastic trainer after 30 steps on one learnable batch (versions every 2 steps)."""
    root = tmp_path_factory.mktemp("stochastic")
    sink = LogSink()
    trainer = Trainer(config(root, settings=STOCHASTIC, steps=30, jit_compile=request.param), log=sink.log,
                      metrics=TrainerMetrics())
    data = stochastic_batch(seed=7, learnable=True)
    first = trainer.train_step(data)
    assert first.afterstate_value_loss > 0 and first.chance_loss > 0 and first.commitment_loss > 0
    assert trainer.run([data] * 29) == 30
    yield trainer, root, first, sink
    trainer.close()


def test_the_trainer_fits_a_batch_and_reports_every_term(trained):
    trainer, _root, first, sink = trained
    last = sink.events("train")[-1]   # step 30's report
    assert last["step"] == 30
    assert last["loss"] < first.loss
    assert last["afterstate_value_loss"] < first.afterstate_value_loss
    assert last["chance_loss"] < first.chance_loss
    assert last["commitment_loss"] >= 0
    samples = {s.labels["kind"] for family in trainer.metrics.registry.collect() for s in family.samples
               if family.name == "mufleet_trainer_loss"}
    assert {"afterstate_value", "chance", "commitment"} <= samples


def test_versions_are_stochastic_models_equal_to_the_trained_network(trained):
    trainer, root, *_ = trained
    model = load_version(root / "models", 30)
    assert model.stochastic and AFTERSTATE_INFERENCE in model.signatures
    observation = stochastic_batch(seed=9)["observation"][:3]
    got = model.initial_inference(observation)
    assert got[NUM_CHANCE_CODES].tolist() == [C] * 3
    edge = np.array([0, SPEC.num_actions + 2, 1], np.int32)
    step = model.recurrent_inference(got["hidden_state"], edge)
    want = trainer.network.recurrent_inference(got["hidden_state"], edge)
    np.testing.assert_allclose(step["policy_logits"], want.policy_logits.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_the_network_server_serves_it_and_the_search_turns_stochastic(trained, batching):
    _trainer, root, *_ = trained
    args = ["--model_name", "muzero", "--model_base_path", str(root / "models"), "--port", "0",
            "--rest_api_port", "0", "--host", "127.0.0.1"]
    if batching:
        args.append("--enable_batching")
    parser = build_parser()
    server = serve(build_config(parser.parse_args(args), parser), get_logger("network"),
                   metrics=NetworkMetrics(CollectorRegistry()))
    A = SPEC.num_actions
    try:
        with NetworkClient(server.address, timeout_s=30) as client:
            observation = stochastic_batch(seed=3)["observation"][:5]
            root_answer = client.infer(INITIAL_INFERENCE, {"observation": observation}, version=30)
            assert root_answer.num_chance_codes.tolist() == [C] * 5
            assert root_answer.policy_logits.shape == (5, A + C)
            edge = np.array([0, A, A + C - 1, 1, A + 1], np.int32)
            served = client.infer(RECURRENT_INFERENCE, {"hidden_state": root_answer.hidden_state, "action": edge},
                                  version=30)
            direct = load_version(root / "models", 30).recurrent_inference(root_answer.hidden_state, edge)
            np.testing.assert_allclose(served.hidden_state, direct["hidden_state"], rtol=1e-5, atol=1e-6)
            # The agent's search asked for Gumbel: the model's chance codes put chance nodes under it,
            # with one request per step for all games and both kinds of node.
            search = PipelinedSearch(client, SearchConfig.from_settings(TINY, num_simulations=12), 5, A)
            move = search.search(observation, np.ones((5, A), bool), np.random.default_rng(1))
            inner = search._searches[0]
            assert inner.config.search == "stochastic_gumbel" and inner.num_edges == A + C
            assert inner.is_chance.any()
            assert move.versions.tolist() == [30] * 5
            np.testing.assert_allclose(move.policies.sum(axis=1), 1.0, rtol=1e-5)
            assert np.isfinite(move.root_values).all()
    finally:
        server.stop()
