"""The durable vote store: clips (WAV files named by a keyed hash + rows), A/B votes, quality ratings.

The database and its append-only tables are `musicrl.votes.schema`; what training reads out of the
store (and the export files) is `musicrl.votes.rows`. This API has no update or delete either, so a
correction is a new vote row whose `supersedes` points at the vote it replaces.

Durability: a clip's WAV, and the codes [K, T] it was decoded from when the generator gives them
(`<id>.codes.npy` beside `<id>.wav`), are written atomically (temp file, fsync, rename, fsync dir)
before its row; `record_vote` returns only after COMMIT (SQLite runs in WAL mode with synchronous=FULL), so
the UI may confirm a vote as soon as the call returns.

Vote semantics: `clip_a`/`clip_b` are the canonical pair, `choice` (one of
`musicrl.votes.choices.CHOICES`) refers to them, and `left` says which of the two was shown on the
left (screen position, for bias analysis). `session` is a salted hash of the caller's session key
(salt from `MUSICRL_SALT` or a per-store secret file `data_dir/.musicrl-secret`). `pair_id` is the
served pair: its first vote is the only one that counts, checked inside the write transaction and
by a unique index (`musicrl.votes.schema`), so it holds across processes; a second first vote is
`AlreadyVoted`. A correction (`supersedes`) is stored but never counted: the voter has seen the
models by then (`effective_votes`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from musicrl.errors import UserError
from musicrl.votes.choices import CHOICES, SIDES
from musicrl.votes.files import CODES_SUFFIX, codes_bytes, regular_file_in, wav_bytes, write_atomic
from musicrl.votes.files import clip_id as files_clip_id  # (add_clip's local is clip_id)
from musicrl.votes.rows import EXPORT_FORMATS, export_votes
from musicrl.votes.schema import (
    DEFAULT_LOCK_TIMEOUT_S,
    StoreUnavailable,
    clips_table,
    open_engine,
    parse_db_url,
    ratings_table,
    unavailable,
    votes_table,
)

SECRET_FILE = ".musicrl-secret"
MAX_LISTEN_MS = 7 * 24 * 3600 * 1000  # a week: the longest a pair lives (the app's token lifetime cap)
_CLIP_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ClipRecord:
    id: str
    path: Path | None  # the WAV under data_dir; None when the store was opened without one
    model_id: str
    model_version: str
    prompt: str
    seed: int
    settings: dict
    duration_s: float
    sample_rate: int
    created_at: datetime
    # the SHA-256 of the WAV bytes, for a client to check a download (the id is keyed, so it cannot);
    # known where the bytes were at hand (add_clip), None for a record read back from the database
    sha256: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Vote:
    id: int
    created_at: datetime
    prompt: str
    clip_a: str
    clip_b: str
    model_a: str
    model_a_version: str
    model_b: str
    model_b_version: str
    left: str  # 'a' or 'b': which clip was shown on the left
    choice: str  # 'a' | 'b' | 'tie' | 'both_bad', about clip_a / clip_b
    listen_ms_a: int | None
    listen_ms_b: int | None
    session: str  # salted hash
    supersedes: int | None
    pair_id: str | None = None  # the served pair; None for votes stored without one (older versions)


class AlreadyVoted(UserError):
    """The served pair has its vote already (HTTP 409); `vote_id` is that vote."""

    def __init__(self, pair_id: str, vote_id: int):
        super().__init__(f"this pair was voted on already (vote {vote_id}): a served pair counts once; generate a new pair")
        self.pair_id, self.vote_id = pair_id, vote_id


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(t: datetime) -> datetime:
    """SQLite hands back naive datetimes; we only ever store UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def _check_clip_id(clip_id: object) -> None:
    if not isinstance(clip_id, str) or not _CLIP_ID.match(clip_id):
        raise UserError(f"not a clip id: {str(clip_id)[:80]!r}")


def clean_text(value: object, what: str) -> str:
    """`value` as text a database stores as it is: valid Unicode (no lone surrogates, which UTF-8
    cannot encode) and no NUL (PostgreSQL refuses it); a one-line error otherwise."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"the {what} contains invalid Unicode (a lone surrogate)") from None
    if "\x00" in text:
        raise UserError(f"the {what} contains a NUL character")
    return text


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_vote_args(choice, left, clip_a, clip_b, listen_ms_a, listen_ms_b, supersedes, pair_id) -> None:
    """The checks of `record_vote` that need no database, each a one-line error."""
    if choice not in CHOICES:
        raise UserError(f"unknown choice {str(choice)[:40]!r}: expected one of {', '.join(CHOICES)}")
    if left not in SIDES:
        raise UserError(f"left must be one of {', '.join(SIDES)}, got {str(left)[:40]!r}")
    if clip_a == clip_b:
        raise UserError("a vote compares two different clips")
    for ms in (listen_ms_a, listen_ms_b):
        if ms is not None and not (_is_int(ms) and 0 <= ms <= MAX_LISTEN_MS):
            raise UserError(f"listen time must be an integer of ms from 0 to {MAX_LISTEN_MS}, got {str(ms)[:40]}")
    if supersedes is not None and not (_is_int(supersedes) and 1 <= supersedes < 2**63):
        raise UserError(f"supersedes must be a vote id (a positive integer), got {str(supersedes)[:40]}")
    if pair_id is not None and not (isinstance(pair_id, str) and 0 < len(pair_id) <= 32):
        raise UserError(f"a pair id is a string of 1 to 32 characters, got {str(pair_id)[:40]!r}")


def _first_vote(conn, pair_id: str) -> int | None:
    """The id of the served pair's counted vote, if it has one."""
    q = select(votes_table.c.id).where(votes_table.c.pair_id == pair_id, votes_table.c.supersedes.is_(None))
    first = conn.execute(q).scalar()
    return None if first is None else int(first)


def _check_correction(conn, supersedes: int, session_hash: str, clips: set, pair_id: str | None) -> None:
    """A correction names an existing vote of the same session on the same pair."""
    old = conn.execute(select(votes_table).where(votes_table.c.id == supersedes)).mappings().first()
    if old is None:
        raise UserError(f"vote {supersedes} to correct does not exist")
    same_pair = old["pair_id"] == pair_id if old["pair_id"] is not None else {old["clip_a"], old["clip_b"]} == clips
    if old["session"] != session_hash or not same_pair:
        raise UserError(f"vote {supersedes} can only be corrected by its session, on the same pair")


def _jsonable(settings: dict | None) -> dict:
    def conv(x: Any):
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
        return str(x)

    return json.loads(json.dumps(dict(settings or {}), default=conv))


def _read_or_create_secret(path: Path) -> bytes:
    """The store secret in `path`, created (random, private) on first use."""
    if not path.exists():
        # write the whole secret to a private temp file, then link it into place: the link is
        # atomic and fails if another writer won, so no reader ever sees a partial file
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    secret = path.read_text().strip().encode()
    if not secret:
        raise UserError(f"the store secret file is empty: {path}")
    return secret


class EffectiveVotes:
    """`effective_votes` one vote at a time: `admit(v)` for each vote in id order says whether it
    counts, so a live leaderboard can take new votes as they come (`musicrl.votes.live`)."""

    def __init__(self, per_session_cap: int | None = None):
        if per_session_cap is not None and int(per_session_cap) < 1:
            raise UserError(f"per-session cap must be at least 1, got {per_session_cap}")
        self._cap = per_session_cap
        self._seen: set[tuple] = set()  # (session, clip pair) that has its first vote
        self._counts: dict[str, int] = {}  # counted votes per session

    def admit(self, v: Vote) -> bool:
        if v.supersedes is not None:
            return False
        key = (v.session, frozenset((v.clip_a, v.clip_b)))
        if key in self._seen:
            return False
        self._seen.add(key)
        n = self._counts.get(v.session, 0)
        if self._cap is not None and n >= self._cap:
            return False
        self._counts[v.session] = n + 1
        return True


def effective_votes(votes: Iterable[Vote], per_session_cap: int | None = None) -> list[Vote]:
    """The votes that count, in id order: the first, blind vote of each pair.

    1. Corrections never count: a row that `supersedes` another is cast after the reveal named the
       models (as Chatbot Arena drops votes cast once identities are known), so the vote it
       corrects stands. Corrections stay in the store and in `VoteStore.stats`.
    2. One vote per (session, unordered clip pair): the first counts, so neither a double
       submission nor a vote cast after seeing the models is counted twice.
    3. `per_session_cap`: a session keeps at most its first N remaining votes, so one voter
       cannot dominate the set.
    """
    admit = EffectiveVotes(per_session_cap).admit
    return [v for v in sorted(votes, key=lambda v: v.id) if admit(v)]


class VoteStore:
    """Clips, votes and ratings in one database plus a directory of WAV files.

    `data_dir` must exist; it may be None for read-only use (stats) that needs no files or salt.
    """

    def __init__(self, url: str, data_dir: str | Path | None = None, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S):
        self._url = parse_db_url(url)
        if data_dir is not None:
            data_dir = Path(data_dir).expanduser().resolve()
            if not data_dir.is_dir():
                raise UserError(f"data dir does not exist: {data_dir} (create it first)")
        self._data_dir: Path | None = data_dir
        self._salt: bytes | None = None
        self._engine = open_engine(self._url, lock_timeout_s)

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._url.render_as_string(hide_password=True)

    @property
    def data_dir(self) -> Path | None:
        return self._data_dir

    @property
    def clips_dir(self) -> Path:
        return self._need_data_dir() / "clips"

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _db(self, write: bool = False):
        """A connection (`write`: a transaction, committed on leaving); a database that cannot serve
        (locked, full, gone) raises `StoreUnavailable`, with no SQL or path in its message."""
        try:
            with (self._engine.begin() if write else self._engine.connect()) as conn:
                yield conn
        except SQLAlchemyError as e:
            if (clean := unavailable(e)) is None:
                raise
            raise clean from e

    def _need_data_dir(self) -> Path:
        if self._data_dir is None:
            raise UserError("this vote store was opened without a data dir; pass --data-dir")
        return self._data_dir

    def _secret(self) -> bytes:
        if self._salt is None:
            env = os.environ.get("MUSICRL_SALT")
            self._salt = env.encode() if env else _read_or_create_secret(self._need_data_dir() / SECRET_FILE)
        return self._salt

    def derive_key(self, purpose: str) -> bytes:
        """A key for `purpose` (e.g. signing pair tokens), derived from the store secret."""
        return hmac.new(self._secret(), f"musicrl:{purpose}".encode(), hashlib.sha256).digest()

    def hash_session(self, raw: str) -> str:
        """The stored form of a session key: salted, so votes cannot be joined to people or IPs."""
        if not raw or not str(raw).strip():
            raise UserError("a vote needs a session key")
        return hmac.new(self._secret(), clean_text(raw, "session key").encode(), hashlib.sha256).hexdigest()[:32]

    # -- clips ----------------------------------------------------------------------------------
    def clip_path(self, clip_id: str) -> Path:
        _check_clip_id(clip_id)
        return self.clips_dir / clip_id[:2] / f"{clip_id}.wav"

    def codes_path(self, clip_id: str) -> Path:
        """Where a clip's codes [K, T] live, beside its WAV (present for clips stored with codes)."""
        _check_clip_id(clip_id)
        return self.clips_dir / clip_id[:2] / f"{clip_id}{CODES_SUFFIX}"

    def clip_codes(self, clip_id: str) -> Path | None:
        """The clip's codes file, if it was stored with its codes (a regular file in the clips dir)."""
        path = self.codes_path(clip_id)
        return path if regular_file_in(path, self.clips_dir) else None

    def clip_file(self, clip_id: str) -> Path:
        """The clip's WAV, to serve: a regular file inside the clips dir, never a symlink or a file
        whose real place is elsewhere (UserError: no such clip)."""
        path = self.clip_path(clip_id)
        if not regular_file_in(path, self.clips_dir):
            raise UserError(f"no clip {clip_id}")
        return path

    def add_clip(
        self,
        audio: np.ndarray,
        sample_rate: int,
        *,
        model_id: str,
        model_version: str,
        prompt: str,
        seed: int,
        settings: dict | None = None,
        codes: np.ndarray | None = None,
    ) -> ClipRecord:
        """Store a clip: its WAV and, when given, the codes [K, T] it was decoded from (`codes_path`),
        atomically, first; then its row. The id hashes the WAV and who made it (`files.clip_id`): the
        same clip again is stored once (its first codes kept). The record carries the WAV's SHA-256."""
        texts = [clean_text(x, what) for x, what in ((prompt, "prompt"), (model_id, "model id"), (model_version, "model version"))]
        data = wav_bytes(audio, sample_rate)
        identity = dict(model_id=texts[1], model_version=texts[2], prompt=texts[0], seed=int(seed), settings=_jsonable(settings))
        clip_id = files_clip_id(data, identity, self.derive_key("clip id"))
        files = [(self.clip_path(clip_id), data)]
        if codes is not None:
            files.append((self.codes_path(clip_id), codes_bytes(codes)))
        for path, content in files:
            if not regular_file_in(path, self.clips_dir):  # absent, or something planted there: (re)write it
                try:
                    write_atomic(path, content)
                except OSError as e:  # read-only, full or not a directory: the operator's to fix, said without a path
                    raise StoreUnavailable(f"the server cannot store clips right now ({e.strerror or 'write failed'})", 60) from e
        row = dict(
            id=clip_id,
            created_at=_utcnow(),
            **identity,
            duration_s=float(np.asarray(audio).size / int(sample_rate)),
            sample_rate=int(sample_rate),
        )
        try:
            with self._db(write=True) as conn:
                if conn.execute(select(clips_table.c.id).where(clips_table.c.id == clip_id)).first() is None:
                    conn.execute(clips_table.insert().values(**row))
        except IntegrityError:
            pass  # inserted concurrently by someone else: the same id, so the same clip
        return replace(self.clip(clip_id), sha256=hashlib.sha256(data).hexdigest())

    def clip(self, clip_id: str) -> ClipRecord:
        _check_clip_id(clip_id)
        with self._db() as conn:
            r = conn.execute(select(clips_table).where(clips_table.c.id == str(clip_id))).mappings().first()
        if r is None:
            raise UserError(f"unknown clip {str(clip_id)[:80]}")
        return self._clip_record(r)

    def _clip_record(self, r) -> ClipRecord:
        return ClipRecord(
            id=r["id"],
            path=self.clip_path(r["id"]) if self._data_dir is not None else None,
            model_id=r["model_id"],
            model_version=r["model_version"],
            prompt=r["prompt"],
            seed=int(r["seed"]),
            settings=dict(r["settings"] or {}),
            duration_s=float(r["duration_s"]),
            sample_rate=int(r["sample_rate"]),
            created_at=_aware(r["created_at"]),
        )

    # -- votes and ratings ----------------------------------------------------------------------
    def record_vote(
        self,
        *,
        clip_a: str,
        clip_b: str,
        choice: str,
        session: str,
        left: str = "a",
        listen_ms_a: int | None = None,
        listen_ms_b: int | None = None,
        supersedes: int | None = None,
        pair_id: str | None = None,
    ) -> Vote:
        """Append a vote; returns after COMMIT. Models and prompt are taken from the clip rows.

        `pair_id` names the served pair: without `supersedes` it must have no vote yet, else
        `AlreadyVoted` (the unique index decides a race between processes). A correction passes
        `supersedes=<vote id>`: the same session and the same pair (its pair id, or its clips).
        """
        _check_vote_args(choice, left, clip_a, clip_b, listen_ms_a, listen_ms_b, supersedes, pair_id)
        session_hash = self.hash_session(session)
        try:
            with self._db(write=True) as conn:
                a, b = self._vote_clips(conn, clip_a, clip_b)
                if supersedes is not None:
                    _check_correction(conn, int(supersedes), session_hash, {clip_a, clip_b}, pair_id)
                elif pair_id is not None and (first := _first_vote(conn, pair_id)) is not None:
                    raise AlreadyVoted(pair_id, first)
                values = dict(
                    created_at=_utcnow(),
                    prompt=a["prompt"],
                    clip_a=clip_a,
                    clip_b=clip_b,
                    model_a=a["model_id"],
                    model_a_version=a["model_version"],
                    model_b=b["model_id"],
                    model_b_version=b["model_version"],
                    left=left,
                    choice=choice,
                    listen_ms_a=None if listen_ms_a is None else int(listen_ms_a),
                    listen_ms_b=None if listen_ms_b is None else int(listen_ms_b),
                    session=session_hash,
                    supersedes=None if supersedes is None else int(supersedes),
                    pair_id=pair_id,
                )
                vote_id = conn.execute(votes_table.insert().values(**values)).inserted_primary_key[0]
        except IntegrityError:
            if pair_id is not None and supersedes is None:  # another process stored this pair's vote first
                with self._db() as conn:
                    if (first := _first_vote(conn, pair_id)) is not None:
                        raise AlreadyVoted(pair_id, first) from None
            raise
        # the `with` block has committed: only now is the vote reported back
        return Vote(id=int(vote_id), **values)

    def _vote_clips(self, conn, clip_a: str, clip_b: str) -> tuple:
        """The clip rows of a vote, a then b; an unknown clip is a one-line error."""
        q = select(clips_table).where(clips_table.c.id.in_([str(clip_a), str(clip_b)]))
        rows = {r["id"]: r for r in conn.execute(q).mappings()}
        for c in (clip_a, clip_b):
            if c not in rows:
                raise UserError(f"unknown clip {str(c)[:80]}")
        return rows[clip_a], rows[clip_b]

    def add_rating(self, clip_id: str, rating: int, *, session: str, vote_id: int | None = None) -> int:
        """Append a 1-5 quality rating of one clip; returns its row id after COMMIT."""
        if not (_is_int(rating) and 1 <= rating <= 5):
            raise UserError(f"a rating is an integer from 1 to 5, got {rating!r}")
        self.clip(clip_id)
        with self._db(write=True) as conn:
            rid = conn.execute(
                ratings_table.insert().values(
                    created_at=_utcnow(),
                    clip_id=clip_id,
                    rating=int(rating),
                    session=self.hash_session(session),
                    vote_id=vote_id,
                )
            ).inserted_primary_key[0]
        return int(rid)

    def votes(self, *, effective: bool = False, per_session_cap: int | None = None, after_id: int = 0) -> list[Vote]:
        """All vote rows in id order (`after_id`: only those with a larger id); `effective=True`
        applies `effective_votes` (dedup, cap)."""
        q = select(votes_table).where(votes_table.c.id > int(after_id)).order_by(votes_table.c.id)
        with self._db() as conn:
            result = conn.execute(q)
            keys, rows = list(result.keys()), result.all()  # plain tuples: a mapping per row costs 3x
        i_id, i_at = keys.index("id"), keys.index("created_at")
        out = [Vote(**{**dict(zip(keys, r)), "id": int(r[i_id]), "created_at": _aware(r[i_at])}) for r in rows]
        if effective or per_session_cap is not None:
            out = effective_votes(out, per_session_cap)
        return out

    def count_votes(self, after_id: int = 0) -> int:
        """How many vote rows there are (corrections included) with an id above `after_id`."""
        q = select(func.count()).select_from(votes_table)
        if after_id:  # without a bound SQLite counts a small index instead of the table
            q = q.where(votes_table.c.id > int(after_id))
        with self._db() as conn:
            return int(conn.execute(q).scalar_one())

    def ratings(self) -> list[dict]:
        with self._db() as conn:
            rows = conn.execute(select(ratings_table).order_by(ratings_table.c.id)).mappings().all()
        return [{**dict(r), "created_at": _aware(r["created_at"])} for r in rows]

    # -- export and stats -----------------------------------------------------------------------
    def export(self, path: str | Path, fmt: str = "jsonl", per_session_cap: int | None = None,
               exclude_flagged: bool = False) -> int:  # fmt: skip
        """Write the effective votes (`musicrl.votes.rows.export_votes`); returns the number of rows."""
        self._need_data_dir()
        return export_votes(self, path, fmt, per_session_cap, exclude_flagged)

    def stats(self, raw: list[Vote] | None = None) -> dict:
        """Counts: clips, raw and effective votes, sessions, choices, votes per model, ratings.
        `raw`: every vote row (`votes()`), where the caller has read them already."""
        with self._db() as conn:
            n_clips = conn.execute(select(func.count()).select_from(clips_table)).scalar_one()
            n_ratings = conn.execute(select(func.count()).select_from(ratings_table)).scalar_one()
        raw = self.votes() if raw is None else raw
        eff = effective_votes(raw)
        choices = {c: sum(v.choice == c for v in eff) for c in CHOICES}
        models: dict[str, int] = {}
        for v in eff:
            for m in {model_key(v.model_a, v.model_a_version), model_key(v.model_b, v.model_b_version)}:
                models[m] = models.get(m, 0) + 1
        return {
            "clips": int(n_clips),
            "votes_raw": len(raw),
            "votes_effective": len(eff),
            "corrections": sum(v.supersedes is not None for v in raw),
            "sessions": len({v.session for v in eff}),
            "choices": choices,
            "votes_per_model": dict(sorted(models.items())),
            "ratings": int(n_ratings),
        }


def model_key(model_id: str, version: str) -> str:
    """The name a model version goes by on the leaderboard: id@first 8 of its weights hash."""
    return f"{model_id}@{version[:8]}" if version else model_id


def vote_pairs(votes: Iterable[Vote]) -> list[tuple[str, str, str]]:
    """Votes -> (model_a, model_b, choice) triples for `musicrl.votes.leaderboard.leaderboard`."""
    return [
        (model_key(v.model_a, v.model_a_version), model_key(v.model_b, v.model_b_version), v.choice) for v in votes
    ]



__all__ = [
    "CHOICES",
    "EXPORT_FORMATS",
    "MAX_LISTEN_MS",
    "AlreadyVoted",
    "SECRET_FILE",
    "ClipRecord",
    "StoreUnavailable",
    "Vote",
    "VoteStore",
    "effective_votes",
    "model_key",
    "parse_db_url",
    "vote_pairs",
    "wav_bytes",
]
