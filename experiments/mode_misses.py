"""Where do mode misses come from? The estimator, the codec, or the LM's own music?

1. The estimator's ceiling: the mode it hears in held-out corpus clips decoded from their first
   1..4 codebooks, against the true mode (does the mode live in the coarse codes the LM picks first?).
2. What kind of miss the LM makes: for each model's clips of fresh prompts naming a mode, a miss is
   "parallel" when the best key of the asked mode has the heard tonic (C major asked, C minor heard:
   the third and sixth are wrong), "relative" when it is the relative key (the same notes, another
   home), else "other".
3. Which prompts miss: the share of clips in the asked mode by the words that ask for it, and by how
   many of tempo, register, instrument and drums the prompt also names.
4. Does the text encoder tell the modes apart? A linear probe of the mode on the frozen encoder's
   mean-pooled states (fit on 6,000 fresh captions, scored on 3,000 others), per wording.

    python experiments/mode_misses.py --models tiny,runs/oracle4-ema/final    # ~3 min a model
    python experiments/mode_misses.py --models tiny --num-prompts 600 --seed 11   # more clips a wording
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter

import numpy as np
import torch

from musicrl.logs import quiet_transformers
from musicrl.model.codec import Codec
from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig
from musicrl.tiny import synth
from musicrl.tiny.adherence import ATTRIBUTES, matches
from musicrl.tiny.attributes import (
    _bass_chroma,
    _chroma,
    _tonal_spectrum,
    best_key,
    estimate_all,
    estimate_mode,
    key_scores,
)
from musicrl.tiny.prompts import resolve_prompts
from musicrl.tiny.text import mean_pooled
from musicrl.train import evaluate as ev


def _decode(codec: Codec, codes: torch.Tensor, k: int) -> np.ndarray:
    """codes [1, K, T] -> audio [S] from the first k codebooks (the residual VQ's sum over k stages)."""
    m = codec.model
    with torch.no_grad():
        return m.synthesize(m.magnitudes(m.quantizer.decode(codes[:, :k].transpose(0, 1))))[0, 0].numpy()


def ceiling(codec: Codec, n: int) -> tuple[dict[int, float], dict[str, float]]:
    """On held-out corpus clips: {codebooks kept: share whose heard mode is their true mode}, and
    {attribute: share heard right} for every estimator, through all the codebooks."""
    hits: dict[int, list[bool]] = {k: [] for k in range(1, codec.num_codebooks + 1)}
    heard: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    for e in synth.examples(n, split="heldout"):
        codes = codec.encode(torch.from_numpy(e.audio)[None, None])  # [1, K, T]
        for k, v in hits.items():
            v.append(estimate_mode(_decode(codec, codes, k), codec.sample_rate) == e.attrs.mode)
        est = estimate_all(_decode(codec, codes, codec.num_codebooks), codec.sample_rate)
        for a, v in heard.items():
            v.append(matches(a, est[a], getattr(e.attrs, a)))
    return {k: float(np.mean(v)) for k, v in hits.items()}, {a: float(np.mean(v)) for a, v in heard.items()}


def codes_changed(codec: Codec, n: int, attribute: str) -> np.ndarray:
    """[K] share of each codebook's tokens that change when a corpus clip is rendered again with
    another value of `attribute` (mode or instrument), all else (seed, notes' degrees) equal."""
    out = []
    for seed in range(n):
        a = synth.sample_attributes(np.random.default_rng([seed, 0]))
        others = [v for v in (synth.MODES if attribute == "mode" else synth.INSTRUMENTS) if v != getattr(a, attribute)]
        b = dataclasses.replace(a, **{attribute: others[seed % len(others)]})
        codes = [codec.encode(torch.from_numpy(synth.render(x, 4.0, synth.SAMPLE_RATE, seed=seed))[None, None])[0]
                 for x in (a, b)]  # 2 x [K, T]
        out.append((codes[0] != codes[1]).float().mean(-1).numpy())
    return np.mean(out, axis=0)


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


def _mode_words(prompt: str) -> str:
    return next(prompt.lower()[a:b] for a, b, attr, _ in synth.mentions(prompt) if attr == "mode")


def _shares(groups: dict) -> str:
    return ", ".join(f"{k} {np.mean(v):.0%} ({len(v)})" for k, v in sorted(groups.items()))


def text_probe(policy: MusicGenPolicy, seed: int = 1) -> tuple[float, dict]:
    """Accuracy of a linear probe of the mode on the text encoder's mean-pooled states, overall and
    {wording: [hit, ...]} on captions of held-out seeds."""
    def captions(n: int, rng: np.random.Generator) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            c = synth.caption(synth.sample_attributes(rng), rng)
            out += [c] if "mode" in synth.parse_prompt(c) else []
        return out

    def features(cs: list[str]) -> torch.Tensor:  # [N, D]
        with torch.no_grad():
            return torch.cat([mean_pooled(policy.model.text_encoder, policy.tokenizer(cs[i : i + 256], padding=True,
                              return_tensors="pt")) for i in range(0, len(cs), 256)])

    train, test = captions(6000, np.random.default_rng(seed)), captions(3000, np.random.default_rng(seed + 1000))
    x, x_test = features(train), features(test)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    y = torch.tensor([synth.parse_prompt(c)["mode"] == "minor" for c in train]).long()
    head = torch.nn.Linear(x.shape[1], 2)
    opt = torch.optim.Adam(head.parameters(), 1e-2)
    for _ in range(500):
        loss = torch.nn.functional.cross_entropy(head((x - mu) / sd), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = head((x_test - mu) / sd).argmax(-1).tolist()
    hits = [int(p == (synth.parse_prompt(c)["mode"] == "minor")) for c, p in zip(test, pred)]
    groups: dict[str, list[int]] = {}
    for c, h in zip(test, hits):
        groups.setdefault(_mode_words(c), []).append(h)
    return float(np.mean(hits)), groups


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
    codec = Codec.from_pretrained("tiny")
    by_k, heard = ceiling(codec, args.corpus_clips)
    print(f"corpus clips through the codec ({args.corpus_clips} clips), mode heard right: "
          + ", ".join(f"{k} codebook{'s' * (k > 1)} {v:.0%}" for k, v in by_k.items())
          + "; every estimator through all codebooks: " + ", ".join(f"{a} {v:.1%}" for a, v in heard.items()))
    for attribute in ("mode", "instrument"):
        print(f"tokens changed per codebook when a clip is rendered in another {attribute}: "
              + ", ".join(f"{v:.0%}" for v in codes_changed(codec, 60, attribute)))
    prompts = [p for p in resolve_prompts("synth-unseen", args.num_prompts, args.seed)[: args.num_prompts] if "mode" in synth.parse_prompt(p)]
    for name in args.models.split(","):
        s = ev.generate(MusicGenPolicy.from_pretrained(name), prompts, 1, 4.0, SamplingConfig(), args.seed)  # musicrl eval's sampling
        asked = [synth.parse_prompt(p)["mode"] for p in s.prompts]
        kinds = [miss_kind(a[0].float().numpy(), s.sample_rate, m) for a, m in zip(s.audio, asked)]
        n = Counter(kinds)
        print(f"{name}: {n['hit']} of {len(prompts)} clips in the asked mode; misses: parallel {n['parallel']}, "
              f"relative {n['relative']}, other {n['other']}")
        first = np.mean([estimate_mode(_decode(codec, c[None], 1), s.sample_rate) == m for c, m in zip(s.codes, asked)])
        print(f"  decoded from the first codebook alone: {first:.0%} in the asked mode")
        words: dict[str, list[bool]] = {}
        crowd: dict[str, list[bool]] = {}
        for p, kind in zip(s.prompts, kinds):
            words.setdefault(_mode_words(p), []).append(kind == "hit")
            crowd.setdefault(f"{len(synth.parse_prompt(p)) - 1} other", []).append(kind == "hit")
        print(f"  in the asked mode, by its words: {_shares(words)}")
        print(f"  by the attributes also named: {_shares(crowd)}")
        acc, groups = text_probe(MusicGenPolicy.from_pretrained(name))
        print(f"  text encoder, linear probe of the mode: {acc:.1%}; by wording: {_shares(groups)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
