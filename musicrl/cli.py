"""`musicrl` console entry point: a thin dispatcher over `musicrl.commands.*`.

Each command module has `add_arguments(parser)` and `run(args) -> int`; heavy imports stay
inside `run` so that `--help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from musicrl.errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("musicrl.commands.generate", "generate music from a text prompt into WAV files"),
    "train": ("musicrl.commands.train", "RL fine-tuning (MusicRL-R, -U, -RU) from a YAML preset"),
    "eval": ("musicrl.commands.eval", "compare models under each reward (CIs, win rates, KL) or plot a run"),
    "bootstrap": ("musicrl.commands.bootstrap", "rebuild the offline tiny world (codec, LM, CLAP, quality) from scratch"),
    "synth": ("musicrl.commands.synth", "render clips of the tiny world's synthetic corpus with captions"),
    "train-reward": ("musicrl.commands.train_reward", "train a learned reward (quality MOS or user preference) on a frozen CLAP"),
    "simulate-votes": ("musicrl.commands.simulate_votes", "synth clips and A/B votes from simulated raters with a hidden taste"),
    "app": ("musicrl.commands.app", "serve the Gradio A/B voting app (UI at /, JSON API under /api)"),
    "votes": ("musicrl.commands.votes", "export the vote store (JSONL / HF dir) or print its stats and leaderboard"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"musicrl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"musicrl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
