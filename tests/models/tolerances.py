"""Tolerances for comparing MuZero outputs computed by different float32 kernels (the exported
graph and the eager network, a merged batch and a single request, one CPU and another),
derived from float32 rounding and the value transform instead of picked to pass on one machine.

Values and rewards are compared where the graph computes them before decoding: as the expected
support value y = sum_i softmax(logits)_i s_i over the support s = -S..S, i.e. h(x) of the
decoded x. There an error of each logit maps to y linearly and boundedly; after h^-1 it is
scaled by 1/h'(x) = 2 sqrt(|x| + 1) / (1 + 2 eps sqrt(|x| + 1)), up to 12x at the end of a
support of 5 and more for larger ones, so one fixed rtol on x is either loose near 0 or fails
on a CPU that rounds differently.
"""

from __future__ import annotations

import numpy as np

from models.support import EPSILON, scalar_transform_np

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 2**-23
# The float32 decoder (models.support.inverse_scalar_transform) is accurate to 4 eps (1 + |x|)
# (measured over y in [-5, 5]); twice that for margin.
DECODE_ROUNDING_EPS = 8.0


def _support(support_size: int) -> np.ndarray:
    return np.arange(-support_size, support_size + 1, dtype=np.float64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def rounding_tolerance(support_size: int, decoded: np.ndarray) -> np.ndarray:
    """Bound on the error, in y, of one float32 computation of softmax, expectation and h^-1
    that decoded to `decoded`: each of the 2S+1 terms p_i s_i carries a few eps of relative
    error (exp, normalisation, product) and their sum adds up to (2S+1) eps S, so
    4 (2S+1) S eps; the decoder's own error, DECODE_ROUNDING_EPS eps (1 + |x|), counts in y
    scaled by h'(x) <= 1/2 + eps."""
    width = 2 * support_size + 1
    softmax_and_sum = 4.0 * width * support_size * FLOAT32_EPS
    decoder = (0.5 + EPSILON) * DECODE_ROUNDING_EPS * FLOAT32_EPS * (1.0 + np.abs(decoded))
    return softmax_and_sum + decoder


def expectation_tolerance(logits: np.ndarray, support_size: int, logit_atol: float,
                          logit_rtol: float) -> np.ndarray:
    """Bound on |dy| for y = sum_i p_i s_i, p = softmax(logits) [..., 2S+1], when each logit
    may be off by d_i = logit_atol + logit_rtol |logit_i|.

    To first order dy = sum_i p_i (dl_i - sum_j p_j dl_j) s_i = sum_i p_i dl_i (s_i - y), so
    |dy| <= sum_i p_i d_i |s_i - y| (second-order terms are d^2 S, below float32 rounding for
    the tolerances used here)."""
    probabilities = _softmax(logits)
    support = _support(support_size)
    y = (probabilities * support).sum(axis=-1, keepdims=True)
    bound = logit_atol + logit_rtol * np.abs(np.asarray(logits, np.float64))
    return (probabilities * bound * np.abs(support - y)).sum(axis=-1)


def _report(name: str, got_y: np.ndarray, want_y: np.ndarray, tolerance: np.ndarray) -> str:
    excess = np.abs(got_y - want_y) - tolerance
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    return (f"{name}: expected support values differ by more than the derived tolerance at "
            f"{[int(i) for i in worst]}: |{got_y[worst]:.9g} - {want_y[worst]:.9g}| = "
            f"{abs(got_y[worst] - want_y[worst]):.3g} > {tolerance[worst]:.3g} "
            f"({int((excess > 0).sum())} of {excess.size} elements)")


def assert_decoded_matches_logits(got: np.ndarray, want_logits: np.ndarray, support_size: int,
                                  logit_atol: float, logit_rtol: float, name: str = "value") -> None:
    """`got` (float32 values decoded by one computation, e.g. the exported graph) against the
    logits `want_logits` [..., 2S+1] of another (e.g. the eager network), whose logits may
    differ from the first's by logit_atol + logit_rtol |logit|: compared as expected support
    values h(got) and sum softmax(want_logits) s (float64), with expectation_tolerance plus
    the rounding of the float32 decode."""
    got = np.asarray(got, np.float64)
    probabilities = _softmax(want_logits)
    want_y = (probabilities * _support(support_size)).sum(axis=-1)
    got_y = scalar_transform_np(got)
    tolerance = (expectation_tolerance(want_logits, support_size, logit_atol, logit_rtol)
                 + rounding_tolerance(support_size, got))
    assert got_y.shape == want_y.shape, (name, got_y.shape, want_y.shape)
    assert np.all(np.abs(got_y - want_y) <= tolerance), _report(name, got_y, want_y, tolerance)


def assert_decoded_close(got: np.ndarray, want: np.ndarray, support_size: int,
                         logit_atol: float = 1e-5, name: str = "value") -> None:
    """Two float32 decodes (e.g. the server's answer and the SavedModel called directly) whose
    logits may differ by up to `logit_atol`: compared as expected support values h(got) and
    h(want), within 2 S logit_atol (|s_i - y| <= 2S) plus both computations' rounding."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    got_y, want_y = scalar_transform_np(got), scalar_transform_np(want)
    tolerance = (2.0 * support_size * logit_atol + rounding_tolerance(support_size, got)
                 + rounding_tolerance(support_size, want))
    assert np.all(np.abs(got_y - want_y) <= tolerance), _report(name, got_y, want_y, tolerance)
