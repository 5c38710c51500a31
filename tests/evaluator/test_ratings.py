"""The Elo ladder's rating fit (services/evaluator/ratings.py): it recovers known strengths from
synthetic matches, within errors that follow from the numbers of games, keeps the anchor at 0,
does not care how a match is written down, and rates an undefeated player finitely."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.evaluator.ratings import (ELO_PER_NAT, MatchResult, expected_score, fit_ratings,
                                        wilson_interval)

TRUE = {"random": 0.0, "mcts100": 250.0, "mcts1000": 500.0, "alphabeta": 650.0, "agent": 900.0}


def synthetic_matches(games_per_pair: int, draw_rate: float, seed: int) -> list[MatchResult]:
    """Every pair of `TRUE`'s players plays `games_per_pair` games whose expected score is the
    Elo model's, a share `draw_rate` of them drawn (where the odds leave room for it)."""
    rng = np.random.default_rng(seed)
    names = list(TRUE)
    matches = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            p = expected_score(TRUE[a], TRUE[b])
            draws = min(draw_rate, 2 * p, 2 * (1 - p))
            wins, drawn, losses = rng.multinomial(games_per_pair, [p - draws / 2, draws, 1 - p - draws / 2])
            matches.append(MatchResult(a, b, int(wins), int(drawn), int(losses)))
    return matches


@pytest.mark.parametrize("draw_rate", [0.0, 0.3])
def test_known_ratings_are_recovered_within_their_errors(draw_rate):
    fit = fit_ratings(synthetic_matches(4000, draw_rate, seed=1))
    assert fit.ratings["random"] == 0.0 and fit.standard_errors["random"] == 0.0
    assert fit.iterations < 20
    for name, rating in TRUE.items():
        if name == "random":
            continue
        error = fit.standard_errors[name]
        # 4 players x 4,000 games each against 4 others: errors of about 10-30 Elo.
        assert 3.0 < error < 40.0, (name, error)
        assert abs(fit.ratings[name] - rating) < 4 * error, (name, fit.ratings[name], rating, error)
        assert fit.games[name] == 4 * 4000


def test_the_standard_error_of_one_match_is_the_binomial_one():
    # 1,000 games against the anchor at a 3:1 score: R = 400 log10(3), and the error is the
    # delta method's 1 / sqrt(n p (1 - p)) in log odds (up to the prior's tiny share).
    fit = fit_ratings([("a", "random", 750, 0, 250)])
    assert fit.ratings["a"] == pytest.approx(400 * math.log10(3.0), abs=0.5)
    assert fit.standard_errors["a"] == pytest.approx(ELO_PER_NAT / math.sqrt(1000 * 0.75 * 0.25), rel=1e-3)
    assert fit.expected_score("a", "random") == pytest.approx(0.75, abs=1e-3)


def test_the_anchor_is_exactly_zero_whoever_it_is():
    matches = synthetic_matches(500, 0.1, seed=2)
    by_random = fit_ratings(matches)
    by_agent = fit_ratings(matches, anchor="agent")
    assert by_agent.ratings["agent"] == 0.0 and by_agent.standard_errors["agent"] == 0.0
    # Another anchor shifts every rating by the same amount (but for the prior's tiny pull).
    shift = by_random.ratings["agent"]
    for name in TRUE:
        assert by_agent.ratings[name] == pytest.approx(by_random.ratings[name] - shift, abs=2.0)


def test_swapping_the_players_of_a_match_or_splitting_it_gives_the_same_fit():
    matches = synthetic_matches(300, 0.2, seed=3)
    swapped = [MatchResult(m.b, m.a, m.losses, m.draws, m.wins) for m in reversed(matches)]
    split = [MatchResult(m.a, m.b, w, d, l) for m in matches
             for w, d, l in ((m.wins // 2, m.draws, m.losses // 2),
                             (m.wins - m.wins // 2, 0, m.losses - m.losses // 2))]
    fit = fit_ratings(matches)
    for other in (fit_ratings(swapped), fit_ratings(split)):
        for name in TRUE:
            assert other.ratings[name] == pytest.approx(fit.ratings[name], abs=1e-6)
            assert other.standard_errors[name] == pytest.approx(fit.standard_errors[name], rel=1e-6)


def test_an_undefeated_player_gets_a_finite_rating_above_the_rest():
    matches = synthetic_matches(200, 0.2, seed=4) + [
        ("solver", name, 50, 0, 0) for name in TRUE]  # wins every game
    fit = fit_ratings(matches)
    top = max(rating for name, rating in fit.ratings.items() if name != "solver")
    assert math.isfinite(fit.ratings["solver"]) and fit.ratings["solver"] > top + 100
    assert math.isfinite(fit.standard_errors["solver"])
    # The documented numbers: undefeated in 10 and 100 games against the anchor.
    assert fit_ratings([("x", "random", 10, 0, 0)]).ratings["x"] == pytest.approx(750, abs=5)
    assert fit_ratings([("x", "random", 100, 0, 0)]).ratings["x"] == pytest.approx(1090, abs=5)
    # And the mirror image: a player who lost every game is rated finitely below 0.
    assert -2000 < fit_ratings([("x", "random", 0, 0, 10)]).ratings["x"] < -700


def test_draws_count_half_a_win_each_way():
    drawn = fit_ratings([("a", "random", 10, 20, 10)])
    assert drawn.ratings["a"] == pytest.approx(0.0, abs=1e-9)
    half = fit_ratings([("a", "random", 30, 20, 10)])  # score 40 of 60
    assert half.ratings["a"] == pytest.approx(400 * math.log10(2.0), abs=15)


def test_wilson_interval_matches_a_hand_computation():
    # 8 of 10 at 95%: z = 1.959964, p = 0.8, z^2 / n = 0.384146;
    # centre (0.8 + 0.192073) / 1.384146 = 0.716738, half-width
    # 1.959964 sqrt(0.016 + 0.009604) / 1.384146 = 0.226575.
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490162, abs=1e-6) and high == pytest.approx(0.943318, abs=1e-6)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 10)[1] > 0.0 and wilson_interval(10, 10)[0] < 1.0
    wide, narrow = wilson_interval(8, 10, 0.99), wilson_interval(80, 100)
    assert wide[0] < low and wide[1] > high and narrow[0] > low and narrow[1] < high
    assert wilson_interval(5.5, 10) == pytest.approx(tuple(1 - x for x in reversed(wilson_interval(4.5, 10))))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="anchor 'random' has played no match; players: a, b"):
        fit_ratings([("a", "b", 1, 0, 1)])
    with pytest.raises(ValueError, match=r"MatchResult.draws must be >= 0, got -1 \('a' vs 'b'\)"):
        fit_ratings([("a", "b", 1, -1, 1)])
    with pytest.raises(ValueError, match="a player cannot play itself, got a = b = 'a'"):
        MatchResult("a", "a", 1, 0, 0)
    with pytest.raises(ValueError, match="results: expected at least one match, got none"):
        fit_ratings([])
    with pytest.raises(ValueError, match="prior_sd must be > 0, got 0"):
        fit_ratings([("a", "random", 1, 0, 0)], prior_sd=0)
    with pytest.raises(ValueError, match=r"successes must be in \[0, trials=10\], got 11"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="trials must be > 0, got 0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 1.0"):
        wilson_interval(1, 2, 1.0)
