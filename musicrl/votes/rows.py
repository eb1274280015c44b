"""What training reads from the votes: vote rows and rating rows, from a JSONL file or a vote store.

The reward trainers (`musicrl.rewards.train_preference`, `musicrl.rewards.train_quality`) take the
lists built here and never open a database themselves.

Vote files: one JSON object a line with prompt, clip_a, clip_b and choice (clip paths absolute or
relative to the file's directory); the other columns `export_votes` writes, and those of
`musicrl.tiny.simulate` (rater, p_a), are understood, any other column is an error. Among them
codes_a / codes_b: each clip's codes [K, T] (`musicrl.votes.files.CODES_SUFFIX`, a path like the
clip's; null for a clip stored without them) and settings_a / settings_b: the sampling settings it
was generated with (temperature, top_k, top_p, guidance_scale, duration_s; null when unknown).
Rating files: one {"audio": path, "rating": 1-5} a line (plus the ratings table's own columns).
A database URL (`sqlite:///votes.db`, `postgresql+psycopg://...`) gives its effective votes or its
ratings, with clips from its data dir (by default a SQLite file's own directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from musicrl.errors import UserError
from musicrl.votes.choices import CHOICES, SIDES
from musicrl.votes.files import CODES_SUFFIX

EXPORT_FORMATS = ("jsonl", "hf")
VOTE_COLUMNS = ("prompt", "clip_a", "clip_b", "choice")  # required in a vote file
# the columns `export_votes` writes, in order
EXPORT_COLUMNS = (
    "vote_id", "created_at", "prompt", "clip_a", "clip_b", "clip_a_id", "clip_b_id", "model_a",
    "model_a_version", "model_b", "model_b_version", "left", "choice", "listen_ms_a", "listen_ms_b",
    "session", "supersedes", "codes_a", "codes_b", "settings_a", "settings_b",
)  # fmt: skip
KNOWN_VOTE_COLUMNS = EXPORT_COLUMNS + ("rater", "p_a")  # + musicrl.tiny.simulate's
RATING_COLUMNS = ("audio", "rating")
KNOWN_RATING_COLUMNS = RATING_COLUMNS + ("prompt", "clip_id", "session", "id", "vote_id", "created_at")


@dataclass(frozen=True)
class VoteRow:
    """One vote as the preference trainer sees it: `choice` is about clip_a vs. clip_b."""

    prompt: str
    clip_a: Path
    clip_b: Path
    choice: str
    p_a: float | None = None  # simulated votes: the raters' true P(a) (no tie)
    codes_a: Path | None = None  # the clip's codes [K, T] (.npy), when it was stored with them
    codes_b: Path | None = None
    settings_a: dict | None = None  # how the clip was sampled (temperature, top_k, top_p, guidance_scale, ...)
    settings_b: dict | None = None


class RatingRow(NamedTuple):
    """One rated clip as the quality trainer sees it: its mean opinion score over all its ratings."""

    clip: Path
    mos: float


# ------------------------------------------------------------------------------------- loading


def load_votes(source: str | Path, data_dir: str | Path | None = None) -> list[VoteRow]:
    """Votes from a JSONL file or a vote-store URL; every clip file checked to exist."""
    source = str(source)
    rows = _votes_from_db(source, data_dir) if "://" in source else _votes_from_jsonl(Path(source))
    if not rows:
        raise UserError(f"no votes in {source}")
    _check_files(p for r in rows for p in (r.clip_a, r.clip_b, r.codes_a, r.codes_b) if p is not None)
    return rows


def load_ratings(source: str | Path, data_dir: str | Path | None = None) -> list[RatingRow]:
    """One row per rated clip (its ratings averaged), from a JSONL file or a vote-store URL."""
    source = str(source)
    pairs = _ratings_from_db(source, data_dir) if "://" in source else _ratings_from_jsonl(Path(source))
    if not pairs:
        raise UserError(f"no ratings in {source}")
    by_clip: dict[Path, list[float]] = {}
    for path, rating in pairs:
        by_clip.setdefault(path, []).append(rating)
    _check_files(by_clip)
    return [RatingRow(p, sum(r) / len(r)) for p, r in by_clip.items()]


def votes_hash(rows: list[VoteRow]) -> str:
    """Identifies the vote set a model was trained on (prompt, clip file names, choice of each vote)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.prompt, r.clip_a.name, r.clip_b.name, r.choice]).encode())
    return h.hexdigest()[:16]


def _check_files(paths) -> None:
    for p in paths:
        if not p.is_file():
            raise UserError(f"clip file missing: {p}")


def jsonl_records(path: Path, what: str, required: tuple[str, ...], known: tuple[str, ...]):
    """(line number, object) per non-blank line of a JSONL file of `what`s (votes, ratings), each
    checked: valid JSON, an object, every `required` column, none outside `known`. Errors are one
    line naming the file and the line."""
    if not path.is_file():
        raise UserError(f"no such {what}s file: {path}")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(d, dict):
            raise UserError(f"{path}:{n}: a {what} is a JSON object, got {type(d).__name__}")
        missing = [c for c in required if c not in d]
        if missing:
            raise UserError(f"{path}:{n}: missing column(s) {', '.join(missing)}; a {what} needs {', '.join(required)}")
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise UserError(f"{path}:{n}: unknown column(s) {', '.join(unknown)}; "
                            f"expected {', '.join(required)} (+ {', '.join(c for c in known if c not in required)})")
        yield n, d


def _votes_from_jsonl(path: Path) -> list[VoteRow]:
    rows = []
    for n, d in jsonl_records(path, "vote", VOTE_COLUMNS, KNOWN_VOTE_COLUMNS):
        if d["choice"] not in CHOICES:
            raise UserError(f"{path}:{n}: bad choice {str(d['choice'])[:40]!r}; expected one of {', '.join(CHOICES)}")
        for c in ("prompt", "clip_a", "clip_b"):
            if not isinstance(d[c], str) or not d[c].strip():
                raise UserError(f"{path}:{n}: {c} must be a non-empty string")
        p_a = d.get("p_a")
        extra = {}
        for side in SIDES:
            codes, settings = d.get(f"codes_{side}"), d.get(f"settings_{side}")
            if codes is not None and (not isinstance(codes, str) or not codes.strip()):
                raise UserError(f"{path}:{n}: codes_{side} must be a path or null")
            if settings is not None and not isinstance(settings, dict):
                raise UserError(f"{path}:{n}: settings_{side} must be an object or null")
            extra[f"codes_{side}"] = None if codes is None else path.parent / codes
            extra[f"settings_{side}"] = settings
        rows.append(VoteRow(d["prompt"], path.parent / d["clip_a"], path.parent / d["clip_b"], d["choice"],
                            None if p_a is None else float(p_a), **extra))
    return rows


def _ratings_from_jsonl(path: Path) -> list[tuple[Path, float]]:
    out = []
    for n, d in jsonl_records(path, "rating", RATING_COLUMNS, KNOWN_RATING_COLUMNS):
        r = d["rating"]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 1 <= r <= 5:
            raise UserError(f"{path}:{n}: rating must be a number from 1 to 5, got {str(r)[:40]!r}")
        if not isinstance(d["audio"], str) or not d["audio"].strip():
            raise UserError(f"{path}:{n}: audio must be a non-empty path")
        out.append((path.parent / d["audio"], float(r)))
    return out


def open_store(url: str, data_dir: str | Path | None):
    """A `VoteStore` on an existing database; its data dir given, or a SQLite file's own directory."""
    from musicrl.votes.schema import existing_db_url
    from musicrl.votes.store import VoteStore

    u = existing_db_url(url)
    if data_dir is None:
        if u.get_backend_name() != "sqlite":
            raise UserError("a PostgreSQL vote store needs --data-dir (where its clips are)")
        data_dir = Path(u.database).expanduser().resolve().parent
    return VoteStore(url, data_dir)


def _votes_from_db(url: str, data_dir: str | Path | None) -> list[VoteRow]:
    store = open_store(url, data_dir)
    try:
        settings = _clip_settings(store)
        return [VoteRow(v.prompt, store.clip_path(v.clip_a), store.clip_path(v.clip_b), v.choice,
                        codes_a=store.clip_codes(v.clip_a), codes_b=store.clip_codes(v.clip_b),
                        settings_a=settings(v.clip_a), settings_b=settings(v.clip_b))
                for v in store.votes(effective=True)]  # fmt: skip
    finally:
        store.close()


def _clip_settings(store):
    """clip id -> its stored sampling settings (None when it has none), each clip read once."""
    cache: dict[str, dict | None] = {}

    def settings(clip_id: str) -> dict | None:
        if clip_id not in cache:
            cache[clip_id] = store.clip(clip_id).settings or None
        return cache[clip_id]

    return settings


def _ratings_from_db(url: str, data_dir: str | Path | None) -> list[tuple[Path, float]]:
    store = open_store(url, data_dir)
    try:
        return [(store.clip_path(r["clip_id"]), float(r["rating"])) for r in store.ratings()]
    finally:
        store.close()


# ------------------------------------------------------------------------------------- export


def export_votes(store, path: str | Path, fmt: str = "jsonl", per_session_cap: int | None = None,
                 exclude_flagged: bool = False) -> int:  # fmt: skip
    """Write the effective votes of a `VoteStore` opened with a data dir; returns the number of rows.
    `exclude_flagged`: without the votes of outlier sessions (`musicrl.votes.outliers`).

    jsonl: one JSON object per vote, clip paths absolute (under the store's data dir).
    hf: a self-contained directory: `train.jsonl` (clip paths relative to it), `clips/` (hard
    links or copies of the WAVs and of the codes files), `dataset_info.json`; load it with
    `datasets.load_dataset("json", data_files="DIR/train.jsonl")`.
    """
    from musicrl.votes.files import write_atomic

    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {str(fmt)[:40]!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    path = Path(path).expanduser().resolve()
    votes = store.votes(effective=True, per_session_cap=per_session_cap)
    if exclude_flagged:
        from musicrl.votes.outliers import without_flagged

        votes = without_flagged(votes)
    settings = _clip_settings(store)
    if fmt == "jsonl":
        if not path.parent.is_dir():
            raise UserError(f"directory for the export does not exist: {path.parent}")
        if path.is_dir():
            raise UserError(f"export path is a directory: {path}")
        write_atomic(path, _jsonl([_export_row(store, v, None, settings) for v in votes]))
        return len(votes)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"export directory exists and is not empty: {path}")
    if not path.parent.is_dir():
        raise UserError(f"directory for the export does not exist: {path.parent}")
    (path / "clips").mkdir(parents=True, exist_ok=True)
    for c in {c for v in votes for c in (v.clip_a, v.clip_b)}:
        files = [(store.clip_path(c), path / "clips" / f"{c}.wav")]
        if (codes := store.clip_codes(c)) is not None:
            files.append((codes, path / "clips" / f"{c}{CODES_SUFFIX}"))
        for src, dst in files:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    write_atomic(path / "train.jsonl", _jsonl([_export_row(store, v, path, settings) for v in votes]))
    seen = [settings(c) for v in votes for c in (v.clip_a, v.clip_b)]
    write_atomic(path / "dataset_info.json", json.dumps(_hf_info(len(votes), per_session_cap, seen), indent=2).encode())
    return len(votes)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _hf_info(n: int, per_session_cap: int | None, settings: list[dict | None]) -> dict:
    """`dataset_info.json` of an hf export of `n` votes whose clips have these `settings`."""
    ints = ("vote_id", "listen_ms_a", "listen_ms_b", "supersedes")
    features = {k: _INT if k in ints else _STRING for k in EXPORT_COLUMNS} if n else {}
    for k in ("settings_a", "settings_b"):  # a struct: the generation settings of the clip
        if k in features:
            features[k] = _settings_features(settings)
    return {
        "description": "musicrl A/B votes (effective: the first blind vote of each pair; corrections and duplicates dropped)",
        "features": features,
        "splits": {"train": {"name": "train", "num_examples": n}},
        "loading": 'datasets.load_dataset("json", data_files="train.jsonl"); clip paths are relative to this dir',
        "per_session_cap": per_session_cap,
    }


_FLOAT = {"dtype": "float64", "_type": "Value"}
_INT = {"dtype": "int64", "_type": "Value"}
_STRING = {"dtype": "string", "_type": "Value"}


def _settings_features(settings: list[dict | None]) -> dict:
    """The settings struct: the sampling fields, and where a clip is a best-of pick
    (`musicrl.rewards.rerank.BestOf`) the pick's fields, with the score of every reward that ranked one."""
    features = {"temperature": _FLOAT, "top_k": _INT, "top_p": _FLOAT, "guidance_scale": _FLOAT, "duration_s": _FLOAT}
    picks = [s for s in settings if s and "best_of" in s]
    if picks:
        features |= {"best_of": _INT, "rerank": _STRING,
                     "scores": {name: _FLOAT for name in sorted({k for s in picks for k in s.get("scores", {})})},
                     "candidate_seeds": {"feature": _INT, "_type": "Sequence"}}  # fmt: skip
    return features


def _export_row(store, v, rel_to: Path | None, settings) -> dict:
    """One exported vote; clip and codes paths relative to an hf directory (`rel_to`) or absolute."""

    def clip(c: str) -> str:
        return f"clips/{c}.wav" if rel_to is not None else str(store.clip_path(c))

    def codes(c: str) -> str | None:
        if (found := store.clip_codes(c)) is None:
            return None
        return f"clips/{c}{CODES_SUFFIX}" if rel_to is not None else str(found)

    values = {**vars(v), "vote_id": v.id, "created_at": v.created_at.isoformat(), "clip_a": clip(v.clip_a),
              "clip_b": clip(v.clip_b), "clip_a_id": v.clip_a, "clip_b_id": v.clip_b, "codes_a": codes(v.clip_a),
              "codes_b": codes(v.clip_b), "settings_a": settings(v.clip_a), "settings_b": settings(v.clip_b)}
    return {k: values[k] for k in EXPORT_COLUMNS}
