"""Gumbel MuZero's pieces as pure, batched NumPy functions.

They follow "Policy improvement by planning with Gumbel" (Danihelka et al., ICLR 2022) as
google-deepmind/mctx implements it (`seq_halving.py`, `action_selection.py`), with a leading
batch dimension instead of `vmap`:

  * `get_sequence_of_considered_visits` / `get_table_of_considered_visits`: Sequential
    Halving's visit schedule at the root.
  * `improved_policy`: softmax(logits + sigma(completed q)) over the legal actions.
  * `score_considered`: the root's Sequential Halving score.

Completed Q-values (mctx's `qtransform_completed_by_mix_value`) are a Q transform of the
search: `services.agent.search.qtransforms.completed_qvalues`.
"""

from __future__ import annotations

import math

import numpy as np

LOW_LOGIT = -1e9
"""Floor of the Sequential Halving score (mctx's `low_logit`), so a lone candidate stays finite."""


def get_sequence_of_considered_visits(max_num_considered_actions: int, num_simulations: int) -> tuple[int, ...]:
    """The visit count an action must have to be visited at each simulation of the root.

    Sequential Halving (Karnin et al. 2013) over `max_num_considered_actions` actions with a
    budget of `num_simulations`: each phase gives every remaining action
    max(1, floor(num_simulations / (ceil(log2 m) * remaining))) more visits, then halves the
    remaining actions (never below 2). Simulation s may visit only a considered action whose
    visit count equals element s. Identical to mctx's function of the same name.

    Returns:
      A tuple of `num_simulations` ints. With m <= 1 it is 0, 1, 2, ...
    """
    if max_num_considered_actions <= 1:
        return tuple(range(num_simulations))
    log2max = int(math.ceil(math.log2(max_num_considered_actions)))
    sequence: list[int] = []
    visits = [0] * max_num_considered_actions
    num_considered = max_num_considered_actions
    while len(sequence) < num_simulations:
        num_extra_visits = max(1, int(num_simulations / (log2max * num_considered)))
        for _ in range(num_extra_visits):
            sequence.extend(visits[:num_considered])
            for i in range(num_considered):
                visits[i] += 1
        num_considered = max(2, num_considered // 2)
    return tuple(sequence[:num_simulations])


def get_table_of_considered_visits(max_num_considered_actions: int, num_simulations: int) -> np.ndarray:
    """int32 [max_num_considered_actions + 1, num_simulations]: row k is the sequence for k actions."""
    return np.array([get_sequence_of_considered_visits(k, num_simulations)
                     for k in range(max_num_considered_actions + 1)], dtype=np.int32).reshape(
                         max_num_considered_actions + 1, num_simulations)


def softmax(logits: np.ndarray) -> np.ndarray:
    """float64 softmax over the last axis; -inf logits get probability 0 (one must be finite)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def improved_policy(logits: np.ndarray, completed_q: np.ndarray, legal: np.ndarray | None = None) -> np.ndarray:
    """float64 [k, A]: softmax(logits + completed_q), 0 on illegal actions (`legal` bool [k, A])."""
    z = np.asarray(logits, dtype=np.float64) + completed_q
    if legal is not None:
        z = np.where(legal, z, -np.inf)
    return softmax(z)


def score_considered(considered_visit: np.ndarray, gumbel: np.ndarray, logits: np.ndarray,
                     completed_q: np.ndarray, visit_counts: np.ndarray) -> np.ndarray:
    """Sequential Halving's root score (mctx's `score_considered`), float64 [k, A].

    max(LOW_LOGIT, g + logits - max(logits) + completed_q), and -inf for every action whose
    visit count is not `considered_visit` (int [k] or [k, 1]). Mask illegal actions after.
    """
    logits = np.asarray(logits, dtype=np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    score = np.maximum(gumbel + logits + completed_q, LOW_LOGIT)
    considered_visit = np.asarray(considered_visit).reshape(len(score), 1)
    return np.where(visit_counts == considered_visit, score, -np.inf)
