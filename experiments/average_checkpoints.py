"""The uniform mean of a run's checkpoints, as a model directory `musicrl eval` can judge.

A post-hoc check of what `ema_decay` does during training: if the policy gradient's noise is a
random walk on top of a steady drift toward the reward, averaging checkpoints keeps the drift and
cancels part of the walk (less KL at the same reward).

    python experiments/average_checkpoints.py OUT_DIR RUN/checkpoints/step-000120 ... step-000240
    musicrl eval --models tiny,OUT_DIR --rewards clap=tiny,quality=tiny --num-samples 8 --num-prompts 96
"""

from __future__ import annotations

import argparse

import torch

from musicrl.model.policy import MusicGenPolicy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="directory to write the averaged model to (HF format)")
    ap.add_argument("checkpoints", nargs="+", help="checkpoint directories of one run")
    args = ap.parse_args()
    policies = [MusicGenPolicy.from_pretrained(d) for d in args.checkpoints]
    keep = policies[-1]
    states = [p.model.decoder.state_dict() for p in policies]  # the text encoder is frozen: the same in all
    mean = {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v for k, v in states[-1].items()}
    keep.model.decoder.load_state_dict(mean)
    keep.model.save_pretrained(args.out)
    keep.tokenizer.save_pretrained(args.out)
    print(f"mean of {len(policies)} checkpoints -> {args.out}")


if __name__ == "__main__":
    main()
