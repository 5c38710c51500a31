"""Elo ratings of a ladder of players (model versions, opponents): a Bradley-Terry fit over every
match played so far, and Wilson score intervals for win rates.

Model: player i has a rating R_i on the Elo scale and beats player j with probability
    P(i beats j) = 1 / (1 + 10^((R_j - R_i) / 400)),
that is, the log odds are theta_i - theta_j with theta = R ln(10) / 400 (400 Elo: odds of 10 to 1).
A draw counts as half a win for each side: a match of n games scores s = wins + draws / 2 for
player a and n - s for player b.

Fit: the maximum of the log-likelihood
    sum over matches of s log P(a beats b) + (n - s) log P(b beats a)
plus a Gaussian prior on every rating but the anchor's: mean 0 (the anchor's rating), standard
deviation `prior_sd` Elo (default 1,000). The anchor (the random player by default) is fixed at
exactly 0, which fixes the scale's origin. The log-posterior is strictly concave, so Newton's
method (with step halving, which it rarely needs) finds its one maximum in a few iterations.

Why a prior, and what it does:
  * without one a player who won (or lost) every game has no finite maximum-likelihood rating;
    with it the rating is finite and grows with the number of games: undefeated in 10 games
    against a player rated 0 gives about +750, in 100 games about +1,090, in 1,000 about
    +1,440 (`prior_sd` 1,000);
  * elsewhere its pull is tiny: a rating R backed by n games against players of about its
    strength moves towards 0 by about R / (1 + n p (1 - p) (prior_sd ln(10) / 400)^2), e.g. 0.3%
    of R for n = 40 at p = 0.5 with the default;
  * players with no chain of matches to the anchor are rated relative to each other, the prior
    placing their group around 0.
Standard errors: from the inverse of the negative Hessian of the log-posterior at the fit (the
usual large-sample approximation), relative to the anchor (whose error is 0). Draws make the
true spread of a score smaller than the Bernoulli variance the model assumes, so with many
draws the errors are a little too large (conservative). For an undefeated player the error is
mostly the prior's and says only that the rating is poorly known.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Iterable

import numpy as np

from games.validation import require

ELO_PER_NAT = 400.0 / math.log(10.0)  # Elo points per unit of natural log odds (~173.7)


@dataclasses.dataclass(frozen=True)
class MatchResult:
    """The games player `a` played against player `b`, counted from a's view."""

    a: str
    b: str
    wins: int
    draws: int
    losses: int

    def __post_init__(self) -> None:
        require(self.a != self.b, f"MatchResult: a player cannot play itself, got a = b = {self.a!r}")
        for name in ("wins", "draws", "losses"):
            value = getattr(self, name)
            require(value >= 0, f"MatchResult.{name} must be >= 0, got {value} ({self.a!r} vs {self.b!r})")

    @property
    def games(self) -> int:
        return self.wins + self.draws + self.losses


@dataclasses.dataclass(frozen=True)
class Ratings:
    """A fit of `fit_ratings`.

    Attributes:
      ratings: player -> Elo rating (the anchor exactly 0).
      standard_errors: player -> standard error of the rating, Elo (the anchor 0).
      games: player -> games played.
      anchor: the player fixed at 0.
      iterations: Newton iterations the fit took.
    """

    ratings: dict[str, float]
    standard_errors: dict[str, float]
    games: dict[str, int]
    anchor: str
    iterations: int

    def expected_score(self, a: str, b: str) -> float:
        """The score a is expected to make per game against b (a win 1, a draw 1/2)."""
        return expected_score(self.ratings[a], self.ratings[b])


def expected_score(rating_a: float, rating_b: float) -> float:
    """P(a beats b) under the Elo model: 1 / (1 + 10^((R_b - R_a) / 400))."""
    return 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / 400.0))


def fit_ratings(results: Iterable[MatchResult | tuple[str, str, int, int, int]], anchor: str = "random",
                prior_sd: float = 1000.0, tolerance: float = 1e-9, max_iterations: int = 100) -> Ratings:
    """Elo ratings from match results (module docstring).

    Args:
      results: MatchResult or (a, b, wins of a, draws, losses of a); a pair may appear several
        times, in either order (their games add up).
      anchor: the player rated exactly 0; must have played.
      prior_sd: standard deviation of the ratings' Gaussian prior, Elo (> 0).
      tolerance: stop when no rating changes by more than this, in natural log odds.
      max_iterations: RuntimeError if Newton's method has not converged after this many.
    """
    matches = [r if isinstance(r, MatchResult) else MatchResult(*r) for r in results]
    require(len(matches) > 0, "results: expected at least one match, got none")
    require(prior_sd > 0, f"prior_sd must be > 0, got {prior_sd}")
    players = sorted({m.a for m in matches} | {m.b for m in matches})
    require(anchor in players, f"anchor {anchor!r} has played no match; players: {', '.join(players)}")
    index = {p: i for i, p in enumerate(players)}
    a = np.array([index[m.a] for m in matches])
    b = np.array([index[m.b] for m in matches])
    n = np.array([m.games for m in matches], np.float64)
    s = np.array([m.wins + 0.5 * m.draws for m in matches], np.float64)
    P = len(players)
    free = np.array([i for i in range(P) if players[i] != anchor], np.int64)
    precision = (ELO_PER_NAT / prior_sd) ** 2  # the prior's 1 / variance in natural units

    def log_posterior(theta: np.ndarray) -> float:
        d = theta[a] - theta[b]
        # log sigmoid(d) = -log(1 + e^-d), computed stably with logaddexp.
        return float(-np.sum(s * np.logaddexp(0.0, -d) + (n - s) * np.logaddexp(0.0, d))
                     - 0.5 * precision * np.sum(theta[free] ** 2))

    def gradient_and_hessian(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = theta[a] - theta[b]
        p = 0.5 * (1.0 + np.tanh(0.5 * d))  # sigmoid(d), without overflow
        residual = s - n * p
        weight = n * p * (1.0 - p)
        gradient = np.bincount(a, residual, P) - np.bincount(b, residual, P) - precision * theta
        hessian = np.zeros((P, P))
        np.add.at(hessian, (a, a), -weight)
        np.add.at(hessian, (b, b), -weight)
        np.add.at(hessian, (a, b), weight)
        np.add.at(hessian, (b, a), weight)
        hessian -= precision * np.eye(P)
        return gradient[free], hessian[np.ix_(free, free)]

    theta = np.zeros(P)
    value = log_posterior(theta)
    for iteration in range(1, max_iterations + 1):
        gradient, hessian = gradient_and_hessian(theta)
        step = np.linalg.solve(-hessian, gradient)
        scale = 1.0
        while True:  # halve the step until the posterior does not fall (concave: it ends)
            trial = theta.copy()
            trial[free] += scale * step
            trial_value = log_posterior(trial)
            if trial_value >= value or scale < 1e-6:
                break
            scale *= 0.5
        theta, value = trial, trial_value
        if np.max(np.abs(scale * step), initial=0.0) < tolerance:
            break
    else:
        raise RuntimeError(f"fit_ratings: no convergence in max_iterations={max_iterations}")
    _, hessian = gradient_and_hessian(theta)
    errors = np.zeros(P)
    if free.size:
        errors[free] = np.sqrt(np.diag(np.linalg.inv(-hessian)))
    played = np.bincount(a, n, P) + np.bincount(b, n, P)
    ratings = {p: float(theta[i] * ELO_PER_NAT) for i, p in enumerate(players)}
    ratings[anchor] = 0.0  # exactly, not -0.0
    return Ratings(ratings=ratings,
                   standard_errors={p: float(errors[i] * ELO_PER_NAT) for i, p in enumerate(players)},
                   games={p: int(played[i]) for i, p in enumerate(players)},
                   anchor=anchor, iterations=iteration)


def wilson_interval(successes: float, trials: float, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (low, high) of a success rate: `successes` of `trials` (a draw
    may count as half a success), at two-sided `confidence`:
        (p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n),  p = successes / n.
    Unlike p -+ z sqrt(p (1 - p) / n) it stays inside [0, 1] and is not empty at 0 or n successes.
    """
    require(trials > 0, f"trials must be > 0, got {trials}")
    require(0 <= successes <= trials, f"successes must be in [0, trials={trials}], got {successes}")
    require(0.0 < confidence < 1.0, f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + 0.5 * confidence)
    p = successes / trials
    z2n = z * z / trials
    centre = (p + 0.5 * z2n) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / trials + z2n / (4.0 * trials)) / (1.0 + z2n)
    # At 0 (n) successes the low (high) end is exactly 0 (1); rounding would leave ~1e-17.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high
