"""`musicrl bootstrap tiny`: retrain the offline tiny world (codec, LM, CLAP, quality) from scratch."""

from __future__ import annotations

import argparse

from musicrl.commands.common import add_threads, apply_threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("world", choices=["tiny"], help="what to build (only 'tiny' exists)")
    p.add_argument("--out", required=True, help="output directory (resumable: rerun the same command)")
    p.add_argument("--stages", default="codec,lm,clap,quality", help="comma-separated subset, in this order")
    add_threads(p)


def run(args: argparse.Namespace) -> int:
    from musicrl.logs import quiet_transformers
    from musicrl.tiny.bootstrap import bootstrap

    apply_threads(args.threads, ["tiny"])  # it builds the tiny world
    quiet_transformers()
    bootstrap(args.out, tuple(s for s in args.stages.split(",") if s))
    print(f"done: {args.out} (copy codec/ musicgen/ clap/ quality/ into musicrl/assets/tiny to ship them)")
    return 0
