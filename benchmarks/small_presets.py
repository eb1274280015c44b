"""Every musicgen-small preset as a new user runs it, on CPU: `model=DIR steps=1`, one at a time.

Issue 29's check: each `configs/rl/small/*` preset (and `po/small/dpo`) gets past start-up with a local
model directory and finishes one step. The models are random weights in the real architectures, made by
`benchmarks/realsize_loop.py --make-models` (musicgen-small, larger_clap_music's CLAP, an untrained
quality head and preference head on it), so this proves the start-up, the plumbing and the memory, not
the music. Besides `model=DIR`, each run gets what a new user must give (its reward models'
directories) and what a CPU needs to finish in minutes: 1 s clips, 1 prompt x 2 clips a step,
`grad_accum=1` (DPO: `batch_size=2`), 2 evaluation prompts. The presets' own tuning (full fine-tuning,
gradient checkpointing) stays; `--lora 16` adds `lora_rank=16` to every run.

    python benchmarks/small_presets.py --out /tmp/small-presets      # ~20 min on 2 shared cores, ~8 GB of disk

OUT/small_presets.json holds each run's command, wall time and peak RSS (wait4); OUT/logs/ each output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.realsize_loop import musicrl, run  # noqa: E402

# 1 s clips, 1 prompt x 2 clips a step, 2 held-out prompts: minutes on a CPU
RL_CPU = ["duration_s=1", "prompts_per_step=1", "samples_per_prompt=2", "grad_accum=1", "eval_prompts_count=2", "device=cpu"]
DPO_CPU = ["batch_size=2", "grad_accum=1", "eval_fraction=0.25", "device=cpu"]  # the votes' clips are 1 s already


def presets(out: Path) -> dict[str, list[str]]:
    """Each preset's `musicrl train` overrides besides the model and steps: what a user must give, CPU sizes."""
    clap, heads = out / "clap", out / "heads"
    user = [f"reward.components.user.model={heads / 'preference'}"]
    return {
        "rl/small/musicrl-r": [f"reward.components.clap.model={clap}", f"reward.components.quality.model={heads / 'quality'}",
                               *RL_CPU],  # fmt: skip
        "rl/small/musicrl-u": [*user, *RL_CPU],
        "rl/small/musicrl-ru": [*user, *RL_CPU],  # model=DIR is the R run it starts from, and its KL reference
        "po/small/dpo": DPO_CPU,  # and --votes
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/small-presets", help="work directory (default /tmp/small-presets)")
    p.add_argument("--only", default=None, help="comma-separated presets to run (default: all four)")
    p.add_argument("--votes", type=int, default=8, help="simulated votes on the model's own clips, for DPO (default 8)")
    p.add_argument("--lora", type=int, default=0, help="add lora_rank=N to every run (default 0: the presets' own)")
    p.add_argument("--keep", action="store_true", help="keep the models and run directories (~6 GB each run)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": vars(args), "runs": {}}
    if not (out / "heads" / "preference" / "config.json").exists():
        report["models"] = run([sys.executable, str(ROOT / "benchmarks" / "realsize_loop.py"), "--make-models", "--out",
                                str(out)], logs / "models.log")  # fmt: skip
    table, model = presets(out), str(out / "musicgen-seed0")
    chosen = args.only.split(",") if args.only else list(table)
    for preset in chosen:
        extra = [f"lora_rank={args.lora}"] if args.lora else []
        name = preset.replace("/", "-")
        votes = []
        if preset.startswith("po/"):  # DPO learns from votes on the model's own clips (their codes)
            if not (out / "votes" / "votes.jsonl").exists():
                report["simulate-votes"] = musicrl(["simulate-votes", "--model", model, "--num", str(args.votes),
                                                    "--clips-per-prompt", "2", "--duration", "1", "--out",
                                                    str(out / "votes"), "--threads", "1"], logs / "simulate-votes.log")  # fmt: skip
            votes = ["--votes", str(out / "votes" / "votes.jsonl")]
        cmd = ["train", "--config", preset, *votes, f"model={model}", "steps=1", *table[preset], *extra,
               f"out_dir={out / name}", "--threads", "1"]  # fmt: skip
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        report["runs"][preset] = {"command": "musicrl " + " ".join(cmd), "started_utc": started,
                                  **musicrl(cmd, logs / f"{name}.log")}  # fmt: skip
        if not args.keep:
            shutil.rmtree(out / name, ignore_errors=True)
        (out / "small_presets.json").write_text(json.dumps(report, indent=2) + "\n")
    print("| preset | wall (s) | peak RSS (GiB) |\n|---|---|---|")
    for preset, r in report["runs"].items():
        print(f"| {preset} | {r['wall_s']} | {r['peak_rss_gib']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
