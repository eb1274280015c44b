"""Does the tiny LM follow its prompt better when its text pathway is trained on clip starts?

The LM hears its prompt's mode mostly in the first 0.5 s of a clip (`experiments/text_hold.py`),
and there it is not decisive: on held-out corpus clips the caption's mode raises the log-likelihood
of the first 0.5 s by only about 1 nat over the same caption with the mode flipped, although a
flipped mode changes about half of those first-codebook tokens. Whole-clip training weighs
those first frames little, and it cannot reweigh them without hurting the rest of the clip. So this
trains only the text pathway, the decoder's cross-attention and the projection of the text states.
The loss is on the first `--frames` frames of corpus clips, with the LM's own caption dropout. The
self-attention and the MLPs, which carry a clip from its past, are left as they are.

    python experiments/lm_text_start.py --steps 600 --out runs/lm-text-start   # ~10 min on one thread
    musicrl eval --models tiny,runs/lm-text-start --rewards clap=tiny --adherence --num-prompts 256 --seed 7
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from lm_more_steps import (  # experiments/, beside this script
    load_corpus,
    save,
    train_steps,
)

from musicrl.logs import quiet_transformers
from musicrl.model.policy import MusicGenPolicy
from musicrl.tiny import synth
from musicrl.tiny.lm import held_out_loss, lm_loss
from musicrl.tiny.prompts import flip_attribute

TEXT_PATHWAY = ("encoder_attn", "enc_to_dec_proj")  # parameter names that read the text


@torch.no_grad()
def start_mode_llr(policy: MusicGenPolicy, data: dict, frames: int, n: int = 64) -> float:
    """Mean over held-out corpus clips whose caption names a mode: log p(first `frames` | caption) -
    log p(first `frames` | the caption with its mode flipped), teacher-forced, no guidance."""
    rng = np.random.default_rng(0)
    codes, prompts = [], []
    for c, a in zip(data["val_codes"].long(), data["val_attrs"]):
        p = synth.caption(synth.Attributes.from_dict(a), rng)
        if "mode" in synth.parse_prompt(p):
            codes.append(c[:, :frames])
            prompts.append(p)
    codes = torch.stack(codes[:n])  # [N, K, frames]
    keep = torch.zeros(len(codes), dtype=torch.bool)
    nll = [lm_loss(policy, [ps], c[None], keep[:1]).item() for ps, c in zip(prompts[:n], codes)]
    flipped = [lm_loss(policy, [flip_attribute(ps, "mode")], c[None], keep[:1]).item() for ps, c in zip(prompts[:n], codes)]
    tokens = codes.shape[1] * codes.shape[2]  # lm_loss is a mean over a clip's K * frames tokens
    return float(np.mean(flipped) - np.mean(nll)) * tokens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--frames", type=int, default=25, help="frames of each clip's start in the loss (50 a second)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-clips", type=int, default=4000, help="the first clips of the LM's training corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work-dir", default="runs/lm-more-work", help="cache of the encoded corpus")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_transformers()
    cfg, data, codes_all, attrs_all = load_corpus(args.num_clips, args.work_dir)  # codes [N, K, T]
    policy = MusicGenPolicy.from_pretrained(args.model)
    model = policy.model
    model.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if any(s in n for s in TEXT_PATHWAY)]
    for p in params:
        p.requires_grad_(True)
    print(f"training {sum(p.numel() for p in params):,} of {sum(p.numel() for p in model.parameters()):,} parameters")
    llr = lambda: start_mode_llr(policy, data, args.frames)
    print(f"start: held-out loss {held_out_loss(policy, data):.4f}, mode log-likelihood ratio over the first "
          f"{args.frames} frames {llr():.2f} nats")
    train_steps(policy, params, cfg, codes_all, attrs_all, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                frames=args.frames, seed=2, every=200, desc="text pathway on clip starts",
                report=lambda: f"held-out loss {held_out_loss(policy, data):.4f}, mode log-likelihood ratio {llr():.2f} nats")
    save(policy, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
