"""One MusicRL step at a given size: time split and peak memory, full fine-tuning or LoRA.

Runs `RLTrainer.step` (rollouts with guidance, codec decode, CLAP + quality reward, update with the
exact KL) `--steps` times on one model and reports each step; the first includes warm-up (CUDA
kernels, allocator). Peak memory is the trainer's `mem/peak_gib`, CUDA's `max_memory_allocated`
within the step (weights, reference copy, optimizer state and activations all count); on CPU the
process's peak RSS, which only grows, so run one variant per process. The rewards are the tiny world's CLAP and quality
models (they resample the 32 kHz audio to their own rate): the reward's cost is small next to
the LM's, and the real-size CLAP cannot be downloaded here.

    python benchmarks/rl_step.py --model small-random --device cuda --mixed-precision bf16 --gradient-checkpointing
    python benchmarks/rl_step.py --model small-random --device cuda --mixed-precision bf16 --gradient-checkpointing --lora-rank 16
    python benchmarks/rl_step.py --model tiny --device cpu --prompts 2 --samples 2 --duration 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for rollout.load_policy

import torch  # noqa: E402
from rollout import load_policy  # noqa: E402

from musicrl.tiny.prompts import rl_prompts  # noqa: E402
from musicrl.train.rl_config import RLConfig  # noqa: E402
from musicrl.train.rl_trainer import RLTrainer  # noqa: E402

REWARD = {"kind": "weighted", "components": {
    "clap": {"type": "clap", "model": "tiny", "weight": 1.0},
    "quality": {"type": "quality", "model": "tiny", "weight": 1.0},
}}  # fmt: skip


def run(args) -> dict:
    device = torch.device(args.device)
    policy = load_policy(args.model, args.device, torch.float32)  # fp32 master weights; bf16 = autocast
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RLConfig(
            reward=REWARD, model=args.model, out_dir=tmp, steps=args.steps, prompts_per_step=args.prompts,
            samples_per_prompt=args.samples, duration_s=args.duration, guidance_scale=args.guidance,
            kl_coef=0.02, lr=1e-5, grad_accum=args.grad_accum, lora_rank=args.lora_rank,
            mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
            device=args.device, prompts=args.prompts_spec,
        )  # fmt: skip
        trainer = RLTrainer(cfg, *rl_prompts(cfg), policy=policy)
        before = [p.detach().clone() for p in trainer.trained]
        trained = sum(p.numel() for p in trainer.trained)
        total = sum(p.numel() for p in trainer.policy.model.decoder.parameters())
        steps = []
        for s in range(args.steps):
            m = trainer.step(s)
            # the trainer logs CUDA's peak of each step; on CPU only the process's peak RSS exists
            peak = m.get("mem/peak_gib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # KiB on Linux
            times = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("time/")}
            steps.append({"step": s + 1, "peak_gib": peak, "time_s": times, "total_s": sum(times.values()),
                          "loss": m["loss"], "kl": m["kl"], "grad_norm": m["grad_norm"]})  # fmt: skip
            t = " ".join(f"{k} {v:.2f}" for k, v in times.items())
            print(f"step {s + 1}: {sum(times.values()):.2f} s ({t}), peak {peak:.2f} GiB, loss {m['loss']:.3g}, KL {m['kl']:.3g} nats/token", flush=True)
        moved = sum((p.detach() - b).abs().sum().item() for p, b in zip(trainer.trained, before))
    return {
        "model": args.model, "device": str(device), "hardware": torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "lora_rank": args.lora_rank, "mixed_precision": args.mixed_precision, "gradient_checkpointing": args.gradient_checkpointing,
        "clips_per_step": args.prompts * args.samples, "grad_accum": args.grad_accum, "duration_s": args.duration,
        "guidance_scale": args.guidance, "decoder_params": total, "trained_params": trained,
        "peak_kind": "cuda max_memory_allocated per step" if device.type == "cuda" else "process peak RSS",
        "trained_weights_moved": moved > 0, "steps": steps,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small-random", help="small-random | tiny-random | tiny | DIR")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tuning (with a frozen reference copy)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step (the small preset's 8)")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (the small preset's 4)")
    p.add_argument("--grad-accum", type=int, default=4, help="micro-batches per update (the small preset's 4)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip (the small preset's 10)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=2, help="steps to run; the first includes warm-up")
    p.add_argument("--prompts-spec", default="synth", help="training prompts: 'synth' or a text file")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    result = run(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    if not result["trained_weights_moved"]:
        print("warning: the trained weights did not change", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
