"""Graded audio degradations: the negatives the tiny quality model learns from.

`degrade(audio, sr, kind, level, rng)`: level 0 returns the audio unchanged, 1 is severe, and the
damage grows monotonically in between. For a fixed rng state the random parts (the noise, the
dropout positions) are the same at every level, so a higher level is the same damage, only more.
numpy only; mono float [S].
"""

from __future__ import annotations

import numpy as np

from musicrl.errors import UserError

DEGRADATIONS = ("noise", "clipping", "dropouts", "lowpass", "bitcrush")

_NOISE_SNR_DB = (45.0, 0.0)  # SNR at level -> 0 and at level 1
_CLIP_DB = 30.0  # clipping threshold at level 1, below the peak
_DROPOUT_FRACTION = 0.5  # share of the clip silenced at level 1
_DROPOUT_MS = (10.0, 80.0)  # length range of one dropout
_LOWPASS_HZ = 250.0  # cutoff at level 1
_BITS = (16.0, 3.0)  # bit depth at level 0 and 1
_HOLD = 6  # sample-and-hold factor at level 1 (sample-rate reduction)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _noise(x, sr, level, rng):
    snr_db = _NOISE_SNR_DB[0] + (_NOISE_SNR_DB[1] - _NOISE_SNR_DB[0]) * level
    n = rng.standard_normal(len(x))
    return x + n * (max(_rms(x), 1e-4) * 10 ** (-snr_db / 20))


def _clipping(x, sr, level, rng):
    """Hard clip at a threshold falling to -30 dB below the peak, loudness (RMS) kept."""
    peak = float(np.abs(x).max())
    if peak == 0:
        return x.copy()
    t = peak * 10 ** (-_CLIP_DB * level / 20)
    y = np.clip(x, -t, t)
    return y * (_rms(x) / max(_rms(y), 1e-12))


def _dropouts(x, sr, level, rng):
    """Silence random 10-80 ms stretches until `level * 50%` of the clip is gone."""
    n = len(x)
    target = _DROPOUT_FRACTION * level * n
    lo, hi = (int(ms * sr / 1000) for ms in _DROPOUT_MS)
    # drawn up to the most level 1 could need, whatever the level: positions do not depend on it
    count = int(np.ceil(_DROPOUT_FRACTION * n / max(lo, 1))) * 2 + 1
    starts = rng.integers(0, max(n - 1, 1), size=count)
    lengths = rng.integers(max(lo, 1), max(hi, 2), size=count)
    mask = np.ones(n, dtype=bool)
    gone = 0
    for s, length in zip(starts, lengths):
        if gone >= target:
            break
        gone += int(mask[s : s + length].sum())
        mask[s : s + length] = False
    return x * mask


def _lowpass(x, sr, level, rng):
    """4th-order Butterworth-shaped magnitude response (zero phase, by FFT), cutoff falling from
    above Nyquist to 250 Hz on a log scale."""
    top = 0.75 * sr  # 1.5x Nyquist: level ~0 barely touches the band
    fc = top * (_LOWPASS_HZ / top) ** level
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    gain = 1.0 / np.sqrt(1.0 + (f / fc) ** 8)
    return np.fft.irfft(np.fft.rfft(x) * gain, len(x))


def _bitcrush(x, sr, level, rng):
    """Fewer bits (16 -> 3) and, past level 0.2, sample-and-hold (rate / up to 6)."""
    bits = _BITS[0] + (_BITS[1] - _BITS[0]) * level
    hold = 1 + int(np.floor((_HOLD - 1) * level ** 2 + 1e-9))
    y = x
    if hold > 1:
        y = np.repeat(x[::hold], hold)[: len(x)]
    step = 2.0 / 2**bits
    return np.round(y / step) * step


_FUNCS = {"noise": _noise, "clipping": _clipping, "dropouts": _dropouts, "lowpass": _lowpass, "bitcrush": _bitcrush}


def degrade(audio, sr: int, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` (float [S]) with `kind` damage at `level` in [0, 1]; float32 [S], same length."""
    if kind not in _FUNCS:
        raise UserError(f"unknown degradation {kind!r}; choose from {', '.join(DEGRADATIONS)}")
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise UserError(f"degradation level must be in [0, 1], got {level}")
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise UserError(f"expected mono audio [S], got shape {x.shape}")
    if level == 0.0:
        return x.copy()
    y = _FUNCS[kind](x.astype(np.float64), int(sr), level, rng)
    return np.asarray(y, dtype=np.float32)

