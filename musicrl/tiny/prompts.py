"""Prompt sets of the tiny world, by name, for the commands that hand prompts to the trainer and the evaluation.

- 'synth': the training captions, one fixed set (no seed changes it, so no evaluation seed can draw
  a training prompt as unseen);
- 'synth-unseen': captions of held-out clips in training words, none of them a training prompt
  (what the tiny LM can follow, but never trained on);
- 'synth-heldout': captions of held-out clips in held-out words and templates (words the tiny LM
  never saw).
Any other name is a prompt file or a shipped prompt list (`musicrl.presets.load_prompts`).
"""

from __future__ import annotations

import numpy as np

from musicrl.presets import load_prompts
from musicrl.tiny import synth

SYNTH_SETS = ("synth", "synth-unseen", "synth-heldout")
N_TRAIN = 4096  # size of the fixed training set


def resolve_prompts(spec: str, n: int = N_TRAIN, seed: int = 0) -> list[str]:
    """`spec` -> prompts: one of SYNTH_SETS (`n` of them; `seed` picks the held-out or unseen ones),
    else every prompt of the file or shipped list."""
    if spec not in SYNTH_SETS:
        return load_prompts(spec)
    split = "heldout" if spec == "synth-heldout" else "train"
    rng = np.random.default_rng(0 if spec == "synth" else seed + synth.HELDOUT_SEED_OFFSET)
    if spec != "synth-unseen":
        return [synth.caption(synth.sample_attributes(rng), rng, split=split) for _ in range(n)]
    train, out = set(resolve_prompts("synth")), []
    while len(out) < n:
        prompt = synth.caption(synth.sample_attributes(rng), rng, split="train")
        if prompt not in train:
            out.append(prompt)
    return out


def rl_prompts(cfg) -> tuple[list[str], list[str]]:
    """An `RLConfig`'s training prompts and its `eval_prompts_count` evaluation prompts."""
    return resolve_prompts(cfg.prompts), resolve_prompts(cfg.eval_prompts, cfg.eval_prompts_count, cfg.seed)[: cfg.eval_prompts_count]
