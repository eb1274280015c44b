"""`musicrl synth`: render N clips of the tiny world's corpus as WAVs plus captions.jsonl."""

from __future__ import annotations

import argparse
import json
import math

from musicrl.commands.common import writable_dir
from musicrl.errors import UserError

MAX_DURATION_S = 600.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num", type=int, required=True, help="number of clips to render")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--seed", type=int, default=0,
                   help="first seed; clip i uses seed SEED+i (held-out: 1000000+SEED+i) (default 0)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per clip (default 4)")
    p.add_argument("--split", choices=("train", "heldout"), default="train",
                   help="caption templates and seed range: train (default) or heldout")




def run(args: argparse.Namespace) -> int:
    if args.num <= 0:
        raise UserError(f"--num must be >= 1, got {args.num}")
    if not (math.isfinite(args.duration) and 0 < args.duration <= MAX_DURATION_S):
        raise UserError(f"--duration must be in (0, {MAX_DURATION_S:g}] seconds, got {args.duration:g}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    from musicrl.tiny.synth import HELDOUT_SEED_OFFSET

    if args.split == "train" and args.seed + args.num > HELDOUT_SEED_OFFSET:
        raise UserError(
            f"train seeds must stay below {HELDOUT_SEED_OFFSET}: --seed {args.seed} + --num {args.num} crosses it"
        )
    out = writable_dir(args.out)

    from tqdm import tqdm

    from musicrl.audio import write_wav
    from musicrl.tiny.synth import SAMPLE_RATE, examples

    lines = []
    clips = examples(args.num, args.seed, args.duration, args.split)
    for ex in tqdm(clips, total=args.num, desc="synth", unit="clip"):
        name = f"{args.split}-{ex.seed:07d}.wav"
        write_wav(out / name, ex.audio, SAMPLE_RATE)
        row = {"file": name, "caption": ex.caption, "attributes": ex.attrs.to_dict(), "seed": ex.seed}
        lines.append(json.dumps(row))
    try:
        (out / "captions.jsonl").write_text("\n".join(lines) + "\n")
    except OSError as e:
        raise UserError(f"cannot write {out / 'captions.jsonl'}: {e.strerror}") from None
    print(f"wrote {args.num} clips and captions.jsonl to {out}")
    return 0
