"""Where do mode misses come from? The estimator, the codec, or the LM's own music?

1. The estimator's ceiling: the mode it hears in held-out corpus clips decoded from their first
   1..4 codebooks, against the true mode (does the mode live in the coarse codes the LM picks first?).
2. What kind of miss the LM makes: for each model's clips of fresh prompts naming a mode, a miss is
   "parallel" when the best key of the asked mode has the heard tonic (C major asked, C minor heard:
   the third and sixth are wrong), "relative" when it is the relative key (the same notes, another
   home), else "other".

    python experiments/mode_misses.py --models tiny,runs/oracle4-ema/final    # ~2 min a model
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch

from musicrl.logs import quiet_transformers
from musicrl.model.codec import Codec
from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig
from musicrl.tiny import synth
from musicrl.tiny.attributes import (
    _bass_chroma,
    _chroma,
    _tonal_spectrum,
    best_key,
    estimate_mode,
    key_scores,
)
from musicrl.tiny.prompts import resolve_prompts
from musicrl.train import evaluate as ev


def ceiling(codec: Codec, n: int) -> dict[int, float]:
    """{codebooks kept: share of corpus clips whose heard mode is their true mode}."""
    hits: dict[int, list[bool]] = {k: [] for k in range(1, codec.num_codebooks + 1)}
    m = codec.model
    for e in synth.examples(n, split="heldout"):
        codes = codec.encode(torch.from_numpy(e.audio)[None, None])  # [1, K, T]
        for k in hits:
            with torch.no_grad():  # the residual VQ's sum over the first k stages
                audio = m.synthesize(m.magnitudes(m.quantizer.decode(codes[:, :k].transpose(0, 1))))[0, 0].numpy()
            hits[k].append(estimate_mode(audio, codec.sample_rate) == e.attrs.mode)
    return {k: float(np.mean(v)) for k, v in hits.items()}


def miss_kind(audio: np.ndarray, sr: int, asked: str) -> str:
    """'hit', or the kind of miss: 'parallel', 'relative' or 'other'."""
    mag, freqs = _tonal_spectrum(audio, sr)
    scores = key_scores(_chroma(mag, freqs), _bass_chroma(mag, freqs))  # the estimator's own key scores
    tonic, mode = best_key(scores)
    if mode == asked:
        return "hit"
    best = int(np.argmax(scores[asked]))
    relative = (best - tonic) % 12 == (9 if asked == "minor" else 3)
    return "parallel" if best == tonic else "relative" if relative else "other"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny")
    ap.add_argument("--corpus-clips", type=int, default=200)
    ap.add_argument("--num-prompts", type=int, default=256, help="fresh prompts drawn; those naming a mode are used")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_transformers()
    cells = ", ".join(f"{k} codebook{'s' * (k > 1)} {v:.0%}" for k, v in ceiling(Codec.from_pretrained("tiny"), args.corpus_clips).items())
    print(f"corpus clips through the codec, mode heard right ({args.corpus_clips} clips): {cells}")
    prompts = [p for p in resolve_prompts("synth-unseen", args.num_prompts, args.seed)[: args.num_prompts] if "mode" in synth.parse_prompt(p)]
    for name in args.models.split(","):
        s = ev.generate(MusicGenPolicy.from_pretrained(name), prompts, 1, 4.0, SamplingConfig(), args.seed)  # musicrl eval's sampling
        kinds = Counter(miss_kind(a[0].float().numpy(), s.sample_rate, synth.parse_prompt(p)["mode"]) for p, a in zip(s.prompts, s.audio))
        print(f"{name}: {kinds['hit']} of {len(prompts)} clips in the asked mode; misses: parallel {kinds['parallel']}, "
              f"relative {kinds['relative']}, other {kinds['other']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
