"""Outlier voters (`musicrl.votes.outliers`): a session voting against a clear favourite is flagged;
one splitting its votes on two close models is not, though it disagrees half the time."""

import numpy as np

from musicrl.votes.outliers import check_sessions, without_flagged
from musicrl.votes.store import Vote, effective_votes


def test_the_outlier_test_flags_a_contrarian_and_spares_close_calls():
    rng = np.random.default_rng(1)
    votes, k = [], 0

    def add(session, a, b, choice):
        nonlocal k
        k += 1
        votes.append(Vote(id=k, created_at=None, prompt="p", clip_a=f"c{k}a", clip_b=f"c{k}b", model_a=a,
                          model_a_version="", model_b=b, model_b_version="", left="a", choice=choice,
                          listen_ms_a=1, listen_ms_b=1, session=session, supersedes=None))  # fmt: skip

    p_win = {("strong", "weak"): 0.85, ("close1", "close2"): 0.52}
    for s in range(30):
        for _ in range(20):
            a, b = [("strong", "weak"), ("close1", "close2")][int(rng.integers(2))]
            add(f"honest{s}", a, b, "a" if rng.random() < p_win[(a, b)] else "b")
    for _ in range(15):
        add("contrarian", "strong", "weak", "b")
        add("coin", "close1", "close2", "a" if rng.random() < 0.5 else "b")
    checks = {c.session: c for c in check_sessions(effective_votes(votes))}
    assert checks["contrarian"].flagged and checks["contrarian"].p_value < 1e-6
    assert not checks["coin"].flagged
    assert sum(c.flagged for c in checks.values()) == 1
    assert check_sessions(votes, min_votes=1000) == []
    assert {v.session for v in without_flagged(votes)} == {v.session for v in votes} - {"contrarian"}
