"""The vote store against a SQLite file and a real PostgreSQL server started here; the votes CLI."""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import text

from musicrl.cli import main
from musicrl.errors import UserError
from musicrl.votes.store import SECRET_FILE, AlreadyVoted, Vote, VoteStore, effective_votes

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on a free loopback port; yields a function making fresh databases."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs and shutil.which("initdb"):
        initdbs = [shutil.which("initdb")]
    if not initdbs:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    bindir = Path(initdbs[-1]).parent
    pytest.importorskip("psycopg")
    root = Path(tempfile.mkdtemp(prefix="musicrl-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        user = "postgres" if any(p.pw_name == "postgres" for p in pwd.getpwall()) else "nobody"
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", user, "--"]
    data, log, port = root / "data", root / "log", _free_port()

    def sh(*cmd):
        r = subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {r.stderr or r.stdout}")

    sh(bindir / "initdb", "-D", data, "-U", "musicrl", "--auth=trust", "-E", "UTF8", "--no-sync")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    sh(bindir / "pg_ctl", "-D", data, "-l", log, "-o", opts, "-w", "-t", "60", "start")
    import psycopg

    def make_db() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={port} user=musicrl dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://musicrl@127.0.0.1:{port}/{name}"

    try:
        yield make_db
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/votes.db"
    return request.getfixturevalue("postgres")()


def _tone(freq: float, seconds: float = 0.5, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _clips(store: VoteStore, n: int = 2, models=("m1", "m2")):
    return [
        store.add_clip(_tone(200 + 50 * i), 16000, model_id=models[i % len(models)], model_version=f"v{i % len(models)}",
                       prompt="calm piano", seed=i, settings={"temperature": np.float32(0.9), "top_k": 250})
        for i in range(n)
    ]  # fmt: skip


def test_clip_is_a_wav_named_by_a_keyed_id_written_before_its_row(db_url, tmp_path):
    store = VoteStore(db_url, tmp_path)
    a, b = _clips(store)
    assert a.id != b.id and len(a.id) == 64
    assert a.path == tmp_path / "clips" / a.id[:2] / f"{a.id}.wav"
    import hashlib

    from musicrl.votes.files import clip_id

    identity = {"model_id": "m1", "model_version": "v0", "prompt": "calm piano", "seed": 0, "settings": a.settings}
    assert clip_id(a.path.read_bytes(), identity, store.derive_key("clip id")) == a.id
    # the id is keyed, so the bytes are checked by the record's plain sha256, which the id is not
    assert a.sha256 == hashlib.sha256(a.path.read_bytes()).hexdigest() != a.id
    audio, sr = sf.read(a.path, dtype="float32")
    assert sr == 16000 and np.max(np.abs(audio - _tone(200))) < 1e-4  # 16-bit PCM round trip
    assert a.settings == {"temperature": pytest.approx(0.9), "top_k": 250} and a.duration_s == pytest.approx(0.5)
    again = store.add_clip(_tone(200), 16000, model_id="m1", model_version="v0", prompt="calm piano", seed=0,
                           settings={"temperature": np.float32(0.9), "top_k": 250})  # fmt: skip
    assert again.id == a.id and store.stats()["clips"] == 2  # the same clip again, stored once
    assert again.sha256 == a.sha256 and store.clip(a.id) == a  # a record read back equals it
    assert not list(tmp_path.glob("clips/*/.*.tmp"))  # no temp files left from the atomic writes


def test_the_same_audio_from_another_model_or_prompt_is_another_clip_and_votes_name_its_model(db_url, tmp_path):
    store = VoteStore(db_url, tmp_path)
    silence = np.zeros(8000, np.float32)  # what two broken checkpoints could both make
    a = store.add_clip(silence, 16000, model_id="m1", model_version="v1", prompt="calm piano", seed=3)
    b = store.add_clip(silence, 16000, model_id="m2", model_version="v7", prompt="calm piano", seed=3)
    c = store.add_clip(silence, 16000, model_id="m1", model_version="v1", prompt="fast drums", seed=3)
    assert len({a.id, b.id, c.id}) == 3 and store.stats()["clips"] == 3
    assert (b.model_id, b.model_version, c.prompt) == ("m2", "v7", "fast drums")
    assert a.path.read_bytes() == b.path.read_bytes()
    v = store.record_vote(clip_a=a.id, clip_b=b.id, choice="b", session="s", left="a", listen_ms_a=600, listen_ms_b=600)
    assert (v.model_a, v.model_b) == ("m1", "m2")  # before, b was stored as a's clip: m1 against itself


def test_a_clip_stored_under_its_plain_sha256_by_an_older_version_still_votes_and_exports(db_url, tmp_path):
    """Ids are opaque: nothing re-derives one, so an older store's clips (id = sha256 of the WAV) keep working."""
    import hashlib
    from datetime import datetime, timezone

    from sqlalchemy import create_engine

    from musicrl.votes.files import wav_bytes, write_atomic
    from musicrl.votes.schema import clips_table, parse_db_url

    store = VoteStore(db_url, tmp_path)
    data = wav_bytes(_tone(300), 16000)
    old_id = hashlib.sha256(data).hexdigest()
    write_atomic(store.clip_path(old_id), data)
    engine = create_engine(parse_db_url(db_url))
    with engine.begin() as conn:
        conn.execute(clips_table.insert().values(
            id=old_id, created_at=datetime.now(timezone.utc), model_id="old", model_version="v", prompt="calm piano",
            seed=0, settings={}, duration_s=0.5, sample_rate=16000))  # fmt: skip
    engine.dispose()
    new = store.add_clip(_tone(300), 16000, model_id="new", model_version="v", prompt="calm piano", seed=0)
    assert new.id != old_id and store.clip(old_id).model_id == "old"  # the same audio, another clip
    v = store.record_vote(clip_a=old_id, clip_b=new.id, choice="a", session="s")
    assert (v.model_a, v.model_b) == ("old", "new")
    assert store.export(tmp_path / "votes.jsonl") == 1
    row = json.loads((tmp_path / "votes.jsonl").read_text())
    assert Path(row["clip_a"]).read_bytes() == data


def test_vote_is_durable_across_a_new_store_and_models_come_from_the_clips(db_url, tmp_path):
    store = VoteStore(db_url, tmp_path)
    a, b = _clips(store)
    v = store.record_vote(clip_a=a.id, clip_b=b.id, choice="a", session="alice", left="b", listen_ms_a=2100, listen_ms_b=1900)
    store.close()
    again = VoteStore(db_url, tmp_path).votes()
    assert again == [v]
    assert (v.model_a, v.model_a_version, v.model_b, v.model_b_version) == ("m1", "v0", "m2", "v1")
    assert v.prompt == "calm piano" and v.left == "b" and v.listen_ms_a == 2100
    assert v.session != "alice" and len(v.session) == 32  # salted hash, not the raw key
    assert v.created_at.tzinfo is not None


def test_store_is_append_only_in_the_api_and_in_the_database(db_url, tmp_path):
    store = VoteStore(db_url, tmp_path)
    a, b = _clips(store)
    v = store.record_vote(clip_a=a.id, clip_b=b.id, choice="a", session="s")
    store.add_rating(a.id, 4, session="s", vote_id=v.id)
    public = {m for m in dir(store) if not m.startswith("_")}
    assert not {m for m in public if any(w in m for w in ("update", "delete", "remove", "edit", "drop"))}
    for sql in ("UPDATE votes SET choice = 'b'", "DELETE FROM votes", "UPDATE clips SET prompt = 'x'",
                "DELETE FROM ratings", "UPDATE ratings SET rating = 1"):  # fmt: skip
        with pytest.raises(Exception, match="append-only"):
            with store._engine.begin() as conn:
                conn.execute(text(sql))
    assert store.votes() == [v] and store.ratings()[0]["rating"] == 4


def test_correction_is_a_new_row_and_export_keeps_the_blind_vote(db_url, tmp_path):
    store = VoteStore(db_url, tmp_path)
    a, b, c = _clips(store, 3)
    v1 = store.record_vote(clip_a=a.id, clip_b=b.id, choice="a", session="s1")
    store.record_vote(clip_a=a.id, clip_b=b.id, choice="tie", session="s1", supersedes=v1.id)
    v3 = store.record_vote(clip_a=a.id, clip_b=c.id, choice="b", session="s1")
    store.record_vote(clip_a=a.id, clip_b=c.id, choice="a", session="s1")  # a second vote: the first counts
    v5 = store.record_vote(clip_a=b.id, clip_b=c.id, choice="both_bad", session="s2")
    with pytest.raises(UserError, match="only be corrected by its session"):
        store.record_vote(clip_a=a.id, clip_b=b.id, choice="b", session="mallory", supersedes=v1.id)
    with pytest.raises(UserError, match="does not exist"):
        store.record_vote(clip_a=a.id, clip_b=b.id, choice="b", session="s1", supersedes=999)
    assert len(store.votes()) == 5
    n = store.export(tmp_path / "votes.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "votes.jsonl").read_text().splitlines()]
    assert n == len(rows) == 3
    # the correction came after the reveal: stored, not counted; the blind vote stands
    assert [(r["vote_id"], r["choice"], r["supersedes"]) for r in rows] == [
        (v1.id, "a", None), (v3.id, "b", None), (v5.id, "both_bad", None)]  # fmt: skip
    assert rows[0]["prompt"] == "calm piano"
    assert Path(rows[0]["clip_a"]).is_absolute() and Path(rows[0]["clip_a"]).is_file()
    assert {"model_a", "model_b", "session", "created_at"} <= set(rows[0])
    assert store.export(tmp_path / "capped.jsonl", per_session_cap=1) == 2  # s1 keeps its first, s2 its one
    st = store.stats()
    assert (st["votes_raw"], st["votes_effective"], st["sessions"], st["corrections"]) == (5, 3, 2, 1)
    assert st["choices"] == {"a": 1, "b": 1, "tie": 0, "both_bad": 1}


def test_effective_votes_keep_each_pairs_first_blind_vote():
    def v(i, session, pair, choice, sup=None):
        return Vote(i, None, "p", *pair, "m", "1", "n", "2", "a", choice, None, None, session, sup)

    votes = [
        v(1, "s", ("x", "y"), "a"),
        v(2, "s", ("x", "y"), "b", 1),
        v(3, "s", ("x", "y"), "tie", 2),  # corrections 1 <- 2 <- 3, cast after the reveal: 1 counts
        v(4, "s", ("y", "x"), "tie"),  # same pair in the other order: a second vote of s, not counted
        v(5, "s", ("x", "z"), "a"),
        v(6, "t", ("x", "z"), "a"),  # another session: kept
        v(7, "s", ("z", "w"), "b"),
    ]
    assert [e.id for e in effective_votes(votes)] == [1, 5, 6, 7]
    assert [e.id for e in effective_votes(votes, per_session_cap=2)] == [1, 5, 6]
    with pytest.raises(UserError):
        effective_votes(votes, per_session_cap=0)


def test_a_served_pair_takes_one_vote_and_the_database_enforces_it(db_url, tmp_path):
    from sqlalchemy.exc import IntegrityError

    from musicrl.votes.schema import votes_table

    store = VoteStore(db_url, tmp_path)
    a, b = _clips(store)
    v = store.record_vote(clip_a=a.id, clip_b=b.id, choice="a", session="s1", pair_id="p1")
    for session in ("s1", "s2"):  # the same voter or anyone else holding the pair
        with pytest.raises(AlreadyVoted, match=f"vote {v.id}") as e:
            store.record_vote(clip_a=a.id, clip_b=b.id, choice="b", session=session, pair_id="p1")
        assert e.value.vote_id == v.id and "\n" not in str(e.value)
    fix = store.record_vote(clip_a=a.id, clip_b=b.id, choice="b", session="s1", pair_id="p1", supersedes=v.id)
    for session, pair in (("s2", "p1"), ("s1", "p2")):  # another session, or another served pair
        with pytest.raises(UserError, match="only be corrected by its session"):
            store.record_vote(clip_a=a.id, clip_b=b.id, choice="b", session=session, pair_id=pair, supersedes=v.id)
    other = store.record_vote(clip_a=a.id, clip_b=b.id, choice="tie", session="s2", pair_id="p2")
    assert [(x.pair_id, x.supersedes) for x in store.votes()] == [("p1", None), ("p1", v.id), ("p2", None)]
    assert [x.id for x in store.votes(effective=True)] == [v.id, other.id]  # the correction fix is not counted
    row = {k: getattr(fix, k) for k in votes_table.c.keys() if k not in ("id", "supersedes")}
    with pytest.raises(IntegrityError):  # past the store's own check: the unique index refuses it
        with store._engine.begin() as conn:
            conn.execute(votes_table.insert().values(**row))
    for bad in ({"supersedes": True}, {"supersedes": 2**70}, {"listen_ms_a": 1.5}, {"listen_ms_b": True},
                {"listen_ms_a": -1}, {"pair_id": "x" * 33}):  # fmt: skip
        with pytest.raises(UserError):
            store.record_vote(clip_a=a.id, clip_b=b.id, choice="a", session="s3", **bad)
    assert len(store.votes()) == 3


def test_concurrent_votes_on_one_pair_store_exactly_one(db_url, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = VoteStore(db_url, tmp_path)
    a, b = _clips(store)

    def vote(i):
        try:
            return store.record_vote(clip_a=a.id, clip_b=b.id, choice="a", session=f"s{i}", pair_id="p").id
        except AlreadyVoted as e:
            return -e.vote_id

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(vote, range(12)))
    (winner,) = [x for x in got if x > 0]
    assert got.count(-winner) == 11 and [v.id for v in store.votes()] == [winner]


def test_an_old_database_gains_the_pair_column_on_open(db_url, tmp_path):
    """A store made before pair ids: opening it adds the column and the index; old rows stay as they were."""
    from datetime import datetime, timezone

    from sqlalchemy import MetaData, Table, create_engine

    from musicrl.votes.schema import clips_table, parse_db_url, votes_table

    old = MetaData()
    clips_table.to_metadata(old)
    old_votes = Table("votes", old, *[c._copy() for c in votes_table.columns if c.name != "pair_id"])
    engine = create_engine(parse_db_url(db_url))
    old.create_all(engine)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        for i in (1, 2):
            conn.execute(old.tables["clips"].insert().values(
                id=f"{i}" * 64, created_at=now, model_id=f"m{i}", model_version="v", prompt="p", seed=i,
                settings={}, duration_s=1.0, sample_rate=16000))  # fmt: skip
        conn.execute(old_votes.insert().values(
            created_at=now, prompt="p", clip_a="1" * 64, clip_b="2" * 64, model_a="m1", model_a_version="v",
            model_b="m2", model_b_version="v", left="a", choice="a", session="h"))  # fmt: skip
    engine.dispose()
    store = VoteStore(db_url, tmp_path)
    (v,) = store.votes()
    assert v.pair_id is None and v.choice == "a"
    new = store.record_vote(clip_a="1" * 64, clip_b="2" * 64, choice="b", session="s", pair_id="p")
    with pytest.raises(AlreadyVoted):
        store.record_vote(clip_a="1" * 64, clip_b="2" * 64, choice="b", session="t", pair_id="p")
    store.close()
    again = VoteStore(db_url, tmp_path)  # opening an up-to-date store migrates nothing twice
    assert [x.id for x in again.votes(effective=True)] == [v.id, new.id]


def test_hf_export_is_a_self_contained_directory(tmp_path):
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    a, b = _clips(store)
    store.record_vote(clip_a=a.id, clip_b=b.id, choice="b", session="s")
    out = tmp_path / "ds"
    assert store.export(out, fmt="hf") == 1
    row = json.loads((out / "train.jsonl").read_text())
    assert row["clip_a"] == f"clips/{a.id}.wav" and (out / row["clip_a"]).read_bytes() == a.path.read_bytes()
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["splits"]["train"]["num_examples"] == 1 and info["features"]["choice"]["dtype"] == "string"
    with pytest.raises(UserError, match="not empty"):
        store.export(out, fmt="hf")


def test_hf_export_declares_the_settings_its_clips_have(tmp_path):
    """dataset_info.json's settings struct: the sampling fields, plus a best-of pick's fields (with each
    ranking reward's score) only where the export holds a pick, so the declared features match the rows."""
    sampling = {"temperature": 1.0, "top_k": 250, "top_p": 0.0, "guidance_scale": 3.0, "duration_s": 1.0}
    pick = {**sampling, "best_of": 4, "rerank": "clap=tiny,quality=tiny", "scores": {"clap": 0.31, "quality": 3.9},
            "candidate_seeds": [8, 9, 10, 11]}  # fmt: skip
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    a, b, c = (store.add_clip(_tone(200 + 50 * i), 16000, model_id=m, model_version="v", prompt="calm piano", seed=i,
                              settings=st) for i, (m, st) in enumerate([("m", sampling), ("m", sampling), ("m+best-of-4", pick)]))  # fmt: skip
    store.record_vote(clip_a=a.id, clip_b=b.id, choice="a", session="s")
    store.export(tmp_path / "plain", fmt="hf")
    plain = json.loads((tmp_path / "plain" / "dataset_info.json").read_text())["features"]["settings_a"]
    assert set(plain) == set(sampling) and plain["top_k"]["dtype"] == "int64"
    store.record_vote(clip_a=a.id, clip_b=c.id, choice="b", session="t")
    store.export(tmp_path / "picks", fmt="hf")
    info = json.loads((tmp_path / "picks" / "dataset_info.json").read_text())["features"]
    assert info["settings_a"] == info["settings_b"] and set(info["settings_b"]) == set(pick)
    assert set(info["settings_b"]["scores"]) == {"clap", "quality"} and info["settings_b"]["best_of"]["dtype"] == "int64"
    rows = [json.loads(line) for line in (tmp_path / "picks" / "train.jsonl").read_text().splitlines()]
    assert all(set(r["settings_b"]) <= set(info["settings_b"]) for r in rows)  # every row's fields are declared


def test_stored_codes_round_trip_through_both_exports(tmp_path):
    from musicrl.votes.files import read_codes
    from musicrl.votes.rows import load_votes

    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    codes = np.random.default_rng(0).integers(0, 2048, size=(4, 50))
    a = store.add_clip(_tone(200), 16000, model_id="m", model_version="v", prompt="calm piano", seed=3,
                       settings={"temperature": 1.0, "top_k": 250, "top_p": 0.0, "guidance_scale": 3.0, "duration_s": 1.0},
                       codes=codes)  # fmt: skip
    b = store.add_clip(_tone(300), 16000, model_id="m", model_version="v", prompt="calm piano", seed=4)  # an old clip: no codes
    assert store.clip_codes(a.id) == a.path.with_name(f"{a.id}.codes.npy") and store.clip_codes(b.id) is None
    store.record_vote(clip_a=a.id, clip_b=b.id, choice="a", session="s")
    store.export(tmp_path / "votes.jsonl")
    store.export(tmp_path / "ds", fmt="hf")
    row = json.loads((tmp_path / "ds" / "train.jsonl").read_text())
    assert row["codes_a"] == f"clips/{a.id}.codes.npy" and row["codes_b"] is None
    assert row["settings_a"]["guidance_scale"] == 3.0 and row["settings_b"] is None
    for source in (tmp_path / "votes.jsonl", tmp_path / "ds" / "train.jsonl", f"sqlite:///{tmp_path}/votes.db"):
        (v,) = load_votes(source)
        np.testing.assert_array_equal(read_codes(v.codes_a), codes)
        assert v.codes_b is None and v.settings_a["top_k"] == 250 and v.settings_b is None
    (tmp_path / "ds" / row["codes_a"]).unlink()  # a codes file an export names but lacks: one line
    with pytest.raises(UserError, match="clip file missing"):
        load_votes(tmp_path / "ds" / "train.jsonl")


def test_bad_input_is_one_line_user_error(tmp_path):
    cases = [
        (lambda: VoteStore("not a url", tmp_path), "malformed database URL"),
        (lambda: VoteStore("mysql://u@h/db", tmp_path), "unsupported database"),
        (lambda: VoteStore("sqlite://", tmp_path), "needs a file"),
        (lambda: VoteStore(f"sqlite:///{tmp_path}/absent/votes.db", tmp_path), "does not exist"),
        (lambda: VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path / "missing"), "data dir does not exist"),
        (lambda: VoteStore(f"postgresql+psycopg://nobody@127.0.0.1:{_free_port()}/x", tmp_path), "cannot open database"),
    ]
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    a, b = _clips(store)
    cases += [
        (lambda: store.export(tmp_path / "x.csv", fmt="csv"), "unknown export format"),
        (lambda: store.export(tmp_path / "nodir" / "x.jsonl"), "does not exist"),
        (lambda: store.record_vote(clip_a=a.id, clip_b=b.id, choice="A", session="s"), "unknown choice"),
        (lambda: store.record_vote(clip_a=a.id, clip_b="f" * 64, choice="a", session="s"), "unknown clip"),
        (lambda: store.record_vote(clip_a=a.id, clip_b=a.id, choice="a", session="s"), "two different clips"),
        (lambda: store.add_rating(a.id, 6, session="s"), "1 to 5"),
        (lambda: store.clip_path("../../etc/passwd"), "not a clip id"),
        (lambda: store.add_clip(np.full(10, np.nan), 16000, model_id="m", model_version="1", prompt="p", seed=0), "NaN"),
    ]
    for fn, msg in cases:
        with pytest.raises(UserError, match=msg) as e:
            fn()
        assert "\n" not in str(e.value)


def test_session_salt_from_env_or_secret_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MUSICRL_SALT", raising=False)
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    h = store.hash_session("alice")
    assert (tmp_path / SECRET_FILE).stat().st_mode & 0o077 == 0  # only the owner may read it
    assert VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path).hash_session("alice") == h  # stable per store
    monkeypatch.setenv("MUSICRL_SALT", "pepper")
    assert VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path).hash_session("alice") != h


def test_vote_survives_a_killed_process(tmp_path):
    """record_vote returned => the vote is on disk, even if the process dies right after (no cleanup)."""
    code = (
        "import sys, numpy as np, os; sys.path.insert(0, sys.argv[2]);"
        "from musicrl.votes.store import VoteStore; s = VoteStore(f'sqlite:///{sys.argv[1]}/votes.db', sys.argv[1]);"
        "c = [s.add_clip(np.sin(np.arange(800) * f).astype('float32'), 16000, model_id='m', model_version='1',"
        " prompt='p', seed=i) for i, f in enumerate((0.1, 0.2))];"
        "v = s.record_vote(clip_a=c[0].id, clip_b=c[1].id, choice='b', session='s'); print(v.id, flush=True);"
        "os._exit(9)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 9, r.stderr
    votes = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path).votes()
    assert [(v.id, v.choice) for v in votes] == [(int(r.stdout.strip()), "b")]


def test_concurrent_votes_are_all_recorded(db_url, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = VoteStore(db_url, tmp_path)
    a, b = _clips(store)

    def vote(i):
        return store.record_vote(clip_a=a.id, clip_b=b.id, choice="ab"[i % 2], session=f"s{i}").id

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(vote, range(40)))
    assert len(set(ids)) == 40 and sorted(v.id for v in store.votes()) == sorted(ids)


def test_sqlite_runs_wal_with_full_sync(tmp_path):
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    with store._engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_votes_cli_export_and_stats(tmp_path, capsys):
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    a, b = _clips(store)
    for i in range(6):
        store.record_vote(clip_a=a.id, clip_b=b.id, choice="a" if i < 5 else "b", session=f"s{i}")
    db = f"sqlite:///{tmp_path}/votes.db"
    assert main(["votes", "export", "--db", db, "--data-dir", str(tmp_path), "--format", "jsonl",
                 "--out", str(tmp_path / "v.jsonl"), "--per-session-cap", "1"]) == 0  # fmt: skip
    assert len((tmp_path / "v.jsonl").read_text().splitlines()) == 6
    assert main(["votes", "stats", "--db", db, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["votes_effective"] == 6 and [r["model"] for r in stats["leaderboard"]] == ["m1@v0", "m2@v1"]
    assert main(["votes", "export", "--db", db, "--data-dir", str(tmp_path), "--format", "parquet", "--out", "x"]) == 2
    assert main(["votes", "stats", "--db", f"sqlite:///{tmp_path}/nope.db"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown export format" in err[0] and "no such vote database" in err[1]
