"""The arena's limits (issue 26, item 5), on SQLite and on a real PostgreSQL: per-client rate limits
on generate and vote (429 with Retry-After; a friendly UI message), clips nobody voted on removed
once their pairs expire (never a voted one) and capped in number, request bodies (Gradio uploads
included) capped. Time is the arena's clock, moved by the test: nothing here waits."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

httpx = pytest.importorskip("httpx")
gr = pytest.importorskip("gradio")

from musicrl.app.clip_gc import GRACE_S  # noqa: E402
from musicrl.app.handlers import Handlers, UiSession  # noqa: E402
from musicrl.app.limits import Limits, TokenBucket, RateLimited  # noqa: E402
from musicrl.app.server import start_server  # noqa: E402
from tests.test_live_leaderboard import Clock  # noqa: E402
from tests.test_votes import db_url, postgres  # noqa: E402,F401  (fixtures: SQLite and PostgreSQL)
from tests.test_votes_security import _arena_app, _generate, _one_line_error, _vote  # noqa: E402


@pytest.fixture
def limited(db_url, tmp_path):  # noqa: F811
    limits = Limits(generate_per_min=6, generate_burst=3, vote_per_min=12, vote_burst=2, max_unvoted_clips=6)
    demo, store = _arena_app(db_url, tmp_path, limits=limits)
    arena = demo.musicrl_arena
    arena._clock = clock = Clock()
    with start_server(demo) as srv:
        yield srv.url, store, arena, clock
    store.close()


def test_a_client_over_its_rate_gets_429_with_retry_after_and_others_do_not(limited):
    url, store, _, clock = limited
    with httpx.Client(base_url=url, timeout=30) as client:
        pairs = [_generate(client)["pair"] for _ in range(3)]  # the burst
        r = client.post("/api/generate", json={"prompt": "calm piano", "duration_s": 0.5})
        _one_line_error(r, 429, "too many generate requests")
        assert int(r.headers["retry-after"]) == 10  # 6 a minute: the next token in 10 s
        clock.advance(1)
        assert [_vote(client, p).status_code for p in pairs[:2]] == [200, 200]  # the vote burst
        r = _vote(client, pairs[2])
        _one_line_error(r, 429, "too many vote requests")
        assert int(r.headers["retry-after"]) == 5
        with httpx.Client(base_url=url, timeout=30, headers={"X-Forwarded-For": "203.0.113.7"}) as other:
            assert other.post("/api/generate", json={"prompt": "piano", "duration_s": 0.5}).status_code == 200
        clock.advance(10)  # the Retry-After has passed: one more of each
        assert _vote(client, pairs[2]).status_code == 200
        _generate(client)
        assert client.post("/api/generate", json={"prompt": "piano", "duration_s": 0.5}).status_code == 429
    assert len(store.votes()) == 3


def test_the_ui_says_slow_down(limited):
    _, store, arena, clock = limited
    h, s = Handlers(arena), UiSession()
    request = SimpleNamespace(cookies={}, client=SimpleNamespace(host="198.51.100.4"))
    for _ in range(3):
        h.on_generate("calm piano", 0.5, s, request)
    with pytest.warns(UserWarning, match="Slow down: .* Please wait 10 s"):  # a warning toast, the pair kept
        h.on_generate("calm piano", 0.5, s, request)
    clock.advance(5)
    s.listening.listened = {"A": 1.0, "B": 1.0}
    h.on_vote("a")(s, None, None, request)
    assert len(store.votes()) == 1


def test_a_token_bucket_refills_at_its_rate_and_forgets_the_least_recent_client():
    b = TokenBucket("vote", per_min=60, burst=2, max_clients=2)
    b.take("x", 0.0), b.take("x", 0.0)
    with pytest.raises(RateLimited) as e:
        b.take("x", 0.5)
    assert e.value.retry_after_s == 1
    b.take("x", 1.5)  # 1.5 s at one a second: one token back
    b.take("y", 2.0), b.take("z", 2.0)  # x is dropped: a third client
    b.take("x", 2.0), b.take("x", 2.0)  # back with a full bucket, no more than its burst
    with pytest.raises(RateLimited):
        b.take("x", 2.0)
    TokenBucket("generate", per_min=0, burst=1).take("x", 0.0)  # 0: no limit
    for bad in ({"generate_per_min": -1}, {"vote_burst": 0}, {"max_unvoted_clips": -1}, {"max_request_bytes": 0}):
        with pytest.raises(Exception, match="must be"):
            Limits(**bad)


def _files(store, clip_id):
    return sorted(p.name for p in store.clip_path(clip_id).parent.glob(f"{clip_id}.*"))


def test_expired_clips_nobody_voted_on_are_removed_and_voted_ones_kept(limited):
    url, store, arena, clock = limited
    voted = arena.generate_pair("calm piano", 0.5)
    unvoted = arena.generate_pair("fast drums", 0.5)
    store.record_vote(clip_a=voted.a.id, clip_b=voted.b.id, choice="a", session="someone", pair_id=voted.id)
    ids = [voted.a.id, voted.b.id, unvoted.a.id, unvoted.b.id]
    assert arena.janitor.sweep(clock()) == 0 and all(_files(store, c) for c in ids)  # not expired yet
    clock.advance(arena.config.token_ttl_s + GRACE_S + 1)
    assert arena.janitor.sweep(clock()) == 2
    assert _files(store, voted.a.id) == [f"{voted.a.id}.wav"] and _files(store, voted.b.id)
    assert not _files(store, unvoted.a.id) and not _files(store, unvoted.b.id)
    assert store.clip(unvoted.a.id).prompt == "fast drums"  # the row stays (append-only); its file is gone
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get(f"/api/clips/{unvoted.a.id}.wav").status_code == 404
        assert client.get(f"/api/clips/{voted.a.id}.wav").status_code == 200
    assert [v.clip_a for v in store.votes()] == [voted.a.id]


def test_unvoted_clips_are_capped_until_their_pairs_expire(limited):
    url, store, arena, clock = limited
    with httpx.Client(base_url=url, timeout=30) as client:
        first = _generate(client)
        _vote(client, first["pair"])  # voted: these two never count against the cap
        clock.advance(60)
        for _ in range(3):  # 6 clips nobody voted on: the cap
            _generate(client)
            clock.advance(60)
        r = client.post("/api/generate", json={"prompt": "calm piano", "duration_s": 0.5})
        _one_line_error(r, 503, "too many clips nobody voted on")
        assert int(r.headers["retry-after"]) > 0
        clock.advance(arena.config.token_ttl_s + GRACE_S)  # their pairs expired: swept, room again
        assert _generate(client)["clips"]
    assert arena.janitor.unvoted == 2 and all(_files(store, c["id"]) for c in first["clips"])


def test_oversized_request_bodies_and_uploads_are_refused(tmp_path):
    from gradio.utils import get_upload_folder

    limits = Limits(max_request_bytes=4096)
    demo, store = _arena_app(f"sqlite:///{tmp_path}/votes.db", tmp_path, limits=limits)
    uploads = Path(get_upload_folder())
    before = set(uploads.glob("**/big.wav"))
    with start_server(demo) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        big = b"x" * 10_000
        for path in ("/gradio_api/upload", "/upload"):
            _one_line_error(client.post(path, files={"files": ("big.wav", big, "audio/wav")}), 413, "over the limit of 4096")

        def chunks():  # no Content-Length: counted as it streams in
            for _ in range(10):
                yield b"y" * 1000

        r = client.post("/gradio_api/upload", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
        _one_line_error(r, 413, "over the limit")
        _one_line_error(client.post("/api/generate", content=b'{"prompt": "' + b"p" * 5000 + b'"}',
                                    headers={"content-type": "application/json"}), 413)  # fmt: skip
        ok = client.post("/gradio_api/upload", files={"files": ("small.wav", b"RIFF" + b"\0" * 100, "audio/wav")})
        assert ok.status_code == 200  # under the cap, Gradio's own route answers as before
        assert _generate(client)["clips"]
    assert set(uploads.glob("**/big.wav")) == before  # nothing of the refused uploads was kept
    assert demo.max_file_size == 4096  # Gradio's own check has the same cap
    store.close()


def test_the_limits_are_app_options(capsys):
    from musicrl.cli import build_parser, main
    from musicrl.commands.app import limits_from

    limits, cap = limits_from(build_parser().parse_args(["app"]))
    assert limits == Limits() and cap == 50
    args = build_parser().parse_args(["app", "--generate-rate", "0", "--vote-burst", "3", "--max-request-kb", "8",
                                      "--per-session-cap", "0", "--max-unvoted-clips", "100"])  # fmt: skip
    assert limits_from(args) == (Limits(generate_per_min=0, vote_burst=3, max_request_bytes=8192,
                                        max_unvoted_clips=100), None)  # fmt: skip
    for flag, bad in (("--generate-rate", "-1"), ("--vote-burst", "0"), ("--per-session-cap", "-2"),
                      ("--max-request-kb", "0"), ("--max-unvoted-clips", "-5")):  # fmt: skip
        assert main(["app", flag, bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "must be" in err[0], err
