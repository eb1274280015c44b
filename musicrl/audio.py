"""WAV files and resampling, shared by the corpus, generator and app.

Files: mono float32 in memory, 16-bit PCM WAV on disk (soundfile). Resampling: windowed-sinc
(Hann window, polyphase by the reduced rate ratio) in torch, so it runs batched and on the GPU.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from musicrl.errors import UserError


def _to_numpy_mono(audio) -> np.ndarray:
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().to("cpu", torch.float32).numpy()
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise UserError(f"expected mono audio [S] or [1, S], got shape {tuple(x.shape)}")
    return x


def write_wav(path: str | os.PathLike, audio, sr: int) -> Path:
    """Write mono audio (numpy or torch, [S] or [1, S], floats in [-1, 1]) as 16-bit PCM WAV.

    Samples outside [-1, 1] are clipped (PCM cannot hold them); NaN/inf are an error.
    """
    x = _to_numpy_mono(audio)
    if not np.all(np.isfinite(x)):
        raise UserError(f"audio for {path} has NaN or infinite samples")
    if int(sr) <= 0:
        raise UserError(f"sample rate must be positive, got {sr}")
    path = Path(path)
    try:
        sf.write(str(path), np.clip(x, -1.0, 1.0), int(sr), subtype="PCM_16", format="WAV")
    except (OSError, RuntimeError, sf.LibsndfileError) as e:
        raise UserError(f"cannot write {path}: {e}") from None
    return path


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(float32 mono [S] in [-1, 1], sample rate). Several channels are averaged."""
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [S, C]
    except (OSError, RuntimeError, sf.LibsndfileError) as e:
        raise UserError(f"cannot read audio file {path}: {e}") from None
    return x.mean(axis=1).astype(np.float32), int(sr)


def _sinc_kernel(orig: int, new: int, width: int, rolloff: float, dtype, device) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc filters [new, 1, taps] for the reduced ratio orig -> new."""
    base = min(orig, new) * rolloff  # cutoff below the lower Nyquist, in units of the reduced rates
    pad = math.ceil(width * orig / base)
    idx = torch.arange(-pad, pad + orig, dtype=torch.float64, device=device)[None, None] / orig  # [1, 1, taps]
    t = torch.arange(0, -new, -1, dtype=torch.float64, device=device)[:, None, None] / new + idx  # [new, 1, taps]
    t = (t * base).clamp(-width, width)
    window = torch.cos(t * math.pi / width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    return kernel.to(dtype), pad


def resample(
    audio: torch.Tensor, orig_sr: int, new_sr: int, lowpass_width: int = 16, rolloff: float = 0.945
) -> torch.Tensor:
    """Resample [..., S] from orig_sr to new_sr; output length ceil(S * new_sr / orig_sr).

    Band-limited to `rolloff` of the lower Nyquist rate; `lowpass_width` zero crossings per side.
    """
    if not isinstance(audio, torch.Tensor):
        raise UserError(f"resample takes a torch.Tensor, got {type(audio).__name__}")
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise UserError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return audio
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    dtype = audio.dtype if audio.is_floating_point() else torch.float32
    shape = audio.shape
    x = audio.reshape(-1, 1, shape[-1]).to(dtype)  # [B, 1, S]
    kernel, pad = _sinc_kernel(orig, new, lowpass_width, rolloff, dtype, audio.device)
    x = torch.nn.functional.pad(x, (pad, pad + orig))
    y = torch.nn.functional.conv1d(x, kernel, stride=orig)  # [B, new, frames]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # [B, frames * new]
    length = math.ceil(new * shape[-1] / orig)
    return y[:, :length].reshape(*shape[:-1], length)
