"""The layout of a run directory's checkpoints, for the trainer that writes them and the app that serves them.

    OUT/checkpoints/step-000050/   a checkpoint: the model in transformers format, its tokenizer,
                                   trainer_state.pt (optimizer, step, config, ...) and musicrl.json
    OUT/checkpoints/.step-N.tmp/   a save in progress (renamed into place when complete)
    OUT/final/                     the finished model, without trainer_state.pt

A checkpoint is written into a temporary directory and renamed, so a reader never sees half of one.
Step numbers compare as integers, so step-10 is newer than step-9 however they are padded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # one file, or shards and their index
TRAINER_STATE = "trainer_state.pt"
INFO = "musicrl.json"  # step, config, reference, votes_hash: readable without torch
_STEP = re.compile(r"^step-(\d+)$")


def step_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step:06d}"


def final_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "final"


def is_complete(path: Path) -> bool:
    """A checkpoint dir that can be loaded: config.json and the weights are there."""
    return path.is_dir() and (path / "config.json").is_file() and any((path / w).is_file() for w in WEIGHTS)


def step_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """The complete `checkpoints/step-N` dirs of a run, oldest first (by N as an integer)."""
    try:
        entries = list((Path(out_dir) / "checkpoints").iterdir())
    except OSError:  # no checkpoints dir (yet), or not a directory
        return []
    found = [(int(m.group(1)), p) for p in entries if (m := _STEP.match(p.name)) and is_complete(p)]
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest step checkpoint that a run can resume from (it has its trainer state); None if none."""
    resumable = [p for _, p in step_checkpoints(out_dir) if (p / TRAINER_STATE).is_file()]
    return resumable[-1] if resumable else None


def newest_checkpoint(out_dir: str | Path) -> Path | None:
    """What a run serves now: `final/` if complete, else its newest complete step checkpoint."""
    if is_complete(final_dir(out_dir)):
        return final_dir(out_dir)
    steps = step_checkpoints(out_dir)
    return steps[-1][1] if steps else None


def read_info(path: str | Path) -> dict:
    """A checkpoint's musicrl.json (step, config, reference, votes_hash); {} when it has none."""
    try:
        return json.loads((Path(path) / INFO).read_text())
    except (OSError, ValueError):
        return {}


@contextmanager
def atomic_dir(final: Path):
    """Yields a temporary sibling of `final` to write into; on success it replaces `final` at once."""
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def prune(out_dir: str | Path, keep: int) -> None:
    """Delete all but the `keep` newest step checkpoints."""
    for _, old in step_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
