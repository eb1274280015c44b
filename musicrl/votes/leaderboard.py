"""Bradley–Terry ratings from A/B votes: MLE, Elo scale, bootstrap confidence intervals.

Pure functions on a list of `(model_a, model_b, choice)`, choice one of `musicrl.votes.choices.CHOICES`.
A tie counts as half a win for each side; `both_bad` says nothing about which is better and is
left out (it is still counted per model, for display). A vote of a model against itself (two
seeds of one model) carries no information about ratings and is left out too.

Model: P(i beats j) = sigmoid(theta_i - theta_j), fitted by Newton's method with a weak L2 prior
(keeps the fit finite when a model won or lost every game, or the comparison graph is split).
Elo scale: R_i = base + scale / ln 10 * (theta_i - theta_anchor), so a 400-point gap means 10:1
odds; the anchor is one named model (pinned at `base`) or, by default, the mean of all ratings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from musicrl.errors import UserError
from musicrl.votes.choices import CHOICES, SCORE_A


@dataclass(frozen=True)
class Rating:
    model: str
    rating: float  # Elo-scaled
    ci_low: float
    ci_high: float
    games: int  # informative votes: wins + losses + ties
    wins: int
    losses: int
    ties: int
    both_bad: int


@dataclass(frozen=True)
class Leaderboard:
    ratings: list[Rating]  # best first
    models: list[str]  # the rated models, in the order of the matrices
    win_rate: np.ndarray  # [M, M] share of i's informative games against j that i won (ties half); NaN if none
    games: np.ndarray  # [M, M] informative games between i and j
    provisional: dict[str, int]  # models below `min_votes`: their informative game count
    n_votes: int  # informative votes used for the fit

    def table(self) -> list[dict]:
        """Rows for display: rank, model, rating and CI rounded, counts."""
        return [
            {
                "rank": i + 1,
                "model": r.model,
                "rating": round(r.rating, 1),
                "ci_low": round(r.ci_low, 1),
                "ci_high": round(r.ci_high, 1),
                "games": r.games,
                "wins": r.wins,
                "losses": r.losses,
                "ties": r.ties,
                "both_bad": r.both_bad,
            }
            for i, r in enumerate(self.ratings)
        ]


def _check(votes: Iterable[Sequence[str]]) -> list[tuple[str, str, str]]:
    out = []
    for v in votes:
        if len(v) != 3:
            raise UserError(f"a vote is (model_a, model_b, choice), got {v!r}")
        a, b, c = v
        if c not in CHOICES:
            raise UserError(f"unknown choice {c!r}: expected one of {', '.join(CHOICES)}")
        out.append((str(a), str(b), c))
    return out


def fit_bradley_terry(wins: np.ndarray, prior: float = 0.01, tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """MLE strengths theta [M] (mean 0) from wins [M, M] (wins[i, j] = i over j; ties as 0.5 each).

    Minimises -sum_ij wins_ij log sigmoid(theta_i - theta_j) + prior/2 |theta|^2 by Newton's method
    (convex, so it converges in a handful of steps).
    """
    w = np.asarray(wins, dtype=np.float64)
    m = w.shape[0]
    n = w + w.T  # [M, M] games
    theta = np.zeros(m)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))  # [M, M] P(i beats j)
        grad = (n * p).sum(1) - w.sum(1) + prior * theta
        c = n * p * (1.0 - p)
        hess = -c
        hess[np.diag_indices(m)] = c.sum(1) - np.diag(c) + prior
        # + 1/m everywhere: fixes the one free direction (a common shift), which the likelihood ignores
        step = np.linalg.solve(hess + 1.0 / m, grad)
        theta -= step
        if np.max(np.abs(step)) < tol:
            break
    return theta - theta.mean()


def _win_matrix(idx_a: np.ndarray, idx_b: np.ndarray, score_a: np.ndarray, m: int, weight: np.ndarray | None = None):
    """wins [M, M] from vote arrays (score_a: 1 win, 0.5 tie, 0 loss for a); weight = bootstrap counts."""
    wt = np.ones(len(idx_a)) if weight is None else weight
    w = np.zeros(m * m)
    np.add.at(w, idx_a * m + idx_b, wt * score_a)
    np.add.at(w, idx_b * m + idx_a, wt * (1.0 - score_a))
    return w.reshape(m, m)


def _rated_models(models: list[str], informative: list[tuple[str, str, str]], min_votes: int) -> set[str]:
    """The models with >= `min_votes` informative games among themselves: dropping one lowers the
    others' counts, so models are dropped until none is below."""
    kept = set(models)
    while True:
        games = {x: 0 for x in kept}
        for a, b, _ in informative:
            if a in kept and b in kept:
                games[a] += 1
                games[b] += 1
        low = {x for x, g in games.items() if g < min_votes}
        if not low:
            return kept
        kept -= low


def _rating(x: str, point: float, lo: float, hi: float, used: list, all_votes: list) -> Rating:
    """Model x's rating row: its Elo and CI, its counts in the votes used for the fit, its both_bad votes."""
    mine = [(a, b, c) for a, b, c in used if x in (a, b)]
    won = sum((c == "a" and a == x) or (c == "b" and b == x) for a, b, c in mine)
    tie = sum(c == "tie" for _, _, c in mine)
    bb = sum(c == "both_bad" and x in (a, b) for a, b, c in all_votes)
    return Rating(x, float(point), float(lo), float(hi), len(mine), won, len(mine) - won - tie, tie, bb)


def leaderboard(
    votes: Iterable[Sequence[str]],
    *,
    min_votes: int = 1,
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
    anchor: str | None = None,
    base: float = 1000.0,
    scale: float = 400.0,
    prior: float = 0.01,
) -> Leaderboard:
    """Fit Bradley–Terry ratings with bootstrap CIs (votes resampled with replacement, seeded).

    Models with fewer than `min_votes` informative games are dropped (repeatedly, since dropping
    one lowers the others' counts) and listed as provisional.
    """
    if not 0.0 < ci < 1.0:
        raise UserError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 0:
        raise UserError(f"n_boot must be >= 0, got {n_boot}")
    all_votes = _check(votes)
    informative = [(a, b, c) for a, b, c in all_votes if c != "both_bad" and a != b]

    every_model = sorted({x for a, b, _ in all_votes for x in (a, b)})
    kept = _rated_models(every_model, informative, min_votes)
    used = [(a, b, c) for a, b, c in informative if a in kept and b in kept]
    models = sorted(kept)
    if anchor is not None and anchor not in kept:
        raise UserError(f"anchor model {anchor!r} is not among the rated models")
    provisional = {}
    for x in every_model:
        if x not in kept:
            provisional[x] = sum(x in (a, b) for a, b, _ in informative)

    m = len(models)
    index = {x: i for i, x in enumerate(models)}
    ia = np.array([index[a] for a, _, _ in used], dtype=np.int64)
    ib = np.array([index[b] for _, b, _ in used], dtype=np.int64)
    sa = np.array([SCORE_A[c] for _, _, c in used])

    to_elo = scale / math.log(10.0)

    def elo(theta: np.ndarray) -> np.ndarray:
        ref = theta[index[anchor]] if anchor is not None else theta.mean()
        return base + to_elo * (theta - ref)

    wins = _win_matrix(ia, ib, sa, m)
    point = elo(fit_bradley_terry(wins, prior)) if m else np.zeros(0)
    if m and n_boot > 0 and len(used) > 0:
        rng = np.random.default_rng(seed)
        boots = np.empty((n_boot, m))
        for k in range(n_boot):
            counts = np.bincount(rng.integers(0, len(used), len(used)), minlength=len(used)).astype(np.float64)
            boots[k] = elo(fit_bradley_terry(_win_matrix(ia, ib, sa, m, counts), prior))
        lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2], axis=0)
    else:
        lo, hi = point.copy(), point.copy()

    games_m = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        win_rate = np.where(games_m > 0, wins / np.where(games_m > 0, games_m, 1.0), np.nan)

    ratings = [_rating(x, point[i], lo[i], hi[i], used, all_votes) for i, x in enumerate(models)]
    order = sorted(range(m), key=lambda i: -ratings[i].rating)
    return Leaderboard(
        ratings=[ratings[i] for i in order],
        models=models,
        win_rate=win_rate,
        games=games_m.round().astype(np.int64),
        provisional=provisional,
        n_votes=len(used),
    )
