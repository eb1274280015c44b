"""Arguments and checks that several commands share: device, CPU threads, output directories."""

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


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0: torch's choice, one per core). On a CPU that another job "
                        "shares, 1 is much faster for the tiny models")  # fmt: skip


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads (0 or None: leave torch's choice); a negative count is a one-line error."""
    if threads is None or threads == 0:
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
