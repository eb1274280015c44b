"""Does more supervised training raise the tiny LM's prompt adherence? Continue the shipped LM's
training on its own corpus, with its own loss (`musicrl.tiny.lm.lm_loss`), at the learning rate where
its schedule ended, and save the result for `musicrl eval --adherence`.

If adherence rises much faster this way than under RL, the base LM's hold on its prompt, not the RL
trainer, is what caps what RL reaches on the tiny world.

    python experiments/lm_more_steps.py --steps 1000 --out runs/lm-more      # ~20 min on one thread
    musicrl eval --models tiny,runs/lm-more --rewards clap=tiny --adherence --num-prompts 256 --seed 7
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import musicrl
from musicrl.logs import quiet_transformers
from musicrl.model.codec import Codec
from musicrl.model.policy import MusicGenPolicy
from musicrl.tiny import synth
from musicrl.tiny.lm import LMTrainConfig, encode_corpus, held_out_loss, lm_loss


def load_corpus(num_clips: int, work_dir: str) -> tuple[LMTrainConfig, dict, torch.Tensor, list]:
    """The LM's config, its encoded corpus (cached in work_dir), codes [N, K, T] and attributes."""
    cfg = replace(LMTrainConfig(), num_clips=num_clips)
    assets = Path(musicrl.__file__).parent / "assets" / "tiny"
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    data = encode_corpus(Codec.from_pretrained(assets / "codec"), cfg, Path(work_dir) / "codes.pt")
    return cfg, data, data["codes"].long(), [synth.Attributes.from_dict(a) for a in data["attrs"]]


def train_steps(policy, params, cfg: LMTrainConfig, codes_all: torch.Tensor, attrs_all: list, *, steps: int, lr: float,
                batch_size: int, frames: int, seed: int, every: int, desc: str, report) -> None:
    """AdamW on the LM's own loss over the first `frames` frames of corpus clips [N, K, T] with
    train-split captions and the LM's caption dropout; prints `report()` every `every` steps."""
    model = policy.model
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    rng = np.random.default_rng(seed)
    model.train()
    model.audio_encoder.eval()
    model.text_encoder.eval()  # frozen, as in the LM's own training: no dropout either
    for step in tqdm(range(1, steps + 1), desc=desc):
        idx = rng.integers(0, len(codes_all), batch_size)
        codes = codes_all[idx][:, :, :frames]  # [B, K, frames]
        prompts = [synth.caption(attrs_all[i], rng) for i in idx]
        drop = torch.from_numpy(rng.random(batch_size) < cfg.cond_dropout)
        loss = lm_loss(policy, prompts, codes, drop)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % every == 0 or step == steps:
            print(f"step {step}: {report()}", flush=True)
    model.eval()


def save(policy, out: str) -> None:
    policy.model.save_pretrained(out)
    policy.tokenizer.save_pretrained(out)
    print(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=2e-4, help="the shipped LM's final learning rate")
    ap.add_argument("--num-clips", type=int, default=4000, help="the first clips of its training corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work-dir", default="runs/lm-more-work", help="cache of the encoded corpus")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_transformers()
    cfg, data, codes_all, attrs_all = load_corpus(args.num_clips, args.work_dir)
    policy = MusicGenPolicy.from_pretrained("tiny")
    model = policy.model
    model.audio_encoder.requires_grad_(False)
    model.text_encoder.requires_grad_(False)  # frozen, as in the LM's own training
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"held-out loss at the start: {held_out_loss(policy, data):.4f}")
    train_steps(policy, params, cfg, codes_all, attrs_all, steps=args.steps, lr=args.lr, batch_size=cfg.batch_size,
                frames=codes_all.shape[-1], seed=1, every=250, desc="more LM steps",  # other batches than the LM's
                report=lambda: f"held-out loss {held_out_loss(policy, data):.4f}")  # (keeps the modules' modes)
    save(policy, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
