"""Online DPO on contrast pairs under shared noise: can it teach the tiny LM to follow its prompt?

RL on the oracle adherence reward moves the policy far (100+ nats a clip) and adherence little
(docs/results/rl-oracle.md): most of each policy-gradient update is noise that does not depend on
the text. This experiment removes that noise by construction.

Each step draws prompts p that name an attribute (mode or tempo) and their contrast p', the same
caption (same template, same words) with that attribute flipped. Both are sampled with the SAME
seeds. The sampler's noise depends on (seed, step, codebook, token) only, so clip c (from p) and clip
c' (from p') share every token the prompt does not change. The oracle judges both under p (attributes
of p matched, `musicrl.tiny.adherence`); where one is better, DPO pushes log pi(better | p) up
against log pi(worse | p). Tokens the two clips share cancel exactly in that difference, so the
update is about what the prompt changes. The same is done under p' with the roles swapped.

    python experiments/paired_dpo_adherence.py --steps 100 --out runs/paired-dpo
    musicrl eval --models tiny,runs/paired-dpo/final --rewards clap=tiny --adherence --num-prompts 256 --seed 7
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from musicrl.logs import quiet_transformers
from musicrl.model.engine import FastSampler
from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig
from musicrl.tiny import synth
from musicrl.tiny.adherence import ORACLE_ATTRIBUTES, AdherenceReward

FLIP = {"mode": {"major": "minor", "minor": "major"}, "tempo": {"slow": "fast", "fast": "slow", "medium": "fast"}}


def contrast_pair(seed: int) -> tuple[str, str] | None:
    """A training caption naming mode or tempo, and the same caption with that attribute flipped."""
    rng = np.random.default_rng([seed, 17])
    attrs = synth.sample_attributes(rng)
    state = rng.bit_generator.state
    p = synth.caption(attrs, rng, "train")
    named = synth.parse_prompt(p)
    options = [a for a in ("mode", "tempo") if a in named]
    if not options:
        return None
    attr = options[seed % len(options)]
    new = FLIP[attr][named[attr]]
    lo, hi = synth.TEMPO_WORDS[new if attr == "tempo" else attrs.tempo]
    other = dataclasses.replace(attrs, **{attr: new}, bpm=(lo + hi) / 2 if attr == "tempo" else attrs.bpm)
    rng.bit_generator.state = state  # the same template and word choices
    q = synth.caption(other, rng, "train")
    return (p, q) if synth.parse_prompt(q) == {**named, attr: new} else None


def pairs_for(step: int, n: int) -> list[tuple[str, str]]:
    out, seed = [], step * 1000
    while len(out) < n:
        pair = contrast_pair(seed)
        seed += 1
        if pair is not None:
            out.append(pair)
    return out


def seq_logp(policy: MusicGenPolicy, prompts: list[str], codes: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    return policy.log_probs(prompts, codes, sampling).sum((1, 2))  # [B]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=8, help="contrast pairs of prompts a step")
    ap.add_argument("--samples", type=int, default=4, help="seeds (clips) per prompt")
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/paired-dpo")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_transformers()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    policy = MusicGenPolicy.from_pretrained("tiny")
    policy.model.text_encoder.requires_grad_(False)
    reference = copy.deepcopy(policy).requires_grad_(False)
    sampler = FastSampler(policy)
    sampling = SamplingConfig(top_k=0, guidance_scale=args.guidance)
    params = [p for p in policy.model.decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    judge = AdherenceReward(ORACLE_ATTRIBUTES)
    log = (out / "log.jsonl").open("w")
    t0 = time.time()
    for step in range(args.steps):
        policy.eval()
        pairs = pairs_for(step, args.pairs)
        ps, qs = [p for p, _ in pairs], [q for _, q in pairs]
        with torch.no_grad():
            a = sampler.sample(ps, args.samples, args.duration, sampling=sampling, seed=step * 100_003)
            b = sampler.sample(qs, args.samples, args.duration, sampling=sampling, seed=step * 100_003)  # same seeds
            audio_a, audio_b = policy.decode(a.codes), policy.decode(b.codes)
            sr = policy.sample_rate
            ra_p, rb_p = judge(audio_a, sr, a.prompts), judge(audio_b, sr, a.prompts)  # both judged under p
            ra_q, rb_q = judge(audio_a, sr, b.prompts), judge(audio_b, sr, b.prompts)  # and under p'
        # preferred / rejected under each prompt: (prompts, chosen codes, rejected codes)
        rows_p, rows_q = (ra_p != rb_p), (ra_q != rb_q)
        prompts, chosen, rejected = [], [], []
        for i in range(len(a.prompts)):
            if rows_p[i]:
                win = a.codes[i] if ra_p[i] > rb_p[i] else b.codes[i]
                lose = b.codes[i] if ra_p[i] > rb_p[i] else a.codes[i]
                prompts.append(a.prompts[i]), chosen.append(win), rejected.append(lose)
            if rows_q[i]:
                win = b.codes[i] if rb_q[i] > ra_q[i] else a.codes[i]
                lose = a.codes[i] if rb_q[i] > ra_q[i] else b.codes[i]
                prompts.append(b.prompts[i]), chosen.append(win), rejected.append(lose)
        shared = (a.codes == b.codes).float().mean().item()
        stats = {"step": step + 1, "adherence_p": ra_p.mean().item(), "adherence_q": rb_q.mean().item(),
                 "pairs": len(prompts), "shared_tokens": shared}  # fmt: skip
        if prompts:
            cw, cl = torch.stack(chosen), torch.stack(rejected)
            with torch.no_grad():
                ref_w, ref_l = seq_logp(reference, prompts, cw, sampling), seq_logp(reference, prompts, cl, sampling)
            pi_w, pi_l = seq_logp(policy, prompts, cw, sampling), seq_logp(policy, prompts, cl, sampling)
            margin = (pi_w - ref_w) - (pi_l - ref_l)
            loss = -F.logsigmoid(args.beta * margin).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            stats.update(loss=loss.item(), margin=margin.mean().item(), acc=(margin > 0).float().mean().item())
        stats["time_s"] = round(time.time() - t0, 1)
        log.write(json.dumps(stats) + "\n")
        log.flush()
        print(json.dumps(stats), flush=True)
    policy.model.save_pretrained(out / "final")
    policy.tokenizer.save_pretrained(out / "final")
    print(f"saved {out / 'final'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
