"""CartPole-v1 exactly as Gymnasium's `CartPoleEnv`, vectorized over B games.

Same constants, Euler integration, termination thresholds (|x| > 2.4, |theta| > 12 degrees),
starting state uniform in [-0.05, 0.05]^4, reward 1 per step, truncation after 500 steps.

Values: every step is worth 1 and a game lasts at most 500 steps, so the return from any state
is at most sum_{t<500} 0.997^t = 259.1 (a fresh game balanced to the limit) and at least 0.
A value support of size S holds up to h^-1(S) (games.base.support_limit): S = 10 stops at
117.4, below the return of any state with 145 or more steps of balance ahead, so those targets
would be clipped (and their priorities could never fall). S = 16, the smallest support that
holds 259.1, holds up to 278.6.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from games.settings import FleetSettings, NetworkSettings, ReplaySettings, SearchSettings, TrainingSettings
from games.base import Game, GameSpec, MuZeroSettings, State, discounted_steps

GRAVITY = 9.8
MASS_CART = 1.0
MASS_POLE = 0.1
TOTAL_MASS = MASS_CART + MASS_POLE
POLE_HALF_LENGTH = 0.5
POLE_MASS_LENGTH = MASS_POLE * POLE_HALF_LENGTH
FORCE_MAG = 10.0
TAU = 0.02  # seconds between state updates
THETA_THRESHOLD_RADIANS = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
MAX_STEPS = 500
DISCOUNT = 0.997


@dataclasses.dataclass(frozen=True)
class CartPoleState(State):
    physics: np.ndarray  # float64 [B, 4]: x, x_dot, theta, theta_dot
    moves: np.ndarray  # int32 [B]: steps taken
    rng: np.random.Generator


class CartPole(Game):
    spec = GameSpec(name="cartpole", observation_shape=(4,), observation_dtype="float32",
                    num_actions=2, num_players=1, discount=DISCOUNT, max_moves=MAX_STEPS)
    reward_range = (0.0, 1.0)  # 1 a step; 0 in the targets at the root and past the end
    value_range = (0.0, discounted_steps(DISCOUNT, MAX_STEPS))  # 259.1
    settings = MuZeroSettings(
        network=NetworkSettings(architecture="fc", hidden_size=64, fc_layers=(64,), support_size=16),
        search=SearchSettings(num_simulations=16, search="gumbel", max_considered_actions=2),
        replay=ReplaySettings(capacity=100_000, min_positions=2_000),
        training=TrainingSettings(num_unroll_steps=5, td_steps=10, batch_size=256,
                                  learning_rate=3e-3, weight_decay=1e-4, export_interval=100),
        fleet=FleetSettings(games_per_batch=256),
        discount=DISCOUNT)

    def reset(self, n: int, seed: int | np.random.Generator | None = None) -> CartPoleState:
        rng = np.random.default_rng(seed)
        physics = rng.uniform(-0.05, 0.05, size=(n, 4))
        return CartPoleState(physics=physics, moves=np.zeros(n, np.int32), rng=rng)

    def step(self, state: CartPoleState, actions: np.ndarray):
        x, x_dot, theta, theta_dot = state.physics.T
        force = np.where(np.asarray(actions) == 1, FORCE_MAG, -FORCE_MAG)
        cos_theta, sin_theta = np.cos(theta), np.sin(theta)
        temp = (force + POLE_MASS_LENGTH * theta_dot**2 * sin_theta) / TOTAL_MASS
        theta_acc = (GRAVITY * sin_theta - cos_theta * temp) / (
            POLE_HALF_LENGTH * (4.0 / 3.0 - MASS_POLE * cos_theta**2 / TOTAL_MASS))
        x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos_theta / TOTAL_MASS
        # Gymnasium's default "euler" integrator: positions use the old velocities.
        x = x + TAU * x_dot
        x_dot = x_dot + TAU * x_acc
        theta = theta + TAU * theta_dot
        theta_dot = theta_dot + TAU * theta_acc
        physics = np.stack([x, x_dot, theta, theta_dot], axis=1)
        moves = state.moves + 1
        terminated = ((x < -X_THRESHOLD) | (x > X_THRESHOLD)
                      | (theta < -THETA_THRESHOLD_RADIANS) | (theta > THETA_THRESHOLD_RADIANS))
        truncated = (moves >= MAX_STEPS) & ~terminated
        reward = np.ones(len(moves), np.float32)
        return dataclasses.replace(state, physics=physics, moves=moves), reward, terminated, truncated

    def observation(self, state: CartPoleState) -> np.ndarray:
        # Gymnasium's observation is float32 of the float64 physics state.
        return state.physics.astype(np.float32)

    def legal_actions(self, state: CartPoleState) -> np.ndarray:
        return np.ones((state.batch_size, 2), bool)

    def to_play(self, state: CartPoleState) -> np.ndarray:
        return np.zeros(state.batch_size, np.int32)

    def state_from_positions(self, positions: np.ndarray, to_play: np.ndarray | None = None,
                             seed: int | np.random.Generator | None = None) -> CartPoleState:
        physics = np.array(positions, dtype=np.float64).reshape(-1, 4)
        return CartPoleState(physics=physics, moves=np.zeros(len(physics), np.int32),
                             rng=np.random.default_rng(seed))

    def positions(self, state: CartPoleState) -> np.ndarray:
        return state.physics.copy()
