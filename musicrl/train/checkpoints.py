"""The layout of a run directory's checkpoints, for the trainer that writes them and the app that serves them.

    OUT/checkpoints/step-000050/   a checkpoint: the model in transformers format, its tokenizer,
                                   trainer_state.pt (optimizer, step, config, ...) and musicrl.json
    OUT/checkpoints/.step-N.tmp/   a save in progress (renamed into place when complete)
    OUT/final/                     the finished model, without trainer_state.pt
    OUT/config.json                the run's config

A checkpoint is written into a temporary directory and renamed, so a reader never sees half of one.
Step numbers compare as integers, so step-10 is newer than step-9 however they are padded.
The trainers (RL, DPO) start a run with `begin`, and write and read checkpoints through `save`,
`write_final` and `load_state`/`restore_model`.
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
INFO_KEYS = ("step", "config", "reference", "votes_hash")  # what the trainer state must hold, copied into INFO
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


def save(out_dir: str | Path, step: int, model, tokenizer, state: dict, keep: int, weights: dict | None = None) -> Path:
    """Write `checkpoints/step-N` atomically: `model` (a MusicgenForConditionalGeneration; a peft
    decoder is saved merged, so the checkpoint loads without peft) and `tokenizer` in transformers
    format, `state` as trainer_state.pt and its INFO_KEYS as musicrl.json; then keep the `keep`
    newest step checkpoints. `weights`: the model's state dict to write in place of its own (FSDP:
    the whole tensors of a sharded model)."""
    import copy

    import torch

    final = step_dir(out_dir, step)
    with atomic_dir(final) as tmp:
        if hasattr(model.decoder, "merge_and_unload"):  # LoRA: merge into a copy; training keeps its adapters
            peft_decoder = model.decoder
            model.decoder = copy.deepcopy(peft_decoder).merge_and_unload()
            try:
                model.save_pretrained(tmp)
            finally:
                model.decoder = peft_decoder
        else:
            model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / TRAINER_STATE)
        (tmp / INFO).write_text(json.dumps({k: state[k] for k in INFO_KEYS}, indent=2))
    prune(out_dir, keep)
    return final


def adapter_state(model) -> dict | None:
    """The LoRA adapter tensors of a peft decoder (what `restore_model` needs on resume); None without LoRA."""
    if not hasattr(model.decoder, "merge_and_unload"):
        return None
    return {k: v for k, v in model.decoder.state_dict().items() if "lora_" in k}


def write_final(out_dir: str | Path, last: Path) -> Path:
    """`out_dir/final`: the checkpoint `last` without its trainer state: the finished, servable model."""
    with atomic_dir(final_dir(out_dir)) as tmp:
        shutil.copytree(last, tmp, ignore=shutil.ignore_patterns(TRAINER_STATE), dirs_exist_ok=True)
    return final_dir(out_dir)


# Settings that say where a run writes and how often, not what it learns: a resumed run may change them
# (a run extended to more steps, with other checkpoint cadence, continued in a copied directory; `fsdp`:
# how its state is laid out over the processes, the checkpoint holding whole tensors either way).
BOOKKEEPING = ("steps", "out_dir", "eval_every", "checkpoint_every", "keep_checkpoints", "log_audio", "fsdp")


def load_state(path: Path, config: dict, device) -> dict:
    """A checkpoint's trainer state, checked against the resuming run's config: only BOOKKEEPING may
    change, and settings newer than the checkpoint (keys its config lacks) take the resuming run's values."""
    import torch

    from musicrl.errors import UserError

    state = torch.load(path / TRAINER_STATE, weights_only=False, map_location=device)
    changed = sorted(k for k, v in state["config"].items() if k not in BOOKKEEPING and (k not in config or config[k] != v))
    if changed:
        raise UserError(f"{path} was written with another {', '.join(changed)} (only {', '.join(BOOKKEEPING)} may change on resume)")
    return state


def restore_model(model, path: Path, state: dict) -> None:
    """Put a checkpoint's weights back into the training `model`: its LoRA adapters from the trainer
    state, else every weight from the saved model (into an FSDP-sharded model: each process its shard)."""
    import torch
    from transformers import MusicgenForConditionalGeneration

    from musicrl.train.distributed import copy_full

    if state.get("decoder") is not None:
        model.decoder.load_state_dict(state["decoder"], strict=False)
        return
    saved = MusicgenForConditionalGeneration.from_pretrained(path, dtype=torch.float32).state_dict()
    current = model.state_dict()
    if any(type(t).__name__ == "DTensor" for t in current.values()):
        copy_full(list(current.values()), [saved[k] for k in current])
    else:
        model.load_state_dict(saved)


def begin(out_dir: str | Path, config: dict, resume: bool, load, write: bool = True) -> int:
    """Start or continue a run in `out_dir`: with `resume`, `load(path) -> step` its newest resumable
    checkpoint (a one-line error if there is none); with `write` (the one process of several that
    writes), write config.json. Returns the step to start from."""
    from musicrl.errors import UserError

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    if resume:
        latest = latest_checkpoint(out)
        if latest is None:
            raise UserError(f"nothing to resume in {out}/checkpoints")
        start = load(latest)
    if write:
        (out / "config.json").write_text(json.dumps(config, indent=2))
    return start
