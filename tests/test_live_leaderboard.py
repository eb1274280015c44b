"""The live leaderboard (issue 26, item 8) equals the full recomputation, on SQLite and PostgreSQL:
after votes, corrections, repeated votes, new sessions and new models, with and without the
per-session cap, and when a row commits below the last id it read; so do the counted votes it keeps
for the win rate over time."""

import time

import numpy as np
import pytest

from musicrl.votes.leaderboard import leaderboard
from musicrl.votes.live import LiveVotes
from musicrl.votes.store import VoteStore, model_key, vote_pairs
from tests.test_votes import _tone, db_url, postgres  # noqa: F401  (fixtures: SQLite and PostgreSQL)

OPTIONS = {"min_votes": 3, "n_boot": 50, "seed": 0}


class Clock:
    """The arena's wall clock, moved by hand."""

    def __init__(self):
        self.t = time.time()

    def __call__(self):
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def _full(store, cap):
    """The leaderboard recomputed from every row, as before the live one."""
    return leaderboard(vote_pairs(store.votes(effective=True, per_session_cap=cap)), **OPTIONS)


def _counted(store, cap):
    """The counted votes as the win rate over time takes them, recomputed from every row."""
    return [(v.created_at.timestamp(), model_key(v.model_a, v.model_a_version), model_key(v.model_b, v.model_b_version),
             v.choice) for v in store.votes(effective=True, per_session_cap=cap)]  # fmt: skip


def _same(a, b):
    assert a.ratings == b.ratings and a.models == b.models and a.provisional == b.provisional
    assert a.n_votes == b.n_votes and np.array_equal(a.games, b.games)
    np.testing.assert_array_equal(a.win_rate, b.win_rate)  # NaN where no games, in both


def _clips(store, models):
    return {m: [store.add_clip(_tone(100 + 40 * i + 7 * k), 16000, model_id=m, model_version=f"{m}-v1", prompt="p",
                               seed=k).id for k in range(3)] for i, m in enumerate(models)}  # fmt: skip


@pytest.mark.parametrize("cap", [None, 4])
def test_the_live_leaderboard_equals_the_full_recomputation(db_url, tmp_path, cap):  # noqa: F811
    store = VoteStore(db_url, tmp_path)
    clips = _clips(store, ["m1", "m2", "m3", "m4"])
    live = LiveVotes(store, cap, **OPTIONS)
    rng = np.random.default_rng(0)
    _same(live.leaderboard(), _full(store, cap))  # no votes yet
    stored, session_of = [], {}
    for step in range(60):
        kind = str(rng.choice(["vote", "vote", "vote", "correction", "again", "both_bad"]))
        old = stored[int(rng.integers(len(stored)))] if stored else None
        if kind == "correction" and old:  # stored, never counted
            store.record_vote(clip_a=old.clip_a, clip_b=old.clip_b, choice="tie", session=session_of[old.id],
                              supersedes=old.id)  # fmt: skip
        elif kind == "again" and old:  # the same session on the same clips: the first counts
            store.record_vote(clip_a=old.clip_b, clip_b=old.clip_a, choice="a", session=session_of[old.id])
        else:
            ma, mb = rng.choice(["m1", "m2", "m3"] if step < 30 else ["m1", "m2", "m3", "m4"], 2, replace=False)
            session = f"s{int(rng.integers(3 + step // 10))}"  # new sessions keep arriving
            v = store.record_vote(clip_a=clips[ma][int(rng.integers(3))], clip_b=clips[mb][int(rng.integers(3))],
                                  choice="both_bad" if kind == "both_bad" else str(rng.choice(["a", "b", "tie"])),
                                  session=session)  # fmt: skip
            stored.append(v)
            session_of[v.id] = session
        if step % 7 == 0 or step > 55:
            _same(live.leaderboard(), _full(store, cap))
            assert live.counted_votes() == _counted(store, cap)
    lb = live.leaderboard()
    assert lb is live.leaderboard()  # no new vote: the cached one
    assert "m4@m4-v1" in lb.models + list(lb.provisional)
    assert live.voted(c for cs in clips.values() for c in cs) == {c for v in store.votes() for c in (v.clip_a, v.clip_b)}
    store.close()


class LateRow:
    """A store in which one row commits late: it is left out of every read until `commit()`."""

    def __init__(self, store, late_id):
        self.store, self.late_id, self.committed = store, late_id, False

    def votes(self, **kw):
        return [v for v in self.store.votes(**kw) if self.committed or v.id != self.late_id]

    def count_votes(self, after_id=0):
        return len(self.votes(after_id=after_id))


def test_a_row_committed_below_the_last_id_read_is_not_missed(tmp_path):
    """PostgreSQL hands out ids before commit: a row may appear after a row with a larger id was
    read. The live tally counts the rows, sees one missing, and reads everything again."""
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    c = _clips(store, ["m1", "m2"])
    for i in range(6):
        store.record_vote(clip_a=c["m1"][i % 3], clip_b=c["m2"][i % 2], choice="a" if i % 3 else "b", session=f"s{i}")
    late = LateRow(store, store.votes()[2].id)
    live = LiveVotes(late, None, **OPTIONS)
    _same(live.leaderboard(), leaderboard(vote_pairs(late.votes()), **OPTIONS))  # 5 rows, ids past the late one
    late.committed = True
    _same(live.leaderboard(), _full(store, None))  # the count says 6: all read again
    assert live.counted_votes() == _counted(store, None)  # read again from scratch, not twice
    store.close()


def test_rows_read_a_minute_ago_are_settled_and_all_rows_are_counted_every_ten_minutes(tmp_path):
    """A refresh counts only the rows above the last id read a minute ago (a vote's transaction
    takes milliseconds); a row that commits later than that below it is found by the full count
    every ten minutes."""
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    c = _clips(store, ["m1", "m2"])
    for i in range(6):
        store.record_vote(clip_a=c["m1"][i % 3], clip_b=c["m2"][i % 2], choice="a" if i % 3 else "b", session=f"s{i}")
    late, clock = LateRow(store, store.votes()[2].id), Clock()
    live = LiveVotes(late, None, clock=clock, **OPTIONS)
    five = leaderboard(vote_pairs(late.votes()), **OPTIONS)
    _same(live.leaderboard(), five)
    clock.advance(61)
    _same(live.leaderboard(), five)  # the 5 rows settle
    late.committed = True  # a minute late: below the settled id, not counted by a refresh
    _same(live.leaderboard(), five)
    clock.advance(600)
    _same(live.leaderboard(), _full(store, None))  # the full count finds it
    store.close()
