"""Outlier voters: sessions whose votes disagree with everyone else's more than chance allows.

The test, after Chatbot Arena's anomalous-user detection (Chiang et al. 2024, "Chatbot Arena",
section 5.1: each user's votes scored under the Bradley-Terry model of the other votes):

1. For each session with at least `min_votes` decisive votes (a or b, two different models), fit
   Bradley-Terry on every other session's votes (leave-one-session-out, so a stuffer that
   dominates the data cannot make itself the reference).
2. Under that fit, vote k favours the higher-rated of its two models, and agrees with it with
   probability p_k = sigmoid(|theta_i - theta_j|). If the session votes like everyone else, its
   number of agreements K is a sum of independent Bernoullis (Poisson-binomial).
3. The p-value is the lower tail P(K <= observed). A session is flagged when it is below
   `alpha` / (number of sessions tested) (Bonferroni), so with alpha = 0.01 an honest crowd sees
   a false flag in fewer than 1% of checks, however many sessions it has.

Why not a binomial test of agreement with the majority: it expects the same agreement on every
vote, but a vote between two close models is near a coin flip, and one between a strong and a weak
model is not; weighting each vote by what the others' fit expects of it keeps honest voters on
close pairs unflagged and gives a vote against a clear favourite its full weight. Ties, both_bad
and a model against itself favour neither model and are left out of the test (not of the fit).

The votes tested are the ones the leaderboard counts (effective, capped); `votes stats` lists the
flagged sessions and `votes export --exclude-flagged` leaves their votes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from musicrl.votes.leaderboard import VoteTally, fit_bradley_terry, win_matrix
from musicrl.votes.store import Vote, model_key

ALPHA = 0.01  # family-wise: the chance that any honest session in a check is flagged
MIN_VOTES = 10  # decisive votes a session needs to be tested


@dataclass(frozen=True)
class SessionCheck:
    session: str  # the stored (salted) session hash
    votes: int  # decisive votes tested
    agreed: int  # of them, for the model the other sessions' fit favours
    expected: float  # agreements expected if the session voted like the others
    p_value: float  # P(this few agreements or fewer | voting like the others)
    flagged: bool


def _lower_tail(k: int, ps: np.ndarray) -> float:
    """P(K <= k) for K a sum of independent Bernoulli(ps) (Poisson-binomial), by convolution."""
    pmf = np.ones(1)
    for p in ps:
        pmf = np.convolve(pmf, [1.0 - p, p])
    return float(min(1.0, pmf[: k + 1].sum()))


def check_sessions(votes: Iterable[Vote], *, alpha: float = ALPHA, min_votes: int = MIN_VOTES,
                   prior: float = 0.01) -> list[SessionCheck]:  # fmt: skip
    """One `SessionCheck` per session with >= `min_votes` decisive votes, lowest p-value first."""
    rows = [(v.session, model_key(v.model_a, v.model_a_version), model_key(v.model_b, v.model_b_version), v.choice)
            for v in votes]  # fmt: skip
    everyone, per_session = VoteTally(), {}
    for s, a, b, c in rows:
        everyone.add(a, b, c)
        per_session.setdefault(s, VoteTally()).add(a, b, c)
    decisive: dict[str, list] = {}
    for s, a, b, c in rows:
        if c in ("a", "b") and a != b:
            decisive.setdefault(s, []).append((a, b, a if c == "a" else b))
    tested = sorted(s for s, d in decisive.items() if len(d) >= min_votes)
    if not tested:
        return []
    models = sorted(everyone.models)
    index = {x: i for i, x in enumerate(models)}
    total = win_matrix(everyone, models)
    rest = np.stack([total - win_matrix(per_session[s], models) for s in tested])  # [S, M, M]
    thetas = fit_bradley_terry(rest, prior)  # [S, M]: each session's others
    out = []
    for s, theta in zip(tested, thetas):
        d = decisive[s]
        gap = np.array([theta[index[a]] - theta[index[b]] for a, b, _ in d])
        favoured = [a if g >= 0 else b for (a, b, _), g in zip(d, gap)]
        agreed = sum(w == f for (_, _, w), f in zip(d, favoured))
        ps = 1.0 / (1.0 + np.exp(-np.abs(gap)))
        p = _lower_tail(agreed, ps)
        out.append(SessionCheck(s, len(d), agreed, float(ps.sum()), p, p < alpha / len(tested)))
    return sorted(out, key=lambda c: c.p_value)


def flagged_sessions(votes: list[Vote], **options) -> set[str]:
    """The sessions `check_sessions` flags; `options` as its."""
    return {c.session for c in check_sessions(votes, **options) if c.flagged}


def without_flagged(votes: list[Vote], **options) -> list[Vote]:
    """`votes` less those of flagged sessions."""
    flagged = flagged_sessions(votes, **options)
    return [v for v in votes if v.session not in flagged]
