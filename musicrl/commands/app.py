"""`musicrl app`: serve the A/B voting app (Gradio UI at /, JSON API under /api).

    musicrl app [--model M ...] [--models-dir RUN ...] [--reload-every 30] [--db URL] [--data-dir DIR]
                [--host 127.0.0.1] [--port 7860]

Several models: each pair comes from two different models drawn at random; one: two seeds of it.
A --models-dir (a `musicrl train` out_dir) serves its newest complete checkpoint (`final/`, else
the highest `checkpoints/step-N`), checked every --reload-every seconds and swapped in between two
generations; the new weights rate as a new `RUN@version` row on the leaderboard. Admin actions
(model list, reload now, export) need MUSICRL_ADMIN_SECRET in the environment.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from musicrl.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=None, metavar="M",
                   help="'tiny' (default without --models-dir), a local directory or a hub id; repeat to compare models")  # fmt: skip
    p.add_argument("--models-dir", action="append", default=None, metavar="RUN",
                   help="serve the newest checkpoint of a training run dir (final/ or checkpoints/step-N); repeatable")  # fmt: skip
    p.add_argument("--reload-every", type=float, default=30.0, metavar="S",
                   help="seconds between checks for new checkpoints / weights (default 30; 0 = off)")  # fmt: skip
    p.add_argument("--data-dir", default="./musicrl-data", help="clips, store secret, exports (default ./musicrl-data; created)")
    p.add_argument("--db", default=None, help="vote database URL (default sqlite:///DATA_DIR/votes.db)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0: torch's choice; 1 is fastest for tiny models on a busy CPU)")  # fmt: skip
    p.add_argument("--min-listen", type=float, default=2.0, help="seconds each clip must play before a vote (default 2)")
    p.add_argument("--max-duration", type=float, default=10.0, help="longest clip a user may ask for, s (default 10)")
    p.add_argument("--max-prompt-chars", type=int, default=300, help="longest prompt (default 300)")
    p.add_argument("--queue-size", type=int, default=16, help="generations that may wait at once (default 16)")
    p.add_argument("--min-votes", type=int, default=5, help="games a model needs to be rated on the leaderboard (default 5)")
    p.add_argument("--examples", metavar="FILE",
                   help="example prompts, one per line (default: prompts in the tiny world's words when it is served)")  # fmt: skip
    p.add_argument("--duration", type=float, default=None,
                   help="clip length the prompt box starts at, s (default 4 for the tiny world, its training length; else 5)")  # fmt: skip


def examples_and_duration(args: argparse.Namespace, models: list[str]) -> tuple[tuple[str, ...], float]:
    """The prompt box's examples and starting duration: given, or suited to the tiny world when it is
    served (as --model tiny, or as a --models-dir whose run started from tiny)."""
    import json

    from app.arena import DEFAULT_EXAMPLES, TINY_EXAMPLES

    def run_model(run_dir: str):
        try:
            return json.loads((Path(run_dir) / "config.json").read_text()).get("model")
        except (OSError, ValueError, AttributeError):
            return None

    tiny = "tiny" in models or any(run_model(d) == "tiny" for d in args.models_dir or [])
    if args.examples:
        path = Path(args.examples).expanduser()
        if not path.is_file():
            raise UserError(f"no such examples file: {path}")
        examples = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        if not examples:
            raise UserError(f"examples file {path} has no prompts")
    else:
        examples = TINY_EXAMPLES if tiny else DEFAULT_EXAMPLES
    duration = args.duration if args.duration is not None else (4.0 if tiny else 5.0)
    if not 0 < duration <= args.max_duration:
        raise UserError(f"--duration must be in (0, --max-duration={args.max_duration:g}] s, got {duration:g}")
    return examples, duration


def model_set(models: list[str], models_dirs: list[str], device: str):
    """The served models (`app.reload.ModelSet`); its `refresh` is also the app's reload hook."""
    from app.reload import ModelSet
    from musicrl import hub
    from musicrl.generator import Generator
    from musicrl.policy import MusicGenPolicy

    def load(target: str, model_id: str) -> Generator:
        return Generator(MusicGenPolicy.from_pretrained(target, device=device), model_id=model_id)

    def resolve_local(name: str) -> Path | None:
        path = Path(hub.resolve(name, "musicgen"))
        return path if path.is_dir() else None

    return ModelSet(models, models_dirs, load, resolve_local)


def prepare(args: argparse.Namespace):
    """(blocks, store, poller or None) from the arguments: everything `run` serves (tests use it too)."""
    models_dirs = args.models_dir or []
    models = args.model or ([] if models_dirs else ["tiny"])
    if len(set(models)) != len(models):
        raise UserError("each --model may be given once (one model is compared with itself by seed anyway)")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be 1..65535, got {args.port}")
    if not args.reload_every >= 0:
        raise UserError(f"--reload-every must be >= 0 s (0 = off), got {args.reload_every}")
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0, got {args.threads}")
    examples, duration = examples_and_duration(args, models)
    data_dir = Path(args.data_dir).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create data dir {data_dir}: {e.strerror}") from e
    db = args.db or f"sqlite:///{data_dir.resolve() / 'votes.db'}"
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a voting server

    import torch

    from app.reload import Poller
    from app.server import build_app
    from musicrl.logs import quiet_transformers
    from musicrl.votes import VoteStore

    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    store = VoteStore(db, data_dir)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    served = model_set(models, models_dirs, device)
    generators = served.refresh(strict=True)
    secret = os.environ.get("MUSICRL_ADMIN_SECRET") or None
    demo = build_app(
        generators,
        store,
        min_listen_s=args.min_listen,
        max_prompt_chars=args.max_prompt_chars,
        max_duration_s=args.max_duration,
        queue_size=args.queue_size,
        admin_secret=secret,
        reload=served.refresh,
        leaderboard_min_votes=args.min_votes,
        examples=examples,
        default_duration_s=duration,
    )
    poller = Poller(demo.musicrl_arena.reload_models, args.reload_every) if args.reload_every > 0 else None
    return demo, store, poller


def run(args: argparse.Namespace) -> int:
    from app.server import serve

    demo, store, poller = prepare(args)
    arena = demo.musicrl_arena
    served = ", ".join(f"{g.model_id}@{g.version[:8]}" for g in arena.generators)
    print(f"musicrl app: http://{args.host}:{args.port}  models: {served}  store: {store.url}  data: {store.data_dir}")
    print("admin actions " + ("enabled" if arena.config.admin_secret else "disabled (set MUSICRL_ADMIN_SECRET)"))
    if poller is not None:
        print(f"checking for new checkpoints / weights every {args.reload_every:g} s")
        poller.start()
    try:
        serve(demo, host=args.host, port=args.port)
    finally:
        if poller is not None:
            poller.stop()
    return 0
