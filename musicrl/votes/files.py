"""Durable files of the vote store: clip WAV bytes (deterministic, so they hash into the clip's id), a
clip's codec tokens (`CODES_SUFFIX`, a NumPy .npy file beside its WAV) and atomic writes (temp file,
fsync, rename, fsync of the directory), so no reader sees a partial file."""

from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path

import numpy as np

from musicrl.errors import UserError


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono float audio [S] -> 16-bit PCM WAV bytes (deterministic: `clip_id` hashes them)."""
    import soundfile as sf

    a = np.asarray(audio)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1 or a.size == 0:
        raise UserError(f"a clip must be mono audio of shape [S] with S > 0, got shape {tuple(np.shape(audio))}")
    if not np.all(np.isfinite(a)):
        raise UserError("a clip contains NaN or infinite samples")
    if int(sample_rate) <= 0:
        raise UserError(f"sample rate must be positive, got {sample_rate}")
    pcm = np.round(np.clip(a.astype(np.float64), -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    sf.write(buf, pcm, int(sample_rate), format="WAV", subtype="PCM_16")
    return buf.getvalue()


def clip_id(wav: bytes, identity: dict, key: bytes) -> str:
    """A clip's id: an HMAC (keyed by the store's secret) of its WAV bytes and of who made it and how
    (model, version, prompt, seed, settings, as canonical JSON). The same clip stored twice is one
    clip; the same audio made by another model or for another prompt (a degenerate model's silence,
    two identical checkpoints) is another clip, so a vote on it names the model that made it. The key
    keeps the arena blind: a client holding a clip and its id cannot test a guess of the model."""
    import hashlib
    import hmac
    import json

    h = hmac.new(key, wav, hashlib.sha256)
    h.update(b"\0" + json.dumps(identity, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


CODES_SUFFIX = ".codes.npy"  # clips/ab/<id>.wav -> clips/ab/<id>.codes.npy: the tokens it was decoded from


def codes_bytes(codes) -> bytes:
    """A clip's codes [K, T] (integers >= 0) -> the bytes of an int32 .npy file (no pickle)."""
    c = np.asarray(codes)
    if c.ndim != 2 or c.size == 0 or not np.issubdtype(c.dtype, np.integer) or c.min() < 0 or c.max() >= 2**31:
        raise UserError(f"a clip's codes are non-negative integers of shape [K, T], got {c.dtype} {tuple(c.shape)}")
    buf = io.BytesIO()
    np.save(buf, c.astype(np.int32), allow_pickle=False)
    return buf.getvalue()


def read_codes(path: str | os.PathLike) -> np.ndarray:
    """The codes [K, T] (int64) of a .npy file written by `codes_bytes`; one-line error if unreadable."""
    try:
        c = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read codes file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if c.ndim != 2 or not np.issubdtype(c.dtype, np.integer):
        raise UserError(f"codes file {path} holds {c.dtype} {tuple(c.shape)}, not integer codes [K, T]")
    return c.astype(np.int64)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that it is either absent, or whole and durable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself is durable
    finally:
        os.close(dfd)


def regular_file_in(path: Path, root: Path) -> bool:
    """`path` is a regular file, not a symlink, whose real location is inside `root`'s (so neither
    it nor a directory on the way was swapped for a link to somewhere else)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
