"""`musicrl train-reward quality|preference`: train a learned reward's head on a frozen CLAP backbone.

quality: from ratings (`--ratings` JSONL of {audio, rating} or a vote-store URL), or, without
`--ratings`, from the tiny world's synthetic ratings (clean vs. degraded synth renders,
`musicrl.tiny.quality`).
preference: a Bradley-Terry model from A/B votes (`--votes` JSONL or a vote-store URL).
Votes and ratings are read here, by `musicrl.votes.rows`, and handed to the trainers as rows.
The model directory (`--out`) gets config.json, model.safetensors, metrics.json and a plot.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from musicrl.commands.common import add_device, add_threads, apply_threads
from musicrl.errors import UserError
from musicrl.model.device import resolve_device


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--backbone", default="tiny", help="CLAP backbone: 'tiny' (default), a directory or a hub id")
    add_device(p)
    add_threads(p)
    p.add_argument("--data-dir", help="vote store's data dir (default: the SQLite file's directory)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--num-layers", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--seed", type=int)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="which", metavar="{quality,preference}", required=True)
    q = sub.add_parser("quality", help="MOS model: from --ratings, or synthetic tiny-world ratings without it")
    q.add_argument("--ratings", help="JSONL of {audio, rating} rows, or a vote-store URL (sqlite:///votes.db)")
    q.add_argument("--num-clips", type=int, help="synthetic: train clips (each clean + every degradation)")
    q.add_argument("--eval-clips", type=int, help="synthetic: held-out clips for the Spearman check")
    _common(q)
    r = sub.add_parser("preference", help="Bradley-Terry user-preference model from A/B votes")
    r.add_argument("--votes", required=True, help="JSONL of votes (prompt, clip_a, clip_b, choice) or a vote-store URL")
    r.add_argument("--ties", choices=("half", "drop"), help="ties as half a win each (default) or dropped")
    r.add_argument("--both-bad", choices=("exclude", "tie"), help="both_bad votes dropped (default) or as ties")
    r.add_argument("--clap-term", action=argparse.BooleanOptionalAction, default=None,
                   help="add the CLAP score with a learned weight to the head (default: on)")
    _common(r)


def _config(cls, args: argparse.Namespace):
    """A `cls` training config from the flags named like its fields (absent ones keep their defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None})


MIN_VAL_VOTES = 50  # fewer held-out votes than this: the accuracy's 95% interval is wider than +/- 14 points


def accuracy_interval(val: dict) -> list[float] | None:
    """The Wilson 95% interval of the held-out accuracy over its decisive votes (None without any)."""
    from musicrl.train.evaluate import wilson

    n, acc = val.get("decisive_votes") or 0, val.get("accuracy")
    return None if not n or acc is None else [round(x, 3) for x in wilson(acc * n, n)]


def warn_small_validation(metrics: dict) -> None:
    n, ci = metrics.get("val_votes") or 0, metrics.get("val_accuracy_ci95")
    if n < MIN_VAL_VOTES:
        where = f"95% interval {ci[0]:.2f}–{ci[1]:.2f}" if ci else "no interval"
        print(f"warning: validation has {n} decisive votes (under {MIN_VAL_VOTES}): val_accuracy is rough "
              f"({where}); collect more votes or raise val_fraction", file=sys.stderr)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from musicrl.logs import quiet_transformers
    from musicrl.train.distributed import join, leave

    quiet_transformers()
    apply_threads(args.threads, [args.backbone])
    ranks, device = join(resolve_device(args.device))  # under torchrun: the clips are embedded in parts
    try:
        metrics, keys = _train(args, device, ranks.world)
    finally:
        leave()
    if ranks.main:
        if args.which == "preference":
            warn_small_validation(metrics)
        print(json.dumps({k: metrics.get(k) for k in keys}, indent=2))
        print(f"saved to {args.out}")
    return 0


def _train(args: argparse.Namespace, device, world: int) -> tuple[dict, tuple]:
    """(the metrics, the keys printed) of the head `args.which` asks for."""
    if args.which == "quality" and args.ratings:
        from musicrl.rewards import train_quality as tq
        from musicrl.votes.rows import load_ratings

        cfg = _config(tq.QualityTrainConfig, args)
        ratings = load_ratings(args.ratings, args.data_dir)
        metrics = tq.train_quality_from_ratings(ratings, args.out, cfg, args.backbone, device, source=args.ratings)
        keys = ("val_spearman", "val_mae", "train_clips", "val_clips")
    elif args.which == "quality":
        from musicrl.tiny.quality import TinyQualityConfig, train_tiny_quality

        if world > 1:
            raise UserError("the tiny world's synthetic quality head trains in one process: run it without torchrun")
        metrics = train_tiny_quality(args.out, _config(TinyQualityConfig, args), args.backbone, device)
        keys = ("spearman_vs_level", "spearman_by_kind", "train_clips", "eval_clips")
    else:
        from musicrl.rewards import train_preference as tp
        from musicrl.votes.rows import load_votes

        cfg = _config(tp.PreferenceTrainConfig, args)
        votes = load_votes(args.votes, args.data_dir)
        metrics = tp.train_preference(votes, args.out, cfg, args.backbone, device, source=args.votes)
        val = metrics["val"]
        metrics = {"val_accuracy": val.get("accuracy"), "val_accuracy_ci95": accuracy_interval(val),
                   "val_ece": val.get("ece"), "val_noise_ceiling": val.get("noise_ceiling"),
                   "val_votes": val.get("decisive_votes"), "train_accuracy": metrics["train"].get("accuracy"),
                   "votes_used": metrics["votes_used"]}  # fmt: skip
        keys = tuple(metrics)
    return metrics, keys
