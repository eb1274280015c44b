"""Arguments and checks that several commands share: device, CPU threads, output directories, rewards."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from musicrl.errors import UserError


APP_DATA_DIR = "./musicrl-data"  # where `musicrl app` keeps its clips and, by default, its SQLite vote store


def store_url(db: str | None, data_dir: str | Path | None) -> str:
    """The vote database: `db` as given, else the SQLite file the app creates in `data_dir` (default its own)."""
    return db or f"sqlite:///{Path(data_dir or APP_DATA_DIR).expanduser().resolve() / 'votes.db'}"


def add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help=f"auto, cpu, cuda, cuda:1, ... (default {default}; auto = cuda if available)")


def add_rerank(p: argparse.ArgumentParser) -> None:
    """`--rerank`, the rewards that pick among `--best-of` candidates (`generate`, `app`); `load_rewards` reads it."""
    p.add_argument("--rerank", default="clap=tiny",
                   help="with --best-of: name=model pairs scoring the clips, as `musicrl eval --rewards`: clap, "
                        "quality, or any other name for a preference model directory; several are standardised "
                        "and summed (default clap=tiny: the clip that best fits the prompt; with a real model name a "
                        "real CLAP, e.g. clap=laion/larger_clap_music)")  # fmt: skip


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads. Default: 1 when every model is a shipped tiny one (a decoding step is "
                        "~170 small ops, and with 2 threads each waits for a core that another job holds: up to "
                        "10x slower on a shared CPU, and only ~28%% faster on a quiet one); otherwise 0, torch's "
                        "choice, one per core")  # fmt: skip


def apply_threads(threads: int | None, models=()) -> None:
    """Set torch's CPU threads: `threads`, or None: 1 if every one of `models` is a shipped tiny model
    (docs/results/rollout-speed.md), else torch's choice; 0 leaves torch's choice; negative: one-line error."""
    if threads is None:
        from musicrl.model.hub import SHIPPED

        threads = 1 if models and all(str(m) in SHIPPED for m in models) else 0
    if threads == 0:
        return
    if threads < 0:
        raise UserError(f"--threads must be >= 0, got {threads}")
    import torch

    torch.set_num_threads(threads)


def writable_dir(path: str | Path) -> Path:
    """Create `path` if needed; a one-line error when it cannot be created or written."""
    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {out}: {e.strerror}") from None
    if not out.is_dir() or not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"output directory {out} is not writable")
    return out


def load_rewards(spec: str, flag: str, device) -> dict:
    """'name=model,...' -> {name: reward (audio [B, 1, S], sample rate, prompts) -> [B]}: `clap` and
    `quality` by their names, any other name a preference model (`musicrl train-reward preference`).
    One CLAP backbone is shared by the components that name the same one. `flag` names the option in errors."""
    comps = {}
    for item in filter(None, spec.split(",")):
        name, _, model = item.partition("=")
        if not name or not model:
            raise UserError(f"{flag} item {item!r} is not name=model (e.g. clap=tiny)")
        comps[name] = {"type": name if name in ("clap", "quality") else "preference", "model": model}
    if not comps:
        raise UserError(f"{flag} names no reward (e.g. clap=tiny)")
    from musicrl.rewards.combine import build_reward

    return build_reward({"components": comps, "normalize": False}, device).eval().rewards
