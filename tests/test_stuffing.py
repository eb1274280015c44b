"""Vote stuffing against the defaults (issue 26, item 6), on SQLite and on a real PostgreSQL.

Honest simulated raters (`musicrl.tiny.simulate`, each its own session) prefer model alpha, whose
clips fit their prompts more often. Then one attacker scripts votes for beta through the API from
one address, as fast as the app lets it, for 20 simulated minutes: first keeping its session
cookie, then dropping it for every pair. It recognises beta's clips perfectly (it reads the
store), the worst case for a blind arena. With `musicrl app`'s defaults the leaderboard keeps its
order: the rate limit bounds the pairs, the per-session cap the cookie session, and the outlier
test flags that session (listed by `votes stats`, left out by `votes export --exclude-flagged`).
Run with `-s` to see both leaderboards."""

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

httpx = pytest.importorskip("httpx")
pytest.importorskip("gradio")

from musicrl.app.server import build_app, start_server  # noqa: E402
from musicrl.tiny import synth  # noqa: E402
from musicrl.tiny.simulate import Panel  # noqa: E402
from musicrl.votes.leaderboard import SESSION_CAP, leaderboard  # noqa: E402
from musicrl.votes.outliers import check_sessions  # noqa: E402
from musicrl.votes.store import VoteStore, vote_pairs  # noqa: E402
from tests.test_live_leaderboard import Clock  # noqa: E402
from tests.test_votes import db_url, postgres  # noqa: E402,F401  (fixtures: SQLite and PostgreSQL)
from tests.test_votes_security import MODELS, FakeGenerator, _arena_app  # noqa: E402

ALPHA, BETA = f"{MODELS[0]}@00000000", f"{MODELS[1]}@11111111"
VALUES = {"instrument": synth.INSTRUMENTS, "tempo": tuple(synth.TEMPO_WORDS), "mode": synth.MODES,
          "register": synth.REGISTERS, "drums": synth.DRUMS}  # fmt: skip
RATERS, VOTES_EACH = 20, 30
ATTACK_S = 600  # each phase: with the cookie, then without


def _heard(attrs: dict, keep: float, rng) -> dict:
    """How a clip of a model sounds: each asked-for attribute with probability `keep`, else another."""
    return {k: attrs[k] if rng.random() < keep else str(rng.choice([v for v in vals if v != attrs[k]]))
            for k, vals in VALUES.items()}  # fmt: skip


def _honest_votes(store, pool: dict, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i, rater in enumerate(Panel.default(RATERS, seed=seed).raters):
        judge = Panel([rater], seed=i)
        for _ in range(VOTES_EACH):
            attrs = synth.sample_attributes(rng)
            prompt = synth.caption(attrs, rng, "train")
            clips = {m: pool[m][int(rng.integers(len(pool[m])))] for m in ("alpha", "beta")}
            heard = {"alpha": _heard(attrs.to_dict(), 0.75, rng), "beta": _heard(attrs.to_dict(), 0.5, rng)}
            a, b = ("alpha", "beta") if rng.random() < 0.5 else ("beta", "alpha")
            choice = judge.ballot(prompt, None, None, heard=(heard[a], heard[b]))[1]
            store.record_vote(clip_a=clips[a], clip_b=clips[b], choice=choice, session=f"honest-{i}",
                              listen_ms_a=2000, listen_ms_b=2000)  # fmt: skip


def _attack(url: str, store, clock: Clock, keep_cookie: bool) -> int:
    """Votes for beta through the API for ATTACK_S simulated seconds; returns the votes stored."""
    end, stored = clock() + ATTACK_S, 0
    keeper = httpx.Client(base_url=url, timeout=30)
    while clock() < end:
        client = keeper if keep_cookie else httpx.Client(base_url=url, timeout=30)  # a new session each pair
        r = client.post("/api/generate", json={"prompt": "anything at all", "duration_s": 0.5})
        if r.status_code == 429:
            clock.advance(int(r.headers["retry-after"]))
            continue
        assert r.status_code == 200, r.text
        g = r.json()
        clock.advance(1)  # "listened" to both 0.5 s clips
        beta_slot = next(c["slot"] for c in g["clips"] if store.clip(c["id"]).model_id == MODELS[1])
        v = client.post("/api/vote", json={"pair": g["pair"], "choice": beta_slot, "listen_ms_a": 500, "listen_ms_b": 500})
        assert v.status_code == 200, v.text
        stored += 1
        if not keep_cookie:
            client.close()
    keeper.close()
    return stored


def _show(lb) -> str:
    return " > ".join(f"{r.model.split('-')[0]} {r.rating:.0f} [{r.ci_low:.0f}, {r.ci_high:.0f}] ({r.games} games)"
                      for r in lb.ratings)  # fmt: skip


def test_a_scripted_stuffer_does_not_flip_the_leaderboard_with_the_defaults(db_url, tmp_path, capsys):  # noqa: F811
    store = VoteStore(db_url, tmp_path)
    demo = build_app([FakeGenerator(m, f"{i}" * 16) for i, m in enumerate(MODELS)], store, seed=0)  # the defaults
    arena = demo.musicrl_arena
    arena._clock = clock = Clock()
    pool: dict = {"alpha": [], "beta": []}
    for _ in range(10):
        p = arena.generate_pair("a clip for the honest raters", 0.5)
        for c in (p.a, p.b):
            pool["alpha" if c.model_id == MODELS[0] else "beta"].append(c.id)
    _honest_votes(store, pool)
    last_honest = store.votes()[-1].id
    honest = leaderboard(vote_pairs(store.votes(effective=True, per_session_cap=SESSION_CAP)), min_votes=5, seed=0)
    with start_server(demo) as srv:
        with_cookie = _attack(srv.url, store, clock, keep_cookie=True)
        without_cookie = _attack(srv.url, store, clock, keep_cookie=False)
        attacked = arena.leaderboard()
    counted = store.votes(effective=True, per_session_cap=SESSION_CAP)
    attacker = [v for v in counted if v.id > last_honest]
    with capsys.disabled():
        print(f"\nhonest: {RATERS} raters x {VOTES_EACH} votes; attacker: {with_cookie} votes with its cookie, "
              f"{without_cookie} without, {len(attacker)} counted")
        print(f"without the attacker: {_show(honest)}\nwith the attacker:    {_show(attacked)}")
    assert [r.model for r in honest.ratings] == [r.model for r in attacked.ratings] == [ALPHA, BETA]
    assert attacked.ratings[0].ci_low > attacked.ratings[1].ci_high  # still apart
    assert len(attacker) == SESSION_CAP + without_cookie < with_cookie + without_cookie  # the cap binds
    assert with_cookie + without_cookie <= 10 + 6 * 2 * ATTACK_S / 60  # the burst and the rate
    checks = check_sessions(counted)
    flagged = {c.session for c in checks if c.flagged}
    cookie_session = attacker[0].session
    assert flagged == {cookie_session}, [c for c in checks if c.flagged]  # the stuffer, and no honest rater
    _stats_and_export(db_url, tmp_path, cookie_session, len(counted))
    store.close()


def _stats_and_export(db_url, tmp_path, flagged_session, n_counted):  # noqa: F811
    from musicrl.cli import main

    out = tmp_path / "export.jsonl"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["votes", "stats", "--db", db_url, "--json"]) == 0
    stats = json.loads(buf.getvalue())
    assert [s["session"] for s in stats["flagged_sessions"]] == [flagged_session]
    assert stats["votes_counted"] == n_counted and [r["model"] for r in stats["leaderboard"]] == [ALPHA, BETA]
    for extra, rows in (([], n_counted), (["--exclude-flagged"], n_counted - SESSION_CAP)):
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["votes", "export", "--db", db_url, "--data-dir", str(tmp_path), "--out", str(out),
                         "--per-session-cap", str(SESSION_CAP), *extra]) == 0  # fmt: skip
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(lines) == rows and (not extra or flagged_session not in {x["session"] for x in lines})


def test_the_leaderboard_counts_at_most_the_cap_of_one_session(db_url, tmp_path):  # noqa: F811
    demo, store = _arena_app(db_url, tmp_path, per_session_cap=2)
    arena = demo.musicrl_arena
    for _ in range(5):  # one session votes on 5 pairs: its first 2 count
        p = arena.generate_pair("calm piano", 0.5)
        store.record_vote(clip_a=p.a.id, clip_b=p.b.id, choice="a", session="one-session", pair_id=p.id)
    lb = arena.leaderboard()
    assert lb.n_votes == 2 and math.isfinite(lb.ratings[0].rating)
    capped = vote_pairs(store.votes(effective=True, per_session_cap=2))
    assert lb.ratings == leaderboard(capped, min_votes=1, n_boot=10, seed=0).ratings
    store.close()
