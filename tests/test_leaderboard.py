"""Bradley–Terry leaderboard: recovers known strengths, CIs cover them, ties/both_bad/min votes; the win
rate against the base over time."""

import math
from datetime import datetime, timezone

import numpy as np
import pytest

from musicrl.errors import UserError
from musicrl.votes.leaderboard import fit_bradley_terry, leaderboard, wilson_band, win_rate_over_time

ELO = 400 / math.log(10)
THETA = {"m0": 0.0, "m1": 0.5, "m2": 1.0, "m3": -0.7}


def simulate(n: int, seed: int, theta=THETA) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(seed)
    names = list(theta)
    votes = []
    for _ in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        p = 1 / (1 + math.exp(-(theta[a] - theta[b])))
        votes.append((a, b, "a" if rng.random() < p else "b"))
    return votes


def test_fit_recovers_strengths_from_expected_wins():
    th = np.array([0.3, -0.2, 1.1, -1.2])
    p = 1 / (1 + np.exp(-(th[:, None] - th[None, :])))
    wins = 1000 * p * (1 - np.eye(4))  # noise-free: the MLE is the truth
    est = fit_bradley_terry(wins, prior=0.0)
    np.testing.assert_allclose(est, th - th.mean(), atol=1e-8)


def test_ordering_and_anchored_elo_recovered_with_covering_cis():
    lb = leaderboard(simulate(3000, seed=1), anchor="m0", n_boot=200, seed=0)
    assert [r.model for r in lb.ratings] == ["m2", "m1", "m0", "m3"]
    by = {r.model: r for r in lb.ratings}
    assert by["m0"].rating == pytest.approx(1000.0)
    for m, th in THETA.items():
        truth = 1000 + ELO * th
        assert by[m].ci_low - 1e-6 <= truth <= by[m].ci_high + 1e-6, (m, truth, by[m])
        assert abs(by[m].rating - truth) < 40
    assert all(r.ci_high - r.ci_low < 80 for r in lb.ratings if r.model != "m0")
    assert lb.n_votes == 3000 and sum(r.games for r in lb.ratings) == 6000


def test_bootstrap_intervals_cover_the_truth_about_95_percent():
    hits = total = 0
    for s in range(20):
        lb = leaderboard(simulate(600, seed=100 + s), anchor="m0", n_boot=100, seed=s)
        for r in lb.ratings:
            if r.model != "m0":
                total += 1
                hits += r.ci_low <= 1000 + ELO * THETA[r.model] <= r.ci_high
    assert hits / total >= 0.85, f"coverage {hits}/{total}"
    # and more votes give narrower intervals
    w_small = np.mean([r.ci_high - r.ci_low for r in leaderboard(simulate(300, 7), n_boot=100).ratings])
    w_big = np.mean([r.ci_high - r.ci_low for r in leaderboard(simulate(3000, 7), n_boot=100).ratings])
    assert w_big < 0.5 * w_small


def test_seeded_bootstrap_is_reproducible():
    votes = simulate(500, seed=3)
    assert leaderboard(votes, seed=5).ratings == leaderboard(votes, seed=5).ratings
    assert leaderboard(votes, seed=5).ratings != leaderboard(votes, seed=6).ratings


def test_ties_count_half_and_both_bad_is_left_out():
    only_ties = [("x", "y", "tie")] * 20
    lb = leaderboard(only_ties, n_boot=0)
    assert [r.rating for r in lb.ratings] == pytest.approx([1000.0, 1000.0])
    assert lb.win_rate[0, 1] == pytest.approx(0.5)
    # a tie is exactly half a win: 10 wins + 10 losses + 10 ties == 15 wins + 15 losses
    mixed = [("x", "y", "a")] * 10 + [("x", "y", "b")] * 5 + [("x", "y", "tie")] * 10
    halves = [("x", "y", "a")] * 15 + [("x", "y", "b")] * 10
    assert leaderboard(mixed, n_boot=0).ratings[0].rating == pytest.approx(leaderboard(halves, n_boot=0).ratings[0].rating)
    votes = simulate(400, seed=2)
    with_bad = votes + [("m3", "m2", "both_bad")] * 50
    a, b = leaderboard(votes, seed=1), leaderboard(with_bad, seed=1)
    assert [(r.model, r.rating, r.ci_low) for r in a.ratings] == [(r.model, r.rating, r.ci_low) for r in b.ratings]
    assert {r.model: r.both_bad for r in b.ratings}["m2"] == 50


def test_min_votes_and_self_pairs():
    votes = simulate(200, seed=4) + [("new", "m0", "a")] * 2 + [("m1", "m1", "a")] * 30
    lb = leaderboard(votes, min_votes=5, n_boot=20)
    assert "new" not in lb.models and lb.provisional == {"new": 2}
    assert lb.n_votes == 200  # self-comparisons and the provisional model's games are not fitted
    assert lb.win_rate.shape == (4, 4) and np.isnan(np.diag(lb.win_rate)).all()
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose((lb.win_rate + lb.win_rate.T)[off], 1.0)


def test_degenerate_and_bad_input():
    assert leaderboard([]).ratings == []
    one = leaderboard([("x", "y", "a")])
    assert one.ratings[0].model == "x" and np.isfinite(one.ratings[0].rating)  # the prior keeps it finite
    with pytest.raises(UserError, match="unknown choice"):
        leaderboard([("x", "y", "left")])
    with pytest.raises(UserError, match="anchor"):
        leaderboard(simulate(50, 0), anchor="zzz")


def test_win_rate_over_time_counts_votes_against_the_base_in_time_order_as_the_ratings_do():
    rows = [  # (time, model a, model b, choice), not in time order; the base on either side
        (30, "x", "base", "a"),  # x wins
        (10, "base", "x", "b"),  # x wins
        (20, "base", "x", "tie"),  # half a win
        (25, "x", "base", "both_bad"),  # says nothing
        (35, "x", "y", "a"),  # not against the base
        (40, "base", "base", "a"),  # the base against itself
        (50, "base", "x", "a"),  # x loses
        (45, "y", "base", "b"),  # y loses
        (datetime.fromtimestamp(55, timezone.utc), "base", "y", "tie"),  # a datetime, as the store keeps it
    ]
    x, y = win_rate_over_time(rows, "base")
    assert (x.model, x.base, y.model) == ("x", "base", "y")
    np.testing.assert_array_equal(x.times, [10, 20, 30, 50])
    np.testing.assert_array_equal(x.games, [1, 2, 3, 4])
    np.testing.assert_allclose(x.win_rate, [1, 1.5 / 2, 2.5 / 3, 2.5 / 4])
    np.testing.assert_allclose(y.times, [45, 55])
    np.testing.assert_allclose(y.win_rate, [0, 0.25])
    # the last point is the leaderboard's own win rate of the model against the base
    lb = leaderboard([r[1:] for r in rows], n_boot=0)
    i, j, k = (lb.models.index(m) for m in ("x", "base", "y"))
    assert x.win_rate[-1] == pytest.approx(lb.win_rate[i, j]) and y.win_rate[-1] == pytest.approx(lb.win_rate[k, j])
    assert win_rate_over_time(rows, "nobody") == [] and win_rate_over_time([], "base") == []
    with pytest.raises(UserError, match="unknown choice"):
        win_rate_over_time([(1, "x", "base", "left")], "base")


def test_win_rate_intervals_are_wilsons_and_hold_the_estimate():
    lo, hi = wilson_band(np.array([1.0, 0.0, 0.5]), np.array([1, 1, 1]))
    np.testing.assert_allclose(lo, [0.2065, 0.0, 0.0546], atol=1e-4)
    np.testing.assert_allclose(hi, [1.0, 0.7935, 0.9454], atol=1e-4)
    assert wilson_band(np.float64(0), np.float64(5))[0] == 0.0  # not -3e-17: float rounding is clipped
    votes = simulate(600, seed=7)
    rows = [(t, a, b, c) for t, (a, b, c) in enumerate(votes + [("m0", "m1", "tie")] * 40)]
    series = win_rate_over_time(rows, "m0")
    assert [s.model for s in series] == ["m1", "m2", "m3"]
    for s in series:
        assert np.all((0 <= s.ci_low) & (s.ci_low <= s.win_rate) & (s.win_rate <= s.ci_high) & (s.ci_high <= 1))
        assert s.ci_high[-1] - s.ci_low[-1] < s.ci_high[9] - s.ci_low[9]  # more votes, a narrower interval
    # THETA: m2 is stronger than the base m0, m3 weaker
    final = {s.model: s.win_rate[-1] for s in series}
    assert final["m2"] > 0.6 and final["m3"] < 0.4
