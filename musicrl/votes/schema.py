"""The vote database: its URL, its three append-only tables, and how an engine on it is opened.

A SQLite file by default (`sqlite:///path/votes.db`), PostgreSQL by URL
(`postgresql+psycopg://user@host/db`). Database triggers refuse UPDATE/DELETE on all three tables,
so a stray write from another tool or a bad migration fails instead of rewriting history.

One vote per served pair: `votes.pair_id` is the id the app gives each pair it serves, and a
partial unique index admits one first vote (a row with no `supersedes`) per pair id, so the
database itself refuses a replay, whichever app process or replica receives it. A database made
before that column existed gets it (and the index) on open; its older rows have no pair id.

Failing cleanly: a SQLite file that fails `PRAGMA quick_check` is refused at open (one line); a
statement waits at most the lock timeout for a lock held by another connection (SQLite
busy_timeout, PostgreSQL lock_timeout); `unavailable` turns a locked, full, lost or damaged
database into `StoreUnavailable` (one line, no SQL or path), which the app answers with a 503.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError, SQLAlchemyError

from musicrl.errors import UserError
from musicrl.votes.choices import CHOICES, SIDES, sql_in

_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

metadata = MetaData()

clips_table = Table(
    "clips",
    metadata,
    Column("id", String(64), primary_key=True),  # opaque: HMAC of the WAV and who made it (files.clip_id); older stores' plain sha256 of the WAV
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model_id", String(512), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("settings", JSON, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("sample_rate", Integer, nullable=False),
)

votes_table = Table(
    "votes",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("clip_a", String(64), ForeignKey("clips.id"), nullable=False),
    Column("clip_b", String(64), ForeignKey("clips.id"), nullable=False),
    Column("model_a", String(512), nullable=False),
    Column("model_a_version", String(128), nullable=False),
    Column("model_b", String(512), nullable=False),
    Column("model_b_version", String(128), nullable=False),
    Column("left", String(1), nullable=False),
    Column("choice", String(8), nullable=False),
    Column("listen_ms_a", Integer, nullable=True),
    Column("listen_ms_b", Integer, nullable=True),
    Column("session", String(64), nullable=False),
    Column("supersedes", _ID, ForeignKey("votes.id"), nullable=True),
    Column("pair_id", String(32), nullable=True),  # the served pair (app); NULL: a vote stored without one
    CheckConstraint(sql_in("choice", CHOICES), name="ck_votes_choice"),
    CheckConstraint(sql_in('"left"', SIDES), name="ck_votes_left"),
    CheckConstraint("clip_a <> clip_b", name="ck_votes_distinct_clips"),
    Index("ix_votes_session", "session"),
)
# the one first vote of a served pair (NULL pair ids never collide); also created by `_migrate`
PAIR_INDEX = "ux_votes_pair_first"
_PAIR_WHERE = "supersedes IS NULL"
Index(PAIR_INDEX, votes_table.c.pair_id, unique=True,
      sqlite_where=text(_PAIR_WHERE), postgresql_where=text(_PAIR_WHERE))  # fmt: skip

ratings_table = Table(
    "ratings",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("clip_id", String(64), ForeignKey("clips.id"), nullable=False),
    Column("rating", SmallInteger, nullable=False),
    Column("session", String(64), nullable=False),
    Column("vote_id", _ID, ForeignKey("votes.id"), nullable=True),
    CheckConstraint("rating BETWEEN 1 AND 5", name="ck_ratings_range"),
)

for _t in (clips_table, votes_table, ratings_table):
    for _op in ("UPDATE", "DELETE"):
        event.listen(
            _t,
            "after_create",
            DDL(
                f"CREATE TRIGGER {_t.name}_no_{_op.lower()} BEFORE {_op} ON {_t.name} "
                f"BEGIN SELECT RAISE(ABORT, 'musicrl: {_t.name} is append-only'); END"
            ).execute_if(dialect="sqlite"),
        )
    event.listen(
        _t,
        "after_create",
        DDL(
            f"CREATE TRIGGER {_t.name}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {_t.name} "
            "FOR EACH STATEMENT EXECUTE FUNCTION musicrl_append_only()"
        ).execute_if(dialect="postgresql"),
    )
event.listen(
    metadata,
    "before_create",
    DDL(
        "CREATE OR REPLACE FUNCTION musicrl_append_only() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION USING MESSAGE = 'musicrl: ' || TG_TABLE_NAME || ' is append-only'; END; $$ "
        "LANGUAGE plpgsql"
    ).execute_if(dialect="postgresql"),
)


def parse_db_url(url: str) -> URL:
    """Validate a database URL: sqlite:///file or postgresql[+psycopg]://...; one-line error otherwise."""
    hint = "expected sqlite:///PATH/votes.db or postgresql+psycopg://USER@HOST/DB"
    try:
        u = make_url(str(url))
    except (ArgumentError, ValueError) as e:
        raise UserError(f"malformed database URL {url!r}: {hint}") from e
    backend = u.drivername.split("+")[0]
    if backend in ("postgres", "postgresql"):
        if "+" not in u.drivername or backend == "postgres":
            u = u.set(drivername="postgresql+psycopg")
        if not u.database:
            raise UserError(f"database URL {u.render_as_string(hide_password=True)!r} names no database")
        return u
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            raise UserError(f"database URL {url!r} needs a file (an in-memory SQLite store is not durable)")
        parent = Path(u.database).expanduser().resolve().parent
        if not parent.is_dir():
            raise UserError(f"directory for the SQLite database does not exist: {parent}")
        return u
    raise UserError(f"unsupported database {backend!r} in {url!r}: {hint}")


def existing_db_url(url: str) -> URL:
    """`parse_db_url` for readers: a SQLite file must already exist (opening would create an empty one)."""
    u = parse_db_url(url)
    if u.get_backend_name() == "sqlite" and not Path(u.database).expanduser().is_file():
        raise UserError(f"no such vote database: {u.database}")
    return u


DEFAULT_LOCK_TIMEOUT_S = 3.0  # a write waits this long for a lock; a write takes ms, so this is a real lock


class StoreUnavailable(Exception):
    """The database cannot serve now (locked, full, connection lost, damaged): one line, no SQL or
    path; the app answers 503 with `Retry-After: retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int = 5):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def unavailable(e: SQLAlchemyError) -> StoreUnavailable | None:
    """The `StoreUnavailable` a database error means, or None for an error of the request itself
    (an integrity or data error: the caller's to handle)."""
    if isinstance(e, OperationalError):
        text = str(getattr(e, "orig", e)).lower()
        code = getattr(getattr(e, "orig", None), "sqlstate", None) or ""
        if "locked" in text or "busy" in text or code in ("55P03", "57014", "40P01"):
            return StoreUnavailable("the vote database is busy (locked by another connection); try again in a few seconds", 2)
        if "full" in text or code == "53100":
            return StoreUnavailable("the vote database cannot take writes (its disk is full); try again later", 60)
        if e.connection_invalidated or code.startswith(("08", "57P")):
            return StoreUnavailable("lost the connection to the vote database; try again in a few seconds", 5)
        return StoreUnavailable("the vote database is unavailable; try again later", 30)
    if type(e) is DatabaseError:  # SQLite: "database disk image is malformed", "file is not a database"
        return StoreUnavailable("the vote database is damaged; the operator must restore it", 300)
    return None


def _sqlite_pragmas(lock_timeout_s: float):
    def on_connect(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # a COMMIT survives power loss, not only a crash
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(lock_timeout_s * 1000)}")
        cur.close()

    return on_connect


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _quick_check(engine: Engine, shown: str) -> None:
    """Refuse a damaged SQLite file (`PRAGMA quick_check`) before anything reads or writes it."""
    with engine.connect() as conn:
        problems = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise UserError(f"the vote database {shown} is corrupted (PRAGMA quick_check: {problems[0][:120]}); "
                        "restore it from a backup")  # fmt: skip


def open_engine(u: URL, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Engine:
    """An engine on `u` with the tables created if missing; SQLite in WAL mode with synchronous=FULL,
    checked by `PRAGMA quick_check`. A statement waits at most `lock_timeout_s` for a lock held by
    another connection, then fails (`unavailable` makes that a 503), instead of hanging requests."""
    if not 0 < lock_timeout_s <= 600:
        raise UserError(f"the database lock timeout must be in (0, 600] s, got {lock_timeout_s}")
    shown = u.render_as_string(hide_password=True)
    if u.get_backend_name() == "sqlite":
        engine = create_engine(u, connect_args={"timeout": lock_timeout_s})
        event.listen(engine, "connect", _sqlite_pragmas(lock_timeout_s))
    else:
        options = f"-c lock_timeout={int(lock_timeout_s * 1000)}"
        engine = create_engine(u, pool_pre_ping=True, connect_args={"options": options, "connect_timeout": 10})
    try:
        if engine.dialect.name == "sqlite":
            _quick_check(engine, shown)
        metadata.create_all(engine)
        _migrate(engine)
    except SQLAlchemyError as e:
        engine.dispose()
        raise UserError(f"cannot open database {shown}: {_first_line(e)}") from e
    except UserError:
        engine.dispose()
        raise
    return engine


def _migrate(engine: Engine) -> None:
    """Bring a votes table made by an older version up to date: the `pair_id` column and its index.

    Adding a nullable column rewrites no row, so the append-only triggers stay as they are. Two
    processes opening one old database at once both get here: each step tolerates the other's.
    """
    if "pair_id" not in {c["name"] for c in inspect(engine).get_columns("votes")}:
        postgres = engine.dialect.name == "postgresql"
        try:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE votes ADD COLUMN {'IF NOT EXISTS ' if postgres else ''}pair_id VARCHAR(32)"))
        except SQLAlchemyError as e:
            if "duplicate column" not in str(e):  # SQLite: another process added it first
                raise
    with engine.begin() as conn:
        conn.execute(text(f"CREATE UNIQUE INDEX IF NOT EXISTS {PAIR_INDEX} ON votes (pair_id) WHERE {_PAIR_WHERE}"))
