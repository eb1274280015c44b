"""Clean failures of the arena (issue 26, items 7 and 9), on SQLite and on a real PostgreSQL: every
error is one line of JSON (API) or a friendly UI message, never a traceback, SQL or a server path;
Gradio's own API description and monitoring routes are off unless asked for."""

import os
import sqlite3
import time
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

httpx = pytest.importorskip("httpx")
gr = pytest.importorskip("gradio")

from musicrl.app.handlers import Handlers, UiSession  # noqa: E402
from musicrl.app.limits import NO_RATE_LIMITS  # noqa: E402
from musicrl.app.server import build_app, start_server  # noqa: E402
from musicrl.errors import UserError  # noqa: E402
from musicrl.votes.files import clip_id  # noqa: E402
from musicrl.votes.store import StoreUnavailable, VoteStore, wav_bytes  # noqa: E402
from tests.test_votes import db_url, postgres  # noqa: E402,F401  (fixtures: SQLite and PostgreSQL)
from tests.test_votes_security import MIN_LISTEN_MS, MODELS, FakeGenerator, _generate, _one_line_error, _vote  # noqa: E402

SECRET = b"a server file no client may read"
HIDDEN = ("/gradio_api/info", "/gradio_api/openapi.json", "/monitoring", "/monitoring/summary", "/monitoring/k",
          "/api/openapi.json", "/api/docs")  # fmt: skip


def _serve(url, data_dir, lock_timeout_s=3.0, **options):
    store = VoteStore(url, data_dir, lock_timeout_s=lock_timeout_s)
    gens = [FakeGenerator(m, f"{i}" * 16) for i, m in enumerate(MODELS)]
    demo = build_app(gens, store, min_listen_s=MIN_LISTEN_MS / 1000, leaderboard_min_votes=1, n_boot=10, seed=0,
                     limits=NO_RATE_LIMITS)  # fmt: skip
    return start_server(demo, **options), store, demo.musicrl_arena


def _clean(r, status, text=""):
    """One line of JSON, naming no model, no server path and no SQL."""
    _one_line_error(r, status, text)
    assert not any(w in r.text for w in ("/tmp", "Traceback", "SELECT", "INSERT", "sqlalchemy", "psycopg")), r.text


def test_gradio_api_docs_and_monitoring_are_404_unless_asked_for(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    srv, store, _ = _serve(f"sqlite:///{tmp_path}/votes.db", tmp_path / "a")
    with srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        for path in HIDDEN + ("/gradio_api//info", "/gradio_api/info/"):
            _clean(client.get(path), 404, "not found")
        page = client.get("/")
        assert page.status_code == 200 and '"footer_links":["gradio"]' in page.text.replace(" ", "")
        g = _generate(client)  # the UI and the API work without them
        assert _vote(client, g["pair"]).status_code == 200
    srv, store2, _ = _serve(f"sqlite:///{tmp_path}/votes.db", tmp_path / "b", expose_api_docs=True, monitoring=True)
    with srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        assert "named_endpoints" in client.get("/gradio_api/info").json()
        assert client.get("/gradio_api/openapi.json").json()["openapi"].startswith("3.")
        assert "/api/vote" in client.get("/api/openapi.json").json()["paths"]
        assert client.get("/api/docs").status_code == 200
        assert client.get("/monitoring").status_code == 200
    store.close(), store2.close()
    from musicrl.cli import build_parser

    args = build_parser().parse_args(["app"])
    assert (args.expose_api_docs, args.monitoring, args.db_lock_timeout) == (False, False, 3.0)
    assert build_parser().parse_args(["app", "--expose-api-docs", "--monitoring"]).monitoring


def test_lone_surrogates_and_nul_in_prompts_are_400(db_url, tmp_path):  # noqa: F811
    srv, store, arena = _serve(db_url, tmp_path)
    with srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        for raw, message in ((b'{"prompt": "calm \\ud800 piano"}', "invalid Unicode"),
                             (b'{"prompt": "calm \\udfff"}', "invalid Unicode"),
                             (b'{"prompt": "calm \\u0000 piano"}', "NUL")):  # fmt: skip
            r = client.post("/api/generate", content=raw, headers={"content-type": "application/json"})
            _clean(r, 400, message)
        _clean(client.post("/api/generate", content=b'{"prompt": "\xff\xfe"}', headers={"content-type": "application/json"}), 400)
        with pytest.warns(UserWarning, match="invalid Unicode"):  # the UI says so too
            Handlers(arena).on_generate("calm \ud800", 0.5, UiSession(), SimpleNamespace(cookies={}))
    with pytest.raises(UserError, match="invalid Unicode"):
        store.add_clip(np.zeros(800, np.float32) + 0.1, 8000, model_id="m", model_version="v", prompt="\udc80", seed=0)
    with pytest.raises(UserError, match="invalid Unicode"):
        store.hash_session("s\ud800")
    assert store.stats()["clips"] == 0 and not list(tmp_path.glob("clips/*/*.wav"))  # nothing was generated or stored
    store.close()


def test_integers_too_large_for_the_database_are_400(db_url, tmp_path):  # noqa: F811
    srv, store, _ = _serve(db_url, tmp_path)
    with srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        g = _generate(client)
        for change in ({"listen_ms_a": 2**63}, {"listen_ms_b": 2**64}, {"listen_ms_a": -(2**70)},
                       {"listen_ms_b": 10**30}, {"supersedes": 2**63}, {"supersedes": 2**64},
                       {"supersedes": 10**100}, {"supersedes": -1}, {"supersedes": 0}):  # fmt: skip
            _clean(_vote(client, g["pair"], **change), 400)
        huge = b'{"prompt": "piano", "duration_s": 1' + b"0" * 400 + b"}"
        _clean(client.post("/api/generate", content=huge, headers={"content-type": "application/json"}), 400)
        digits = b'{"pair": "x", "choice": "a", "listen_ms_a": 9' + b"9" * 5000 + b"}"  # past Python's int-parsing limit
        _clean(client.post("/api/vote", content=digits, headers={"content-type": "application/json"}), 400)
        assert not store.votes()
        assert _vote(client, g["pair"]).status_code == 200
    a, b = store.clip(g["clips"][0]["id"]), store.clip(g["clips"][1]["id"])
    for big in (2**31, 2**63, 2**64):
        with pytest.raises(UserError, match="listen time must be an integer"):
            store.record_vote(clip_a=a.id, clip_b=b.id, choice="a", session="s", listen_ms_a=big)
    store.close()


def _hold_lock(url: str):
    """A second connection holding an exclusive lock on the vote tables; returns its release()."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN EXCLUSIVE")
    else:
        import psycopg

        conn = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"))
        conn.execute("LOCK TABLE votes, clips IN ACCESS EXCLUSIVE MODE")  # inside the open transaction

    def release():
        conn.rollback()
        conn.close()

    return release


def test_a_locked_database_is_a_fast_503_with_retry_after(db_url, tmp_path):  # noqa: F811
    srv, store, arena = _serve(db_url, tmp_path, lock_timeout_s=0.5)
    with srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        g = _generate(client)
        release = _hold_lock(db_url)
        try:
            t0 = time.monotonic()
            r = _vote(client, g["pair"])
            assert time.monotonic() - t0 < 3.0  # the lock timeout, not a long busy wait
            _clean(r, 503, "busy")
            assert int(r.headers["retry-after"]) >= 1
            _clean(client.post("/api/generate", json={"prompt": "calm piano", "duration_s": 0.5}), 503, "busy")
            ui = UiSession()
            with pytest.warns(UserWarning, match="busy"):
                Handlers(arena).on_generate("calm piano", 0.5, ui, SimpleNamespace(cookies={}))
        finally:
            release()
        assert _vote(client, g["pair"]).status_code == 200  # the same vote goes through once the lock is gone
    assert len(store.votes()) == 1
    with pytest.raises(StoreUnavailable):  # the store says so to any caller, not only the app
        release = _hold_lock(db_url)
        try:
            store.add_clip(np.full(800, 0.2, np.float32), 8000, model_id="m", model_version="v", prompt="p", seed=1)
        finally:
            release()
    store.close()


def test_a_corrupted_sqlite_database_refuses_to_start(tmp_path, capsys):
    from musicrl.cli import main

    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    for i in range(40):
        store.add_clip(np.full(400 + i, 0.1, np.float32), 8000, model_id="m" * 300, model_version="v", prompt="p" * 500, seed=i)
    store.close()
    db = tmp_path / "votes.db"
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) > 4 * page
    data[page:] = bytes(np.random.default_rng(0).integers(0, 256, len(data) - page, dtype=np.uint8))  # all but page 1
    db.write_bytes(bytes(data))
    assert main(["app", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "votes.db" in err[0] and ("corrupted" in err[0] or "malformed" in err[0]), err
    with pytest.raises(UserError, match="corrupted|malformed"):
        VoteStore(f"sqlite:///{db}", tmp_path)


def test_a_symlinked_clip_or_one_outside_the_clips_dir_is_never_served(tmp_path):
    (tmp_path / "data").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(SECRET)
    srv, store, _ = _serve(f"sqlite:///{tmp_path}/votes.db", tmp_path / "data")
    with srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        g = _generate(client)
        first, second = (store.clip_path(c["id"]) for c in g["clips"])
        assert client.get(g["clips"][0]["url"]).status_code == 200
        first.unlink()
        first.symlink_to(outside / "secret.wav")  # a link planted in the clips dir
        shard = second.parent  # a directory on the way swapped for a link to somewhere else
        (outside / second.name).write_bytes(SECRET)
        for f in shard.iterdir():
            f.unlink()
        shard.rmdir()
        shard.symlink_to(outside, target_is_directory=True)
        for c, path in zip(g["clips"], (first, second)):
            r = client.get(c["url"])
            _clean(r, 404, "no clip")
            gradio_file = client.get(f"/gradio_api/file={path}")
            assert gradio_file.status_code >= 400 and SECRET not in gradio_file.content
    audio = np.full(800, 0.3, np.float32)  # a link where a new clip is to be written is replaced, not followed
    identity = {"model_id": "m", "model_version": "v", "prompt": "p", "seed": 0, "settings": {}}
    planted = store.clip_path(clip_id(wav_bytes(audio, 8000), identity, store.derive_key("clip id")))
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.symlink_to(outside / "secret.wav")
    rec = store.add_clip(audio, 8000, model_id="m", model_version="v", prompt="p", seed=0)
    assert store.clip_file(rec.id) == planted and not planted.is_symlink()
    assert (outside / "secret.wav").read_bytes() == SECRET
    store.close()


def test_an_unforeseen_error_is_a_one_line_500(tmp_path, monkeypatch):
    srv, store, arena = _serve(f"sqlite:///{tmp_path}/votes.db", tmp_path)

    def boom():
        raise RuntimeError(f"SELECT * FROM votes -- {tmp_path}/votes.db\nline two")

    monkeypatch.setattr(arena, "leaderboard", boom)
    with srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        _clean(client.get("/api/leaderboard"), 500, "internal error")
    store.close()


def test_a_clips_dir_that_cannot_be_written_is_a_503_and_a_missing_one_is_made_again(tmp_path):
    import shutil

    srv, store, arena = _serve(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    with srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        shutil.rmtree(store.clips_dir)  # gone while serving: made again on the next clip
        g = _generate(client)
        assert client.get(g["clips"][0]["url"]).status_code == 200
        shutil.rmtree(store.clips_dir)
        store.clips_dir.write_bytes(b"")  # not a directory (as unwritable for a root test runner)
        r = client.post("/api/generate", json={"prompt": "calm piano", "duration_s": 0.5})
        _clean(r, 503, "cannot store clips")
        assert r.headers["retry-after"] == "60"
        with pytest.warns(UserWarning, match="cannot store clips"):
            Handlers(arena).on_generate("calm piano", 0.5, UiSession(), SimpleNamespace(cookies={}))
    store.close()


def test_a_lost_postgresql_connection_is_made_again_and_a_gone_database_is_a_503(postgres, tmp_path):  # noqa: F811
    import psycopg
    from sqlalchemy.engine import make_url

    url = postgres()
    srv, store, _ = _serve(url, tmp_path)
    u = make_url(url)
    admin = f"host={u.host} port={u.port} user={u.username} dbname=postgres"

    def kill_connections(drop=False):
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (u.database,))
            if drop:
                c.execute(f"DROP DATABASE {u.database} WITH (FORCE)")

    with srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        g = _generate(client)
        kill_connections()  # a restart of the server, a failover: the pool checks and reconnects
        assert _vote(client, g["pair"]).status_code == 200
        kill_connections(drop=True)
        t0 = time.monotonic()
        r = client.get("/api/leaderboard")
        _clean(r, 503, "vote database")
        assert "retry-after" in r.headers and time.monotonic() - t0 < 15
    store.close()


def test_votes_commands_say_an_unreachable_database_in_one_line(postgres, tmp_path, capsys):  # noqa: F811
    import psycopg
    from sqlalchemy.engine import make_url

    from musicrl.cli import main

    url = postgres()
    VoteStore(url, tmp_path).close()
    u = make_url(url)
    with psycopg.connect(f"host={u.host} port={u.port} user={u.username} dbname=postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE {u.database} WITH (FORCE)")
    assert main(["votes", "stats", "--db", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot open database" in err[0], err
