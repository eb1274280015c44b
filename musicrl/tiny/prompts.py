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

import zlib

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


# What a flipped attribute becomes. Medium tempo has two opposites, as has no drums; one is picked by hash.
_OPPOSITE = {"tempo": {"slow": ("fast",), "fast": ("slow",), "medium": ("slow", "fast")},
             "mode": {"major": ("minor",), "minor": ("major",)},
             "register": {"low": ("high",), "high": ("low",)},
             "drums": {"none": ("full", "kick-hat"), "kick-hat": ("none",), "full": ("none",)}}


def flip_attribute(prompt: str, attribute: str | None = None) -> str | None:
    """The same prompt with one of tempo, mode, register or drums (or `attribute`) turned to an
    opposite value (the other words untouched, the same form of words: adjective for adjective,
    phrase for phrase), or None when it names none of them.

    Deterministic: the attribute, the opposite and its words are picked by a hash of the prompt. The
    reward-discrimination experiment and the tiny CLAP's hard negatives use it.
    """
    named = synth.parse_prompt(prompt)
    options = [a for a in _OPPOSITE if a in named and attribute in (None, a)]
    if not options:
        return None
    h = zlib.crc32(prompt.encode())
    attr = options[h % len(options)]
    new_value = _OPPOSITE[attr][named[attr]][(h >> 8) % len(_OPPOSITE[attr][named[attr]])]
    for start, end, a, value in synth.mentions(prompt):
        if (a, value) != (attr, named[attr]):
            continue
        phrase = prompt[start:end].lower()
        table = synth.SYNONYMS if any(phrase in ws for ws in synth.SYNONYMS[attr][value].values()) else synth.PHRASES
        words = table[attr][new_value]["train"]
        flipped = prompt[:start] + words[(h >> 16) % len(words)] + prompt[end:]
        if synth.parse_prompt(flipped) == {**named, attr: new_value}:
            return flipped
    return None
