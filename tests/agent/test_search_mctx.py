"""MuFleet's batched search against google-deepmind/mctx itself, on one fixed model in both.

The model (`network` below) is a tiny tanh network written once against an array module, run
as NumPy for MuFleet and as jax.numpy (float64) inside mctx: the same weights, the same math.
Its hidden states lie on a 2**-10 grid, so they are exact in the float32 that MuFleet's tree
stores them in, and a last-bit difference between NumPy's and XLA's tanh cannot move one;
values, rewards and logits then differ by a few ulps at most. Every tree decision of
MuFleet's search is recorded with its margin (best score minus the runner-up) and the test
asserts each margin is far above that noise, so no argmax can flip between the two
libraries through rounding (exact ties by construction, e.g. PUCT's all-zero first root
step, are computed from the same zeros on both sides). Visit counts and the whole tree
shape (children_index, node_visits) are then compared exactly, floats to 1e-9 (1e-6 for
MuFleet's float32 outputs).

Gumbel MuZero: `mctx.gumbel_muzero_policy` with its default completed-Q transform, no noise
(gumbel_scale=0, MuFleet in evaluation) and with noise: mctx draws the Gumbel noise, the test
reads it back from `search_tree.extra_data.root_gumbel` and hands the same array to MuFleet
(`FixedNoise`), so both policies search with the same noise. No deliberate difference: the
chosen action, visit counts, action weights (MuFleet's policy target) and the tree agree.

Two players: MuFleet keeps every value from the view of the player to move at the node and
every reward from the view of the player who moved into it, and computes
Q(s, a) = r + discount * sign * V(child), sign = -1 when the players alternate. mctx computes
Q = r + d * V(child) with d the per-edge discount the recurrent function returns, and its
convention for alternating zero-sum games is d = -1 (here -discount): the same formula, so the
model's outputs go to both unchanged and only d carries the sign.

MuZero (PUCT): MuFleet follows the MuZero paper's pseudocode (Schrittwieser et al. 2020),
where `mctx.muzero_policy` does not, so it is compared with `mctx.search` (the tree search
mctx's policies share) driven by root and interior selection functions written here from the
pseudocode. The deliberate differences from `mctx.muzero_policy`:
  1. The root's visit count starts at 0 (pseudocode); mctx counts the root's network value as
     a first visit. So the exploration term at the root uses N(root) = sum of the children's
     visits (mctx's node_visits - 1 here), the first simulation scores every action 0 and takes
     the lowest legal one, and the search value of the root is the mean of the S backed-up
     returns, without the network's value (compared below through that relation).
  2. Q is normalized by ONE min-max per tree over every Q value backed up so far this move,
     stale extremes included (the pseudocode's MinMaxStats; Q itself until max > min; 0 for an
     unvisited child), not by mctx's per-node `qtransform_by_parent_and_siblings` (the node's
     value and its children's current Q). mctx's selection functions see only the tree, so the
     extremes ride in `tree.extra_data`, updated after every simulation by a `loop_fn` around
     mctx's loop body with the Q of every edge the backup wrote, which is exactly what the
     pseudocode feeds MinMaxStats during its backup.
  3. Ties go to the lowest action index; mctx adds 1e-7 uniform noise to break ties randomly.
  4. Dirichlet noise (training) is drawn over the legal actions only and mixed into the prior
     in probability space; mctx's `muzero_policy` draws it over all actions before masking.
     The test hands the same draws to both (`FixedNoise`), as the noisy root prior.
  5. The policy target is the visit distribution, as mctx's action_weights, and the action the
     most visited (evaluation, or temperature 0), so only the search itself is compared here.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

mctx = pytest.importorskip("mctx", reason="mctx is a test-only dependency: pip install -r requirements-crosscheck.txt")
jax = pytest.importorskip("jax", reason="jax comes with mctx: pip install -r requirements-crosscheck.txt")
jnp = pytest.importorskip("jax.numpy")

from services.agent import gumbel as gumbel_lib  # noqa: E402
from services.agent.inference import ModelOutput  # noqa: E402
from services.agent.search import BatchedSearch, SearchConfig  # noqa: E402
from services.agent.search.qtransforms import completed_qvalues  # noqa: E402

from tests.agent.search_fakes import PredictsFromMethods  # noqa: E402

B, A, H = 8, 5, 6              # games, actions, hidden size
S, M = 24, 4                   # simulations, Gumbel's considered actions (< A: Sequential Halving halves)
GRID = 1024.0                  # hidden states are multiples of 1 / GRID
MIN_MARGIN = 1e-9              # far above the ~1e-15 the two libraries' rounding can differ by


@pytest.fixture(scope="module", autouse=True)
def float64_jax():
    """mctx in float64, like MuFleet's tree statistics (restored afterwards)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


# ----------------------------------------------------------------------------- the model


def make_weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"representation": rng.normal(0.0, 0.8, (H, H)), "dynamics": rng.normal(0.0, 0.6, (H, H)),
            "action": rng.normal(0.0, 0.8, (A, H)), "bias": rng.normal(0.0, 0.1, H),
            "value": rng.normal(0.0, 0.7, H), "reward": rng.normal(0.0, 0.7, H), "policy": rng.normal(0.0, 0.9, (H, A))}


def network(xp, w, x, action=None):
    """(hidden float32 [B, H], value [B], reward [B], logits [B, A]) with xp = numpy or jax.numpy.

    action None: the representation of observations x; otherwise the dynamics from hidden
    states x. Hidden states are rounded to the 1 / GRID grid (exact in float32).
    """
    x = x.astype(xp.float64)
    if action is None:
        h = xp.tanh(x @ w["representation"])
    else:
        h = xp.tanh(x @ w["dynamics"] + w["action"][action] + w["bias"])
    h = xp.round(h * GRID) / GRID
    value = xp.tanh(h @ w["value"])
    reward = 0.5 * xp.tanh(h @ w["reward"]) if action is not None else xp.zeros_like(value)
    return h.astype(xp.float32), value, reward, h @ w["policy"]


class NumpyModel(PredictsFromMethods):
    """`network` in NumPy behind MuFleet's model protocol."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights

    def initial_inference(self, observation: np.ndarray) -> ModelOutput:
        return ModelOutput(*network(np, self.weights, observation))

    def recurrent_inference(self, hidden_state: np.ndarray, action: np.ndarray) -> ModelOutput:
        assert hidden_state.dtype == np.float32 and action.dtype == np.int32
        return ModelOutput(*network(np, self.weights, hidden_state, action))


def mctx_recurrent_fn(params, rng_key, action, embedding):
    """`network` in jax.numpy as mctx's recurrent function; params["discount"] is d (see above)."""
    del rng_key
    hidden, value, reward, logits = network(jnp, params["weights"], embedding, action)
    output = mctx.RecurrentFnOutput(reward=reward, discount=jnp.full_like(value, params["discount"]),
                                    prior_logits=logits, value=value)
    return output, hidden


class FixedNoise:
    """Stands in for the search's numpy Generator, returning given root noise: the Gumbel policy
    draws rng.gumbel(size=(B, A)) once per move, PUCT rng.standard_gamma(alpha, size=(B, A))."""

    def __init__(self, gumbel: np.ndarray | None = None, gamma: np.ndarray | None = None) -> None:
        self._gumbel, self._gamma = gumbel, gamma

    def gumbel(self, size):
        assert self._gumbel is not None and self._gumbel.shape == size
        return self._gumbel

    def standard_gamma(self, shape, size):
        assert self._gamma is not None and self._gamma.shape == size
        return self._gamma


def case(seed: int):
    """(weights, observations [B, H], legal bool [B, A]); some games have fewer than M legal actions."""
    rng = np.random.default_rng(seed)
    legal = rng.random((B, A)) < 0.75
    legal[np.arange(B), rng.integers(0, A, B)] = True
    legal[0] = [True, False, True, False, False]              # 2 legal < M
    legal[1] = True                                           # all legal > M
    return make_weights(seed), rng.normal(0.0, 1.0, (B, H)), legal


def test_the_two_implementations_of_the_model_agree():
    weights, observation, _ = case(0)
    jw = jax.tree.map(jnp.asarray, weights)
    hidden, *outputs = network(np, weights, observation)
    j_hidden, *j_outputs = network(jnp, jw, jnp.asarray(observation))
    np.testing.assert_array_equal(hidden, np.asarray(j_hidden))
    action = np.arange(B, dtype=np.int32) % A
    step = network(np, weights, hidden, action)
    j_step = network(jnp, jw, j_hidden, jnp.asarray(action))
    np.testing.assert_array_equal(step[0], np.asarray(j_step[0]))
    for ours, theirs in zip(outputs + list(step[1:]), j_outputs + list(j_step[1:])):
        np.testing.assert_allclose(ours, np.asarray(theirs), rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------- margins


class Margins:
    """Wraps selectors' `scores` to record the smallest best-minus-second gap of any decision."""

    def __init__(self) -> None:
        self.smallest = np.inf
        self.decisions = 0

    def record(self, scores: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        finite = np.where(np.isfinite(scores), scores, -np.inf)
        top = np.sort(finite, axis=1)[:, ::-1]
        for row, (best, second) in zip(finite, top[:, :2]):
            self.decisions += 1
            if not np.isfinite(second):
                continue                                      # one candidate: nothing to flip
            if best == second and not row[np.isfinite(row)].any():
                continue                                      # all exactly 0 by construction
            self.smallest = min(self.smallest, best - second)

    def wrap(self, selector) -> None:
        scores = selector.scores

        def recording(*args, **kwargs):
            result = scores(*args, **kwargs)
            self.record(result)
            return result

        selector.scores = recording

    def check(self) -> None:
        assert self.decisions > S
        assert self.smallest > MIN_MARGIN, f"a near tie ({self.smallest:.3g}) could flip between libraries"


# ----------------------------------------------------------------------------- Gumbel MuZero


@functools.partial(jax.jit, static_argnames=("rescale_values",))
def mctx_gumbel(params, rng_key, root, invalid_actions, gumbel_scale, rescale_values=True):
    qtransform = functools.partial(mctx.qtransform_completed_by_mix_value, rescale_values=rescale_values)
    return mctx.gumbel_muzero_policy(params, rng_key, root, mctx_recurrent_fn, num_simulations=S,
                                     invalid_actions=invalid_actions, max_num_considered_actions=M,
                                     qtransform=qtransform, gumbel_scale=gumbel_scale)


def compare_trees(search: BatchedSearch, tree, root_visit: int = 1) -> None:
    """The same tree: topology and visits exactly (the root's own visit: `root_visit`), the
    hidden states exactly and the network values closely."""
    np.testing.assert_array_equal(search.children_index, np.asarray(tree.children_index))
    their_visits = np.asarray(tree.node_visits).copy()
    their_visits[:, 0] -= 1 - root_visit
    np.testing.assert_array_equal(search.node_visits, their_visits)
    np.testing.assert_array_equal(search.children_visits, np.asarray(tree.children_visits))
    np.testing.assert_array_equal(search.hidden_state, np.asarray(tree.embeddings))
    np.testing.assert_allclose(search.node_raw_value, np.asarray(tree.raw_values), rtol=0, atol=1e-12)


@pytest.mark.parametrize("two_player,discount,noise,rescale_values", [
    (False, 0.997, False, True), (False, 0.997, True, True), (True, 1.0, False, True), (True, 0.95, True, True),
    (True, 1.0, True, False),
])
def test_gumbel_matches_mctx_gumbel_muzero_policy(two_player, discount, noise, rescale_values):
    weights, observation, legal = case(1 + int(two_player) + 2 * int(noise))
    model = NumpyModel(weights)
    root = model.initial_inference(observation)
    params = {"weights": jax.tree.map(jnp.asarray, weights), "discount": -discount if two_player else discount}
    theirs = mctx_gumbel(params, jax.random.PRNGKey(7),
                         mctx.RootFnOutput(prior_logits=jnp.asarray(root.policy_logits), value=jnp.asarray(root.value),
                                           embedding=jnp.asarray(root.hidden_state)),
                         jnp.asarray(~legal, jnp.float64), 1.0 if noise else 0.0, rescale_values=rescale_values)
    gumbel = np.asarray(theirs.search_tree.extra_data.root_gumbel)
    assert gumbel.any() == noise

    config = SearchConfig(num_simulations=S, search="gumbel", discount=discount, max_considered_actions=M,
                          gumbel_scale=1.0, rescale_values=rescale_values)
    search = BatchedSearch(B, A, (H,), config, two_player=two_player)
    margins = Margins()
    margins.wrap(search.policy.root)
    margins.wrap(search.policy.interior)
    ours = search.run(model, observation, legal, FixedNoise(gumbel=gumbel), training=noise)
    margins.check()
    # The final choice's margin too: g + logits + sigma(Q) over the most visited considered actions.
    sigma = completed_qvalues(search.children_qvalues[:, 0], search.children_visits[:, 0], search.node_raw_value[:, 0],
                              search.children_prior[:, 0], value_scale=config.value_scale,
                              maxvisit_init=config.maxvisit_init, rescale_values=rescale_values)
    visits = search.children_visits[:, 0]
    final = gumbel_lib.score_considered(visits.max(axis=1), gumbel, search.children_logits[:, 0], sigma, visits)
    margins.record(np.where(legal, final, -np.inf))
    margins.check()

    np.testing.assert_array_equal(ours.action, np.asarray(theirs.action))
    np.testing.assert_array_equal(ours.visit_counts, np.asarray(theirs.search_tree.summary().visit_counts))
    np.testing.assert_allclose(ours.policy, np.asarray(theirs.action_weights), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.value, np.asarray(theirs.search_tree.summary().value), rtol=0, atol=1e-6)
    compare_trees(search, theirs.search_tree)
    np.testing.assert_allclose(search.node_value_sum / np.maximum(search.node_visits, 1),
                               np.where(search.node_visits > 0, np.asarray(theirs.search_tree.node_values), 0.0),
                               rtol=0, atol=1e-9)
    assert not ours.visit_counts[~legal].any()


# ----------------------------------------------------------------------------- MuZero (PUCT)


PB_C_INIT, PB_C_BASE = 1.25, 19652.0


def pseudocode_puct(rng_key, tree, node_index, depth, *, is_root):
    """The pseudocode's select_child / ucb_score at one node of an (unbatched) mctx tree."""
    del rng_key
    visits = tree.children_visits[node_index]
    # Difference 1: the pseudocode's root has no visit of its own; mctx gives it one.
    node_visit = (tree.node_visits[node_index] - (1 if is_root else 0)).astype(jnp.float64)
    pb_c = jnp.log((node_visit + PB_C_BASE + 1) / PB_C_BASE) + PB_C_INIT
    prior = jax.nn.softmax(tree.children_prior_logits[node_index])
    prior_score = pb_c * (jnp.sqrt(node_visit) / (visits + 1)) * prior
    # Difference 2: one min-max per tree over all Q backed up so far (see loop_fn below).
    low, high = tree.extra_data["q_min"], tree.extra_data["q_max"]
    qvalues = tree.qvalues(node_index)
    normalized = jnp.where(high > low, (qvalues - low) / jnp.where(high > low, high - low, 1.0), qvalues)
    score = prior_score + jnp.where(visits > 0, normalized, 0.0)
    # Difference 3: no tie-breaking noise; argmax takes the lowest index.
    if is_root:
        score = jnp.where(tree.root_invalid_actions > 0, -jnp.inf, score)
    return jnp.argmax(score).astype(jnp.int32)


def min_max_loop(lower, upper, body_fun, state):
    """mctx's simulation loop, with the pseudocode's MinMaxStats fed after every backup: the Q of
    each edge the backup wrote (its visit count changed) joins the tree's extremes."""

    def body(simulation, loop_state):
        _, before = loop_state
        rng_key, after = body_fun(simulation, loop_state)
        written = after.children_visits != before.children_visits
        q = after.children_rewards + after.children_discounts * after.children_values
        extremes = {"q_min": jnp.minimum(after.extra_data["q_min"], jnp.where(written, q, jnp.inf).min(axis=(1, 2))),
                    "q_max": jnp.maximum(after.extra_data["q_max"], jnp.where(written, q, -jnp.inf).max(axis=(1, 2)))}
        return rng_key, after.replace(extra_data=extremes)

    return jax.lax.fori_loop(lower, upper, body, state)


@jax.jit
def mctx_pseudocode_search(params, root, invalid_actions):
    extremes = {"q_min": jnp.full(B, jnp.inf), "q_max": jnp.full(B, -jnp.inf)}
    return mctx.search(params, jax.random.PRNGKey(0), root=root, recurrent_fn=mctx_recurrent_fn,
                       root_action_selection_fn=functools.partial(pseudocode_puct, depth=0, is_root=True),
                       interior_action_selection_fn=functools.partial(pseudocode_puct, is_root=False),
                       num_simulations=S, invalid_actions=invalid_actions, extra_data=extremes, loop_fn=min_max_loop)


@pytest.mark.parametrize("two_player,discount,noise", [
    (False, 0.997, False), (False, 0.9, True), (True, 1.0, False), (True, 0.95, True),
])
def test_puct_matches_mctx_search_with_the_pseudocode_selection(two_player, discount, noise):
    weights, observation, legal = case(11 + int(two_player) + 2 * int(noise))
    model = NumpyModel(weights)
    root = model.initial_inference(observation)
    config = SearchConfig(num_simulations=S, search="puct", discount=discount, pb_c_init=PB_C_INIT,
                          pb_c_base=PB_C_BASE, root_dirichlet_alpha=0.3, root_exploration_fraction=0.25)
    search = BatchedSearch(B, A, (H,), config, two_player=two_player)
    margins = Margins()
    margins.wrap(search.policy.selector)
    gamma = np.random.default_rng(5).standard_gamma(config.root_dirichlet_alpha, (B, A))
    ours = search.run(model, observation, legal, FixedNoise(gamma=gamma), training=noise, temperature=0)
    margins.check()
    # Difference 4: the root prior, noisy or not, is MuFleet's; mctx gets it as logits.
    root_prior = search.children_prior[:, 0].copy()
    prior_logits = np.log(np.maximum(root_prior, np.finfo(np.float64).tiny))
    params = {"weights": jax.tree.map(jnp.asarray, weights), "discount": -discount if two_player else discount}
    tree = mctx_pseudocode_search(params, mctx.RootFnOutput(prior_logits=jnp.asarray(prior_logits),
                                                            value=jnp.asarray(root.value),
                                                            embedding=jnp.asarray(root.hidden_state)),
                                  jnp.asarray(~legal, jnp.float64))

    compare_trees(search, tree, root_visit=0)          # difference 1
    visits = np.asarray(tree.summary().visit_counts)
    np.testing.assert_array_equal(ours.visit_counts, visits)
    np.testing.assert_array_equal(ours.action, np.argmax(visits, axis=1))
    np.testing.assert_allclose(ours.policy, np.asarray(tree.summary().visit_probs), rtol=0, atol=1e-6)
    visited = ours.visit_counts > 0
    their_q = np.asarray(tree.summary().qvalues)
    np.testing.assert_allclose(np.where(visited, ours.qvalues, 0), np.where(visited, their_q, 0), rtol=0, atol=1e-6)
    # Difference 1 again: mctx's root value averages the network's value and the S returns.
    mctx_root = np.asarray(tree.node_values[:, 0])
    np.testing.assert_allclose(ours.value, (mctx_root * (S + 1) - root.value) / S, rtol=0, atol=1e-6)
    np.testing.assert_allclose(search.node_value_sum[:, 1:] / search.node_visits[:, 1:],
                               np.asarray(tree.node_values)[:, 1:], rtol=0, atol=1e-9)
    # The stale extremes themselves.
    np.testing.assert_allclose(search.q_min, np.asarray(tree.extra_data["q_min"]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(search.q_max, np.asarray(tree.extra_data["q_max"]), rtol=0, atol=1e-12)
    assert not ours.visit_counts[~legal].any()
