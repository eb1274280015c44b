"""Does the first part of a clip have the attributes of the whole? The share of base-model clips
whose estimators hear the same tempo, register, mode and drums in the first `--short` seconds as in
the whole `--long` seconds, and each attribute's adherence at both lengths. RL presets train on short
clips and are judged on long ones.

    python experiments/clip_length_agreement.py [--short 2 --long 4 --prompts 96]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from musicrl.logs import quiet_transformers
from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig
from musicrl.tiny import synth
from musicrl.tiny.adherence import ATTRIBUTES, matches
from musicrl.tiny.attributes import estimate_all
from musicrl.tiny.prompts import resolve_prompts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", type=float, default=2.0)
    ap.add_argument("--long", type=float, default=4.0)
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_transformers()
    policy = MusicGenPolicy.from_pretrained("tiny")
    prompts = resolve_prompts("synth-unseen", args.prompts, seed=11)
    roll = policy.sample(prompts, 1, args.long, sampling=SamplingConfig(top_k=0, guidance_scale=args.guidance), seed=5)
    audio, sr = policy.decode(roll.codes)[:, 0].numpy(), policy.sample_rate  # [B, S]
    agree = {a: [] for a in ATTRIBUTES}
    adherent = {a: {"short": [], "long": []} for a in ATTRIBUTES}
    for prompt, x in zip(prompts, audio):
        whole, part = estimate_all(x, sr), estimate_all(x[: int(args.short * sr)], sr)
        asked = synth.parse_prompt(prompt)
        for a in ATTRIBUTES:
            agree[a].append(whole[a] == part[a])
            if a in asked:
                adherent[a]["long"].append(matches(a, whole[a], asked[a]))
                adherent[a]["short"].append(matches(a, part[a], asked[a]))
    for a in ATTRIBUTES:
        print(f"{a:>8}: first {args.short:g} s heard as the whole {args.long:g} s in {np.mean(agree[a]):.0%} of {len(agree[a])} clips; "
              f"adherence {np.mean(adherent[a]['short']):.0%} on {args.short:g} s, {np.mean(adherent[a]['long']):.0%} on {args.long:g} s "
              f"({len(adherent[a]['long'])} clips)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
