"""Vote integrity through the app (issue 26, items 1-4), on SQLite and on a real PostgreSQL:
one vote per served pair, sessions issued by the server, blind until the vote is stored, the
minimum listen time enforced for every vote. Two fake models (noise clips), so no model runs."""

import dataclasses
import json
import os
import threading
import time
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

httpx = pytest.importorskip("httpx")
gr = pytest.importorskip("gradio")

from musicrl.app.handlers import Handlers, UiSession  # noqa: E402
from musicrl.app.limits import NO_RATE_LIMITS  # noqa: E402
from musicrl.app.server import build_app, start_server  # noqa: E402
from musicrl.app.tokens import SESSION_COOKIE, Signer, session_cookie_value  # noqa: E402
from musicrl.errors import UserError  # noqa: E402
from musicrl.model.generator import Clip  # noqa: E402
from musicrl.votes.store import AlreadyVoted, VoteStore  # noqa: E402
from tests.test_votes import db_url, postgres  # noqa: E402,F401  (fixtures: SQLite and PostgreSQL)

MODELS = ("alpha-secret-model", "beta-secret-model")
MIN_LISTEN_MS = 200  # min_listen_s=0.2 below; clips are 0.5 s, so 0.2 s is what each clip needs


@dataclasses.dataclass
class FakeGenerator:
    model_id: str
    version: str
    max_duration_s: float = 5.0

    def generate(self, prompt, num_samples, duration_s, seed, **settings):
        rng = np.random.default_rng(seed)
        return [Clip((0.3 * rng.standard_normal(int(8000 * duration_s))).astype(np.float32), 8000, seed + i,
                     {"duration_s": duration_s}) for i in range(num_samples)]  # fmt: skip


def _arena_app(url, data_dir, **kw):
    """The arena over two fake models; no rate limits unless `limits` is given (tests send many
    requests from one address; the limits have their own tests)."""
    kw.setdefault("limits", NO_RATE_LIMITS)
    store = VoteStore(url, data_dir)
    gens = [FakeGenerator(m, f"{i}" * 16) for i, m in enumerate(MODELS)]
    demo = build_app(gens, store, min_listen_s=MIN_LISTEN_MS / 1000, leaderboard_min_votes=1, n_boot=10, seed=0, **kw)
    return demo, store


@pytest.fixture
def app(db_url, tmp_path):  # noqa: F811
    demo, store = _arena_app(db_url, tmp_path)
    with start_server(demo) as srv:
        yield srv.url, store, demo.musicrl_arena
    store.close()


def _generate(client):
    r = client.post("/api/generate", json={"prompt": "calm piano", "duration_s": 0.5})
    assert r.status_code == 200, r.text
    return r.json()


def _vote(client, pair, choice="a", **extra):
    return client.post("/api/vote", json={"pair": pair, "choice": choice, "listen_ms_a": MIN_LISTEN_MS,
                                          "listen_ms_b": MIN_LISTEN_MS, **extra})  # fmt: skip


def _one_line_error(r, status, text=""):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and text in body["error"], body
    assert not any(m in r.text for m in MODELS)  # an answer without a stored vote names no model


def test_a_replayed_token_with_invented_sessions_counts_once(app):
    """The attack of issue 26: one pair token replayed 60 times with invented sessions."""
    url, store, _ = app
    with httpx.Client(base_url=url, timeout=30) as voter:
        g = _generate(voter)
        first = _vote(voter, g["pair"])
        assert first.status_code == 200 and first.json()["counted"] is True
        for i in range(30):  # a session in the body is refused: the session is the server's
            _one_line_error(_vote(voter, g["pair"], "b", session=f"stuffer-{i}"), 400, "session is the server's")
        for _ in range(30):  # the same token from fresh clients (new cookies each): the pair has its vote
            with httpx.Client(base_url=url, timeout=30) as stuffer:
                _one_line_error(_vote(stuffer, g["pair"], "b"), 409, f"vote {first.json()['vote_id']}")
        lb = voter.get("/api/leaderboard").json()
    assert len(store.votes()) == 1 and lb["n_votes"] == 1 and sum(r["wins"] for r in lb["ratings"]) == 1


def test_a_second_vote_is_409_and_a_correction_is_stored_but_not_counted(app):
    url, store, _ = app
    with httpx.Client(base_url=url, timeout=30) as client:
        g = _generate(client)
        v = _vote(client, g["pair"], "a").json()
        assert set(v["models"].values()) == {f"{MODELS[0]}@00000000", f"{MODELS[1]}@11111111"}
        _one_line_error(_vote(client, g["pair"], "a"), 409, "counts once")
        fix = _vote(client, g["pair"], "b", supersedes=v["vote_id"])
        assert fix.status_code == 200 and fix.json()["counted"] is False
        _one_line_error(_vote(client, g["pair"], "tie", supersedes=10**6), 400, "does not exist")
    raw, counted = store.votes(), store.votes(effective=True)
    assert [(x.choice, x.supersedes) for x in raw] == [("a", None), ("b", v["vote_id"])]
    assert [(x.id, x.choice) for x in counted] == [(v["vote_id"], "a")]  # the blind vote stands
    assert store.stats()["corrections"] == 1


def test_sessions_are_issued_by_the_server(app):
    url, store, arena = app
    with httpx.Client(base_url=url, timeout=30) as alice, httpx.Client(base_url=url, timeout=30) as bob:
        tokens = [_generate(alice)["pair"] for _ in range(2)]
        cookie = alice.cookies[SESSION_COOKIE]  # set by the server on the first answer
        assert {arena.pair_from_token(t)[1] for t in tokens} == {arena.session_from_cookie(cookie)}
        for t in tokens:
            assert _vote(alice, t).status_code == 200
        bob.cookies.set(SESSION_COOKIE, "forged.0123456789abcdef0123456789abcdef", domain="127.0.0.1")  # not ours
        t = _generate(bob)["pair"]
        assert bob.cookies[SESSION_COOKIE] != "forged.0123456789abcdef0123456789abcdef"  # a fresh one was issued
        assert arena.pair_from_token(t)[1] == arena.session_from_cookie(bob.cookies[SESSION_COOKIE])
        assert _vote(bob, t).status_code == 200
    sessions = [v.session for v in store.votes()]
    assert sessions[0] == sessions[1] != sessions[2]
    assert len(store.votes(per_session_cap=1)) == 2  # the cap binds alice's cookie session
    other = Signer(b"another app's key")  # a token or cookie signed with another secret is refused
    with pytest.raises(UserError, match="invalid pair token"):
        arena.pair_from_token(other.sign({"p": "x", "a": "a", "b": "b", "l": "a", "t": time.time(), "s": "s"}))
    assert arena.session_from_cookie(session_cookie_value(other, "s")) is None


def test_an_expired_pair_is_refused(app):
    url, store, arena = app
    with httpx.Client(base_url=url, timeout=30) as client:
        g = _generate(client)
        arena._clock = lambda: time.time() + arena.config.token_ttl_s + 1
        try:
            _one_line_error(_vote(client, g["pair"]), 410, "expired")
        finally:
            arena._clock = time.time
        assert _vote(client, g["pair"]).status_code == 200
    assert len(store.votes()) == 1 and arena.config.token_ttl_s == 4 * 3600


def test_the_minimum_listen_time_and_integer_fields_are_enforced(app):
    url, store, _ = app
    with httpx.Client(base_url=url, timeout=30) as client:
        g = _generate(client)
        pair, ok = g["pair"], {"listen_ms_a": MIN_LISTEN_MS, "listen_ms_b": MIN_LISTEN_MS}
        cases = [
            ({"listen_ms_a": None}, "listen_ms_a is required"),
            ({"listen_ms_b": MIN_LISTEN_MS - 1}, "at least 0.2 s"),
            ({"listen_ms_a": 0}, "at least 0.2 s"),
            ({"listen_ms_a": str(MIN_LISTEN_MS)}, "listen_ms_a: Input should be a valid integer"),
            ({"listen_ms_a": float(MIN_LISTEN_MS)}, "listen_ms_a: Input should be a valid integer"),
            ({"listen_ms_b": True}, "listen_ms_b: Input should be a valid integer"),
            ({"listen_ms_a": 10**30}, "longer than the"),  # more listening than the pair has existed
            ({"listen_ms_a": 60_000}, "longer than the"),
            ({"supersedes": True}, "supersedes: Input should be a valid integer"),
            ({"choice": 1}, "choice: Input should be a valid string"),
        ]
        for change, message in cases:
            body = {"pair": pair, "choice": "a", **ok, **change}
            _one_line_error(client.post("/api/vote", json={k: v for k, v in body.items() if v is not None}), 400, message)
        for body, message in [({"prompt": "piano", "duration_s": "2"}, "duration_s: Input should be a valid number"),
                              ({"prompt": "piano", "duration_s": True}, "duration_s: Input should be a valid number"),
                              ({"prompt": 5}, "prompt: Input should be a valid string")]:  # fmt: skip
            _one_line_error(client.post("/api/generate", json=body), 400, message)
        assert client.post("/api/generate", json={"prompt": "piano", "duration_s": 1}).status_code == 200
        assert not store.votes()
        assert client.post("/api/vote", json={"pair": pair, "choice": "a", **ok}).status_code == 200


def test_nothing_names_a_model_before_the_vote_is_stored(app):
    url, _, _ = app
    with httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/api/generate", json={"prompt": "calm piano", "duration_s": 0.5})
        seen = r.text + json.dumps(dict(r.headers))
        for c in r.json()["clips"]:
            w = client.get(c["url"])
            seen += w.content.decode("latin-1") + json.dumps(dict(w.headers))
        seen += client.get("/api/leaderboard").text  # no vote yet: no model on it either
        assert not any(m in seen for m in MODELS)
        _one_line_error(_vote(client, r.json()["pair"], listen_ms_a=1), 400)  # refused: still blind
        v = _vote(client, r.json()["pair"])
        assert v.status_code == 200 and all(any(m in x for x in v.json()["models"].values()) for m in MODELS)


def test_two_replicas_on_one_database_count_a_pair_once(db_url, tmp_path, monkeypatch):  # noqa: F811
    """Two app processes on one database share the secret (MUSICRL_SALT): a token of one is good at
    the other, and the same token sent to both at once is stored once (the unique index decides)."""
    monkeypatch.setenv("MUSICRL_SALT", "shared-replica-secret")
    (tmp_path / "r1").mkdir(), (tmp_path / "r2").mkdir()
    one, two = (_arena_app(db_url, tmp_path / r)[0].musicrl_arena for r in ("r1", "r2"))
    pair = one.generate_pair("calm piano", 0.5)
    token = one.token(pair, "session-1")
    results, barrier = [], threading.Barrier(2)

    def vote(arena):
        p, session = arena.pair_from_token(token)
        barrier.wait()
        try:
            results.append(arena.vote(p, "a", session, listen_ms_a=MIN_LISTEN_MS, listen_ms_b=MIN_LISTEN_MS).id)
        except AlreadyVoted as e:
            results.append(-e.vote_id)

    threads = [threading.Thread(target=vote, args=(a,)) for a in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    (winner,) = [x for x in results if x > 0]
    assert results.count(-winner) == 1 and [v.id for v in two.store.votes()] == [winner]
    monkeypatch.setenv("MUSICRL_SALT", "another-secret")
    (tmp_path / "r3").mkdir()
    stranger = _arena_app(db_url, tmp_path / "r3")[0].musicrl_arena
    with pytest.raises(UserError, match="invalid pair token"):
        stranger.pair_from_token(token)


def test_the_ui_takes_the_cookie_session_closes_the_pair_and_checks_listening(app):
    _, store, arena = app
    h = Handlers(arena)
    s = UiSession()
    cookie = session_cookie_value(arena.session_signer, "browser-session")
    h.on_generate("calm piano", 0.5, s, SimpleNamespace(cookies={SESSION_COOKIE: cookie}))
    assert s.session == "browser-session"
    forged = UiSession()
    h.on_generate("calm piano", 0.5, forged, SimpleNamespace(cookies={SESSION_COOKIE: "browser-session"}))
    assert forged.session not in ("browser-session", s.session) and len(forged.session) == 32  # server-made
    with pytest.warns(UserWarning, match="Listen to both clips"):
        h.on_vote("a")(s, None, None)
    s.listening.listened = {"A": 1.0, "B": 1.0}
    with pytest.warns(UserWarning, match="longer than the"):  # more heard than the pair has existed
        h.on_vote("a")(s, None, None)
    s.pair = dataclasses.replace(s.pair, issued_at=s.pair.issued_at - 5)
    reveal = h.on_vote("tie")(s, 4, None)[0]
    assert all(m in reveal for m in MODELS)
    msg, may_vote, _ = h.gate_state(s)
    assert "Vote saved" in msg and not may_vote  # the reveal closes the pair
    with pytest.warns(UserWarning, match="voted on this pair already"):
        h.on_vote("a")(s, None, None)
    with pytest.raises(UserError, match="at least 0.2 s"):  # under the handler: the arena checks every vote
        arena.vote(forged.pair, "a", forged.session, listen_ms_a=150, listen_ms_b=MIN_LISTEN_MS)
    (v,) = store.votes()
    assert v.choice == "tie" and v.session == store.hash_session("browser-session") and v.listen_ms_a == 1000


def test_the_token_lifetime_is_an_app_option(capsys):
    from musicrl.cli import build_parser, main

    assert build_parser().parse_args(["app"]).token_ttl == 4 * 3600
    for bad in ("0", "-5", "700000", "nan"):
        assert main(["app", "--token-ttl", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--token-ttl must be in" in err[0]


class SameAudioGenerator(FakeGenerator):
    """A degenerate model: the same audio whatever the seed, until `fixed_after` calls."""

    def __init__(self, model_id, version, fixed_after=10**9):
        super().__init__(model_id, version)
        self.calls, self.fixed_after = 0, fixed_after

    def generate(self, prompt, num_samples, duration_s, seed, **settings):
        self.calls += 1
        fixed = self.calls <= self.fixed_after
        return [Clip(super(SameAudioGenerator, self).generate(prompt, 1, duration_s, 0 if fixed else seed + i)[0].audio,
                     8000, seed + i, {"duration_s": duration_s}) for i in range(num_samples)]  # fmt: skip


class AgreesOnItsFirstCall(FakeGenerator):
    """Audio of (model, seed), except on its first call: a clip every such model shares (two models
    that agree on one seed, as a model and its best-of pick can)."""

    def __init__(self, model_id, version):
        super().__init__(model_id, version)
        self.calls = 0

    def generate(self, prompt, num_samples, duration_s, seed, **settings):
        self.calls += 1
        key = 0 if self.calls == 1 else zlib.crc32(f"{self.model_id}/{seed}".encode())
        return [Clip(FakeGenerator.generate(self, prompt, 1, duration_s, key)[0].audio, 8000, seed + i,
                     {"duration_s": duration_s}) for i in range(num_samples)]  # fmt: skip


@pytest.mark.parametrize("gen", [AgreesOnItsFirstCall, FakeGenerator])
def test_paired_seeds_draw_two_models_that_agree_again_on_one_new_seed(tmp_path, gen):
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    arena = build_app([gen("m1", "1" * 16), gen("m2", "2" * 16)], store, limits=NO_RATE_LIMITS, paired_seeds=True,
                      seed=0).musicrl_arena  # fmt: skip
    try:
        pair = arena.generate_pair("calm piano", 0.5)
        assert pair.a.path.read_bytes() != pair.b.path.read_bytes()
        if gen is AgreesOnItsFirstCall:  # agreed on the first seed: both drew again on one new seed
            assert pair.a.seed == pair.b.seed
        else:  # FakeGenerator's audio is its seed's: two copies of one model, so the second clip draws alone
            assert pair.b.seed - pair.a.seed == 7919 or pair.a.seed - pair.b.seed == 7919
    finally:
        arena.close()
        store.close()


@pytest.mark.parametrize("fixed_after", [10**9, 1])
def test_a_model_making_the_same_audio_twice_gets_one_retry_then_a_one_line_error(tmp_path, fixed_after):
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    demo = build_app([SameAudioGenerator("m", "v" * 16, fixed_after)], store, min_listen_s=0.5, limits=NO_RATE_LIMITS)
    arena = demo.musicrl_arena
    try:
        if fixed_after > 1:  # two clips of other seeds, but the same audio: nothing to compare
            with pytest.raises(UserError, match="the same audio twice"):
                arena.generate_pair("calm piano", 0.5)
            assert store.stats()["clips"] == 0  # nothing stored for a pair that was never served
        else:  # the retry differs: a pair of two different clips
            pair = arena.generate_pair("calm piano", 0.5)
            assert pair.a.id != pair.b.id and pair.a.path.read_bytes() != pair.b.path.read_bytes()
    finally:
        arena.close()
        store.close()
