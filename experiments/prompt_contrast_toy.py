"""The conditional toy, with and without the prompt contrast: can the trainer learn to follow a prompt?

Reward: the share of frames whose first-codebook token has the parity the prompt's mode asks for
(even for major, odd for minor), read from the sampled codes. Unlike a single target, it can only be
raised by following the prompt. The contrast prompt is the caption with its mode flipped, so the
reward of a clip under it is 1 - its own: a clip fits its own prompt better exactly when more than
half of its frames have the asked parity.

    python experiments/prompt_contrast_toy.py --contrast-coef 0      # policy gradient alone
    python experiments/prompt_contrast_toy.py --contrast-coef 1      # + the prompt contrast
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import torch

from musicrl.logs import quiet_transformers
from musicrl.model.policy import MusicGenPolicy
from musicrl.rewards.combine import WeightedReward
from musicrl.tiny import synth
from musicrl.tiny.prompts import resolve_prompts
from musicrl.train.rl_config import RLConfig
from musicrl.train.rl_trainer import RLTrainer

FLIP = {"major": "minor", "minor": "major"}


def flip_mode(prompt: str) -> str | None:
    """The caption with its mode word turned to the other mode's first word of the same form."""
    for start, end, attr, value in synth.mentions(prompt):
        if attr == "mode":
            phrase = prompt[start:end]
            table = synth.SYNONYMS if any(phrase in w for w in synth.SYNONYMS["mode"][value].values()) else synth.PHRASES
            return prompt[:start] + table["mode"][FLIP[value]]["train"][0] + prompt[end:]
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--contrast-coef", type=float, default=0.0)
    ap.add_argument("--contrast-beta", type=float, default=0.1)
    ap.add_argument("--kl-coef", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="JSON lines of per-step metrics")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_transformers()
    torch.manual_seed(args.seed)
    prompts = [p for p in resolve_prompts("synth") if "mode" in synth.parse_prompt(p)]
    heldout = [p for p in resolve_prompts("synth-unseen", 512, seed=7) if "mode" in synth.parse_prompt(p)][:64]
    policy = MusicGenPolicy.from_pretrained("tiny")
    seen = {}
    decode = policy.decode

    def keep_codes(codes):
        seen["codes"] = codes
        return decode(codes)

    policy.decode = keep_codes

    def parity(audio, sample_rate, prompts):  # [B]: share of frames with the asked parity
        want = torch.tensor([synth.parse_prompt(p)["mode"] == "minor" for p in prompts]).long()[:, None]
        return ((seen["codes"][:, 0] % 2) == want).float().mean(1)

    cfg = RLConfig(reward={"components": {"clap": {}}}, model="tiny", out_dir=tempfile.mkdtemp(), steps=args.steps,
                   prompts_per_step=8, samples_per_prompt=4, duration_s=0.5, guidance_scale=3.0, lr=args.lr,
                   kl_coef=args.kl_coef, eval_every=10**6, checkpoint_every=10**6, device="cpu", seed=args.seed,
                   contrast_coef=args.contrast_coef, contrast_beta=args.contrast_beta, contrast_prompts="flip")  # fmt: skip
    trainer = RLTrainer(cfg, prompts, heldout, policy=policy, reward=WeightedReward({"parity": parity}, {"parity": 1.0}, normalize=False),
                        contrast=flip_mode)  # fmt: skip
    log = open(args.out, "w") if args.out else None
    rewards = []
    for step in range(args.steps):
        m = trainer.step(step)
        rewards.append(m["reward"])
        row = {k: round(v, 4) for k, v in m.items() if k in ("step", "reward", "kl", "entropy", "contrast/acc", "time/update")}
        print(json.dumps(row), flush=True)
        if log:
            log.write(json.dumps(row) + "\n")
    with torch.no_grad():  # held-out captions, one clip each, fresh seeds
        roll = policy.sample(heldout, 1, 0.5, sampling=cfg.sampling, seed=123)
        seen["codes"] = roll.codes
        held = parity(None, 0, roll.prompts).mean().item()
    print(json.dumps({"last10_train_reward": float(np.mean(rewards[-10:])), "heldout_reward": held}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
