"""MuZero's value transform and categorical support, TensorFlow and NumPy, both directions."""

import numpy as np
import pytest
import tensorflow as tf

from models import support

S = 10
VALUES = np.array([-1e4, -300.0, -99.0, -8.0, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.25, 1.0, 2.0, 3.0,
                   8.0, 42.0, 99.0, 120.0, 500.0, 1e4, 1e5])


def test_transform_known_values():
    # h(x) = sign(x)(sqrt(|x|+1)-1) + 0.001 x
    expected = {0.0: 0.0, 3.0: 1.003, -3.0: -1.003, 8.0: 2.008, 99.0: 9.099, -99.0: -9.099, 1.0: np.sqrt(2) - 1 + 1e-3}
    xs = np.array(list(expected), np.float64)
    want = np.array(list(expected.values()))
    np.testing.assert_allclose(support.scalar_transform_np(xs), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(support.scalar_transform(xs).numpy(), want, rtol=1e-6, atol=1e-6)


def test_inverse_is_exact_inverse():
    np.testing.assert_allclose(support.inverse_scalar_transform_np(support.scalar_transform_np(VALUES)),
                               VALUES, rtol=1e-9, atol=1e-9)
    ys = np.linspace(-40, 40, 161)
    np.testing.assert_allclose(support.scalar_transform_np(support.inverse_scalar_transform_np(ys)), ys,
                               rtol=1e-9, atol=1e-9)
    tf_round_trip = support.inverse_scalar_transform(support.scalar_transform(VALUES.astype(np.float32)))
    np.testing.assert_allclose(tf_round_trip.numpy(), VALUES, rtol=2e-4, atol=1e-4)


def test_float32_inverse_is_accurate_to_a_few_ulps():
    """The textbook float32 h^-1 loses three digits to cancellation (steps of ~1.2e-4 near 0,
    5e-4 at y = 5), so two kernels whose y differs by one rounding decoded 1e-4 apart."""
    ys = np.linspace(-S, S, 40001).astype(np.float32)
    exact = support.inverse_scalar_transform_np(ys.astype(np.float64))
    got = support.inverse_scalar_transform(ys).numpy().astype(np.float64)
    eps32 = float(np.finfo(np.float32).eps)
    assert np.max(np.abs(got - exact) / (1.0 + np.abs(exact))) <= 8 * eps32
    # One ulp more of y moves the decoded value by about 1/h'(x) ulps, not by a step of 1e-4.
    nudged = support.inverse_scalar_transform(np.nextafter(ys, np.float32(np.inf))).numpy()
    slope = 2 * np.sqrt(np.abs(exact) + 1) + 1  # >= 1/h'(x)
    ulp = np.spacing(np.abs(ys)).astype(np.float64)
    assert np.all(np.abs(nudged - got) <= slope * ulp + 8 * eps32 * (1 + np.abs(exact)))


def test_two_hot_known_value():
    x = support.inverse_scalar_transform_np(np.array([2.3, -0.25, 0.0, 10.0, -10.0]))
    probs = support.scalar_to_support_np(x, S)
    assert probs.shape == (5, 2 * S + 1)
    expected = np.zeros((5, 2 * S + 1), np.float32)
    expected[0, S + 2], expected[0, S + 3] = 0.7, 0.3
    expected[1, S - 1], expected[1, S] = 0.25, 0.75
    expected[2, S] = 1.0
    expected[3, 2 * S] = 1.0
    expected[4, 0] = 1.0
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_allclose(support.scalar_to_support(x, S).numpy(), expected, atol=1e-5)


def test_support_round_trip_inside_range():
    inside = VALUES[np.abs(support.scalar_transform_np(VALUES)) <= S]
    probs = support.scalar_to_support_np(inside, S)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    assert (probs >= 0).all() and ((probs > 0).sum(-1) <= 2).all()
    np.testing.assert_allclose(support.probabilities_to_scalar_np(probs, S), inside, rtol=1e-5, atol=1e-5)
    tf_probs = support.scalar_to_support(inside.astype(np.float32), S).numpy()
    np.testing.assert_allclose(tf_probs, probs, atol=1e-5)


def test_out_of_range_values_clip_to_the_ends():
    probs = support.scalar_to_support_np(np.array([1e5, -1e5]), S)
    assert probs[0, -1] == 1.0 and probs[1, 0] == 1.0
    tf_probs = support.scalar_to_support(np.array([1e5, -1e5], np.float32), S).numpy()
    np.testing.assert_allclose(tf_probs, probs, atol=1e-6)


@pytest.mark.parametrize("value", [-50.0, -2.5, 0.0, 0.7, 13.0, 99.0])
def test_logits_of_a_two_hot_decode_to_the_value(value):
    probs = support.scalar_to_support_np(np.array([value]), S)
    logits = np.log(np.maximum(probs, 1e-30))
    np.testing.assert_allclose(support.support_to_scalar_np(logits, S), [value], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(support.support_to_scalar(logits.astype(np.float32), S).numpy(), [value],
                               rtol=1e-3, atol=1e-3)


def test_tf_and_numpy_decoders_agree_on_random_logits():
    logits = np.random.default_rng(0).normal(scale=3.0, size=(4, 7, 2 * S + 1)).astype(np.float32)
    np_values = support.support_to_scalar_np(logits, S)
    assert np_values.shape == (4, 7)
    np.testing.assert_allclose(support.support_to_scalar(logits, S).numpy(), np_values, rtol=1e-4, atol=1e-4)


def test_uniform_logits_decode_to_zero():
    np.testing.assert_allclose(support.support_to_scalar(tf.zeros([3, 2 * S + 1]), S).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(support.support_to_scalar_np(np.zeros([3, 2 * S + 1]), S), 0.0, atol=1e-12)


def test_gradients_flow_through_the_decoder():
    logits = tf.Variable(np.random.default_rng(1).normal(size=(3, 2 * S + 1)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(support.support_to_scalar(logits, S))
    grad = tape.gradient(loss, logits).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0


@pytest.mark.parametrize("support_size", [1, 5, 10, 300])
def test_derived_tolerance_covers_logits_off_by_the_allowed_amount(support_size):
    """tests/models/tolerances.py: logits moved by exactly logit_atol + logit_rtol |logit| (the
    worst a kernel may do) and decoded in float32 stay inside the derived tolerance of the
    float64 decode of the unmoved logits; a value moved by 1% of the support does not."""
    from tests.models.tolerances import assert_decoded_close, assert_decoded_matches_logits

    rng = np.random.default_rng(support_size)
    logits = rng.normal(scale=3.0, size=(256, 2 * support_size + 1))
    atol, rtol = 1e-5, 1e-4
    moved = logits + rng.choice([-1.0, 1.0], logits.shape) * (atol + rtol * np.abs(logits))
    decoded = support.support_to_scalar(moved.astype(np.float32), support_size).numpy()
    assert_decoded_matches_logits(decoded, logits, support_size, logit_atol=atol, logit_rtol=rtol)
    reference = support.support_to_scalar(logits.astype(np.float32), support_size).numpy()
    assert_decoded_close(decoded, reference, support_size, logit_atol=atol + rtol * np.abs(logits).max())
    wrong = support.inverse_scalar_transform_np(
        support.scalar_transform_np(decoded.astype(np.float64)) + 0.01 * support_size).astype(np.float32)
    with pytest.raises(AssertionError, match="derived tolerance"):
        assert_decoded_matches_logits(wrong, logits, support_size, logit_atol=atol, logit_rtol=rtol)
    with pytest.raises(AssertionError, match="derived tolerance"):
        assert_decoded_close(wrong, reference, support_size, logit_atol=atol)
