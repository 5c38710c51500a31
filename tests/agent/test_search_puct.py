"""Golden tests: the batched PUCT search against a one-game-at-a-time MCTS written straight from
the MuZero paper's pseudocode (Schrittwieser et al. 2020, Appendix "Pseudocode").

The reference keeps the pseudocode's structure (Node with a children dict, ucb_score,
MinMaxStats, backpropagate with to_play) and states two points the pseudocode leaves open the
way MuFleet's search defines them:
  * Q(s, a) = r + discount * V(child) for one player and r - discount * V(child) for two
    players, with r from the view of the player who moved (the pseudocode's later errata form
    of ucb_score); MinMaxStats sees every such Q during backup (not node values).
  * Ties go to the lowest action index (the pseudocode's max over (score, action) tuples would
    take the highest).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.agent.search import BatchedSearch, SearchConfig

from tests.agent.search_fakes import FakeTreeModel, OneGameModel, child_id


# ----------------------------------------------------------------------------- reference


class MinMaxStats:
    def __init__(self) -> None:
        self.maximum = -float("inf")
        self.minimum = float("inf")

    def update(self, value: float) -> None:
        self.maximum = max(self.maximum, value)
        self.minimum = min(self.minimum, value)

    def normalize(self, value: float) -> float:
        if self.maximum > self.minimum:
            # We normalize only when we have set the maximum and minimum values.
            return (value - self.minimum) / (self.maximum - self.minimum)
        return value


class Node:
    def __init__(self, prior: float) -> None:
        self.visit_count = 0
        self.to_play = -1
        self.prior = prior
        self.value_sum = 0.0
        self.children: dict[int, Node] = {}
        self.hidden_state = None
        self.reward = 0.0

    def expanded(self) -> bool:
        return len(self.children) > 0

    def value(self) -> float:
        if self.visit_count == 0:
            return 0.0
        return self.value_sum / self.visit_count


def expand_node(node: Node, to_play: int, actions: list[int], output) -> None:
    node.to_play = to_play
    node.hidden_state = output.hidden_state
    node.reward = output.reward
    logits = output.policy_logits
    top = max(logits[a] for a in actions)           # shifted for stability; same softmax
    policy = {a: math.exp(logits[a] - top) for a in actions}
    policy_sum = sum(policy.values())
    for action, p in policy.items():
        node.children[action] = Node(p / policy_sum)


def child_q(config: SearchConfig, child: Node, two_player: bool) -> float:
    return child.reward + config.discount * (-child.value() if two_player else child.value())


def ucb_score(config: SearchConfig, parent: Node, child: Node, min_max_stats: MinMaxStats,
              two_player: bool) -> float:
    pb_c = math.log((parent.visit_count + config.pb_c_base + 1) / config.pb_c_base) + config.pb_c_init
    pb_c *= math.sqrt(parent.visit_count) / (child.visit_count + 1)
    prior_score = pb_c * child.prior
    if child.visit_count > 0:
        value_score = min_max_stats.normalize(child_q(config, child, two_player))
    else:
        value_score = 0
    return prior_score + value_score


def select_child(config: SearchConfig, node: Node, min_max_stats: MinMaxStats, two_player: bool):
    best = None
    for action in sorted(node.children):          # strict '>' keeps the lowest index on ties
        child = node.children[action]
        score = ucb_score(config, node, child, min_max_stats, two_player)
        if best is None or score > best[0]:
            best = (score, action, child)
    return best[1], best[2]


def backpropagate(config: SearchConfig, search_path: list[Node], value: float, to_play: int,
                  min_max_stats: MinMaxStats, two_player: bool) -> None:
    for i in reversed(range(len(search_path))):
        node = search_path[i]
        node.value_sum += value if node.to_play == to_play else -value
        node.visit_count += 1
        if i > 0:
            min_max_stats.update(child_q(config, node, two_player))
        # The reward is from the view of the player who moved (the parent's to_play); make it
        # the leaf player's view before adding it to the leaf player's return.
        reward = node.reward
        if two_player and node.to_play == to_play:
            reward = -reward
        value = reward + config.discount * value


def reference_search(config: SearchConfig, model: OneGameModel, legal: np.ndarray,
                     two_player: bool) -> tuple[list[int], float, Node]:
    """MuZero's run_mcts for one game; returns (root visit counts per action, root value, root)."""
    num_actions = len(legal)
    root = Node(0)
    expand_node(root, 0, [a for a in range(num_actions) if legal[a]], model.initial_inference())
    min_max_stats = MinMaxStats()
    for _ in range(config.num_simulations):
        node = root
        search_path = [node]
        action = -1
        while node.expanded():
            action, node = select_child(config, node, min_max_stats, two_player)
            search_path.append(node)
        parent = search_path[-2]
        output = model.recurrent_inference(parent.hidden_state, action)
        to_play = 1 - parent.to_play if two_player else 0
        expand_node(node, to_play, list(range(num_actions)), output)
        backpropagate(config, search_path, output.value, to_play, min_max_stats, two_player)
    visits = [root.children[a].visit_count if a in root.children else 0 for a in range(num_actions)]
    return visits, root.value(), root


# ----------------------------------------------------------------------------- helpers


def random_legal(rng: np.random.Generator, batch: int, actions: int, p_legal: float) -> np.ndarray:
    legal = rng.random((batch, actions)) < p_legal
    legal[np.arange(batch), rng.integers(0, actions, batch)] = True
    return legal


def batched_search(config: SearchConfig, model: FakeTreeModel, legal: np.ndarray, two_player: bool):
    search = BatchedSearch(model.batch_size, model.num_actions, (2,), config, two_player=two_player)
    result = search.run(model, model.root_ids, legal, np.random.default_rng(0), training=False)
    return search, result


CASES = [
    # (two_player, discount, num_actions, num_simulations, p_legal, pb_c_base)
    (False, 1.0, 2, 16, 1.0, 19652.0),
    (False, 0.997, 3, 32, 1.0, 19652.0),
    (False, 0.9, 4, 50, 0.6, 19652.0),
    (False, 0.8, 5, 40, 0.5, 10.0),
    (True, 1.0, 3, 32, 1.0, 19652.0),
    (True, 1.0, 7, 50, 0.5, 19652.0),
    (True, 0.9, 4, 40, 0.7, 5.0),
    (True, 0.95, 9, 64, 0.4, 19652.0),
    (False, 0.997, 2, 1, 1.0, 19652.0),
    (True, 1.0, 2, 2, 1.0, 19652.0),
]


@pytest.mark.parametrize("two_player,discount,num_actions,num_simulations,p_legal,pb_c_base", CASES)
def test_puct_matches_pseudocode_reference(two_player, discount, num_actions, num_simulations, p_legal, pb_c_base):
    batch = 6
    seed = hash((two_player, discount, num_actions, num_simulations)) % 2**31
    config = SearchConfig(num_simulations=num_simulations, search="puct", discount=discount, pb_c_base=pb_c_base)
    model = FakeTreeModel(batch, num_actions, seed=seed)
    legal = random_legal(np.random.default_rng(seed), batch, num_actions, p_legal)
    search, result = batched_search(config, model, legal, two_player)
    assert model.recurrent_calls == num_simulations            # ONE request per step for all games
    for b in range(batch):                                     # each game against its own fake
        visits, value, root = reference_search(config, model.game(b), legal[b], two_player)
        np.testing.assert_array_equal(result.visit_counts[b], visits, err_msg=f"game {b}")
        assert result.value[b] == pytest.approx(value, abs=1e-6)
        assert search.node_visits[b, 0] == root.visit_count == num_simulations
        for a, child in root.children.items():
            if child.visit_count:
                assert result.qvalues[b, a] == pytest.approx(child_q(config, child, two_player), abs=1e-6)
    assert not result.visit_counts[~legal].any()               # illegal root actions never taken
    np.testing.assert_allclose(result.policy, result.visit_counts / num_simulations, rtol=1e-6)


def test_puct_deep_tree_matches_reference_per_node():
    """A narrow, deep tree: every node's visits and value agree, not just the root's."""
    config = SearchConfig(num_simulations=60, search="puct", discount=0.95, pb_c_init=0.5)
    model = FakeTreeModel(3, 2, seed=11, logit_scale=3.0)
    legal = np.ones((3, 2), bool)
    search, _ = batched_search(config, model, legal, two_player=True)
    for b in range(3):
        _, _, root = reference_search(config, model.game(b), legal[b], two_player=True)
        stack = [(root, 0)]
        checked = 0
        while stack:
            node, index = stack.pop()
            assert search.node_visits[b, index] == node.visit_count
            assert search.node_value_sum[b, index] == pytest.approx(node.value_sum, abs=1e-9)
            for action, child in node.children.items():
                child_index = search.children_index[b, index, action]
                if child.expanded():
                    assert child_index > 0
                    stack.append((child, child_index))
                else:
                    assert child_index == -1
            checked += 1
        assert checked == config.num_simulations + 1
        assert search.node_depth[b].max() >= 5


def test_two_player_convention_by_hand():
    """Two players, stepped by hand: Q(s, a) = r - discount * V(child), where V(child) is from
    the child's player's view and r from the view of the player who moved; returns flip sign
    on the way up."""
    config = SearchConfig(num_simulations=2, search="puct", discount=0.9)
    model = FakeTreeModel(1, 2, seed=3)
    search = BatchedSearch(1, 2, (2,), config, two_player=True)
    search.start_move(model.initial_inference(model.root_ids), np.ones((1, 2), bool),
                      np.random.default_rng(0), training=False)

    def table(node_id):
        return float(np.float32(model.rewards[0, node_id])), float(np.float32(model.values[0, node_id]))

    # Simulation 0: the root has 0 visits, every score is 0, the lowest action (0) is taken.
    hidden, action = search.select()
    assert action.tolist() == [0] and hidden[0, 0] == model.root_ids[0]
    search.expand_and_backup(model.recurrent_inference(hidden, action))
    c0 = child_id(int(model.root_ids[0]), 0)
    r0, v0 = table(c0)
    q0 = r0 - 0.9 * v0
    assert search.children_index[0, 0, 0] == 1 and search.node_parent[0, 1] == 0
    assert search.children_qvalues[0, 0, 0] == pytest.approx(q0)
    assert search.node_value_sum[0, 0] == pytest.approx(q0)        # the root's player's view
    assert search.node_value_sum[0, 1] == pytest.approx(v0)        # the child's player's view

    # Simulation 1: sqrt(1) * prior(1) * pb_c vs Qn(0) + prior(0) * pb_c / 2 (Qn(0) = q0:
    # a single Q value gives no min-max range yet).
    prior = search.children_prior[0, 0]
    pb_c = math.log((1 + config.pb_c_base + 1) / config.pb_c_base) + config.pb_c_init
    expected = int(pb_c * prior[1] > q0 + pb_c * prior[0] / 2)
    hidden, action = search.select()
    search.expand_and_backup(model.recurrent_inference(hidden, action))
    assert search.node_parent[0, 2] == (0 if expected == 1 else 1)
    if expected == 1:
        assert action.tolist() == [1]
    if expected == 1:
        r1, v1 = table(child_id(int(model.root_ids[0]), 1))
        returns = q0 + (r1 - 0.9 * v1)
    else:
        r2, v2 = table(child_id(c0, int(action[0])))
        g1 = r2 - 0.9 * v2                      # the child's return, its player's view
        assert search.node_value_sum[0, 1] == pytest.approx(v0 + g1)
        returns = q0 + (r0 - 0.9 * g1)
    result = search.finish_move()
    assert result.value[0] == pytest.approx(returns / 2, abs=1e-6)
