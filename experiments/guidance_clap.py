"""How much CLAP reward stronger classifier-free guidance buys the base model, and at what KL.

A yardstick for RL's gains: `musicrl-r` samples at guidance 3; a policy that had learned only to
lean harder on its prompt would look like the base at a higher guidance scale. For each scale, by
`musicrl.train.evaluate` (the code of `musicrl eval`): mean CLAP and the raters' measured attribute
adherence over unseen captions x samples, the paired win rate over the first scale (a prompt's mean
over its samples), and the exact KL (nats per clip) of the guided distribution to the first scale's
on the same tokens.

    python experiments/guidance_clap.py [--scales 3,4,5,6] [--prompts 32] [--samples 8]
"""

from __future__ import annotations

import argparse

import torch

from musicrl.train import evaluate
from musicrl.tiny import simulate
from musicrl.model.engine import FastSampler
from musicrl.model.policy import MusicGenPolicy
from musicrl.tiny.prompts import resolve_prompts
from musicrl.model.sampling import SamplingConfig
from musicrl.rewards.clap import ClapReward


def adherence(audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> torch.Tensor:
    """Fraction of the named attributes a clip has, as the simulated raters hear them: [B]."""
    heard = [simulate.perceive(simulate.Clip(a[0].numpy(), sample_rate)) for a in audio]
    return torch.tensor([simulate.adherence(p, h) for p, h in zip(prompts, heard)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--scales", default="3,4,5,6", help="guidance scales; the first is the baseline")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=12)
    args = ap.parse_args()
    scales = [float(g) for g in args.scales.split(",")]
    policy = MusicGenPolicy.from_pretrained(args.model)
    sampler, judges = FastSampler(policy), {"clap": ClapReward.from_pretrained("tiny"), "adherence": adherence}
    prompts = resolve_prompts("synth-unseen", args.prompts)[: args.prompts]
    samplings = {f"guidance {g:g}": SamplingConfig(1.0, 0, 0.0, g) for g in scales}
    samples = []
    for name, sampling in samplings.items():
        roll = sampler.sample(prompts, args.samples, 4.0, sampling=sampling, seed=args.seed)
        samples.append(evaluate.Samples(name, roll.prompts, roll.codes, policy.decode(roll.codes).cpu(), policy.sample_rate))
    report = evaluate.compare(samples, judges, args.samples)
    base_name, base_sampling = next(iter(samplings.items()))
    for s in samples:
        line = f"{s.model}: " + ", ".join(f"{j} {report['rewards'][j][s.model]['mean']:.4f}" for j in judges)
        if s.model != base_name:
            win = report["win_rates"]["clap"][f"{s.model} over {base_name}"]["win"]
            kl, _ = evaluate.kl_to_reference(policy, policy, s, samplings[s.model], reference_sampling=base_sampling)
            line += f", CLAP wins {win:.0%} of prompts over {base_name}, KL {kl:.1f} nats per clip"
        print(line, flush=True)


if __name__ == "__main__":
    main()
