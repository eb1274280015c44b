"""`musicrl train`: fine-tuning from a YAML preset: KL-regularised RL (MusicRL-R, -U, -RU; configs/rl/)
or offline preference optimisation from votes (DPO, IPO, conservative DPO; configs/po/, `method: dpo`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from musicrl.commands.common import add_threads, apply_threads
from musicrl.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True,
                   help="a YAML file or a preset: rl/musicrl-r, rl/musicrl-u, rl/musicrl-ru, rl/small/..., po/dpo, po/ipo, "
                        "po/small/dpo")  # fmt: skip
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys (dotted for nested), e.g. steps=50 out_dir=runs/x")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    votes = p.add_mutually_exclusive_group()
    votes.add_argument("--votes", help="DPO: a vote file (musicrl votes export, simulate-votes) or an hf export directory")
    votes.add_argument("--db", help="DPO: a vote store, sqlite:///PATH/votes.db or postgresql+psycopg://USER@HOST/DB")
    p.add_argument("--data-dir", help="DPO with --db: the store's data dir (default: the SQLite file's directory)")
    add_threads(p)


def run(args: argparse.Namespace) -> int:
    from musicrl.logs import quiet_transformers
    from musicrl.presets import apply_overrides, load_yaml

    data = apply_overrides(load_yaml(args.config), args.overrides)
    method = data.pop("method", "rl")
    if method not in ("rl", "dpo"):
        raise UserError(f"method must be 'rl' or 'dpo', got {str(method)[:40]!r}")
    if method == "rl" and (args.votes or args.db or args.data_dir):
        raise UserError("--votes, --db and --data-dir are for preference optimisation presets (po/...); "
                        "RL reads its votes through the preference reward model")  # fmt: skip
    quiet_transformers()
    try:  # under torchrun (docs/scaling-out.md) each process runs this; rank 0 logs and writes
        last = _rl(data, args) if method == "rl" else _dpo(data, args)
    finally:
        from musicrl.train.distributed import leave

        leave()
    if os.environ.get("RANK", "0") == "0":
        print(f"final checkpoint: {last}")
    return 0


def _rl(data: dict, args) -> Path:
    from musicrl.model.device import resolve_device
    from musicrl.rewards.combine import build_reward
    from musicrl.tiny.adherence import oracle_rewards
    from musicrl.tiny.prompts import rl_prompts
    from musicrl.train.distributed import join
    from musicrl.train.rl_config import RLConfig
    from musicrl.train.rl_trainer import RLTrainer

    cfg = RLConfig.from_dict(data)
    apply_threads(args.threads, [cfg.model])
    prompts, eval_prompts = rl_prompts(cfg)
    _, device = join(resolve_device(cfg.device))  # under torchrun: this process's GPU
    reward = build_reward(cfg.reward, device, rewards=oracle_rewards(cfg.reward))
    return RLTrainer(cfg, prompts, eval_prompts, reward=reward).train(resume=args.resume)


def _dpo(data: dict, args) -> Path:
    """Votes -> preference pairs (stored codes, else re-encoded WAVs) -> `DPOTrainer`."""
    from musicrl.model.device import resolve_device
    from musicrl.model.policy import MusicGenPolicy
    from musicrl.train.distributed import join
    from musicrl.train.dpo_trainer import DPOTrainer
    from musicrl.train.pairs import preference_pairs, split_pairs
    from musicrl.train.po_config import DPOConfig
    from musicrl.votes.rows import load_votes, votes_hash

    if args.votes or args.db:
        data["votes"] = args.votes or args.db
    if args.data_dir:
        data["data_dir"] = args.data_dir
    cfg = DPOConfig.from_dict(data)
    apply_threads(args.threads, [cfg.model])
    source = Path(cfg.votes) / "train.jsonl" if "://" not in cfg.votes and Path(cfg.votes).is_dir() else cfg.votes
    rows = load_votes(source, cfg.data_dir)  # one line: no votes, a missing clip or codes file
    _, device = join(resolve_device(cfg.device))  # under torchrun: this process's GPU
    policy = MusicGenPolicy.from_pretrained(cfg.model, device=device)
    pairs, counts = preference_pairs(rows, policy.codec, policy.num_codebooks, policy.vocab_size, cfg.ties)
    train, held = split_pairs(pairs, cfg.eval_fraction, cfg.seed)
    print(f"{counts['votes']} votes -> {counts['pairs']} pairs ({len(train)} to train on, {len(held)} held out); "
          f"dropped {counts['ties_dropped']} ties and {counts['both_bad_dropped']} both-bad; "
          f"{counts['reencoded']} clips had no stored codes and were re-encoded from their WAV", file=sys.stderr)  # fmt: skip
    other = sorted({s.get("guidance_scale") for r in rows for s in (r.settings_a, r.settings_b) if s} - {cfg.guidance_scale})
    if other:
        print(f"note: some clips were sampled with guidance {other}, the log-probs use guidance_scale={cfg.guidance_scale:g}",
              file=sys.stderr)  # fmt: skip
    return DPOTrainer(cfg, train, held, policy=policy, votes_hash=votes_hash(rows)).train(resume=args.resume)
