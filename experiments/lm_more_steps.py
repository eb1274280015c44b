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
    cfg = replace(LMTrainConfig(), num_clips=args.num_clips)
    assets = Path(musicrl.__file__).parent / "assets" / "tiny"
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    data = encode_corpus(Codec.from_pretrained(assets / "codec"), cfg, Path(args.work_dir) / "codes.pt")
    codes_all = data["codes"].long()  # [N, K, T]
    attrs_all = [synth.Attributes.from_dict(a) for a in data["attrs"]]
    policy = MusicGenPolicy.from_pretrained("tiny")
    model = policy.model
    model.audio_encoder.requires_grad_(False)
    model.text_encoder.requires_grad_(False)  # frozen, as in the LM's own training
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    rng = np.random.default_rng(1)  # not the original run's seed: other batches of the same corpus
    print(f"held-out loss at the start: {held_out_loss(policy, data):.4f}")
    model.train()
    model.audio_encoder.eval()
    model.text_encoder.eval()
    for step in tqdm(range(1, args.steps + 1), desc="more LM steps"):
        idx = rng.integers(0, len(codes_all), cfg.batch_size)
        codes = codes_all[idx]  # [B, K, T]: whole 4 s clips (crop_frames = T)
        prompts = [synth.caption(attrs_all[i], rng) for i in idx]
        drop = torch.from_numpy(rng.random(cfg.batch_size) < cfg.cond_dropout)
        loss = lm_loss(policy, prompts, codes, drop)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 250 == 0 or step == args.steps:
            print(f"step {step}: held-out loss {held_out_loss(policy, data):.4f}", flush=True)  # keeps the modes
    model.eval()
    model.save_pretrained(args.out)
    policy.tokenizer.save_pretrained(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
