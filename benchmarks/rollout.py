"""Rollout speed: audio seconds generated per wall second, three decoders on one model.

- `fast`: `musicrl.model.engine.FastSampler` (static KV cache, fused step; CUDA graphs on CUDA);
- `reference`: `MusicGenPolicy.sample` (transformers' decoder forward + DynamicCache, our loop);
- `transformers`: `model.generate(do_sample=True, top_k=250, guidance_scale=g, max_length=T+K)`.

All three generate tokens only: the codec decode that `generate` always appends is stubbed out
(it is the same cost for every engine and not decoding). Text encoding is included for all.
Each (engine, batch, guidance) runs once to warm up (excluded), then `--repeats` rounds run the
engines in turn and the best of each is kept (the machine may be shared). Prints a markdown table, writes JSON with `--out`.

    python benchmarks/rollout.py --model tiny-random --device cpu --batches 1,8,32 --duration 4 --threads 2
    python benchmarks/rollout.py --model small-random --device cuda --dtype bf16 --batches 1,8,32,64,128 --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from musicrl.errors import UserError  # noqa: E402
from musicrl.model.sampling import SamplingConfig  # noqa: E402

ENGINES = ("fast", "reference", "transformers")
PROMPTS = [
    "fast happy piano in a major key", "slow dark organ, low register", "bright marimba melody with drums",
    "calm strings in a minor key", "energetic synth bass, high tempo", "gentle flute over soft pads",
]  # fmt: skip


def load_policy(name: str, device: str, dtype: torch.dtype):
    """'tiny' / a directory (trained weights), 'tiny-random', or 'small-random' (built in memory)."""
    from transformers import ByT5Tokenizer, GenerationConfig, MusicgenForConditionalGeneration

    from musicrl.model.policy import MusicGenPolicy

    torch.manual_seed(0)
    if name == "tiny-random":
        from musicrl.model.spectral_codec import SpectralCodecConfig, SpectralCodecModel
        from musicrl.tiny.musicgen import build

        model, tokenizer = build(SpectralCodecModel(SpectralCodecConfig()), hidden_size=256, num_layers=4, heads=8)
    elif name == "small-random":
        from musicrl.model.realsize import musicgen_small_config

        model = MusicgenForConditionalGeneration(musicgen_small_config())
        model.generation_config = GenerationConfig(
            max_length=1500, do_sample=True, top_k=250, guidance_scale=3.0,
            pad_token_id=2048, bos_token_id=2048, decoder_start_token_id=2048,
        )  # fmt: skip
        tokenizer = ByT5Tokenizer()
    else:
        return MusicGenPolicy.from_pretrained(name, device=device, dtype=dtype)
    model.to(device=device, dtype=dtype).eval()
    return MusicGenPolicy(model, tokenizer, name=name)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _NoDecode:
    """Stands in for `audio_encoder.decode` inside `generate`: tokens only, as the other engines."""

    def __init__(self, codec):
        self.codec = codec

    def __enter__(self):
        self.codec.decode = lambda codes, *a, **k: SimpleNamespace(audio_values=codes.new_zeros(codes.shape[1], 1, 1).float())

    def __exit__(self, *exc):
        del self.codec.decode  # the instance attribute shadowed the class method


def make_runner(engine: str, policy, prompts: list[str], T: int, g: float, fast):
    cfg = SamplingConfig(top_k=250, guidance_scale=g)
    if engine == "fast":
        return lambda: fast.sample(prompts, 1, num_frames=T, sampling=cfg, seed=0).codes
    if engine == "reference":
        return lambda: policy.sample(prompts, 1, num_frames=T, sampling=cfg, seed=0).codes
    model = policy.model
    inputs = policy.tokenizer(prompts, padding=True, return_tensors="pt").to(policy.device)

    def run():
        torch.manual_seed(0)
        with _NoDecode(model.audio_encoder):
            return model.generate(
                **inputs, do_sample=True, top_k=250, guidance_scale=g if g > 1 else None,
                max_length=T + policy.num_codebooks,
            )  # fmt: skip

    return run


def measure(runs: dict, device: str, repeats: int) -> dict:
    """{engine: (best wall seconds, peak CUDA GiB or 0)}: one warm-up each (excluded), then `repeats`
    rounds that run the engines in turn, so that a busy spell on a shared machine hits them alike."""
    best, peak = {e: float("inf") for e in runs}, {e: 0.0 for e in runs}
    for e, run in runs.items():
        run()
        _sync(device)
    for _ in range(repeats):
        for e, run in runs.items():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            run()
            _sync(device)
            best[e] = min(best[e], time.perf_counter() - t)
            if device.startswith("cuda"):
                peak[e] = max(peak[e], torch.cuda.max_memory_allocated() / 2**30)
    return {e: (best[e], peak[e]) for e in runs}


def bandwidth_bound(decoder_config, tbps: float, batches: list[int], duration_s: float, guidance: float,
                    frame_rate: float = 50.0, text_len: int = 20, bytes_per: int = 2) -> list[dict]:
    """Upper bound on decoding speed if every step only had to read its bytes once from memory.

    Per step: the matmul weights (not the embedding tables, of which N*K rows are gathered, nor the
    cross-attention K/V projections, used once per call), the self-attention KV cache up to the
    current position (mean (S+1)/2 over the clip), and the cross-attention K/V of the conditional rows.
    """
    from transformers import MusicgenForCausalLM

    with torch.device("meta"):
        lm = MusicgenForCausalLM(decoder_config)
    core = lm.model.decoder
    emb = sum(p.numel() for p in core.embed_tokens.parameters())
    cross_kv = sum(l.encoder_attn.k_proj.weight.numel() + l.encoder_attn.v_proj.weight.numel() for l in core.layers)
    total = sum(p.numel() for p in lm.parameters())
    weights = (total - emb - cross_kv) * bytes_per
    T = round(duration_s * frame_rate)
    S = T + decoder_config.num_codebooks - 1
    kv_per_pos = decoder_config.num_hidden_layers * 2 * decoder_config.hidden_size * bytes_per  # per row
    out = []
    for B in batches:
        N = 2 * B if guidance != 1 else B
        step_bytes = weights + N * (S + 1) / 2 * kv_per_pos + B * text_len * kv_per_pos
        steps_s = tbps * 1e12 / step_bytes
        out.append({
            "batch": B, "decoder_params": total, "weight_gb": weights / 1e9, "step_gb": step_bytes / 1e9,
            "steps_per_s": steps_s, "audio_s_per_s": B * T / frame_rate * steps_s / S,
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-random", help="tiny | DIR | tiny-random | small-random")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: weights and compute in bf16 for every engine")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of audio per sample")
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--guidance", default="1,3", help="comma-separated guidance scales")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"subset of {','.join(ENGINES)}")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per config (the best is kept)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the fast engine's step")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--bound", type=float, default=0.0, metavar="TBPS",
                   help="only print the memory-bandwidth bound at this many TB/s (bf16 weights and cache), no timing")
    args = p.parse_args(argv)
    if args.bound:
        if args.model == "small-random":  # no need to build 2 GB of random weights for a config
            from musicrl.model.realsize import musicgen_small_config

            dec = musicgen_small_config().decoder
        else:
            dec = load_policy(args.model, "cpu", torch.float32).model.config.decoder
        print("| batch | guidance | GB read / step | steps/s bound | audio s/s bound |\n| --- | --- | --- | --- | --- |")
        for g in [float(x) for x in args.guidance.split(",")]:
            for r in bandwidth_bound(dec, args.bound, [int(x) for x in args.batches.split(",")], args.duration, g):
                print(f"| {r['batch']} | {g:g} | {r['step_gb']:.3f} | {r['steps_per_s']:,.0f} | {r['audio_s_per_s']:,.1f} |")
        print(f"\ndecoder: {r['decoder_params']:,} parameters, {r['weight_gb']:.3f} GB of matmul weights read per step")
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    engines = [e for e in args.engines.split(",") if e]
    if bad := [e for e in engines if e not in ENGINES]:
        raise UserError(f"unknown engine(s) {bad}; choose from {ENGINES}")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    from musicrl.model.engine import FastSampler

    policy = load_policy(args.model, args.device, dtype)
    fast = FastSampler(policy, compile=args.compile)
    T = policy.frames_for(args.duration)
    audio_s = T / policy.frame_rate
    steps = T + policy.num_codebooks - 1
    n_dec = sum(p.numel() for p in policy.model.decoder.parameters())
    rows = []
    for g in [float(x) for x in args.guidance.split(",")]:
        for B in [int(x) for x in args.batches.split(",")]:
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(B)]
            timed = measure({e: make_runner(e, policy, prompts, T, g, fast) for e in engines}, args.device, args.repeats)
            for engine, (wall, peak) in timed.items():
                rows.append({
                    "engine": engine, "batch": B, "guidance": g, "wall_s": wall, "steps_per_s": steps / wall,
                    "audio_s_per_s": B * audio_s / wall, "peak_gib": peak,
                })  # fmt: skip
                print(f"  {engine:12s} B={B:<4d} g={g:g}  {wall:8.3f} s  {B * audio_s / wall:9.2f} audio-s/s", file=sys.stderr)

    by = {(r["engine"], r["batch"], r["guidance"]): r for r in rows}
    head = "| batch | guidance | " + " | ".join(f"{e} (audio s/s)" for e in engines)
    head += " | fast steps/s | fast vs transformers | fast vs reference |" if "fast" in engines else " |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for g in sorted({r["guidance"] for r in rows}):
        for B in sorted({r["batch"] for r in rows}):
            cells = [f"{by[(e, B, g)]['audio_s_per_s']:.3g}" for e in engines]
            if "fast" in engines:
                f = by[("fast", B, g)]
                cells.append(f"{f['steps_per_s']:.1f}")
                for other in ("transformers", "reference"):
                    cells.append(f"{by[(other, B, g)]['wall_s'] / f['wall_s']:.2f}x" if other in engines else "-")
            lines.append(f"| {B} | {g:g} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    meta = {
        "model": args.model, "device": args.device, "dtype": args.dtype, "duration_s": audio_s, "frames": T,
        "decoder_steps": steps, "decoder_params": n_dec, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None, "compile": args.compile,
    }  # fmt: skip
    print(f"model={args.model} device={args.device} dtype={args.dtype} audio={audio_s:g}s ({steps} steps) "
          f"threads={meta['threads']} best of {args.repeats}\n")  # fmt: skip
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "results": rows, "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
