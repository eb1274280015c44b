"""`musicrl train`: KL-regularised RL fine-tuning (MusicRL-R, -U, -RU) from a YAML preset."""

from __future__ import annotations

import argparse

from musicrl.commands.common import add_threads, apply_threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a YAML file or a preset: rl/musicrl-r, rl/musicrl-u, rl/musicrl-ru, rl/small/...")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys (dotted for nested), e.g. steps=50 out_dir=runs/x")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    add_threads(p)


def run(args: argparse.Namespace) -> int:
    from musicrl.presets import apply_overrides, load_yaml
    from musicrl.logs import quiet_transformers
    from musicrl.model.device import resolve_device
    from musicrl.rewards.combine import build_reward
    from musicrl.tiny.adherence import oracle_rewards
    from musicrl.tiny.prompts import rl_prompts
    from musicrl.train.rl_config import RLConfig
    from musicrl.train.rl_trainer import RLTrainer

    apply_threads(args.threads)
    cfg = RLConfig.from_dict(apply_overrides(load_yaml(args.config), args.overrides))
    quiet_transformers()
    prompts, eval_prompts = rl_prompts(cfg)
    reward = build_reward(cfg.reward, resolve_device(cfg.device), rewards=oracle_rewards(cfg.reward))
    last = RLTrainer(cfg, prompts, eval_prompts, reward=reward).train(resume=args.resume)
    print(f"final checkpoint: {last}")
    return 0
