"""MuZero's value/reward transform and its categorical support, in TensorFlow and NumPy.

Scalars (values, rewards) are first squashed by MuZero's invertible transform

    h(x)      = sign(x) * (sqrt(|x| + 1) - 1) + eps * x                       (eps = 0.001)
    h^-1(y)   = sign(y) * (((sqrt(1 + 4 eps (|y| + 1 + eps)) - 1) / (2 eps))^2 - 1)

and then represented as a "two-hot" distribution over the 2S+1 integers [-S, S] (S = support
size): h(x) = 2.3 puts 0.7 on 2 and 0.3 on 3. Networks output logits over that support;
`support_to_scalar` decodes logits back to a scalar (softmax, expectation, h^-1).

Every function has a TensorFlow version (for the networks, the losses and the exported graph)
and a NumPy twin with a `_np` suffix (for the replay server and tests). Both work on arrays of
any shape; the support adds one trailing axis of size 2S+1.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

EPSILON = 0.001


def support_width(support_size: int) -> int:
    """2S + 1: the number of logits of a value or reward head."""
    return 2 * support_size + 1


# --- TensorFlow ---------------------------------------------------------------------------------

def scalar_transform(x: tf.Tensor, eps: float = EPSILON) -> tf.Tensor:
    """h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x."""
    x = tf.convert_to_tensor(x, tf.float32)
    return tf.sign(x) * (tf.sqrt(tf.abs(x) + 1.0) - 1.0) + eps * x


def inverse_scalar_transform(y: tf.Tensor, eps: float = EPSILON) -> tf.Tensor:
    """h^-1(y), the exact inverse of `scalar_transform`.

    Computed as root = 2a / (1 + sqrt(1 + 4 eps a)), a = |y| + 1 + eps, and
    h^-1 = sign(y) (root - 1)(root + 1): algebraically the same as the textbook
    ((sqrt(1 + 4 eps a) - 1) / (2 eps))^2 - 1, without its cancellation. In float32 the
    textbook form subtracts 1 from a number near 1 and divides by 2 eps = 0.002, so its result
    moves in steps of about 1.2e-4 sqrt(|x| + 1) (up to 5e-4 over [-5, 5]): one rounding
    difference in y, e.g. another CPU's kernels, changed the decoded value by a whole step.
    This form is accurate to a few float32 ulps.
    """
    y = tf.convert_to_tensor(y, tf.float32)
    a = tf.abs(y) + (1.0 + eps)
    root = 2.0 * a / (1.0 + tf.sqrt(1.0 + 4.0 * eps * a))
    return tf.sign(y) * ((root - 1.0) * (root + 1.0))


def scalar_to_support(x: tf.Tensor, support_size: int, eps: float = EPSILON) -> tf.Tensor:
    """Scalars [...] -> two-hot probabilities [..., 2S+1] of h(x) clipped to [-S, S]."""
    y = tf.clip_by_value(scalar_transform(x, eps), -float(support_size), float(support_size))
    low = tf.floor(y)
    high_weight = y - low
    low_index = tf.cast(low, tf.int32) + support_size
    width = support_width(support_size)
    # At y = S the upper neighbour is S + 1 (off the support) with weight 0: one_hot drops it.
    return (tf.one_hot(low_index, width, dtype=tf.float32) * (1.0 - high_weight)[..., None]
            + tf.one_hot(low_index + 1, width, dtype=tf.float32) * high_weight[..., None])


def support_to_scalar(logits: tf.Tensor, support_size: int, eps: float = EPSILON) -> tf.Tensor:
    """Logits [..., 2S+1] -> scalars [...]: h^-1 of the expected support value."""
    logits = tf.convert_to_tensor(logits, tf.float32)
    probabilities = tf.nn.softmax(logits, axis=-1)
    support = tf.range(-support_size, support_size + 1, dtype=tf.float32)
    return inverse_scalar_transform(tf.reduce_sum(probabilities * support, axis=-1), eps)


# --- NumPy twins --------------------------------------------------------------------------------

def scalar_transform_np(x: np.ndarray, eps: float = EPSILON) -> np.ndarray:
    """NumPy twin of `scalar_transform` (float64 in, float64 out; float32 stays float32)."""
    x = np.asarray(x)
    x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)
    return np.sign(x) * (np.sqrt(np.abs(x) + 1.0) - 1.0) + eps * x


def inverse_scalar_transform_np(y: np.ndarray, eps: float = EPSILON) -> np.ndarray:
    """NumPy twin of `inverse_scalar_transform` (the same cancellation-free form)."""
    y = np.asarray(y)
    y = y if np.issubdtype(y.dtype, np.floating) else y.astype(np.float64)
    a = np.abs(y) + (1.0 + eps)
    root = 2.0 * a / (1.0 + np.sqrt(1.0 + 4.0 * eps * a))
    return np.sign(y) * ((root - 1.0) * (root + 1.0))


def scalar_to_support_np(x: np.ndarray, support_size: int, eps: float = EPSILON) -> np.ndarray:
    """NumPy twin of `scalar_to_support`: float32 [..., 2S+1] two-hot probabilities."""
    y = np.clip(scalar_transform_np(np.asarray(x, np.float64), eps), -support_size, support_size)
    low = np.floor(y)
    high_weight = y - low
    low_index = low.astype(np.int64) + support_size
    width = support_width(support_size)
    out = np.zeros(y.shape + (width,), np.float64)
    np.put_along_axis(out, low_index[..., None], (1.0 - high_weight)[..., None], axis=-1)
    high_index = np.minimum(low_index + 1, width - 1)
    # Where y = S, high_index == low_index and high_weight == 0: adding 0 changes nothing.
    np.put_along_axis(out, high_index[..., None],
                      np.take_along_axis(out, high_index[..., None], axis=-1) + high_weight[..., None],
                      axis=-1)
    return out.astype(np.float32)


def support_to_scalar_np(logits: np.ndarray, support_size: int, eps: float = EPSILON) -> np.ndarray:
    """NumPy twin of `support_to_scalar` (softmax over the last axis, expectation, h^-1)."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    support = np.arange(-support_size, support_size + 1, dtype=np.float64)
    return inverse_scalar_transform_np((probabilities * support).sum(axis=-1), eps)


def probabilities_to_scalar_np(probabilities: np.ndarray, support_size: int,
                               eps: float = EPSILON) -> np.ndarray:
    """Two-hot (or any) probabilities [..., 2S+1] -> scalars: the exact inverse of
    `scalar_to_support_np` for scalars inside the support's range."""
    support = np.arange(-support_size, support_size + 1, dtype=np.float64)
    return inverse_scalar_transform_np((np.asarray(probabilities, np.float64) * support).sum(axis=-1), eps)
