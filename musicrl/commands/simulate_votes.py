"""`musicrl simulate-votes`: synth clips and A/B votes from simulated raters with a hidden taste."""

from __future__ import annotations

import argparse
import json

from musicrl.commands.common import add_device, add_threads, apply_threads
from musicrl.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num", type=int, required=True, help="number of votes")
    p.add_argument("--out", required=True, help="directory for votes.jsonl, simulation.json and clips/")
    p.add_argument("--raters", type=int, default=5, help="raters on the panel (default 5)")
    p.add_argument("--noise", type=float, default=0.35,
                   help="choice temperature: P(a) = sigmoid((u_a - u_b) / noise) (default 0.35)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per clip (default 4)")
    p.add_argument("--clips-per-prompt", type=int, default=4,
                   help="clips rendered per prompt; all their pairs are voted on (default 4)")
    p.add_argument("--model", default=None,
                   help="vote on this model's samples (tiny, a directory, a hub id) instead of synth renders; "
                        "raters then hear tempo, register and mode through musicrl.tiny.attributes")
    p.add_argument("--guidance", type=float, default=3.0, help="with --model: guidance scale (default 3)")
    add_device(p, default="cpu")
    add_threads(p)


def run(args: argparse.Namespace) -> int:
    from musicrl.tiny.simulate import Panel, simulate_votes

    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    if not args.noise >= 0:
        raise UserError(f"--noise must be >= 0, got {args.noise}")
    if not 0 < args.duration <= 30:
        raise UserError(f"--duration must be in (0, 30] seconds, got {args.duration}")
    apply_threads(args.threads, [args.model or "tiny"])  # without a model: the tiny world's synthetic clips
    panel = Panel.default(args.raters, args.noise, args.seed)
    generate = model_clips(args.model, args.duration, args.guidance, args.device) if args.model else None
    path = simulate_votes(args.num, panel, args.seed, args.out, duration_s=args.duration,
                          clips_per_prompt=args.clips_per_prompt, progress=True, generate=generate)
    summary = json.loads((path.parent / "simulation.json").read_text())
    print(json.dumps({k: summary[k] for k in ("votes", "prompts", "choices", "noise_ceiling")}, indent=2))
    print(path)
    return 0


def model_clips(model: str, duration_s: float, guidance: float, device: str):
    """(prompt, n, seed) -> n decoded samples of `model` as `Clip`s (attributes unknown)."""
    import torch

    from musicrl.model.engine import FastSampler
    from musicrl.model.policy import MusicGenPolicy
    from musicrl.model.sampling import SamplingConfig
    from musicrl.model.generator import Clip

    policy = MusicGenPolicy.from_pretrained(model, device=device)
    sampler, cfg = FastSampler(policy), SamplingConfig(guidance_scale=guidance)

    @torch.no_grad()
    def generate(prompt: str, n: int, seed: int) -> list[Clip]:
        codes = sampler.sample([prompt], n, duration_s, sampling=cfg, seed=seed).codes
        audio = policy.decode(codes)[:, 0].float().cpu().numpy()  # [n, S]
        settings = {**cfg.to_dict(), "duration_s": duration_s}
        return [Clip(a, policy.sample_rate, seed + i, settings, c) for i, (a, c) in enumerate(zip(audio, codes.cpu().numpy()))]

    return generate
