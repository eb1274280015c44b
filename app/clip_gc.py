"""Clips nobody voted on: capped in number, and their files removed once their pairs expired.

Every generate stores two clips, voted on or not, so a client that generates and never votes
fills the disk. `ClipJanitor`:

- `served(clip_ids, now)`: a pair was served; its clip files' modification time is set to now, so a clip
  served again (the same clip: the same audio from the same model, prompt, seed and settings) counts
  from its latest pair.
- `sweep(now)`: removes the files of every clip that no vote names (`musicrl.votes.live.LiveVotes.
  voted`, after a refresh) and whose files are older than the token lifetime plus a grace period:
  no pair that could still take a vote shows it. A clip named by any vote (counted or not) is
  never touched. The clip's row stays (the tables are append-only); a clip whose files are gone
  is a 404, and the same clip generated again is written again.
- `admit(now)`: before a generation. Runs a sweep every `every_s`; when the unvoted clips on disk
  would pass the cap it sweeps at once, and if that frees too little the generation is refused
  with `Busy` (HTTP 503, Retry-After) until pairs expire or get votes.

Only files named `<64 hex digits>.<suffix>` in the clips dir's two-character folders are clips
(a WAV, and any other file the store keeps beside it); anything else is left alone.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Sequence

GRACE_S = 60.0  # beyond the token lifetime: clock differences between replicas, a vote in flight
_CLIP_FILE = re.compile(r"^([0-9a-f]{64})\.[A-Za-z0-9.]+$")


class ClipsFull(Exception):
    """Too many clips nobody voted on are stored (HTTP 503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ClipJanitor:
    def __init__(self, clips_dir: Path, live, token_ttl_s: float, max_unvoted: int, every_s: float = 600.0):
        self.clips_dir, self._live, self.ttl_s = Path(clips_dir), live, float(token_ttl_s)
        self.max_unvoted, self.every_s = int(max_unvoted), float(every_s)
        self.unvoted = 0  # clips on disk without a vote, as of the last sweep, plus those served since
        self._last_sweep: float | None = None
        self._lock = threading.Lock()

    def _clip_files(self) -> dict[str, list[Path]]:
        out: dict[str, list[Path]] = {}
        try:
            folders = [e for e in os.scandir(self.clips_dir) if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return out
        for folder in folders:
            for e in os.scandir(folder.path):
                m = _CLIP_FILE.match(e.name)
                if m and e.is_file(follow_symlinks=False):
                    out.setdefault(m.group(1), []).append(Path(e.path))
        return out

    def sweep(self, now: float) -> int:
        """Remove the files of expired clips without a vote; returns how many clips were removed."""
        with self._lock:
            return self._sweep(now)

    def _sweep(self, now: float) -> int:
        self._live.refresh()
        files = self._clip_files()
        voted = self._live.voted(files)
        cutoff = now - self.ttl_s - GRACE_S
        removed = kept = 0
        for clip_id, paths in files.items():
            if clip_id in voted:
                continue
            if any(_mtime(p) > cutoff for p in paths):  # a pair showing it may still take a vote
                kept += 1
                continue
            for p in paths:
                p.unlink(missing_ok=True)
            removed += 1
        self.unvoted, self._last_sweep = kept, now
        return removed

    def admit(self, now: float, new_clips: int = 2) -> None:
        """Before a generation of `new_clips` clips: sweep when due; `ClipsFull` when over the cap."""
        with self._lock:
            if self._last_sweep is None or now - self._last_sweep >= self.every_s:
                self._sweep(now)
            if self.max_unvoted and self.unvoted + new_clips > self.max_unvoted:
                if now - self._last_sweep >= 1.0:  # at most one sweep a second while full
                    self._sweep(now)
                if self.unvoted + new_clips > self.max_unvoted:
                    raise ClipsFull("the server holds too many clips nobody voted on; try again later", 60)

    def served(self, clip_ids: Sequence[str], now: float) -> None:
        """A pair of clips was served at `now`: their files count from now."""
        for clip_id in clip_ids:
            for p in (self.clips_dir / clip_id[:2]).glob(f"{clip_id}.*"):
                try:
                    os.utime(p, (now, now), follow_symlinks=False)
                except OSError:
                    pass  # gone meanwhile: a sweep has nothing to remove
        with self._lock:
            self.unvoted += len(clip_ids)


def _mtime(path: Path) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return float("inf")  # gone: nothing to remove
