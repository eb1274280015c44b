"""Attribute estimators from audio alone: tempo (bpm and word), register, mode, drums.

They check that the codec keeps a clip's musical attributes and that generated clips match their
prompts. numpy only. Tuned for (and measured on) the tiny world's corpus, `musicrl.tiny.synth`; they are
plain signal processing and also give sensible answers on real music, less reliably.
"""

from __future__ import annotations

import numpy as np

from musicrl.errors import UserError
from musicrl.tiny.synth import TEMPO_WORDS

MIN_BPM, MAX_BPM = 50.0, 180.0
# Krumhansl-Kessler probe-tone profiles, index 0 = tonic
_KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# melody fundamentals in the corpus: low register ~110-415 Hz, high ~880-3300 Hz; the split sits between
_REGISTER_SPLIT_HZ = 520.0
_BASS_PRIOR = 0.3  # weight of "the bass plays the tonic" against the profile correlation (in [-1, 1])


def _as_mono(audio, sr: int) -> np.ndarray:
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise UserError(f"expected mono audio [S] or [1, S], got shape {x.shape}")
    if sr <= 0:
        raise UserError(f"sample rate must be positive, got {sr}")
    if len(x) < sr // 4:
        raise UserError(f"audio too short to analyse: {len(x)} samples at {sr} Hz (need >= 0.25 s)")
    return x


def _stft_mag(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Magnitude STFT [F, T], Hann window, centred frames."""
    x = np.pad(x, (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]  # [T, n_fft]
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)).T


def _harmonic(mag: np.ndarray, width: int = 9) -> np.ndarray:
    """Suppress percussion: keep, per bin, at most the running median over time (HPSS-style)."""
    if mag.shape[1] < width:
        return mag
    pad = np.pad(mag, ((0, 0), (width // 2, width // 2)), mode="edge")
    med = np.median(np.lib.stride_tricks.sliding_window_view(pad, width, axis=1), axis=-1)
    return np.minimum(mag, med)


# ----------------------------------------------------------------------------------------- tempo


def onset_envelope(audio, sr: int, hop: int | None = None) -> tuple[np.ndarray, float]:
    """Spectral-flux onset strength [T] and its frame rate (frames per second)."""
    x = _as_mono(audio, sr)
    hop = hop or max(1, int(round(sr * 0.008)))
    n_fft = 1 << int(np.ceil(np.log2(sr * 0.032)))
    logmag = np.log1p(100.0 * _stft_mag(x, n_fft, hop))
    flux = np.maximum(np.diff(logmag, axis=1), 0.0).sum(axis=0)  # [T-1]
    edge = n_fft // hop + 1
    flux[:edge] = flux[-edge:] = 0.0  # frames reaching into the zero padding are not onsets
    k = max(1, int(round(0.1 * sr / hop)))  # remove the slow trend (loudness changes), keep onsets
    flux = np.maximum(flux - np.convolve(flux, np.ones(k) / k, mode="same"), 0.0)
    return flux.astype(np.float64), sr / hop


def _acf(env: np.ndarray) -> np.ndarray:
    env = env - env.mean()
    n = len(env)
    f = np.fft.rfft(env, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n]
    acf /= np.arange(n, 0, -1)  # unbiased: long lags see fewer overlapping frames
    return acf / (acf[0] + 1e-12)


def estimate_tempo(audio, sr: int) -> float:
    """Beats per minute in [50, 180], assuming the finest regular pulse (the tatum) is the 8th note.

    The tatum is the period whose multiples in the onset autocorrelation are strong while the points
    between them (halves, thirds) are weak. Doubling or tripling the period keeps the multiples but
    lands those in-between points on real onsets; halving it puts multiples on empty 16ths. So the
    comb settles the usual octave errors. bpm = 30 / tatum (two 8ths to the beat).
    """
    env, fps = onset_envelope(audio, sr)
    acf = _acf(env)
    limit = 0.75 * (len(acf) - 1)  # longer lags average too few frames to trust
    lags = np.arange(len(acf))
    bpms = np.arange(MIN_BPM, MAX_BPM + 0.1, 0.1)
    tatums = 30.0 * fps / bpms  # [C] frames per 8th note for each candidate
    k = np.arange(1, 1 + int(limit // tatums.min()))  # [M] multiples
    valid = k[None, :] * tatums[:, None] <= limit  # [C, M]

    def comb(offset: float) -> np.ndarray:  # [C] mean autocorrelation at (k - offset) * tatum
        vals = np.interp((k[None, :] - offset) * tatums[:, None], lags, acf)
        return (vals * valid).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)

    # off-grid points at halves catch a doubled period, at thirds a tripled one
    scores = comb(0.0) - np.maximum(comb(0.5), 0.5 * (comb(1 / 3) + comb(2 / 3)))
    scores[valid.sum(axis=1) == 0] = -np.inf
    return float(bpms[int(np.argmax(scores))])


def tempo_word(bpm: float) -> str:
    """The TEMPO_WORDS range nearest to bpm (in log-tempo)."""
    def dist(rng: tuple[int, int]) -> float:
        lo, hi = rng
        return 0.0 if lo <= bpm <= hi else min(abs(np.log(bpm / lo)), abs(np.log(bpm / hi)))
    return min(TEMPO_WORDS, key=lambda w: dist(TEMPO_WORDS[w]))


# ------------------------------------------------------------------------- register and mode


def _tonal_spectrum(audio, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Magnitudes [F, T] of the tonal part of 55-4000 Hz (percussion suppressed), and their freqs [F]."""
    x = _as_mono(audio, sr)
    n_fft = 4096 if sr >= 16000 else 2048  # ~4 Hz bins at 16 kHz: semitones resolved down to ~70 Hz
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    band = (freqs >= 55) & (freqs <= min(4000, sr / 2))
    return _harmonic(_stft_mag(x, n_fft, n_fft // 4)[band], width=5), freqs[band]


def _register_hz(mag: np.ndarray, freqs: np.ndarray) -> float:
    power = (mag**2).sum(axis=1)
    if power.sum() <= 0:
        return float("nan")
    return float(2 ** (np.log2(freqs) @ power / power.sum()))


def _chroma(mag: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    is_peak = np.zeros_like(mag, dtype=bool)
    is_peak[1:-1] = (mag[1:-1] >= mag[:-2]) & (mag[1:-1] >= mag[2:])
    pc = np.round(12 * np.log2(freqs / 440.0) + 9).astype(int) % 12  # 440 Hz is A (9)
    weight = (mag * is_peak).sum(axis=1) / np.sqrt(freqs / 100.0)
    out = np.bincount(pc, weights=weight, minlength=12)
    return out / max(out.sum(), 1e-12)


def register_hz(audio, sr: int) -> float:
    """A pitch height (Hz): the power-weighted geometric mean frequency of the tonal part, 55-4000 Hz."""
    return _register_hz(*_tonal_spectrum(audio, sr))


def estimate_register(audio, sr: int) -> str:
    """'low' or 'high'."""
    return _register_word(register_hz(audio, sr))


def _register_word(hz: float) -> str:
    return "high" if hz >= _REGISTER_SPLIT_HZ else "low"


def chroma(audio, sr: int) -> np.ndarray:
    """Pitch-class profile [12] (index 0 = C) of the tonal part, 55-4000 Hz, summing to 1.

    Only spectral peaks count (no window leakage into neighbouring pitch classes), and higher
    frequencies are weighted down by 1/sqrt(f) so that upper harmonics (the 3rd harmonic is a fifth
    up, the 5th a major third) weigh less than fundamentals.
    """
    return _chroma(*_tonal_spectrum(audio, sr))


def _bass_chroma(mag: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Pitch classes [12] of the lowest strong peak of each frame (within 25 dB of its loudest), summing to 1."""
    is_peak = np.zeros_like(mag, dtype=bool)
    is_peak[1:-1] = (mag[1:-1] >= mag[:-2]) & (mag[1:-1] >= mag[2:])
    strong = is_peak & (mag > 0) & (mag >= mag.max(axis=0, keepdims=True) * 10 ** (-25 / 20))
    lowest = np.argmax(strong, axis=0)  # [T] first strong bin per frame
    weight = mag[lowest, np.arange(mag.shape[1])] * strong.any(axis=0)
    pc = np.round(12 * np.log2(freqs / 440.0) + 9).astype(int) % 12
    out = np.bincount(pc[lowest], weights=weight, minlength=12)
    return out / max(out.sum(), 1e-12)


def key_scores(c: np.ndarray, bass: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{'major' | 'minor': [12] score of each tonic}: correlation of the chroma with the rotated
    Krumhansl-Kessler profile, plus a nudge (_BASS_PRIOR x the bass's share of the tonic) that settles
    relative-key confusions (C major vs A minor share their notes; the bass usually sits on the tonic)."""
    nudge = _BASS_PRIOR * bass if bass is not None else np.zeros(12)
    return {mode: np.array([np.corrcoef(c, np.roll(profile, tonic))[0, 1] for tonic in range(12)]) + nudge
            for mode, profile in (("major", _KK_MAJOR), ("minor", _KK_MINOR))}


def best_key(scores: dict[str, np.ndarray]) -> tuple[int, str]:
    """The best of the 24 keys in `key_scores`; the first in (major, minor) x tonic order on a tie."""
    best, best_r = (0, "major"), -np.inf
    for mode, r in scores.items():
        tonic = int(np.argmax(r))
        if r[tonic] > best_r:
            best, best_r = (tonic, mode), r[tonic]
    return best


def _key(c: np.ndarray, bass: np.ndarray | None = None) -> tuple[int, str]:
    return best_key(key_scores(c, bass))


def estimate_key(audio, sr: int) -> tuple[int, str]:
    """(tonic pitch class, 'major' | 'minor') by correlation with the Krumhansl-Kessler profiles."""
    mag, freqs = _tonal_spectrum(audio, sr)
    return _key(_chroma(mag, freqs), _bass_chroma(mag, freqs))


def estimate_mode(audio, sr: int) -> str:
    """'major' or 'minor'."""
    return estimate_key(audio, sr)[1]


# ----------------------------------------------------------------------------------------- drums

# log10 of the percussive share of the energy (bins above their running median over time, HPSS-style)
# in the kick's band (< 150 Hz) and the hats' (4-8 kHz), averaged: the corpus' drumless clips sit
# near -4.0, its drummed ones near -2.1, before and after the tiny codec; -2.8 splits them (98% of
# 300 clips either way). Which kit (kick and hats, or with a snare) is not told: the snare is a short
# noise burst that the codec's semitone frame smears, and no band feature tried beat chance through it.
DRUMS_PRESENT = "drums"  # what `estimate_drums` says of a clip with drums, kit unknown
_DRUMS_ON = -2.8


def percussive_level(audio, sr: int) -> float:
    """Mean log10 percussive energy share of the kick (< 150 Hz) and hi-hat (4-8 kHz) bands."""
    x = _as_mono(audio, sr)
    n_fft, hop = 512, max(1, sr // 125)
    mag = _stft_mag(x, n_fft, hop)
    f = np.fft.rfftfreq(n_fft, 1.0 / sr)
    total = float((mag**2).sum()) + 1e-12

    def perc(band: np.ndarray) -> float:  # the running median, most of the estimators' time, on a band's bins only
        m = mag[band]
        return float((np.clip(m - _harmonic(m, 17), 0, None) ** 2).sum())

    kick = perc(f < 150) / total
    hats = perc((f >= 4000) & (f < min(8000, sr / 2))) / total
    return float((np.log10(kick + 1e-6) + np.log10(hats + 1e-6)) / 2)


def estimate_drums(audio, sr: int) -> str:
    """'none' or DRUMS_PRESENT ('drums'): whether a clip has drums (not which kit; see above)."""
    return "none" if percussive_level(audio, sr) < _DRUMS_ON else DRUMS_PRESENT


def estimate_all(audio, sr: int) -> dict:
    """{'bpm': float, 'tempo': word, 'register': 'low'|'high', 'mode': 'major'|'minor', 'key': 0..11,
    'drums': 'none'|'drums'}."""
    bpm = estimate_tempo(audio, sr)
    mag, freqs = _tonal_spectrum(audio, sr)  # shared by register and mode
    key, mode = _key(_chroma(mag, freqs), _bass_chroma(mag, freqs))
    return {"bpm": bpm, "tempo": tempo_word(bpm), "register": _register_word(_register_hz(mag, freqs)),
            "mode": mode, "key": key, "drums": estimate_drums(audio, sr)}
