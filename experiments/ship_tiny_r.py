"""Ship a MusicRL-R checkpoint of the tiny LM as `tiny-r`: a fp16 weight delta against `tiny`.

    OMP_NUM_THREADS=1 python experiments/ship_tiny_r.py [--checkpoint runs/r-clapfine/checkpoints/step-000240]

Writes musicrl/assets/tiny/musicgen-r/{delta.json,delta.safetensors} (the model card, README.md
beside them, is written by hand) and tests/data/tiny_r_reference.json: the codes the checkpoint
itself samples for a few prompts and seeds, which tests/test_delta.py asks `tiny-r` to reproduce.
Prints how many of those tokens the shipped delta reproduces and its largest log-prob difference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from musicrl.model.delta import write_delta
from musicrl.model.hub import TINY_DIR
from musicrl.model.policy import MusicGenPolicy

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("slow calm piano in a minor key", "fast bright chiptune lead with drums", "low cello melody, major")
SEED, SAMPLES, DURATION_S = 1234, 2, 4.0


def sample(policy: MusicGenPolicy) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [P*S, K, T], log-probs [P*S, K, T]) of the default sampling settings, seeded."""
    torch.set_num_threads(1)
    r = policy.sample(list(PROMPTS), SAMPLES, DURATION_S, seed=SEED)
    return r.codes, r.log_probs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="runs/r-clapfine/checkpoints/step-000240")
    args = ap.parse_args()
    ckpt = Path(args.checkpoint)
    tuned, base = MusicGenPolicy.from_pretrained(str(ckpt)), MusicGenPolicy.from_pretrained("tiny")
    info = json.loads((ckpt / "musicrl.json").read_text())
    manifest = write_delta(base.model, tuned.model, TINY_DIR / "musicgen-r", "tiny", info={
        "source": f"{ckpt} (preset rl/musicrl-r, step {info['step']})", "reference": info["reference"]})
    print(f"delta: {manifest['tensors']} tensors, {manifest['parameters']:,} parameters")
    codes, logp = sample(tuned)
    shipped_codes, shipped_logp = sample(MusicGenPolicy.from_pretrained("tiny-r"))
    same = (codes == shipped_codes).float().mean().item()
    print(f"tiny-r reproduces {same:.2%} of the checkpoint's {codes.numel()} tokens; "
          f"max |log-prob difference| {(logp - shipped_logp).abs().max().item():.2e}")
    out = ROOT / "tests" / "data" / "tiny_r_reference.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"checkpoint": str(ckpt), "prompts": PROMPTS, "samples": SAMPLES, "seed": SEED,
                               "duration_s": DURATION_S, "codes": codes.tolist()}) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
