"""Where do tempo misses come from? The codec, or the LM's own music?

1. The estimator's ceiling per kind of prompt: on held-out corpus clips, the share whose tempo the
   estimator hears right from the raw audio and through the tiny codec, by (tempo, drums, register).
2. Each model's misses by the kind of prompt, on `musicrl eval`'s protocol (fresh prompts in training
   words, one 4 s clip each, the same seeds): for the prompts naming a tempo, hits per (fast or
   moderate, register named, drums named), with the register and drums heard in each missed clip.

    python experiments/tempo_misses.py --models tiny,runs/oracle-t06-300/checkpoints/step-000250 --temperature 0.6
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from musicrl.logs import quiet_transformers
from musicrl.model.codec import Codec
from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig
from musicrl.tiny import synth
from musicrl.tiny.attributes import estimate_all, estimate_tempo, tempo_word
from musicrl.tiny.prompts import resolve_prompts
from musicrl.train import evaluate as ev


def ceiling(codec: Codec, n: int) -> dict[tuple, list[tuple[bool, bool]]]:
    """{(tempo, drums, register): [(heard right raw, heard right through the codec), ...]}."""
    out: dict[tuple, list[tuple[bool, bool]]] = defaultdict(list)
    for e in synth.examples(n, split="heldout"):
        decoded = codec.decode(codec.encode(torch.from_numpy(e.audio)[None, None]))[0, 0].float().numpy()
        raw = tempo_word(estimate_tempo(e.audio, synth.SAMPLE_RATE)) == e.attrs.tempo
        coded = tempo_word(estimate_tempo(decoded, codec.sample_rate)) == e.attrs.tempo
        out[(e.attrs.tempo, e.attrs.drums, e.attrs.register)].append((raw, coded))
    return out


def misses(name: str, prompts: list[str], sampling: SamplingConfig, seed: int) -> dict[tuple, list[tuple[bool, str]]]:
    """{(fast or moderate, register asked, drums asked): [(hit, 'register/drums' heard), ...]} over
    the prompts that name a tempo ('-': not named)."""
    s = ev.generate(MusicGenPolicy.from_pretrained(name), prompts, 1, 4.0, sampling, seed)  # musicrl eval's clips
    out: dict[tuple, list[tuple[bool, str]]] = defaultdict(list)
    for p, a in zip(s.prompts, s.audio):
        asked = synth.parse_prompt(p)
        if "tempo" in asked:
            est = estimate_all(a[0].float().numpy(), s.sample_rate)
            key = ("fast/moderate" if asked["tempo"] != "slow" else "slow", asked.get("register", "-"), asked.get("drums", "-"))
            out[key].append((est["tempo"] == asked["tempo"], f"{est['register']}/{est['drums']}"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny")
    ap.add_argument("--corpus-clips", type=int, default=600)
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_transformers()
    table = ceiling(Codec.from_pretrained("tiny"), args.corpus_clips)
    both = np.array([x for v in table.values() for x in v])
    print(f"corpus clips ({len(both)}), tempo heard right: raw {both[:, 0].mean():.1%}, through the codec {both[:, 1].mean():.1%}")
    for key, v in sorted(table.items()):
        v = np.array(v)
        print(f"  {'/'.join(key)}: raw {v[:, 0].mean():.0%}, codec {v[:, 1].mean():.0%} ({len(v)})")
    prompts = resolve_prompts("synth-unseen", args.num_prompts, args.seed)[: args.num_prompts]
    for name in args.models.split(","):
        groups = misses(name, prompts, SamplingConfig(temperature=args.temperature), args.seed)
        hits = [h for v in groups.values() for h, _ in v]
        print(f"{name}: tempo heard as asked in {sum(hits)} of {len(hits)} clips ({np.mean(hits):.1%})")
        for key, v in sorted(groups.items()):
            missed = [heard for h, heard in v if not h]
            print(f"  {'/'.join(key)}: {len(v) - len(missed)} of {len(v)}" + (f"; misses heard {', '.join(missed)}" if missed else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
