"""Preference pairs for DPO/IPO from vote rows: each clip's codes, ties and both-bad votes handled.

A vote row (`musicrl.votes.rows.VoteRow`) names two clips of one prompt and a choice. Offline
preference optimisation needs the tokens the model would have produced for each clip:

- the clip's stored codes (`codes_a`/`codes_b`: the arena and `musicrl generate` keep them beside
  every WAV) when there are any;
- else the WAV re-encoded through the policy's codec (votes collected before codes were kept, or
  clips from elsewhere). Re-encoding decoded audio does not give back every token the model sampled
  (16-bit PCM, and the codec is not its own inverse): docs/dpo.md gives the figure on the tiny codec.

Choices: 'a'/'b' give a (chosen, rejected) pair; 'both_bad' says nothing about which clip is better
and is always dropped; 'tie' is dropped, or kept as a pair whose target margin is 0 (`ties='zero_margin'`,
IPO only: it pulls the two implicit rewards together).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musicrl.errors import UserError

TIES = ("drop", "zero_margin")


@dataclass(frozen=True)
class PreferencePair:
    """One training pair: the chosen and rejected clips' codes [K, T] (long) under one prompt; for a
    kept tie (`tie=True`) neither is better and the order means nothing."""

    prompt: str
    chosen: torch.Tensor
    rejected: torch.Tensor
    tie: bool = False


def preference_pairs(rows, codec, num_codebooks: int, vocab_size: int, ties: str = "drop") -> tuple[list[PreferencePair], dict]:
    """Vote rows -> (pairs, counts); `codec` (a `musicrl.model.codec.Codec`) re-encodes clips stored
    without codes. counts: votes, pairs, ties and both_bad dropped or kept, clips re-encoded."""
    if ties not in TIES:
        raise UserError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    counts = {"votes": len(rows), "pairs": 0, "ties_kept": 0, "ties_dropped": 0, "both_bad_dropped": 0, "reencoded": 0}
    pairs, cache = [], {}

    def codes_of(wav: Path, stored: Path | None) -> torch.Tensor:
        key = (wav, stored)
        if key not in cache:
            if stored is None:
                counts["reencoded"] += 1
            cache[key] = clip_codes(wav, stored, codec, num_codebooks, vocab_size)
        return cache[key]

    for r in rows:
        if r.choice == "both_bad" or (r.choice == "tie" and ties == "drop"):
            counts["both_bad_dropped" if r.choice == "both_bad" else "ties_dropped"] += 1
            continue
        a, b = codes_of(r.clip_a, r.codes_a), codes_of(r.clip_b, r.codes_b)
        chosen, rejected = (b, a) if r.choice == "b" else (a, b)
        pairs.append(PreferencePair(r.prompt, chosen, rejected, tie=r.choice == "tie"))
        counts["ties_kept"] += r.choice == "tie"
    counts["pairs"] = len(pairs)
    if not pairs:
        raise UserError(f"none of the {len(rows)} votes prefers one clip (ties and both-bad votes say nothing to "
                        "train on; with loss=ipo, ties=zero_margin keeps ties)")  # fmt: skip
    return pairs, counts


def clip_codes(wav: Path, stored: Path | None, codec, num_codebooks: int, vocab_size: int) -> torch.Tensor:
    """A clip's codes [K, T] (long, CPU): its stored codes file, else its WAV through `codec`."""
    from musicrl.votes.files import read_codes

    if stored is not None:
        codes = torch.from_numpy(read_codes(stored))
        where = stored
    else:
        codes, where = reencode(wav, codec), wav
    if codes.shape[0] != num_codebooks or codes.shape[1] < 1 or int(codes.max()) >= vocab_size:
        raise UserError(f"{where}: codes of shape {tuple(codes.shape)} (max {int(codes.max())}) do not fit this model "
                        f"({num_codebooks} codebooks of {vocab_size}); were these clips made by another model?")  # fmt: skip
    return codes


def reencode(wav: Path, codec) -> torch.Tensor:
    """A WAV file -> its codes [K, T] through `codec` (resampled to the codec's rate first)."""
    from musicrl.audio import read_wav, resample

    audio, sr = read_wav(wav)
    x = resample(torch.from_numpy(np.ascontiguousarray(audio)), sr, codec.sample_rate)
    return codec.encode(x[None, None])[0].cpu()


def split_pairs(pairs: list[PreferencePair], eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): the pairs of about `eval_fraction` of the prompts, drawn with `seed`, are
    held out whole, so no held-out prompt is trained on. At least one prompt stays for training."""
    prompts = sorted({p.prompt for p in pairs})
    n_eval = min(round(eval_fraction * len(prompts)), len(prompts) - 1)
    held = set(np.random.default_rng([seed, 17]).permutation(len(prompts))[:n_eval].tolist())
    held = {prompts[i] for i in held}
    return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]
