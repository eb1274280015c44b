"""Bradley–Terry ratings from A/B votes: MLE, Elo scale, bootstrap confidence intervals.

Pure functions on a list of `(model_a, model_b, choice)`, choice one of `musicrl.votes.choices.CHOICES`,
through its sufficient statistics, a `VoteTally` (per model pair: a's wins, b's wins, ties). A tally
takes one vote at a time, so a live leaderboard (`musicrl.votes.live`) adds each new vote to it and
rates that, instead of re-reading every vote: `leaderboard(votes)` is `rate(tally_votes(votes))`.
A tie counts as half a win for each side; `both_bad` says nothing about which is better and is
left out (it is still counted per model, for display). A vote of a model against itself (two
seeds of one model) carries no information about ratings and is left out too.

Model: P(i beats j) = sigmoid(theta_i - theta_j), fitted by Newton's method with a weak L2 prior
(keeps the fit finite when a model won or lost every game, or the comparison graph is split).
Elo scale: R_i = base + scale / ln 10 * (theta_i - theta_anchor), so a 400-point gap means 10:1
odds; the anchor is one named model (pinned at `base`) or, by default, the mean of all ratings.

Intervals: a bootstrap over votes (resampled with replacement). Only a vote's cell matters to the
fit (its model pair and outcome), so a resample is one multinomial draw over the cells, and all
`n_boot` resamples are fitted at once (batched Newton): a few ms whatever the number of votes.

Over time: `win_rate_over_time` takes `(time, model_a, model_b, choice)` rows and gives each model's
cumulative win rate against one base model after each of their votes, counted as above (a tie half,
'both bad' and self-pairs left out), with a 95% Wilson interval (`wilson_band`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Sequence

import numpy as np

from musicrl.errors import UserError
from musicrl.votes.choices import CHOICES

SESSION_CAP = 50  # the leaderboard (and the app's exports) count at most this many votes per session


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


_OUTCOME = MappingProxyType({"a": 0, "b": 1, "tie": 2})  # a cell's counts: [a wins, b wins, ties]
_FLIP = MappingProxyType({"a": "b", "b": "a", "tie": "tie"})


class VoteTally:
    """What a leaderboard needs of a vote set: per unordered model pair (a < b) the counts of a's
    wins, b's wins and ties; per model its both_bad votes; every model seen. Order-free: the same
    votes added in any order (or one at a time) give the same tally."""

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str], list[int]] = {}
        self.both_bad: dict[str, int] = {}
        self.models: set[str] = set()

    def add(self, a: str, b: str, choice: str) -> None:
        if choice not in CHOICES:
            raise UserError(f"unknown choice {choice!r}: expected one of {', '.join(CHOICES)}")
        self.models.update((a, b))
        if choice == "both_bad":
            for x in {a, b}:
                self.both_bad[x] = self.both_bad.get(x, 0) + 1
            return
        if a == b:  # two seeds of one model: nothing about ratings
            return
        if a > b:
            a, b, choice = b, a, _FLIP[choice]
        self.cells.setdefault((a, b), [0, 0, 0])[_OUTCOME[choice]] += 1

    def copy(self) -> "VoteTally":
        t = VoteTally()
        t.cells = {k: list(v) for k, v in self.cells.items()}
        t.both_bad, t.models = dict(self.both_bad), set(self.models)
        return t


def tally_votes(votes: Iterable[Sequence[str]]) -> VoteTally:
    t = VoteTally()
    for v in votes:
        if len(v) != 3:
            raise UserError(f"a vote is (model_a, model_b, choice), got {v!r}")
        t.add(str(v[0]), str(v[1]), v[2])
    return t


def fit_bradley_terry(wins: np.ndarray, prior: float = 0.01, tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """MLE strengths theta [M] (mean 0) from wins [M, M] (wins[i, j] = i over j; ties as 0.5 each);
    a batch of win matrices [B, M, M] gives [B, M], each fitted on its own.

    Minimises -sum_ij wins_ij log sigmoid(theta_i - theta_j) + prior/2 |theta|^2 by Newton's method
    (convex, so it converges in a handful of steps).
    """
    w = np.asarray(wins, dtype=np.float64)
    single = w.ndim == 2
    w = w[None] if single else w
    m = w.shape[-1]
    n = w + np.swapaxes(w, 1, 2)  # [B, M, M] games
    diag = np.eye(m, dtype=bool)
    theta = np.zeros(w.shape[:2])
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[:, :, None] - theta[:, None, :])))  # [B, M, M] P(i beats j)
        grad = (n * p).sum(2) - w.sum(2) + prior * theta
        c = n * p * (1.0 - p)
        hess = -c
        hess[:, diag] = c.sum(2) - c[:, diag] + prior
        # + 1/m everywhere: fixes the one free direction (a common shift), which the likelihood ignores
        step = np.linalg.solve(hess + 1.0 / m, grad[..., None])[..., 0]
        theta -= step
        if np.max(np.abs(step)) < tol:
            break
    theta = theta - theta.mean(1, keepdims=True)
    return theta[0] if single else theta


def _rated_models(models: list[str], cells: dict, min_votes: int) -> set[str]:
    """The models with >= `min_votes` informative games among themselves: dropping one lowers the
    others' counts, so models are dropped until none is below."""
    kept = set(models)
    while True:
        games = {x: 0 for x in kept}
        for (a, b), n in cells.items():
            if a in kept and b in kept:
                games[a] += sum(n)
                games[b] += sum(n)
        low = {x for x, g in games.items() if g < min_votes}
        if not low:
            return kept
        kept -= low


def win_matrix(tally: VoteTally, models: Sequence[str]) -> np.ndarray:
    """wins [M, M] of `models` (in that order) against each other: wins[i, j] = i over j, a tie
    half a win each; votes involving other models are left out."""
    index = {x: i for i, x in enumerate(models)}
    w = np.zeros((len(models), len(models)))
    for (a, b), (wa, wb, tie) in tally.cells.items():
        if a in index and b in index:
            w[index[a], index[b]] += wa + 0.5 * tie
            w[index[b], index[a]] += wb + 0.5 * tie
    return w


def _cell_map(used: list, index: dict, m: int) -> np.ndarray:
    """[3 C, M*M]: what one vote of each (cell, outcome) adds to the win matrix."""
    out = np.zeros((3 * len(used), m * m))
    for k, (a, b) in enumerate(used):
        i, j = index[a], index[b]
        out[3 * k, i * m + j] = 1.0  # a wins
        out[3 * k + 1, j * m + i] = 1.0  # b wins
        out[3 * k + 2, [i * m + j, j * m + i]] = 0.5  # a tie: half a win each
    return out


def _rating(x: str, point: float, lo: float, hi: float, tally: VoteTally, used: list) -> Rating:
    """Model x's rating row: its Elo and CI, its counts in the votes used for the fit, its both_bad votes."""
    won = tie = games = 0
    for a, b in used:
        if x in (a, b):
            n = tally.cells[(a, b)]
            won, tie, games = won + n[0 if x == a else 1], tie + n[2], games + sum(n)
    return Rating(x, float(point), float(lo), float(hi), games, won, games - won - tie, tie, tally.both_bad.get(x, 0))


def leaderboard(votes: Iterable[Sequence[str]], **options) -> Leaderboard:
    """Bradley–Terry ratings of a list of votes; `options` as `rate`'s."""
    return rate(tally_votes(votes), **options)


def rate(
    tally: VoteTally,
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
    every_model = sorted(tally.models)
    kept = _rated_models(every_model, tally.cells, min_votes)
    if anchor is not None and anchor not in kept:
        raise UserError(f"anchor model {anchor!r} is not among the rated models")
    provisional = {x: sum(sum(n) for k, n in tally.cells.items() if x in k) for x in every_model if x not in kept}
    used = sorted(k for k in tally.cells if k[0] in kept and k[1] in kept)
    models = sorted(kept)
    m = len(models)
    index = {x: i for i, x in enumerate(models)}
    counts = np.array([tally.cells[k] for k in used], dtype=np.float64).reshape(-1)  # [3 C]
    cell_map = _cell_map(used, index, m)
    n_used = int(counts.sum())
    to_elo = scale / math.log(10.0)

    def elo(theta: np.ndarray) -> np.ndarray:
        ref = theta[..., index[anchor]] if anchor is not None else theta.mean(-1)
        return base + to_elo * (theta - np.asarray(ref)[..., None])

    wins = win_matrix(tally, models)
    point = elo(fit_bradley_terry(wins, prior)) if m else np.zeros(0)
    if m and n_boot > 0 and n_used > 0:
        draws = np.random.default_rng(seed).multinomial(n_used, counts / n_used, size=n_boot)  # [n_boot, 3 C]
        boots = elo(fit_bradley_terry((draws @ cell_map).reshape(n_boot, m, m), prior))
        lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2], axis=0)
    else:
        lo, hi = point.copy(), point.copy()

    games_m = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        win_rate = np.where(games_m > 0, wins / np.where(games_m > 0, games_m, 1.0), np.nan)

    ratings = [_rating(x, point[i], lo[i], hi[i], tally, used) for i, x in enumerate(models)]
    order = sorted(range(m), key=lambda i: -ratings[i].rating)
    return Leaderboard(
        ratings=[ratings[i] for i in order],
        models=models,
        win_rate=win_rate,
        games=games_m.round().astype(np.int64),
        provisional=provisional,
        n_votes=n_used,
    )


@dataclass(frozen=True)
class WinRateSeries:
    """One model's win rate against the base, after each of their informative votes in time order."""

    model: str
    base: str
    times: np.ndarray  # [n] the votes' times, seconds since the epoch
    games: np.ndarray  # [n] 1, 2, ..., n: informative votes between the two so far
    win_rate: np.ndarray  # [n] the model's share of them (a tie half a win), cumulative
    ci_low: np.ndarray  # [n] its 95% Wilson interval
    ci_high: np.ndarray


def wilson_band(won: np.ndarray, games: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score intervals of the shares won/games, elementwise (games > 0); a tie's half a win
    enters as half a success, as in the ratings."""
    n = np.asarray(games, dtype=np.float64)
    p = np.asarray(won, dtype=np.float64) / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)  # k = 0 or n: float rounding


def _seconds(t) -> float:
    return float(t.timestamp()) if hasattr(t, "timestamp") else float(t)


def win_rate_over_time(votes: Iterable[Sequence], base: str) -> list[WinRateSeries]:
    """Each model's cumulative win rate against `base` over time, from `(time, model_a, model_b,
    choice)` rows (time: a datetime or seconds); one series per model with a vote against the base,
    by model name. The votes count as in the ratings: a tie is half a win each, 'both bad' and a
    model against itself say nothing; rows are taken in time order (ties in time: as given)."""
    rows = sorted(((_seconds(t), str(a), str(b), c) for t, a, b, c in votes), key=lambda r: r[0])
    per_model: dict[str, tuple[list[float], list[float]]] = {}
    for t, a, b, choice in rows:
        if choice not in CHOICES:
            raise UserError(f"unknown choice {choice!r}: expected one of {', '.join(CHOICES)}")
        if choice == "both_bad" or a == b or base not in (a, b):
            continue
        other, won = (b, _OUTCOME[choice] == 1) if a == base else (a, _OUTCOME[choice] == 0)
        times, points = per_model.setdefault(other, ([], []))
        times.append(t)
        points.append(0.5 if choice == "tie" else float(won))
    out = []
    for model in sorted(per_model):
        times, points = (np.asarray(x) for x in per_model[model])
        games = np.arange(1, len(points) + 1)
        won = np.cumsum(points)
        lo, hi = wilson_band(won, games)
        out.append(WinRateSeries(model, base, times, games, won / games, lo, hi))
    return out
