"""`musicrl app`: serve the A/B voting app (Gradio UI at /, JSON API under /api).

    musicrl app [--model M ...] [--models-dir RUN ...] [--reload-every 30] [--db URL] [--data-dir DIR]
                [--host 127.0.0.1] [--port 7860]

Several models: each pair comes from two different models drawn at random (--paired-seeds: both with one
seed); one: two seeds of it.
Without --model and --models-dir it serves `tiny` and `tiny-r` (the tiny LM after MusicRL-R).
A --models-dir (a `musicrl train` out_dir) serves its newest complete checkpoint (`final/`, else
the highest `checkpoints/step-N`), checked every --reload-every seconds and swapped in between two
generations; the new weights rate as a new `RUN@version` row on the leaderboard. --best-of N serves
each model also as `MODEL+best-of-N`: N clips drawn for each one served, the --rerank rewards' pick kept. Admin actions
(model list, reload now, export) need MUSICRL_ADMIN_SECRET in the environment. Pair tokens and
session cookies are signed with the store secret: replicas on one database share MUSICRL_SALT.
Gradio's API description and monitoring routes are off (404) unless --expose-api-docs / --monitoring.
A damaged SQLite database (PRAGMA quick_check) stops the app before it serves.
Generate requests for one model that arrive within --batch-window-ms (default 50; 0 = off) decode
as one batch of at most --max-batch requests; each clip is the one a lone request would get.
Limits: per-client token buckets on generate and vote (--generate-rate/--generate-burst,
--vote-rate/--vote-burst; 429 with Retry-After), --max-unvoted-clips (their files removed once
their pairs expire), --max-request-kb (any request body, Gradio uploads included: 413); the
leaderboard and the admin export count at most --per-session-cap votes a session.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from musicrl.commands.common import APP_DATA_DIR, add_device, add_rerank, add_threads, apply_threads, store_url
from musicrl.errors import UserError
from musicrl.model.device import resolve_device
from musicrl.model.hub import SHIPPED

# Served when neither --model nor --models-dir is given: the tiny base and its MusicRL-R fine-tune, so a
# fresh arena compares two models (one model is compared with itself by seed, and rates nothing).
DEFAULT_MODELS = ("tiny", "tiny-r")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=None, metavar="M",
                   help="'tiny', 'tiny-r' (both served by default without --models-dir), a local directory or a hub id; "
                        "repeat to compare models")  # fmt: skip
    p.add_argument("--models-dir", action="append", default=None, metavar="RUN",
                   help="serve the newest checkpoint of a training run dir (final/ or checkpoints/step-N); repeatable")  # fmt: skip
    p.add_argument("--reload-every", type=float, default=30.0, metavar="S",
                   help="seconds between checks for new checkpoints / weights (default 30; 0 = off)")  # fmt: skip
    p.add_argument("--data-dir", default=APP_DATA_DIR, help=f"clips, store secret, exports (default {APP_DATA_DIR}; created)")
    p.add_argument("--db", default=None, help="vote database URL (default sqlite:///DATA_DIR/votes.db)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    add_device(p)
    add_threads(p)
    p.add_argument("--min-listen", type=float, default=2.0, help="seconds each clip must play before a vote (default 2)")
    p.add_argument("--token-ttl", type=float, default=4 * 3600.0, metavar="S",
                   help="seconds a served pair (and its API pair token) takes its one vote (default 14400: 4 h; at most a week)")  # fmt: skip
    p.add_argument("--max-duration", type=float, default=10.0, help="longest clip a user may ask for, s (default 10)")
    p.add_argument("--max-prompt-chars", type=int, default=300, help="longest prompt (default 300)")
    p.add_argument("--queue-size", type=int, default=16, help="generations that may wait at once (default 16)")
    p.add_argument("--batch-window-ms", type=float, default=50.0, metavar="MS",
                   help="generate requests for one model arriving within this many ms decode as one batch "
                        "(default 50; 0 = one at a time)")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="generate requests decoded together at most (default 8)")  # fmt: skip
    p.add_argument("--min-votes", type=int, default=5, help="games a model needs to be rated on the leaderboard (default 5)")
    p.add_argument("--examples", metavar="FILE",
                   help="example prompts: a file, one per line, or a packaged list (examples, tiny-examples; "
                        "default: tiny-examples when the tiny world is served, else examples)")  # fmt: skip
    p.add_argument("--db-lock-timeout", type=float, default=3.0, metavar="S",
                   help="seconds a write waits for a database lock held elsewhere before the request is "
                        "answered 503 with Retry-After (default 3)")  # fmt: skip
    p.add_argument("--expose-api-docs", action="store_true",
                   help="serve Gradio's API description (/gradio_api/info, /gradio_api/openapi.json, 'view API') "
                        "and /api/openapi.json, /api/docs (default: 404)")  # fmt: skip
    p.add_argument("--monitoring", action="store_true", help="serve Gradio's monitoring dashboard at /monitoring (default: 404)")
    p.add_argument("--best-of", type=int, default=1, metavar="N",
                   help="also serve each model as MODEL+best-of-N: N clips drawn for each clip served, the one "
                        "--rerank scores highest kept, so people judge reranking blind (default 1: off)")  # fmt: skip
    add_rerank(p)
    p.add_argument("--paired-seeds", action="store_true",
                   help="draw the two models' clips of a pair with one seed, so a fine-tune and its base play two "
                        "versions of one piece: fewer votes show what training changed (default: a seed each)")  # fmt: skip
    add_limit_arguments(p)
    p.add_argument("--duration", type=float, default=None,
                   help="clip length the prompt box starts at, s (default 4 for the tiny world, its training length; else 5)")  # fmt: skip


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `musicrl.app.limits.Limits` and the per-session cap, defaulting to theirs."""
    from musicrl.app.limits import Limits
    from musicrl.votes.leaderboard import SESSION_CAP

    d = Limits()
    p.add_argument("--generate-rate", type=float, default=d.generate_per_min, metavar="N",
                   help=f"pairs one client (address) may generate a minute, sustained (default {d.generate_per_min:g}; 0 = no limit)")  # fmt: skip
    p.add_argument("--generate-burst", type=int, default=d.generate_burst, metavar="N",
                   help=f"pairs one client may generate at once before the rate applies (default {d.generate_burst})")  # fmt: skip
    p.add_argument("--vote-rate", type=float, default=d.vote_per_min, metavar="N",
                   help=f"votes one client may send a minute, sustained (default {d.vote_per_min:g}; 0 = no limit)")  # fmt: skip
    p.add_argument("--vote-burst", type=int, default=d.vote_burst, metavar="N",
                   help=f"votes one client may send at once (default {d.vote_burst})")  # fmt: skip
    p.add_argument("--max-unvoted-clips", type=int, default=d.max_unvoted_clips, metavar="N",
                   help=f"clips nobody voted on kept at most; their files go once their pairs expire "
                        f"(default {d.max_unvoted_clips}; 0 = no cap)")  # fmt: skip
    p.add_argument("--max-request-kb", type=int, default=d.max_request_bytes // 1024, metavar="KB",
                   help=f"largest request body, Gradio uploads included (default {d.max_request_bytes // 1024})")  # fmt: skip
    p.add_argument("--per-session-cap", type=int, default=SESSION_CAP, metavar="N",
                   help=f"votes of one session the leaderboard and the admin export count, its first N "
                        f"(default {SESSION_CAP}; 0 = no cap)")  # fmt: skip


def limits_from(args: argparse.Namespace):
    """(`Limits`, per-session cap or None) from the flags; one-line errors."""
    from musicrl.app.limits import Limits

    if args.per_session_cap < 0:
        raise UserError(f"--per-session-cap must be >= 0 (0 = no cap), got {args.per_session_cap}")
    if args.max_request_kb < 1:
        raise UserError(f"--max-request-kb must be >= 1, got {args.max_request_kb}")
    limits = Limits(generate_per_min=args.generate_rate, generate_burst=args.generate_burst,
                    vote_per_min=args.vote_rate, vote_burst=args.vote_burst,
                    max_unvoted_clips=args.max_unvoted_clips, max_request_bytes=1024 * args.max_request_kb)  # fmt: skip
    return limits, (args.per_session_cap or None)


def example_lists() -> dict[str, Path]:
    """The packaged prompt lists by name: configs/prompts/NAME.txt (e.g. examples, tiny-examples)."""
    from musicrl.presets import config_dir

    return {p.stem: p for p in sorted((config_dir() / "prompts").glob("*.txt"))}


def read_examples(spec: str) -> tuple[str, ...]:
    """Example prompts from a file (one per line, blank lines skipped) or a packaged list's name."""
    path = Path(spec).expanduser()
    if not path.is_file():
        lists = example_lists()
        if spec not in lists:
            raise UserError(f"no such examples file: {path} (a file, or one of: {', '.join(lists)})")
        path = lists[spec]
    examples = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not examples:
        raise UserError(f"examples file {path} has no prompts")
    return examples


def serves_tiny(models: list[str], models_dirs: list[str]) -> bool:
    """The tiny world is served: as --model tiny, or as a --models-dir whose newest checkpoint
    records tiny as its reference (the run started from it)."""
    from musicrl.train.checkpoints import newest_checkpoint, read_info

    def reference(run_dir: str):
        ckpt = newest_checkpoint(Path(run_dir).expanduser())
        return read_info(ckpt).get("reference") if ckpt is not None else None

    return any(m in SHIPPED for m in models) or any(reference(d) in SHIPPED for d in models_dirs)


def examples_and_duration(args: argparse.Namespace, models: list[str]) -> tuple[tuple[str, ...], float]:
    """The prompt box's examples and starting duration: given, or suited to the tiny world when it is
    served (its LM knows only the words of its training captions, and was trained on 4 s clips)."""
    tiny = serves_tiny(models, args.models_dir or [])
    examples = read_examples(args.examples or ("tiny-examples" if tiny else "examples"))
    duration = args.duration if args.duration is not None else (4.0 if tiny else 5.0)
    if not 0 < duration <= args.max_duration:
        raise UserError(f"--duration must be in (0, --max-duration={args.max_duration:g}] s, got {duration:g}")
    return examples, duration


def model_set(models: list[str], models_dirs: list[str], device: str):
    """The served models (`musicrl.app.reload.ModelSet`); its `refresh` is also the app's reload hook."""
    from musicrl.app.reload import ModelSet
    from musicrl.model import hub
    from musicrl.model.generator import Generator
    from musicrl.model.policy import MusicGenPolicy

    def load(target: str, model_id: str) -> Generator:
        return Generator(MusicGenPolicy.from_pretrained(target, device=device), model_id=model_id)

    def resolve_local(name: str) -> Path | None:
        path = Path(hub.resolve(name, "musicgen"))
        return path if path.is_dir() else None

    return ModelSet(models, models_dirs, load, resolve_local)


def with_best_of(refresh, n: int, rewards: dict, spec: str):
    """A reload hook serving each model that `refresh` serves and, after them, its best-of-n
    (`musicrl.rewards.rerank.BestOf`). A model that did not change keeps its wrapper, so a refresh that
    loads nothing new returns the same objects and the arena swaps nothing."""
    from musicrl.rewards.rerank import BestOf

    wrappers: dict[int, BestOf] = {}  # id(model) -> its wrapper, which holds the model, so the id stays its

    def hook(**kw) -> list:
        models = refresh(**kw)
        fresh = {id(g): wrappers.get(id(g)) or BestOf(g, rewards, n, spec) for g in models}
        wrappers.clear()
        wrappers.update(fresh)
        return [*models, *fresh.values()]

    return hook


def prepare(args: argparse.Namespace):
    """(blocks, store, poller or None) from the arguments: everything `run` serves (tests use it too)."""
    models_dirs = args.models_dir or []
    models = args.model or ([] if models_dirs else list(DEFAULT_MODELS))
    if len(set(models)) != len(models):
        raise UserError("each --model may be given once (one model is compared with itself by seed anyway)")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be 1..65535, got {args.port}")
    if not 0 < args.token_ttl <= 7 * 24 * 3600:
        raise UserError(f"--token-ttl must be in (0, 604800] s (a week at most), got {args.token_ttl:g}")
    if not 0 < args.db_lock_timeout <= 600:
        raise UserError(f"--db-lock-timeout must be in (0, 600] s, got {args.db_lock_timeout:g}")
    if not 0 <= args.batch_window_ms <= 10000:
        raise UserError(f"--batch-window-ms must be in [0, 10000], got {args.batch_window_ms:g}")
    if args.max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.best_of < 1:
        raise UserError(f"--best-of must be >= 1 (1: off), got {args.best_of}")
    if not args.reload_every >= 0:
        raise UserError(f"--reload-every must be >= 0 s (0 = off), got {args.reload_every}")
    limits, per_session_cap = limits_from(args)
    apply_threads(args.threads, models)  # (a --models-dir run of a tiny model: torch's choice)
    examples, duration = examples_and_duration(args, models)
    data_dir = Path(args.data_dir).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create data dir {data_dir}: {e.strerror}") from e
    db = store_url(args.db, data_dir)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a voting server

    from musicrl.app.reload import Poller
    from musicrl.app.server import build_app
    from musicrl.logs import quiet_transformers
    from musicrl.votes.store import VoteStore

    quiet_transformers()
    store = VoteStore(db, data_dir, lock_timeout_s=args.db_lock_timeout)
    device = resolve_device(args.device)
    reload = model_set(models, models_dirs, device).refresh
    if args.best_of > 1:
        from musicrl.commands.common import load_rewards

        reload = with_best_of(reload, args.best_of, load_rewards(args.rerank, "--rerank", device), args.rerank)
    generators = reload(strict=True)
    secret = os.environ.get("MUSICRL_ADMIN_SECRET") or None
    demo = build_app(
        generators,
        store,
        min_listen_s=args.min_listen,
        max_prompt_chars=args.max_prompt_chars,
        max_duration_s=args.max_duration,
        queue_size=args.queue_size,
        admin_secret=secret,
        reload=reload,
        leaderboard_min_votes=args.min_votes,
        examples=examples,
        default_duration_s=duration,
        token_ttl_s=args.token_ttl,
        limits=limits,
        per_session_cap=per_session_cap,
        batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
        paired_seeds=args.paired_seeds,
    )
    demo.musicrl_arena.leaderboard()  # every vote read once now, not on the first visitor's page load
    poller = Poller(demo.musicrl_arena.reload_models, args.reload_every) if args.reload_every > 0 else None
    return demo, store, poller


def check_port(host: str, port: int) -> None:
    """Whether `host:port` can be listened on, before seconds of model loading: a one-line error if not."""
    import socket

    if not 1 <= port <= 65535:
        return  # prepare() says so
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
            s.bind((host, port))
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e} (is another app using it? "
                        f"pick another port with --port)") from None  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from musicrl.app.server import serve

    check_port(args.host, args.port)
    demo, store, poller = prepare(args)
    arena = demo.musicrl_arena
    served = ", ".join(f"{g.model_id}@{g.version[:8]}" for g in arena.generators)
    print(f"musicrl app: http://{args.host}:{args.port}  models: {served}  store: {store.url}  data: {store.data_dir}")
    print("admin actions " + ("enabled" if arena.config.admin_secret else "disabled (set MUSICRL_ADMIN_SECRET)"))
    if poller is not None:
        print(f"checking for new checkpoints / weights every {args.reload_every:g} s")
        poller.start()
    try:
        serve(demo, host=args.host, port=args.port, expose_api_docs=args.expose_api_docs, monitoring=args.monitoring)
    finally:
        if poller is not None:
            poller.stop()
    return 0
