"""MuZero training targets for a batch of sampled positions, vectorized over the batch.

The buffer gathers, for each sampled position t (of a record of T positions), a window of W >=
K + n + 1 consecutive positions t, t+1, ... of the same record (entries at or past the record's
end hold anything: they are never read unmasked). Everything below is array arithmetic over
[B, K+1] and [B, K+1, n]; there is no Python loop over samples.

For u = t + k, k = 0..K (docs/replay.md, "Targets"):

  value    z_u = sum_{i<m} g^i s(u,u+i) r_{u+i} + [u+m < T] g^m s(u,u+m) v_{u+m}
           with s(a,b) = +1 if to_play[a] == to_play[b] else -1, and
           m = min(n, T-u)   for a terminated record (the bootstrap is dropped past the end),
           m = min(n, T-1-u) for one that is not (a chunk or a game cut at max_moves: the
                             bootstrap moves back to the last stored position, T-1);
           z_u = 0 past the end (u >= T).
           With the off-policy correction, n is n(u) per target ([B, K+1], 1 <= n(u) <= n):
           the same formula with n(u) in place of n (the windows still span the largest n).
  reward   index 0 is 0; index k >= 1 is r_{u-1} (0 if u-1 >= T); with value_prefix and
           horizon H, the sum of those over j = H*floor((k-1)/H)+1 .. k: the rewards since
           the last restart (EfficientZero's value prefix, restarted every H steps).
  mask     1 where u < T.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def value_targets(rewards_w: np.ndarray, values_w: np.ndarray, to_play_w: np.ndarray,
                  remaining: np.ndarray, terminated: np.ndarray, num_unroll_steps: int,
                  td_steps: int, discount: float,
                  td_steps_per_target: np.ndarray | None = None) -> np.ndarray:
    """float32 [B, K+1]: the n-step value targets at u = t + k.

    Args:
      rewards_w, values_w, to_play_w: [B, W] windows from t, W >= K + n + 1.
      remaining: int [B], T - t (>= 1): positions of the record from t on.
      terminated: bool [B], whether each record ends by the game's rules.
      td_steps: n, the largest n-step horizon (the windows' n).
      td_steps_per_target: None (every target uses n), or int [B, K+1] in [1, n]: the n of
        each target (the off-policy correction, `off_policy_td_steps`).
    """
    K, n = num_unroll_steps, td_steps
    k = np.arange(K + 1)
    rem_u = remaining[:, None].astype(np.int64) - k[None, :]  # positions left from u: T - u
    inside = rem_u > 0
    horizon = n if td_steps_per_target is None else td_steps_per_target
    m = np.minimum(horizon, np.where(terminated[:, None], rem_u, rem_u - 1))
    np.clip(m, 0, n, out=m)  # [B, K+1]: reward terms before the bootstrap
    powers = discount ** np.arange(n + 1, dtype=np.float64)
    own = to_play_w[:, :K + 1]  # the player to move at u
    rewards = sliding_window_view(rewards_w[:, :K + n], n, axis=1)  # [B, K+1, n]: r_{u+i}
    # coefficient of r_{u+i}: s(u, u+i) g^i for i < m, else 0
    coefficients = np.where(np.arange(n) < m[:, :, None], powers[:n], 0.0)
    if np.any(to_play_w):  # two players: the other player's rewards count negatively
        players = sliding_window_view(to_play_w[:, :K + n], n, axis=1)
        coefficients[players != own[:, :, None]] *= -1
    z = (coefficients * rewards).sum(axis=-1)
    bootstrap_at = k[None, :] + m  # window index of u + m, <= K + n
    rows = np.arange(len(remaining))[:, None]
    v = values_w[rows, bootstrap_at].astype(np.float64)
    v[to_play_w[rows, bootstrap_at] != own] *= -1
    z += np.where(inside & (m < rem_u), powers[m] * v, 0.0)  # no bootstrap at or past the end
    z[~inside] = 0.0
    return z.astype(np.float32)


def off_policy_td_steps(td_steps: int, age: np.ndarray, versions_per_step: int) -> np.ndarray:
    """int64 [like age]: EfficientZero's off-policy correction of the n-step horizon,
    n(u) = clip(td_steps - floor(age / versions_per_step), 1, td_steps), for data `age` (>= 0)
    model versions older than the newest; versions_per_step >= 1."""
    return np.clip(td_steps - np.floor_divide(age, versions_per_step), 1, td_steps)


def reward_targets(rewards_w: np.ndarray, remaining: np.ndarray, num_unroll_steps: int,
                   value_prefix: bool, value_prefix_horizon: int = 5) -> np.ndarray:
    """float32 [B, K+1]: 0, then r_{t+k-1} (0 past the end), or (value_prefix) their running
    sums, restarted every `value_prefix_horizon` steps (the module docstring)."""
    K = num_unroll_steps
    B = len(remaining)
    real = np.arange(K)[None, :] < remaining[:, None]
    rewards = np.where(real, rewards_w[:, :K], 0.0).astype(np.float64)
    if value_prefix:
        H = int(value_prefix_horizon)
        if H < 1:
            raise ValueError(f"reward_targets: value_prefix_horizon must be >= 1, got {H}")
        # Sum within each run of H steps: pad to whole runs, cumsum along the run axis.
        runs = -(-K // H)
        padded = np.zeros((B, runs * H))
        padded[:, :K] = rewards
        rewards = np.cumsum(padded.reshape(B, runs, H), axis=2).reshape(B, runs * H)[:, :K]
    return np.concatenate([np.zeros((B, 1), np.float32), rewards.astype(np.float32)], axis=1)


def unroll_mask(remaining: np.ndarray, num_unroll_steps: int) -> np.ndarray:
    """float32 [B, K+1]: 1 where u = t + k < T."""
    return (np.arange(num_unroll_steps + 1)[None, :] < remaining[:, None]).astype(np.float32)
