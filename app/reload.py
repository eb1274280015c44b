"""Serving the newest checkpoint of a training run, swapped in while the app runs.

- which checkpoint a models dir (a `musicrl train` out_dir) serves: `musicrl.train.checkpoints.
  newest_checkpoint`, the layout the trainer writes (`final/`, else the highest complete step).
- `ModelSet`: the models of `musicrl app`, fixed ones (`--model`) and models dirs (`--models-dir`).
  `refresh()` is the arena's reload hook: it loads only what changed (a newer checkpoint, rewritten
  weights in a `--model` directory) and returns the list to serve. A load that fails (a checkpoint
  rotated away mid-read) keeps the model served so far and is retried on the next refresh.
- `Poller`: a daemon thread calling `arena.reload_models()` every N seconds.

Loading happens in the reload hook, outside the arena's generation lock, so requests go on being
served by the old model meanwhile; the arena then swaps the list under that lock, between two
generations. Votes are unaffected: they name stored clips, and each clip row carries the model id
and weights version that made it, so a vote on a pair made before the swap counts for the old
version, which stays on the leaderboard as its own `model_id@version` row.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from musicrl.errors import UserError
from musicrl.train.checkpoints import WEIGHTS, newest_checkpoint


def stamp(path: Path) -> tuple:
    """Identity of a checkpoint's contents: a rewritten `final/` (a longer run) changes it though
    the path is the same (new inodes and mtimes)."""
    out: list = [str(path.resolve())]
    for name in ("config.json", *WEIGHTS):
        try:
            st = os.stat(path / name)
        except OSError:
            continue
        out.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


@dataclass
class _Source:
    name: str  # the served model id: --model as given, or the models dir
    models_dir: bool
    stamp: tuple | None = None
    checkpoint: Path | None = None
    generator: object | None = None


class ModelSet:
    """The served models. `load(target, model_id)` builds one generator (target: a name or a dir).

    `resolve_local(name)`: the local directory a `--model` name loads from, or None (a hub id: loaded
    once, never re-read).
    """

    def __init__(
        self,
        models: Sequence[str],
        models_dirs: Sequence[str | Path],
        load: Callable[[str, str], object],
        resolve_local: Callable[[str], Path | None] = lambda name: Path(name) if Path(name).is_dir() else None,
        log: Callable[[str], None] = lambda msg: print(f"musicrl app: {msg}", file=sys.stderr, flush=True),
    ):
        self._sources = [_Source(str(m), False) for m in models]
        for d in models_dirs:
            if not Path(d).expanduser().is_dir():
                raise UserError(f"--models-dir {d} is not a directory")
            self._sources.append(_Source(str(Path(d)), True))
        names = [s.name for s in self._sources]
        if not names:
            raise UserError("no models to serve: give --model or --models-dir")
        if len(set(names)) != len(names):
            raise UserError("each --model / --models-dir may be given once")
        self._load, self._resolve_local, self._log = load, resolve_local, log
        self._lock = threading.Lock()

    def _locate(self, s: _Source) -> tuple[str | None, tuple | None, Path | None]:
        """(what to load, its stamp, the checkpoint dir) for a source; (None, None, None): nothing yet."""
        if s.models_dir:
            ckpt = newest_checkpoint(Path(s.name).expanduser())
            return (None, None, None) if ckpt is None else (str(ckpt), stamp(ckpt), ckpt)
        local = self._resolve_local(s.name)
        return s.name, (stamp(local) if local is not None else ("hub", s.name)), local

    def refresh(self, strict: bool = False) -> list:
        """Load what changed since the last call; return the generators to serve (in source order).

        `strict` (start-up): a failed load raises, and so does having nothing to serve. Otherwise a
        failure is logged and the source keeps its current model.
        """
        with self._lock:
            for s in self._sources:
                try:
                    target, st, ckpt = self._locate(s)
                    if target is None or st == s.stamp:
                        continue
                    gen = self._load(target, s.name)
                except Exception as e:  # noqa: BLE001 (a background reload must survive any load error)
                    if strict:
                        raise
                    self._log(f"keeping the current {s.name}: reload failed: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
                    continue
                setattr(gen, "checkpoint", str(ckpt) if ckpt is not None else None)
                old = s.generator
                s.stamp, s.checkpoint, s.generator = st, ckpt, gen
                version = getattr(gen, "version", "")[:8]
                where = f" ({ckpt})" if s.models_dir else ""
                if old is None:
                    self._log(f"serving {s.name}@{version}{where}")
                elif getattr(old, "version", None) != getattr(gen, "version", None):
                    self._log(f"new weights: {s.name}@{getattr(old, 'version', '')[:8]} -> {s.name}@{version}{where}")
            served = [s.generator for s in self._sources if s.generator is not None]
            if strict and not served:
                waiting = ", ".join(s.name for s in self._sources if s.models_dir)
                raise UserError(f"nothing to serve yet: no complete checkpoint in {waiting}")
            for s in self._sources:
                if strict and s.models_dir and s.generator is None:
                    self._log(f"{s.name} has no complete checkpoint yet; it joins when one appears")
            return served


class Poller:
    """Calls `reload()` every `every_s` seconds on a daemon thread until `stop()`."""

    def __init__(self, reload: Callable[[], object], every_s: float, log: Callable[[str], None] | None = None):
        if not every_s > 0:
            raise UserError(f"the reload interval must be > 0 s, got {every_s}")
        self._reload, self._every = reload, float(every_s)
        self._log = log or (lambda msg: print(f"musicrl app: {msg}", file=sys.stderr, flush=True))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="musicrl-reload", daemon=True)

    def start(self) -> "Poller":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._reload()
            except Exception as e:  # noqa: BLE001 (keep polling; the served models stay as they are)
                self._log(f"model reload failed: {e}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __enter__(self) -> "Poller":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
