"""`musicrl train`: KL-regularised RL fine-tuning (MusicRL-R, -U, -RU) from a YAML preset."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a YAML file or a preset: rl/musicrl-r, rl/musicrl-u, rl/musicrl-ru, rl/small/...")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys (dotted for nested), e.g. steps=50 out_dir=runs/x")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")


def run(args: argparse.Namespace) -> int:
    from musicrl.configs import apply_overrides, load_yaml
    from musicrl.logs import quiet_transformers
    from musicrl.rl import RLConfig, RLTrainer

    cfg = RLConfig.from_dict(apply_overrides(load_yaml(args.config), args.overrides))
    quiet_transformers()
    last = RLTrainer(cfg).train(resume=args.resume)
    print(f"final checkpoint: {last}")
    return 0
