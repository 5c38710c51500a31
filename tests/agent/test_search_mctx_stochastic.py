"""MuFleet's "stochastic" search (Stochastic MuZero chance nodes) against google-deepmind/mctx.

The model (`represent`, `afterstate`, `dynamics` below) is a tiny tanh network with
afterstates and C chance codes, written once against an array module: NumPy behind MuFleet's
model protocol, jax.numpy (float64) as mctx's decision and chance recurrent functions. As in
`test_search_mctx.py`, hidden states and afterstates lie on a 2**-10 grid (exact in float32),
every tree decision of MuFleet's search is recorded with its margin (best minus runner-up)
and the test asserts those margins are far above the two libraries' rounding noise, so the
visit counts and the tree shape are compared exactly and the floats to 1e-9 (1e-6 for
MuFleet's float32 outputs).

One request, both kinds: MuFleet asks the model ONE recurrent_inference per step with an edge
per game (< A: afterstate of (state, action); >= A: state of (afterstate, code - A)); the NumPy
model computes both branches for all B rows and picks per row, which is what mctx's
`_make_stochastic_recurrent_fn` does with the two functions. Its logits are [action logits of
the dynamics branch, chance logits of the afterstate branch] for every row and its reward the
dynamics branch's for every row: the half or the reward that does not apply is garbage the
search must mask (MuFleet) or that mctx replaces (-inf padding, reward 0, discount 1).

What agrees with `mctx.stochastic_muzero_policy` by design: A + C edges per node (mctx's A'),
the root a decision node with its outcome edges unused, the chance rule argmax
softmax(chance logits) / (N + 1) (no tie noise in either), reward 0 and discount 1 into an
afterstate, the chance recurrent function's discount (here discount, or -discount for
alternating two-player games, mctx's convention) out of it, the leaf's network value backed
up (an afterstate's value is its Q), the visit distribution of the root's first A edges as
the policy target. The deliberate differences, as for PUCT in `test_search_mctx.py`:
  1. The root's visit count starts at 0 (MuZero pseudocode); mctx counts the root's network
     value as a first visit. So PUCT's exploration term at the root differs, and the search
     value of the root is the mean of the S returns (compared through that relation).
  2. Q at decision nodes is normalized by ONE min-max per tree over every Q backed up so far
     this move (both kinds of edge, stale extremes included), not by mctx's per-node
     `qtransform_by_parent_and_siblings`.
  3. Ties at decision nodes go to the lowest index; mctx's `muzero_action_selection` adds 1e-7
     uniform noise.
  4. Dirichlet noise (training) over the legal actions only, mixed in probability space;
     `stochastic_muzero_policy` always mixes noise over all A actions (0 here:
     dirichlet_fraction=0).

Two comparisons:
  * `test_matches_mctx_stochastic_muzero_policy`: the real `mctx.stochastic_muzero_policy`,
    with difference 2 removed by its own hooks (a `qtransform` reading the tree-wide min-max
    from `tree.extra_data`, a `loop_fn` that creates and feeds it after every simulation),
    difference 3 made harmless by asserting every decision margin exceeds 1e-6 >> 1e-7,
    difference 4 by dirichlet_fraction=0, and difference 1 by giving each root ONE legal
    action (the root's choice is then forced in both, whatever N(root)). The whole tree agrees
    (parents, edges of both kinds, visits, embeddings, values).
  * `test_matches_mctx_search_with_the_pseudocode_selection`: any legal actions, noise or not:
    `mctx.search` with mctx's own stochastic recurrent function and stochastic action selection
    (`mctx._src.policies._make_stochastic_recurrent_fn` / `_make_stochastic_action_selection_fn`,
    the functions `stochastic_muzero_policy` builds), its decision-node rule replaced by the
    pseudocode's PUCT (differences 1-3) and the root prior (difference 4) handed over. The
    whole tree agrees, including the chance edges' rewards and discounts.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

mctx = pytest.importorskip("mctx", reason="mctx is a test-only dependency: pip install -r requirements-crosscheck.txt")
jax = pytest.importorskip("jax", reason="jax comes with mctx: pip install -r requirements-crosscheck.txt")
jnp = pytest.importorskip("jax.numpy")
mctx_policies = pytest.importorskip("mctx._src.policies")
mctx_base = pytest.importorskip("mctx._src.base")

from services.agent.inference import ModelOutput  # noqa: E402
from services.agent.search import BatchedSearch, SearchConfig  # noqa: E402

from tests.agent.search_fakes import PredictsFromMethods  # noqa: E402
from tests.agent.test_search_mctx import float64_jax  # noqa: E402,F401 - the autouse fixture: mctx in float64

B, A, C, H = 6, 4, 3, 6        # games, actions, chance codes, hidden size
S = 24                         # simulations
GRID = 1024.0                  # (after)states are multiples of 1 / GRID
MIN_MARGIN = 1e-9              # far above the ~1e-15 the two libraries' rounding can differ by
NOISY_MARGIN = 1e-6            # decision nodes under mctx's 1e-7 tie-breaking noise
PB_C_INIT, PB_C_BASE = 1.25, 19652.0

for name in ("_make_stochastic_recurrent_fn", "_make_stochastic_action_selection_fn", "_mask_tree"):
    if not hasattr(mctx_policies, name):
        pytest.skip(f"this mctx has no {name}", allow_module_level=True)


# ----------------------------------------------------------------------------- the model


def make_weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"representation": rng.normal(0.0, 0.8, (H, H)),
            "after": rng.normal(0.0, 0.6, (H, H)), "action": rng.normal(0.0, 0.8, (A, H)),
            "after_bias": rng.normal(0.0, 0.1, H),
            "dynamics": rng.normal(0.0, 0.6, (H, H)), "code": rng.normal(0.0, 0.8, (C, H)),
            "bias": rng.normal(0.0, 0.1, H),
            "value": rng.normal(0.0, 0.7, H), "after_value": rng.normal(0.0, 0.7, H),
            "reward": rng.normal(0.0, 0.7, H), "policy": rng.normal(0.0, 0.9, (H, A)),
            "chance": rng.normal(0.0, 1.2, (H, C))}


def on_grid(xp, x):
    return xp.round(x * GRID) / GRID


def represent(xp, w, observation):
    """(state float32 [B, H], value [B], action logits [B, A])."""
    h = on_grid(xp, xp.tanh(observation.astype(xp.float64) @ w["representation"]))
    return h.astype(xp.float32), xp.tanh(h @ w["value"]), h @ w["policy"]


def afterstate(xp, w, state, action):
    """Afterstate dynamics and prediction: (afterstate float32 [B, H], Q value [B], chance logits [B, C])."""
    x = xp.tanh(state.astype(xp.float64) @ w["after"] + w["action"][action] + w["after_bias"])
    x = on_grid(xp, x)
    return x.astype(xp.float32), xp.tanh(x @ w["after_value"]), x @ w["chance"]


def dynamics(xp, w, after, code):
    """Dynamics and prediction: (state float32 [B, H], value [B], reward [B], action logits [B, A])."""
    h = on_grid(xp, xp.tanh(after.astype(xp.float64) @ w["dynamics"] + w["code"][code] + w["bias"]))
    return h.astype(xp.float32), xp.tanh(h @ w["value"]), 0.5 * xp.tanh(h @ w["reward"]), h @ w["policy"]


class NumpyModel(PredictsFromMethods):
    """The model in NumPy behind MuFleet's protocol: both branches for all rows, picked per row
    by the edge (see the module docstring); logits [B, A + C]."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights

    def initial_inference(self, observation: np.ndarray) -> ModelOutput:
        h, value, logits = represent(np, self.weights, observation)
        garbage = np.full((len(h), C), 3.0)              # the root's chance half: unused
        return ModelOutput(h, value, np.zeros_like(value), np.concatenate([logits, garbage], axis=1))

    def recurrent_inference(self, hidden_state: np.ndarray, action: np.ndarray) -> ModelOutput:
        assert hidden_state.dtype == np.float32 and action.dtype == np.int32
        w = self.weights
        to_after = action < A
        after, q, chance_logits = afterstate(np, w, hidden_state, np.clip(action, 0, A - 1))
        state, value, reward, action_logits = dynamics(np, w, hidden_state, np.clip(action - A, 0, C - 1))
        return ModelOutput(hidden_state=np.where(to_after[:, None], after, state), value=np.where(to_after, q, value),
                           reward=reward, policy_logits=np.concatenate([action_logits, chance_logits], axis=1))


def decision_recurrent_fn(params, rng_key, action, state):
    del rng_key
    after, q, chance_logits = afterstate(jnp, params["weights"], state, action)
    return mctx.DecisionRecurrentFnOutput(chance_logits=chance_logits, afterstate_value=q), after


def chance_recurrent_fn(params, rng_key, code, after):
    del rng_key
    state, value, reward, logits = dynamics(jnp, params["weights"], after, code)
    return mctx.ChanceRecurrentFnOutput(action_logits=logits, value=value, reward=reward,
                                        discount=jnp.full_like(value, params["discount"])), state


class FixedNoise:
    """Stands in for the search's Generator: the given Dirichlet gamma draws (B, A + C)."""

    def __init__(self, gamma: np.ndarray) -> None:
        self._gamma = gamma

    def standard_gamma(self, shape, size):
        assert self._gamma.shape == size
        return self._gamma


def case(seed: int, one_legal: bool):
    rng = np.random.default_rng(seed)
    if one_legal:
        legal = np.zeros((B, A), bool)
        legal[np.arange(B), rng.integers(0, A, B)] = True
    else:
        legal = rng.random((B, A)) < 0.75
        legal[np.arange(B), rng.integers(0, A, B)] = True
        legal[0] = True
    return make_weights(seed), rng.normal(0.0, 1.0, (B, H)), legal


def test_the_two_implementations_of_the_model_agree():
    weights, observation, _ = case(0, False)
    jw = jax.tree.map(jnp.asarray, weights)
    h, *rest = represent(np, weights, observation)
    jh, *jrest = represent(jnp, jw, jnp.asarray(observation))
    np.testing.assert_array_equal(h, np.asarray(jh))
    action, code = np.arange(B) % A, np.arange(B) % C
    after = afterstate(np, weights, h, action)
    jafter = afterstate(jnp, jw, jh, jnp.asarray(action))
    np.testing.assert_array_equal(after[0], np.asarray(jafter[0]))
    state = dynamics(np, weights, after[0], code)
    jstate = dynamics(jnp, jw, jafter[0], jnp.asarray(code))
    np.testing.assert_array_equal(state[0], np.asarray(jstate[0]))
    for ours, theirs in zip(rest + list(after[1:]) + list(state[1:]), jrest + list(jafter[1:]) + list(jstate[1:])):
        np.testing.assert_allclose(ours, np.asarray(theirs), rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------- margins


class Margins:
    """Records the smallest best-minus-second gap of the search's decisions, chance nodes and
    decision nodes apart (mctx adds tie noise at decision nodes only)."""

    def __init__(self, search: BatchedSearch) -> None:
        self.smallest = {"decision": np.inf, "chance": np.inf}
        self.decisions = 0
        for selector in (search.policy.selector, search.policy.interior):
            self._wrap(selector, search)

    def record(self, scores: np.ndarray, chance: np.ndarray) -> None:
        finite = np.where(np.isfinite(scores), scores, -np.inf)
        top = np.sort(finite, axis=1)[:, ::-1]
        for row, (best, second), is_chance in zip(finite, top[:, :2], chance):
            self.decisions += 1
            if not np.isfinite(second):
                continue                                      # one candidate: nothing to flip
            if best == second and not row[np.isfinite(row)].any():
                continue                                      # PUCT's all-zero first root step
            kind = "chance" if is_chance else "decision"
            self.smallest[kind] = min(self.smallest[kind], best - second)

    def _wrap(self, selector, search: BatchedSearch) -> None:
        scores = selector.scores

        def recording(games, rows, *args):
            result = scores(games, rows, *args)
            if selector is search.policy.interior:
                self.record(result, search.is_chance.reshape(-1).take(rows))
            elif len(rows) == B and (rows == search.tree.game_rows).all() and args:   # the root
                self.record(result, np.zeros(B, bool))
            return result

        selector.scores = recording

    def check(self, decision_margin: float) -> None:
        assert self.decisions > S
        assert self.smallest["chance"] > MIN_MARGIN, f"a near tie at a chance node ({self.smallest['chance']:.3g})"
        assert self.smallest["decision"] > decision_margin, f"a near tie ({self.smallest['decision']:.3g})"


# ----------------------------------------------------------------------------- the tree-wide min-max


def min_max_q(tree, node_index):
    """Difference 2 as an mctx qtransform (on the decision half): Qn by the tree-wide extremes
    in `tree.extra_data`, Q itself until max > min, 0 for unvisited children."""
    low, high = tree.extra_data["q_min"], tree.extra_data["q_max"]
    qvalues = tree.qvalues(node_index)
    normalized = jnp.where(high > low, (qvalues - low) / jnp.where(high > low, high - low, 1.0), qvalues)
    return jnp.where(tree.children_visits[node_index] > 0, normalized, 0.0)


def min_max_loop(lower, upper, body_fun, state):
    """mctx's simulation loop, feeding the pseudocode's MinMaxStats after every backup with the Q
    of each edge whose visit count changed (both kinds); creates the extremes if missing."""
    rng_key, tree = state
    if tree.extra_data is None:
        tree = tree.replace(extra_data={"q_min": jnp.full(B, jnp.inf), "q_max": jnp.full(B, -jnp.inf)})

    def body(simulation, loop_state):
        _, before = loop_state
        key, after = body_fun(simulation, loop_state)
        written = after.children_visits != before.children_visits
        q = after.children_rewards + after.children_discounts * after.children_values
        extremes = {"q_min": jnp.minimum(after.extra_data["q_min"], jnp.where(written, q, jnp.inf).min(axis=(1, 2))),
                    "q_max": jnp.maximum(after.extra_data["q_max"], jnp.where(written, q, -jnp.inf).max(axis=(1, 2)))}
        return key, after.replace(extra_data=extremes)

    return jax.lax.fori_loop(lower, upper, body, (rng_key, tree))


# ----------------------------------------------------------------------------- comparisons


def run_ours(weights, observation, legal, two_player, discount, noise):
    config = SearchConfig(num_simulations=S, search="stochastic", discount=discount, num_chance_codes=C,
                          pb_c_init=PB_C_INIT, pb_c_base=PB_C_BASE, root_dirichlet_alpha=0.3,
                          root_exploration_fraction=0.25)
    search = BatchedSearch(B, A, (H,), config, two_player=two_player)
    margins = Margins(search)
    gamma = np.random.default_rng(5).standard_gamma(config.root_dirichlet_alpha, (B, A + C))
    model = NumpyModel(weights)
    result = search.run(model, observation, legal, FixedNoise(gamma), training=noise, temperature=0)
    return search, result, margins, model.initial_inference(observation)


def compare_nodes(search: BatchedSearch, tree, root_value: np.ndarray) -> None:
    """Node arrays of the whole tree: parents and edges (both kinds), kinds, visits (mctx's
    root: one more, difference 1), (after)state embeddings, network values, node values."""
    np.testing.assert_array_equal(search.node_parent, np.asarray(tree.parents))
    np.testing.assert_array_equal(search.node_action, np.asarray(tree.action_from_parent))
    decision = np.asarray(tree.embeddings.is_decision_node)
    np.testing.assert_array_equal(search.is_chance, ~decision)
    their_visits = np.asarray(tree.node_visits).copy()
    their_visits[:, 0] -= 1
    np.testing.assert_array_equal(search.node_visits, their_visits)
    embeddings = np.where(decision[:, :, None], np.asarray(tree.embeddings.state_embedding),
                          np.asarray(tree.embeddings.afterstate_embedding))
    np.testing.assert_array_equal(search.hidden_state, embeddings)
    np.testing.assert_allclose(search.node_raw_value, np.asarray(tree.raw_values), rtol=0, atol=1e-12)
    values = np.asarray(tree.node_values)
    np.testing.assert_allclose(search.node_value_sum[:, 1:] / search.node_visits[:, 1:], values[:, 1:],
                               rtol=0, atol=1e-9)
    # Difference 1: mctx's root value averages the network's value and the S returns.
    np.testing.assert_allclose(search.node_value_sum[:, 0] / S, (values[:, 0] * (S + 1) - root_value) / S,
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(search.q_min, np.asarray(tree.extra_data["q_min"]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(search.q_max, np.asarray(tree.extra_data["q_max"]), rtol=0, atol=1e-12)


@functools.partial(jax.jit, static_argnames=())
def mctx_policy(params, root, invalid_actions):
    return mctx.stochastic_muzero_policy(params, jax.random.PRNGKey(3), root, decision_recurrent_fn,
                                         chance_recurrent_fn, num_simulations=S, invalid_actions=invalid_actions,
                                         loop_fn=min_max_loop, qtransform=min_max_q, dirichlet_fraction=0.0,
                                         pb_c_init=PB_C_INIT, pb_c_base=PB_C_BASE, temperature=1.0)


@pytest.mark.parametrize("two_player,discount", [(False, 0.997), (True, 1.0), (True, 0.9)])
def test_matches_mctx_stochastic_muzero_policy(two_player, discount):
    weights, observation, legal = case(21 + int(two_player) + int(discount * 10), one_legal=True)
    search, ours, margins, root = run_ours(weights, observation, legal, two_player, discount, noise=False)
    margins.check(NOISY_MARGIN)
    params = {"weights": jax.tree.map(jnp.asarray, weights), "discount": -discount if two_player else discount}
    out = mctx_policy(params, mctx.RootFnOutput(prior_logits=jnp.asarray(root.policy_logits[:, :A]),
                                                value=jnp.asarray(root.value), embedding=jnp.asarray(root.hidden_state)),
                      jnp.asarray(~legal, jnp.float64))
    tree = out.search_tree                      # masked to the decision half by the policy
    compare_nodes(search, tree, root.value)
    np.testing.assert_array_equal(search.children_index[:, :, :A], np.asarray(tree.children_index))
    np.testing.assert_array_equal(search.children_visits[:, :, :A], np.asarray(tree.children_visits))
    np.testing.assert_array_equal(ours.visit_counts, np.asarray(tree.summary().visit_counts))
    np.testing.assert_array_equal(ours.action, np.asarray(out.action))
    np.testing.assert_allclose(ours.policy, np.asarray(out.action_weights), rtol=0, atol=1e-6)
    assert search.is_chance.any() and search.node_depth.max() >= 4     # the chance half was searched
    assert (search.node_action >= A).any()


def pseudocode_decision(rng_key, tree, node_index, depth):
    """The pseudocode's ucb_score at a decision node (tree: mctx's decision half)."""
    del rng_key
    visits = tree.children_visits[node_index]
    # Difference 1: the pseudocode's root has no visit of its own.
    node_visit = (tree.node_visits[node_index] - (depth == 0)).astype(jnp.float64)
    pb_c = jnp.log((node_visit + PB_C_BASE + 1) / PB_C_BASE) + PB_C_INIT
    prior = jax.nn.softmax(tree.children_prior_logits[node_index])
    score = pb_c * (jnp.sqrt(node_visit) / (visits + 1)) * prior + min_max_q(tree, node_index)
    # Difference 3: no tie noise; argmax takes the lowest index.
    score = jnp.where((tree.root_invalid_actions > 0) & (depth == 0), -jnp.inf, score)
    return jnp.argmax(score).astype(jnp.int32)


@jax.jit
def mctx_pseudocode_search(params, prior_logits, value, embedding, invalid_actions):
    recurrent_fn = mctx_policies._make_stochastic_recurrent_fn(decision_recurrent_fn, chance_recurrent_fn, A, C)
    interior = mctx_policies._make_stochastic_action_selection_fn(pseudocode_decision, A)
    dummy, dummy_after = decision_recurrent_fn(params, None, jnp.zeros(B, jnp.int32), embedding)
    del dummy
    root = mctx.RootFnOutput(
        prior_logits=jnp.concatenate([prior_logits, jnp.full((B, C), -jnp.inf)], axis=1), value=value,
        embedding=mctx_base.StochasticRecurrentState(state_embedding=embedding, afterstate_embedding=dummy_after,
                                                     is_decision_node=jnp.ones(B, bool)))
    return mctx.search(params, jax.random.PRNGKey(0), root=root, recurrent_fn=recurrent_fn,
                       root_action_selection_fn=functools.partial(interior, depth=0),
                       interior_action_selection_fn=interior, num_simulations=S,
                       invalid_actions=invalid_actions, loop_fn=min_max_loop)


@pytest.mark.parametrize("two_player,discount,noise", [
    (False, 0.997, False), (False, 0.9, True), (True, 1.0, False), (True, 0.95, True),
])
def test_matches_mctx_search_with_the_pseudocode_selection(two_player, discount, noise):
    weights, observation, legal = case(31 + int(two_player) + 2 * int(noise), one_legal=False)
    search, ours, margins, root = run_ours(weights, observation, legal, two_player, discount, noise)
    margins.check(MIN_MARGIN)
    # Difference 4: the root prior, noisy or not, is MuFleet's; mctx gets it as logits.
    prior_logits = np.log(np.maximum(search.children_prior[:, 0, :A], np.finfo(np.float64).tiny))
    params = {"weights": jax.tree.map(jnp.asarray, weights), "discount": -discount if two_player else discount}
    tree = mctx_pseudocode_search(params, jnp.asarray(prior_logits), jnp.asarray(root.value),
                                  jnp.asarray(root.hidden_state), jnp.asarray(~legal, jnp.float64))
    compare_nodes(search, tree, root.value)
    np.testing.assert_array_equal(search.children_index, np.asarray(tree.children_index))
    np.testing.assert_array_equal(search.children_visits, np.asarray(tree.children_visits))
    # The edges of both kinds: reward 0 and factor 1 into afterstates, the model's reward and
    # discount * sign out of them; Q(s, a) alike where visited.
    expanded = search.children_index >= 0
    child = np.maximum(search.children_index, 0)
    our_rewards = np.take_along_axis(search.node_reward, child.reshape(B, -1), axis=1).reshape(child.shape)
    our_factors = np.take_along_axis(search.node_discount, child.reshape(B, -1), axis=1).reshape(child.shape)
    np.testing.assert_allclose(np.where(expanded, our_rewards, 0), np.asarray(tree.children_rewards), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.where(expanded, our_factors, 0), np.asarray(tree.children_discounts), rtol=0,
                               atol=1e-15)
    their_q = np.asarray(tree.children_rewards + tree.children_discounts * tree.children_values)
    visited = search.children_visits > 0
    np.testing.assert_allclose(np.where(visited, search.children_qvalues, 0), np.where(visited, their_q, 0),
                               rtol=0, atol=1e-9)
    decision_tree = mctx_policies._mask_tree(tree, A, "decision")
    np.testing.assert_array_equal(ours.visit_counts, np.asarray(decision_tree.summary().visit_counts))
    np.testing.assert_allclose(ours.policy, np.asarray(decision_tree.summary().visit_probs), rtol=0, atol=1e-6)
    assert not ours.visit_counts[~legal].any()
    assert search.is_chance.sum() > S // 3 and (search.node_action >= A).sum() > S // 3
