"""The whole loop at real size on CPU, with random weights: the path a user with hub access takes.

musicgen-small's architecture (two random models, seeds 0 and 1) and laion/larger_clap_music's
(`musicrl.rewards.realsize`), saved with `save_pretrained` and loaded through the normal code paths;
1 s clips. The stages, each timed, with the peak RSS of the process that runs it:

    1. models: the two MusicGens, the CLAP, an untrained quality head on it (MusicRL-R's second reward);
    2. `musicrl app --model SEED0 --model SEED1 --models-dir OUT/musicrl-u` as a subprocess, for the
       whole loop (its peak RSS is read from /proc after each stage);
    3. pairs generated and voted on through the JSON API (random choices: this proves plumbing);
    4. `musicrl votes export`;
    5. `musicrl train-reward preference --backbone OUT/clap`;
    6. `musicrl train --config rl/small/musicrl-u model=SEED0 lora_rank=16 steps=2` (1 s clips);
    7. the same with `rl/small/musicrl-r` (the CLAP and the quality head);
    8. `musicrl eval` of SEED0 against the MusicRL-U model on 2 prompts of music-eval;
    9. hot reload: the running app picks up OUT/musicrl-u/final and serves a pair with it.

    python benchmarks/realsize_loop.py --out /tmp/realsize-loop     # ~20 min and ~10 GB on 2 cores

OUT/realsize_loop.json holds each stage's wall time and peak RSS; OUT/logs/ each command's output.
Every process runs with one torch thread. The models take ~6 GB of disk under OUT; --keep leaves them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.load_test import AppProcess, free_port  # noqa: E402

SECRET = "realsize-loop"
DURATION = 1.0


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False",
            "MUSICRL_ADMIN_SECRET": SECRET, "HF_HUB_OFFLINE": "1"}  # fmt: skip


def gib(kib: int) -> float:
    return round(kib / 2**20, 2)


def app_peak(app: AppProcess) -> float:
    """The app process's peak RSS so far (VmHWM)."""
    for line in Path(f"/proc/{app.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return gib(int(line.split()[1]))
    return float("nan")


def make_models(out: Path) -> None:
    """Stage 1 (run as `--make-models OUT` in its own process): random real-size models, save_pretrained."""
    import torch

    from musicrl.model.realsize import save_random_musicgen_small
    from musicrl.rewards.realsize import save_random_heads, save_random_larger_clap

    torch.set_num_threads(1)
    for seed in (0, 1):
        save_random_musicgen_small(out / f"musicgen-seed{seed}", seed=seed)
    save_random_larger_clap(out / "clap")
    save_random_heads(out / "clap", out / "heads")


def run(cmd: list[str], log: Path) -> dict:
    """A command in its own process: wall time and that process's peak RSS (wait4). This process stays
    small (no torch): a child's peak counts what it had before exec, the parent's pages."""
    print(f"[realsize] {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"[realsize] failed (exit {proc.returncode}); last lines of {log}:\n{log.read_text()[-3000:]}")
    return {"wall_s": round(time.monotonic() - t0, 1), "peak_rss_gib": gib(usage.ru_maxrss)}


def musicrl(args: list[str], log: Path) -> dict:
    return run([sys.executable, "-m", "musicrl.cli", *args], log)


def vote(app: AppProcess, n: int, prompts: list[str]) -> dict:
    """Stage 3: n pairs generated and voted on through the API, one session (a cookie jar)."""
    import httpx

    rng = random.Random(0)
    t0, gen_s = time.monotonic(), []
    with httpx.Client(base_url=app.url, timeout=600) as client:
        for i in range(n):
            t1 = time.monotonic()
            r = client.post("/api/generate", json={"prompt": prompts[i % len(prompts)], "duration_s": DURATION})
            if r.status_code != 200:
                raise SystemExit(f"[realsize] generate: {r.status_code} {r.text[:300]}")
            gen_s.append(time.monotonic() - t1)
            pair = r.json()
            for c in pair["clips"]:
                if client.get(c["url"]).status_code != 200:
                    raise SystemExit(f"[realsize] clip {c['url']} not served")
            time.sleep(DURATION)  # a listen is never longer than the pair has existed
            ms = int(1000 * DURATION)
            r = client.post("/api/vote", json={"pair": pair["pair"], "choice": rng.choice("ab"),
                                               "listen_ms_a": ms, "listen_ms_b": ms})  # fmt: skip
            if r.status_code != 200:
                raise SystemExit(f"[realsize] vote: {r.status_code} {r.text[:300]}")
    return {"wall_s": round(time.monotonic() - t0, 1), "votes": n,
            "generate_pair_s": round(sum(gen_s) / len(gen_s), 1)}  # fmt: skip


def served(app: AppProcess) -> list[dict]:
    import httpx

    return httpx.get(app.url + "/api/admin/models", headers={"X-Admin-Secret": SECRET}, timeout=60).json()["models"]


def hot_reload(app: AppProcess, timeout_s: float) -> dict:
    """Stage 9: wait until the app serves OUT/musicrl-u/final, then one more pair through the API."""
    import httpx

    t0 = time.monotonic()
    while not any(str(m.get("checkpoint") or "").endswith("final") for m in served(app)):
        if time.monotonic() - t0 > timeout_s:
            raise SystemExit(f"[realsize] the app did not pick up the final checkpoint: {served(app)}")
        time.sleep(1)
    waited = time.monotonic() - t0
    with httpx.Client(base_url=app.url, timeout=600) as client:
        r = client.post("/api/generate", json={"prompt": "lofi hip hop beat", "duration_s": DURATION})
        if r.status_code != 200:
            raise SystemExit(f"[realsize] generate after the reload: {r.status_code} {r.text[:300]}")
    return {"wall_s": round(time.monotonic() - t0, 1), "waited_s": round(waited, 1),
            "served": [m.get("model") for m in served(app)]}  # fmt: skip


def train_args(preset: str, base: Path, out_dir: Path, reward: list[str]) -> list[str]:
    return ["train", "--config", preset, f"model={base}", f"out_dir={out_dir}", *reward, "lora_rank=16", "steps=2",
            f"duration_s={DURATION}", "prompts_per_step=1", "samples_per_prompt=2", "grad_accum=1",
            "checkpoint_every=1", "eval_every=2", "eval_prompts_count=2", "device=cpu", "--threads", "1"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/realsize-loop", help="run directory (default /tmp/realsize-loop)")
    p.add_argument("--votes", type=int, default=12, help="pairs voted on through the API (default 12)")
    p.add_argument("--keep", action="store_true", help="keep the model directories (~6 GB)")
    p.add_argument("--make-models", action="store_true", help=argparse.SUPPRESS)  # stage 1's own process
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if args.make_models:
        make_models(out)
        return 0
    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    os.environ.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    from musicrl.presets import load_prompts

    stages: dict = {}
    report = {"stages": stages, "args": vars(args), "duration_s": DURATION}
    stages["1 models"] = run([sys.executable, __file__, "--make-models", "--out", str(out)], out / "logs" / "models.log")
    seed0, seed1, clap, logs = out / "musicgen-seed0", out / "musicgen-seed1", out / "clap", out / "logs"
    (out / "musicrl-u").mkdir()
    app = AppProcess(str(seed0), out / "app", free_port(), logs / "app.log",
                     extra=("--model", str(seed1), "--models-dir", str(out / "musicrl-u"), "--reload-every", "5",
                            "--min-listen", "0.5"))  # fmt: skip
    app.env = env()
    t = time.monotonic()
    try:
        app.start(timeout_s=900)
        stages["2 app start"] = {"wall_s": round(time.monotonic() - t, 1), "peak_rss_gib": app_peak(app)}
        stages["3 votes"] = {**vote(app, args.votes, load_prompts("music-train")), "peak_rss_gib": app_peak(app)}
        votes = out / "votes.jsonl"
        stages["4 export"] = musicrl(["votes", "export", "--db", f"sqlite:///{out / 'app' / 'votes.db'}", "--data-dir",
                                      str(out / "app"), "--format", "jsonl", "--out", str(votes)], logs / "export.log")  # fmt: skip
        stages["5 train-reward preference"] = musicrl(
            ["train-reward", "preference", "--votes", str(votes), "--backbone", str(clap), "--out", str(out / "preference"),
             "--threads", "1"], logs / "train-reward.log")  # fmt: skip
        stages["6 train rl/small/musicrl-u"] = musicrl(train_args(
            "rl/small/musicrl-u", seed0, out / "musicrl-u", [f"reward.components.user.model={out / 'preference'}"]),
            logs / "train-u.log")  # fmt: skip
        stages["7 train rl/small/musicrl-r"] = musicrl(train_args(
            "rl/small/musicrl-r", seed0, out / "musicrl-r",
            [f"reward.components.clap.model={clap}", f"reward.components.quality.model={out / 'heads' / 'quality'}"]),
            logs / "train-r.log")  # fmt: skip
        stages["8 eval"] = musicrl(["eval", "--models", f"{seed0},{out / 'musicrl-u' / 'final'}", "--prompts", "music-eval",
                                    "--num-prompts", "2", "--duration", str(DURATION), "--rewards",
                                    f"clap={clap},quality={out / 'heads' / 'quality'},user={out / 'preference'}",
                                    "--threads", "1", "--out", str(out / "eval.json")], logs / "eval.log")  # fmt: skip
        stages["9 hot reload"] = {**hot_reload(app, 600), "peak_rss_gib": app_peak(app)}
        report["eval"] = json.loads((out / "eval.json").read_text())
    finally:
        report["app_peak_rss_gib"] = app_peak(app) if app.proc and app.proc.poll() is None else None
        app.stop()
        (out / "realsize_loop.json").write_text(json.dumps(report, indent=2) + "\n")
        if not args.keep:
            for d in ("musicgen-seed0", "musicgen-seed1", "clap", "musicrl-u", "musicrl-r"):
                shutil.rmtree(out / d, ignore_errors=True)
    print("| stage | wall (s) | peak RSS (GiB) |\n|---|---|---|")
    for name, s in stages.items():
        print(f"| {name} | {s['wall_s']} | {s['peak_rss_gib']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
