"""`musicrl generate`: text prompt -> WAV files, each with its codes [K, T] (`.codes.npy`) and a JSON sidecar."""

from __future__ import annotations

import argparse
import json

from musicrl.commands.common import add_device, add_rerank, add_threads, apply_threads, load_rewards, writable_dir
from musicrl.errors import UserError
from musicrl.model.device import resolve_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what the music should be, e.g. 'fast bright chiptune lead'")
    p.add_argument("--model", default="tiny", help="'tiny' (default), a local directory, or a hub id")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of audio per clip (default 4)")
    p.add_argument("--num-samples", type=int, default=1, help="clips to generate (default 1)")
    p.add_argument("--seed", type=int, default=0, help="clip i uses seed SEED+i (default 0)")
    p.add_argument("--out", default="out", help="output directory (default ./out)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=250, help="0 = off (default 250)")
    p.add_argument("--top-p", type=float, default=0.0, help="0 = off (default)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale; 1 = off (default 3)")
    p.add_argument("--best-of", type=int, default=1, metavar="N",
                   help="draw N clips for each one written and keep the one --rerank scores highest (default 1: "
                        "no reranking). Clip j is picked among seeds SEED+jN .. SEED+jN+N-1")
    add_rerank(p)
    add_device(p)
    add_threads(p)


def run(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise UserError("the prompt is empty")
    if not args.duration > 0:
        raise UserError(f"--duration must be > 0, got {args.duration:g}")
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.best_of < 1:
        raise UserError(f"--best-of must be >= 1, got {args.best_of}")
    apply_threads(args.threads, [args.model])
    out = writable_dir(args.out)

    from musicrl.audio import write_wav
    from musicrl.votes.files import CODES_SUFFIX, codes_bytes, write_atomic
    from musicrl.model.generator import Generator
    from musicrl.logs import quiet_transformers

    quiet_transformers()
    device = resolve_device(args.device)
    gen = Generator.from_pretrained(args.model, device=device)
    if args.duration > gen.max_duration_s + 1e-6:
        raise UserError(f"--duration {args.duration:g} s is beyond this model's maximum of {gen.max_duration_s:.1f} s")
    settings = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, guidance_scale=args.guidance)
    source = gen
    if args.best_of > 1:
        from musicrl.rewards.rerank import BestOf

        source = BestOf(gen, load_rewards(args.rerank, "--rerank", device), args.best_of, args.rerank)
    clips = source.generate(args.prompt, args.num_samples, args.duration, args.seed, progress=True, **settings)
    for clip in clips:
        stem = out / f"{_slug(args.prompt)}-seed{clip.seed}"
        write_wav(stem.with_suffix(".wav"), clip.audio, clip.sample_rate)
        codes = stem.with_name(stem.name + CODES_SUFFIX)  # the tokens, for training on this clip later
        write_atomic(codes, codes_bytes(clip.codes))
        meta = {
            "prompt": args.prompt, "model": args.model, "model_version": gen.version, "seed": clip.seed,
            "sample_rate": clip.sample_rate, **clip.settings, "codes": codes.name,
        }  # fmt: skip
        stem.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        print(stem.with_suffix(".wav"))
    return 0


def _slug(text: str, limit: int = 40) -> str:
    s = "".join(c if c.isalnum() else "-" for c in text.lower().strip())
    return "-".join(filter(None, s.split("-")))[:limit] or "clip"
