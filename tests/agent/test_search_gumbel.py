"""Gumbel MuZero: the halving schedule, completed Q-values, the considered set, the final action,
and the batched search against a one-game-at-a-time reference that follows mctx's
`gumbel_muzero_policy` node by node."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.agent import gumbel as gumbel_lib
from services.agent.search import BatchedSearch, SearchConfig
from services.agent.search.qtransforms import completed_qvalues

from tests.agent.search_fakes import FakeTreeModel, OneGameModel

# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("m,n,expected", [
    # mctx's seq_halving_test cases.
    (8, 24, [0] * 8 + [1] * 4 + [2] * 4 + [3, 3, 4, 4, 5, 5, 6, 6]),
    (8, 47, [0] * 8 + [1] * 4 + [2] * 4 + [3] * 4 + [4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10,
                                                       11, 11, 12, 12, 13, 13, 14, 14, 15, 15, 16, 16, 17]),
    (8, 2, [0, 0]),
    (8, 13, [0] * 8 + [1] * 4 + [2]),
    (7, 24, [0] * 7 + [1, 1, 1, 2, 2, 2] + [3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8]),
    (0, 16, list(range(16))),
    (1, 16, list(range(16))),
    # Worked by hand. m=4, n=16: log2(4) = 2; 4 actions get max(1, 16 // (2*4)) = 2 visits
    # each (0,0,0,0,1,1,1,1), then 2 actions get 16 // (2*2) = 4 more each.
    (4, 16, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]),
    # m=2, n=8: log2 = 1; 2 actions, 8 // 2 = 4 rounds of one visit each.
    (2, 8, [0, 0, 1, 1, 2, 2, 3, 3]),
    # m=3, n=10: ceil(log2 3) = 2; 3 actions x 1 (10 // 6), then 2 actions x 2 (10 // 4), again.
    (3, 10, [0, 0, 0, 1, 1, 2, 2, 3, 3, 4]),
    # m=16, n=16 (more actions than the budget allows to halve): one visit each.
    (16, 16, [0] * 16),
    # m=2, n=3: 3 // 2 = 1 round per phase.
    (2, 3, [0, 0, 1]),
])
def test_sequence_of_considered_visits(m, n, expected):
    assert gumbel_lib.get_sequence_of_considered_visits(m, n) == tuple(expected)


def test_table_of_considered_visits():
    table = gumbel_lib.get_table_of_considered_visits(4, 16)
    assert table.shape == (5, 16) and table.dtype == np.int32
    for k in range(5):
        assert tuple(table[k]) == gumbel_lib.get_sequence_of_considered_visits(k, 16)


# ----------------------------------------------------------------------------- completed Q


def test_completed_qvalues_by_hand():
    # prior p = (0.5, 0.3, 0.2), network value v = 0.5, N = (2, 1, 0), Q = (1.0, 0.0, -).
    # Mixed value: sum_visited p = 0.8, weighted q = (0.5 * 1 + 0.3 * 0) / 0.8 = 0.625,
    #   (v + sum N * 0.625) / (sum N + 1) = (0.5 + 3 * 0.625) / 4 = 0.59375.
    # Completed: (1, 0, 0.59375), already in [0, 1]; scale (50 + max N = 2) * 0.1 = 5.2.
    q = np.array([[1.0, 0.0, 123.0]])                 # the unvisited entry is never read
    sigma = completed_qvalues(q, np.array([[2, 1, 0]]), np.array([0.5]), np.array([[0.5, 0.3, 0.2]]),
                              value_scale=0.1, maxvisit_init=50.0)
    np.testing.assert_allclose(sigma, [[5.2, 0.0, 0.59375 * 5.2]], rtol=1e-12)
    # Improved policy: softmax(log p + sigma) = (0.5 e^5.2, 0.3, 0.2 e^3.0875) / sum.
    pi = gumbel_lib.improved_policy(np.log([[0.5, 0.3, 0.2]]), sigma)
    w = np.array([0.5 * math.exp(5.2), 0.3, 0.2 * math.exp(3.0875)])
    np.testing.assert_allclose(pi, [w / w.sum()], rtol=1e-12)
    np.testing.assert_allclose(pi, [[0.950856, 0.003147, 0.045997]], atol=1e-6)


def test_completed_qvalues_rescale_and_no_visits():
    # Q = (0.4, -0.2) with N = (1, 3), an unvisited third action with p = 0.25 (p = 0.5, 0.25),
    # v = 0: weighted q = (0.5*0.4 + 0.25*-0.2) / 0.75 = 0.2, mixed = (0 + 4 * 0.2) / 5 = 0.16.
    # Rescaled over (0.4, -0.2, 0.16): ((0.6, 0, 0.36) / 0.6) = (1, 0, 0.6); scale (10 + 3) * 1.
    sigma = completed_qvalues(np.array([[0.4, -0.2, 0.0]]), np.array([[1, 3, 0]]), np.array([0.0]),
                              np.array([[0.5, 0.25, 0.25]]), value_scale=1.0, maxvisit_init=10.0)
    np.testing.assert_allclose(sigma, [[13.0, 0.0, 0.6 * 13.0]], rtol=1e-12)
    # No visits: everything completes to v, the rescale gives 0 everywhere (no NaN).
    sigma = completed_qvalues(np.zeros((1, 3)), np.zeros((1, 3), int), np.array([0.7]),
                              np.full((1, 3), 1 / 3), value_scale=0.1, maxvisit_init=50.0)
    np.testing.assert_array_equal(sigma, np.zeros((1, 3)))


def test_completed_qvalues_without_rescale_keep_q():
    # The case above without the rescale: (0.4, -0.2, 0.16) times (10 + 3) * 1.
    sigma = completed_qvalues(np.array([[0.4, -0.2, 0.0]]), np.array([[1, 3, 0]]), np.array([0.0]),
                              np.array([[0.5, 0.25, 0.25]]), value_scale=1.0, maxvisit_init=10.0,
                              rescale_values=False)
    np.testing.assert_allclose(sigma, [[0.4 * 13.0, -0.2 * 13.0, 0.16 * 13.0]], rtol=1e-12)
    # Nearly equal Q values (a position where every move draws): the rescale blows their
    # differences up to the full range of sigma, the plain transform keeps them negligible.
    flat = np.array([[1e-3, -1e-3, 0.0]])
    visits, prior = np.array([[3, 3, 3]]), np.full((1, 3), 1 / 3)
    rescaled = completed_qvalues(flat, visits, np.array([0.0]), prior, value_scale=0.1, maxvisit_init=50.0)
    plain = completed_qvalues(flat, visits, np.array([0.0]), prior, value_scale=0.1, maxvisit_init=50.0,
                              rescale_values=False)
    assert np.ptp(rescaled) == pytest.approx(5.3) and np.ptp(plain) == pytest.approx(0.0106)


def test_improved_policy_masks_illegal():
    pi = gumbel_lib.improved_policy(np.array([[0.0, 5.0, 1.0]]), np.zeros((1, 3)), np.array([[True, False, True]]))
    e = math.exp(1.0)
    np.testing.assert_allclose(pi, [[1 / (1 + e), 0.0, e / (1 + e)]], rtol=1e-12)


# ----------------------------------------------------------------------------- reference


def ref_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max()
    e = np.exp(z)
    return e / e.sum()


class GNode:
    def __init__(self, output, to_play: int, logits: np.ndarray) -> None:
        self.hidden_state = output.hidden_state
        self.raw_value = output.value
        self.reward = output.reward
        self.to_play = to_play
        self.logits = logits
        self.children: dict[int, GNode] = {}
        self.visit_count = 0
        self.value_sum = 0.0

    def value(self) -> float:
        return self.value_sum / self.visit_count


class GumbelReference:
    """mctx's Gumbel MuZero for one game, node by node, with plain loops and per-node NumPy."""

    def __init__(self, config: SearchConfig, num_actions: int, two_player: bool) -> None:
        self.config, self.num_actions, self.two_player = config, num_actions, two_player

    def sequence(self, m: int) -> list[int]:
        n = self.config.num_simulations
        if m <= 1:
            return list(range(n))
        log2max = math.ceil(math.log2(m))
        seq, visits, k = [], [0] * m, m
        while len(seq) < n:
            for _ in range(max(1, int(n / (log2max * k)))):
                seq.extend(visits[:k])
                visits[:k] = [v + 1 for v in visits[:k]]
            k = max(2, k // 2)
        return seq[:n]

    def stats(self, node: GNode) -> tuple[np.ndarray, np.ndarray]:
        visits = np.zeros(self.num_actions)
        q = np.zeros(self.num_actions)
        sign = -1.0 if self.two_player else 1.0
        for a, child in node.children.items():
            visits[a] = child.visit_count
            q[a] = child.reward + self.config.discount * (sign * child.value())
        return visits, q

    def completed(self, node: GNode) -> np.ndarray:
        """qtransform_completed_by_mix_value, as written in mctx."""
        visits, q = self.stats(node)
        probs = np.maximum(np.finfo(np.float64).tiny, ref_softmax(node.logits))
        sum_visits = visits.sum()
        if sum_visits > 0:
            sum_probs = np.where(visits > 0, probs, 0.0).sum()
            weighted_q = np.where(visits > 0, probs * q / sum_probs, 0.0).sum()
        else:
            weighted_q = 0.0
        mixed = (node.raw_value + sum_visits * weighted_q) / (sum_visits + 1)
        completed = np.where(visits > 0, q, mixed)
        if self.config.rescale_values:
            low, high = completed.min(), completed.max()
            completed = (completed - low) / max(high - low, 1e-8)
        return (self.config.maxvisit_init + visits.max()) * self.config.value_scale * completed

    def score_considered(self, considered_visit, gumbel, logits, completed, visits) -> np.ndarray:
        score = np.maximum(-1e9, gumbel + (logits - logits.max()) + completed)
        return score + np.where(visits == considered_visit, 0.0, -np.inf)

    def search(self, model: OneGameModel, legal: np.ndarray, gumbel: np.ndarray, greedy: bool):
        config = self.config
        root_output = model.initial_inference()
        root_logits = np.where(legal, np.array(root_output.policy_logits), -np.inf)
        root = GNode(root_output, 0, root_logits)
        root.visit_count, root.value_sum = 1, root_output.value      # mctx counts the root's value
        num_considered = min(config.max_considered_actions, int(legal.sum()))
        table = self.sequence(num_considered)
        for simulation in range(config.num_simulations):
            node, path, action = root, [root], -1
            while True:
                visits, _ = self.stats(node)
                completed = self.completed(node)
                if node is root:
                    considered_visit = table[simulation]
                    score = self.score_considered(considered_visit, gumbel, node.logits, completed, visits)
                    action = int(np.argmax(np.where(legal, score, -np.inf)))
                else:
                    pi = ref_softmax(node.logits + completed)
                    action = int(np.argmax(pi - visits / (1 + visits.sum())))
                if action not in node.children:
                    break
                node = node.children[action]
                path.append(node)
            output = model.recurrent_inference(node.hidden_state, action)
            to_play = 1 - node.to_play if self.two_player else 0
            leaf = GNode(output, to_play, np.array(output.policy_logits))
            node.children[action] = leaf
            path.append(leaf)
            value = output.value
            for i in reversed(range(len(path))):
                n = path[i]
                n.value_sum += value if n.to_play == to_play else -value
                n.visit_count += 1
                reward = -n.reward if (self.two_player and n.to_play == to_play) else n.reward
                value = reward + config.discount * value
        visits, _ = self.stats(root)
        completed = self.completed(root)
        score = self.score_considered(visits.max(), 0.0 if greedy else gumbel, root.logits, completed, visits)
        action = int(np.argmax(np.where(legal, score, -np.inf)))
        policy = ref_softmax(np.where(legal, root.logits + completed, -np.inf))
        return visits.astype(int), policy, root.value(), action


# ----------------------------------------------------------------------------- batched vs reference


CASES = [
    # (two_player, discount, num_actions, num_simulations, m, p_legal, training)
    (False, 0.997, 2, 16, 2, 1.0, True),
    (False, 0.9, 4, 32, 4, 0.7, True),
    (False, 1.0, 6, 50, 4, 1.0, False),
    (True, 1.0, 7, 32, 16, 0.6, True),
    (True, 0.95, 9, 50, 8, 0.5, True),
    (True, 1.0, 3, 8, 16, 1.0, False),
    (False, 0.997, 5, 1, 16, 1.0, True),
]


@pytest.mark.parametrize("two_player,discount,num_actions,num_simulations,m,p_legal,training", CASES)
def test_gumbel_matches_reference(two_player, discount, num_actions, num_simulations, m, p_legal, training):
    batch = 6
    seed = hash((two_player, discount, num_actions, num_simulations, m)) % 2**31
    rng = np.random.default_rng(seed)
    legal = rng.random((batch, num_actions)) < p_legal
    legal[np.arange(batch), rng.integers(0, num_actions, batch)] = True
    config = SearchConfig(num_simulations=num_simulations, search="gumbel", discount=discount,
                          max_considered_actions=m)
    model = FakeTreeModel(batch, num_actions, seed=seed)
    search = BatchedSearch(batch, num_actions, (2,), config, two_player=two_player)
    result = search.run(model, model.root_ids, legal, np.random.default_rng(1), training=training)
    if not training:
        assert not search.root_gumbel.any()
    reference = GumbelReference(config, num_actions, two_player)
    for b in range(batch):
        visits, policy, value, action = reference.search(model.game(b), legal[b], search.root_gumbel[b],
                                                         greedy=not training)
        np.testing.assert_array_equal(result.visit_counts[b], visits, err_msg=f"game {b}")
        np.testing.assert_allclose(result.policy[b], policy, atol=1e-6)
        assert result.value[b] == pytest.approx(value, abs=1e-6)
        assert result.action[b] == action
    assert not result.visit_counts[~legal].any() and not result.policy[~legal].any()


@pytest.mark.parametrize("value_scale,maxvisit_init,rescale_values",
                         [(20.0, 50.0, True), (0.0, 50.0, True), (1.0, 0.0, True), (0.1, 50.0, False),
                          (3.0, 50.0, False)])
def test_gumbel_matches_reference_with_other_sigma_scales(value_scale, maxvisit_init, rescale_values):
    """A large scale takes the max-shifted softmax path; 0 makes sigma(q) vanish; without the
    rescale sigma is the plain (maxvisit_init + max N) * value_scale * Q."""
    batch, num_actions = 5, 4
    config = SearchConfig(num_simulations=24, search="gumbel", discount=0.97, max_considered_actions=4,
                          value_scale=value_scale, maxvisit_init=maxvisit_init, rescale_values=rescale_values)
    model = FakeTreeModel(batch, num_actions, seed=21)
    legal = np.ones((batch, num_actions), bool)
    search = BatchedSearch(batch, num_actions, (2,), config, two_player=True)
    result = search.run(model, model.root_ids, legal, np.random.default_rng(2))
    reference = GumbelReference(config, num_actions, two_player=True)
    for b in range(batch):
        visits, policy, value, action = reference.search(model.game(b), legal[b], search.root_gumbel[b], greedy=False)
        np.testing.assert_array_equal(result.visit_counts[b], visits, err_msg=f"game {b}")
        np.testing.assert_allclose(result.policy[b], policy, atol=1e-6)
        assert result.value[b] == pytest.approx(value, abs=1e-6)
        assert result.action[b] == action


def test_considered_set_is_gumbel_top_k_over_legal():
    batch, num_actions, m = 64, 9, 4
    rng = np.random.default_rng(5)
    legal = rng.random((batch, num_actions)) < 0.5
    legal[:, 0] = True
    legal[:3] = False
    legal[:3, :2] = True                         # games 0-2: two legal actions, k = 2 < m
    config = SearchConfig(num_simulations=24, search="gumbel", max_considered_actions=m)
    model = FakeTreeModel(batch, num_actions, seed=2)
    search = BatchedSearch(batch, num_actions, (2,), config)
    search.start_move(model.initial_inference(model.root_ids), legal, np.random.default_rng(9))
    logits = model.logits[np.arange(batch), model.root_ids].astype(np.float32).astype(np.float64)
    score = np.where(legal, search.root_gumbel + logits, -np.inf)
    k = np.minimum(m, legal.sum(axis=1))
    for b in range(batch):
        top = set(np.argsort(-score[b], kind="stable")[:k[b]].tolist())
        assert set(np.flatnonzero(search.considered[b]).tolist()) == top
    # The first k simulations visit each considered action once; the others are never visited.
    for s in range(config.num_simulations):
        hidden, action = search.select()
        search.expand_and_backup(model.recurrent_inference(hidden, action))
        if s + 1 == 2:
            assert (search.children_visits[:3, 0, :2] == 1).all()
        if s + 1 == m:
            np.testing.assert_array_equal(search.children_visits[3:, 0] > 0, search.considered[3:])
    visits = search.children_visits[:, 0]
    assert not visits[~search.considered].any()
    result = search.finish_move()
    assert search.considered[np.arange(batch), result.action].all()


def test_final_action_is_sequential_halving_choice():
    batch, num_actions = 32, 6
    config = SearchConfig(num_simulations=20, search="gumbel", max_considered_actions=4, gumbel_scale=1.0)
    model = FakeTreeModel(batch, num_actions, seed=8)
    legal = np.ones((batch, num_actions), bool)
    legal[::2, -1] = False
    search = BatchedSearch(batch, num_actions, (2,), config, two_player=True)
    result = search.run(model, model.root_ids, legal, np.random.default_rng(3))
    visits = search.children_visits[:, 0]          # views: they follow the next run too
    logits = search.children_logits[:, 0]
    for b in range(batch):
        sigma = completed_from_arrays(config, search.children_qvalues[b, 0], visits[b],
                                      search.node_raw_value[b, 0], logits[b])
        candidates = np.flatnonzero(search.considered[b] & (visits[b] == visits[b].max()))
        expected = candidates[np.argmax((search.root_gumbel[b] + logits[b] + sigma)[candidates])]
        assert result.action[b] == expected, b
    # In evaluation (no noise) the choice is greedy: argmax of logits + sigma(q) among the most visited.
    result = search.run(model, model.root_ids, legal, np.random.default_rng(3), training=False)
    for b in range(batch):
        sigma = completed_from_arrays(config, search.children_qvalues[b, 0], visits[b], search.node_raw_value[b, 0],
                                      logits[b])
        candidates = np.flatnonzero(legal[b] & (visits[b] == visits[b].max()))
        assert result.action[b] == candidates[np.argmax((logits[b] + sigma)[candidates])]


def completed_from_arrays(config, q, visits, raw_value, logits) -> np.ndarray:
    probs = np.maximum(np.finfo(np.float64).tiny, ref_softmax(logits))
    visited = visits > 0
    weighted = (probs * q)[visited].sum() / probs[visited].sum()
    mixed = (raw_value + visits.sum() * weighted) / (visits.sum() + 1)
    completed = np.where(visited, q, mixed)
    completed = (completed - completed.min()) / max(completed.max() - completed.min(), 1e-8)
    return (config.maxvisit_init + visits.max()) * config.value_scale * completed
