"""The tiny world's music: a procedural renderer, attribute sampling and captions with paraphrases.

Every clip is a melody (instrument, key/mode, register, contour) over a bass on the beats, a tonic
triad pad and optional drums, quantised to a tempo grid. Everything is a pure function of a seed,
numpy only, and fast (a 4 s clip at 16 kHz renders in ~15-30 ms on one CPU core), so datasets are
regenerated rather than stored. Attributes are expressed clearly on purpose (the third and sixth
scale degrees are frequent, a tonic triad pulses in 8ths, the bass sits on the tonic, registers are
three octaves apart) so that the estimators in `musicrl.tiny.attributes` can check them from audio alone.

Captions come from two disjoint template and synonym sets: `split="train"` for training and
`split="heldout"` for measuring paraphrase generalisation; `parse_prompt` understands both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType

import numpy as np

from musicrl.errors import UserError

SAMPLE_RATE = 16_000
INSTRUMENTS = ("piano", "organ", "pluck", "square lead", "saw bass", "bell")
# bpm ranges, with gaps between them on purpose (a tempo estimate is never on a border)
TEMPO_WORDS = {"slow": (60, 80), "medium": (95, 115), "fast": (135, 160)}
MODES = ("major", "minor")
REGISTERS = ("low", "high")
DRUMS = ("none", "kick-hat", "full")
CONTOURS = ("rising", "falling", "arch", "flat")
HELDOUT_SEED_OFFSET = 1_000_000  # held-out clips use seeds >= this
SPLITS = ("train", "heldout")

_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# lowest MIDI note the melody's tonic may take in each register (tonic = lowest + (key - lowest) % 12):
# low puts the tonic in A2..G#3 (~110-208 Hz), high in A5..G#6 (~880-1661 Hz), three octaves apart.
_REGISTER_BASE = {"low": 45, "high": 81}


@dataclass(frozen=True)
class Attributes:
    """What a clip is: the ground truth behind its audio and caption."""

    instrument: str
    bpm: float
    tempo: str  # 'slow' | 'medium' | 'fast', always the TEMPO_WORDS range holding bpm
    key: int  # 0..11, pitch class of the tonic (0 = C)
    mode: str  # 'major' | 'minor'
    register: str  # 'low' | 'high'
    drums: str  # 'none' | 'kick-hat' | 'full'
    contour: str  # 'rising' | 'falling' | 'arch' | 'flat'

    def __post_init__(self) -> None:
        _check("instrument", self.instrument, INSTRUMENTS)
        _check("tempo", self.tempo, tuple(TEMPO_WORDS))
        _check("mode", self.mode, MODES)
        _check("register", self.register, REGISTERS)
        _check("drums", self.drums, DRUMS)
        _check("contour", self.contour, CONTOURS)
        lo, hi = TEMPO_WORDS[self.tempo]
        if not lo <= self.bpm <= hi:
            raise UserError(f"bpm {self.bpm} is outside the {self.tempo!r} range {lo}-{hi}")
        if not (isinstance(self.key, (int, np.integer)) and 0 <= self.key < 12):
            raise UserError(f"key must be a pitch class 0..11, got {self.key!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Attributes":
        try:
            return cls(
                instrument=str(d["instrument"]), bpm=float(d["bpm"]), tempo=str(d["tempo"]),
                key=int(d["key"]), mode=str(d["mode"]), register=str(d["register"]),
                drums=str(d["drums"]), contour=str(d["contour"]),
            )
        except KeyError as e:
            raise UserError(f"attributes lack the field {e.args[0]!r}") from None


def _check(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise UserError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def sample_attributes(rng: np.random.Generator, **fixed) -> Attributes:
    """Uniform over each attribute's values (bpm uniform in its tempo range); `fixed` pins some.

    Pinning `bpm` alone sets `tempo` to the range holding it (a bpm in a gap is an error).
    """
    unknown = set(fixed) - set(Attributes.__dataclass_fields__)
    if unknown:
        raise UserError(f"unknown attribute(s): {', '.join(sorted(unknown))}")

    def pick(name: str, values: tuple):
        draw = values[int(rng.integers(len(values)))]  # always drawn: pins never shift the stream
        return fixed.get(name, draw)

    instrument = pick("instrument", INSTRUMENTS)
    tempo = pick("tempo", tuple(TEMPO_WORDS))
    u = float(rng.random())
    if "bpm" in fixed:
        bpm = float(fixed["bpm"])
        if "tempo" not in fixed:
            tempo = next((w for w, (lo, hi) in TEMPO_WORDS.items() if lo <= bpm <= hi), None)
            if tempo is None:
                raise UserError(f"bpm {bpm} is in no tempo range {TEMPO_WORDS}")
    else:
        _check("tempo", tempo, tuple(TEMPO_WORDS))
        lo, hi = TEMPO_WORDS[tempo]
        bpm = round(lo + u * (hi - lo), 1)
    return Attributes(
        instrument=instrument, bpm=bpm, tempo=tempo, key=int(pick("key", tuple(range(12)))),
        mode=pick("mode", MODES), register=pick("register", REGISTERS),
        drums=pick("drums", DRUMS), contour=pick("contour", CONTOURS),
    )


# ----------------------------------------------------------------------------------------- score


@dataclass(frozen=True)
class _Note:
    start: float  # seconds
    dur: float  # seconds until note-off
    midi: float
    vel: float


def _melody(attrs: Attributes, n_eighths: int, eighth: float, tonic: int, rng) -> list[_Note]:
    """Notes of the key's scale following the contour; 8ths and quarters on the grid."""
    steps: list[tuple[int, int]] = []  # (start in 8ths, length in 8ths)
    pos = 0
    while pos < n_eighths:
        length = 1 if rng.random() < 0.5 else 2
        steps.append((pos, length))
        pos += length
    n = len(steps)
    scale = _SCALES[attrs.mode]
    # preferred scale degrees: tonic, third, fifth, sixth (the third and sixth carry the mode)
    weight = np.array([3.0, 1.0, 3.0, 1.0, 2.0, 2.5, 0.7])
    notes = []
    for i, (start, length) in enumerate(steps):
        p = i / max(n - 1, 1)
        target = {"rising": 7 * p, "falling": 7 * (1 - p), "arch": 7 * np.sin(np.pi * p),
                  "flat": 3.0}[attrs.contour]
        cands = np.arange(int(np.floor(target)) - 1, int(np.floor(target)) + 3)
        cands = cands[(cands >= -1) & (cands <= 9)]
        w = weight[cands % 7] * np.exp(-0.8 * np.abs(cands - target))
        deg = int(rng.choice(cands, p=w / w.sum()))
        if i == 0 and attrs.contour != "falling":
            deg = 0
        midi = tonic + scale[deg % 7] + 12 * (deg // 7)
        vel = (1.0 if start % 2 == 0 else 0.75) * rng.uniform(0.9, 1.0)  # beats accented
        notes.append(_Note(start * eighth, length * eighth, float(midi), vel))
    return notes


def _accompaniment(attrs: Attributes, n_beats: int, beat: float, tonic: int) -> tuple[list[_Note], list[int]]:
    """Bass notes on the beats (the tonic; its octave on the last beat of a bar) and the pad's chord,
    the tonic triad (its third carries the mode), which `render` pulses in 8ths, beats louder: together
    they spell out the key centre, the mode and the 8th-note grid."""
    third = 4 if attrs.mode == "major" else 3
    bass_root = tonic - (12 if attrs.register == "low" else 24)
    pad_root = tonic - (0 if attrs.register == "low" else 12)
    bass = [_Note(b * beat, beat * 0.9, float(bass_root + (12 if b % 4 == 3 else 0)), 1.0 if b % 4 == 0 else 0.85)
            for b in range(n_beats)]
    return bass, [pad_root, pad_root + third, pad_root + 7]


# ----------------------------------------------------------------------------------- instruments

_TABLE = 2048


def _harmonic_table(amps: np.ndarray, cache: dict) -> np.ndarray:
    """One band-limited cycle with the given harmonic amplitudes (sine phases), peak 1."""
    key = amps.tobytes()
    if key not in cache:
        spec = np.zeros(_TABLE // 2 + 1, dtype=np.complex128)
        spec[1 : len(amps) + 1] = -1j * amps
        table = np.fft.irfft(spec, _TABLE)
        table = np.append(table, table[0])  # [_TABLE + 1]: the wrap-around sample for interpolation
        cache[key] = (table / np.abs(table).max()).astype(np.float32)
    return cache[key]


def _lookup(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Read a wavetable at phase (cycles), linear interpolation."""
    x = (phase % 1.0) * _TABLE
    i = x.astype(np.int32)
    frac = (x - i).astype(np.float32)
    lo = table[i]
    return lo + (table[i + 1] - lo) * frac


def _harmonics(f0: float, sr: int, n: int, decay: float) -> np.ndarray:
    """Amplitudes 1/k**decay for the first n harmonics k, those below Nyquist (band-limited tables)."""
    k = np.arange(1, max(1, min(n, int(sr / 2 / f0 * 0.95))) + 1, dtype=np.float64)
    return 1.0 / k**decay


def _env_adsr(t: np.ndarray, dur: float, attack: float, release: float) -> np.ndarray:
    """Linear attack, flat sustain, linear release after note-off at `dur`."""
    return np.clip(t / attack, 0, 1) * np.clip(1 - (t - dur) / release, 0, 1)


def _voice(inst: str, f0: float, t: np.ndarray, dur: float, sr: int, cache: dict) -> np.ndarray:
    """One note of `inst` at f0 Hz over local times t (s); note-off at dur."""
    ph = f0 * t
    if inst == "piano":  # bright hammer spectrum fading to a mellow one, exponential decay
        bright = _lookup(_harmonic_table(_harmonics(f0, sr, 14, 1.1), cache), ph)
        mellow = _lookup(_harmonic_table(_harmonics(f0, sr, 3, 1.5), cache), ph)
        b = np.exp(-t / 0.12)
        tau = 0.9 * (261.6 / f0) ** 0.3
        return (b * bright + (1 - b) * mellow) * np.exp(-t / tau) * _env_adsr(t, dur, 0.003, 0.08)
    if inst == "organ":  # drawbars 8', 4', 2 2/3', 2', 1 3/5' 1' held flat, slow tremolo
        amps = np.array([1.0, 0.8, 0.6, 0.5, 0.0, 0.3, 0.0, 0.25])
        amps = amps[: len(_harmonics(f0, sr, 8, 0))]
        tone = _lookup(_harmonic_table(amps, cache), ph)
        return tone * (1 + 0.12 * np.sin(2 * np.pi * 6.0 * t)) * _env_adsr(t, dur, 0.01, 0.03)
    if inst == "pluck":  # Karplus-Strong-like: high harmonics die first, then the fundamental
        bright = _lookup(_harmonic_table(_harmonics(f0, sr, 24, 1.0), cache), ph)
        mid = _lookup(_harmonic_table(_harmonics(f0, sr, 5, 1.3), cache), ph)
        pure = np.sin(2 * np.pi * ph, dtype=np.float32)
        e1, e2 = np.exp(-t / 0.03), np.exp(-t / 0.15)
        tone = e1 * bright + (e2 - e1 * e2) * mid + (1 - e2) * pure
        return tone * np.exp(-t / 0.35) * _env_adsr(t, dur + 0.1, 0.002, 0.05)
    if inst == "square lead":  # pulse = saw - shifted saw, the width swept (PWM); delayed vibrato
        vib = 0.006 * np.clip((t - 0.12) / 0.1, 0, 1) * np.sin(2 * np.pi * 5.5 * t)
        ph = f0 * t + np.cumsum(f0 * vib) / sr
        saw = _harmonic_table(_harmonics(f0, sr, 40, 1.0), cache)
        width = 0.5 + 0.25 * np.sin(2 * np.pi * 0.7 * t)
        tone = (_lookup(saw, ph) - _lookup(saw, ph + width)) * 0.6
        return tone * _env_adsr(t, dur, 0.008, 0.04)
    if inst == "saw bass":  # sawtooth through a closing "filter" (bright -> dark table), punchy
        bright = _lookup(_harmonic_table(_harmonics(f0, sr, 40, 1.0), cache), ph)
        dark = _lookup(_harmonic_table(_harmonics(f0, sr, 6, 1.4), cache), ph)
        f = np.exp(-t / 0.08)
        amp = 0.65 + 0.35 * np.exp(-t / 0.15)
        return (f * bright + (1 - f) * dark) * amp * _env_adsr(t, dur, 0.004, 0.03)
    if inst == "bell":  # struck bar: inharmonic partials (glockenspiel ratios), upper ones die fast
        tone = np.zeros_like(t, dtype=np.float32)
        for ratio, amp, tau in ((1.0, 1.0, 1.2), (2.76, 0.45, 0.35), (5.40, 0.25, 0.15), (8.93, 0.12, 0.08)):
            if f0 * ratio < sr / 2 * 0.95:
                tone += amp * np.exp(-t / tau) * np.sin(2 * np.pi * f0 * ratio * t)
        return tone * _env_adsr(t, dur + 0.3, 0.002, 0.1)
    raise UserError(f"unknown instrument {inst!r}")


def _bass_voice(f0: float, t: np.ndarray, dur: float, sr: int, cache: dict) -> np.ndarray:
    # octave and fifth overtones only: a 5th harmonic (a major third) would blur the mode
    amps = np.array([1.0, 0.6, 0.35, 0.25])[: len(_harmonics(f0, sr, 4, 0))]
    punch = 0.4 + 0.6 * np.exp(-t / 0.06)  # a sharp attack: the beat is heard in the bass too
    return _lookup(_harmonic_table(amps, cache), f0 * t) * punch * _env_adsr(t, dur, 0.003, 0.04)


def _pad(chord: list[int], n: int, eighth: float, sr: int) -> np.ndarray:
    """The chord struck on every 8th (beats louder), each strike decaying and gated before the next.

    Each strike restarts its oscillators, so sines of the time since the strike (short, float32-exact)
    are all it takes; three soft harmonics per chord tone.
    """
    t = np.arange(n, dtype=np.float64) / sr
    idx = np.floor(t / eighth)
    tin = (t - idx * eighth).astype(np.float32)  # time since the last strike
    env = np.clip(tin / 0.005, 0, 1) * np.exp(-tin / 0.25) * np.clip(1 - (tin - 0.8 * eighth) / 0.05, 0, 1)
    env *= np.where(idx % 2 == 0, 1.0, 0.8).astype(np.float32)
    out = np.zeros(n, dtype=np.float32)
    for m in chord:
        f0 = _midi_hz(m)
        for k, amp in ((1, 1.0), (2, 0.3), (3, 0.1)):
            if k * f0 < 0.95 * sr / 2:
                out += amp * np.sin(np.float32(2 * np.pi * k * f0) * tin)
    return out * env


def _midi_hz(m: float) -> float:
    return 440.0 * 2.0 ** ((m - 69) / 12)


def _place(out: np.ndarray, sig: np.ndarray, start: int) -> None:
    end = min(len(out), start + len(sig))
    if end > start:
        out[start:end] += sig[: end - start]


def _drum_hits(kind: str, sr: int, rng) -> dict[str, np.ndarray]:
    t = np.arange(int(0.25 * sr), dtype=np.float32) / sr
    kick = np.sin(2 * np.pi * (50 * t + 100 * 0.03 * (1 - np.exp(-t / 0.03)))) * np.exp(-t / 0.12)
    hits = {"kick": kick.astype(np.float32)}
    th = t[: int(0.06 * sr)]
    noise = rng.standard_normal(len(th)).astype(np.float32)
    hits["hat"] = np.diff(noise, prepend=0.0).astype(np.float32) * 0.5 * np.exp(-th / 0.015)
    if kind == "full":
        ts = t[: int(0.2 * sr)]
        n = rng.standard_normal(len(ts)).astype(np.float32)
        n = n - np.convolve(n, np.ones(8) / 8, mode="same")  # crude high-pass: the snare's rattle
        body = 0.6 * np.sin(2 * np.pi * 185 * ts) * np.exp(-ts / 0.04)
        hits["snare"] = (0.7 * n * np.exp(-ts / 0.06) + body).astype(np.float32)
    return hits


def render(attrs: Attributes, duration_s: float = 4.0, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """The clip for `attrs`: float32 mono [S] with S = round(duration_s * sample_rate), peak <= 0.95."""
    if not (np.isfinite(duration_s) and 0 < duration_s <= 600):
        raise UserError(f"duration must be in (0, 600] seconds, got {duration_s}")
    if sample_rate < 8000:
        raise UserError(f"sample rate must be >= 8000 Hz, got {sample_rate}")
    rng = np.random.default_rng(seed)
    sr = sample_rate
    n = int(round(duration_s * sr))
    beat = 60.0 / attrs.bpm
    eighth = beat / 2
    n_beats = int(np.ceil(duration_s / beat))
    lowest = _REGISTER_BASE[attrs.register]
    tonic = lowest + (attrs.key - lowest) % 12
    cache: dict = {}
    out = np.zeros(n, dtype=np.float32)

    layers = [(_melody(attrs, 2 * n_beats, eighth, tonic, rng), 0.55, attrs.instrument)]
    bass, chord = _accompaniment(attrs, n_beats, beat, tonic)
    layers.append((bass, 0.35, "_bass"))
    for notes, gain, inst in layers:
        for note in notes:
            start = int(round(note.start * sr))
            if start >= n:
                continue
            ring = {"piano": 0.3, "pluck": 0.3, "bell": 0.6}.get(inst, 0.1)  # tail after note-off
            length = min(n - start, int((note.dur + ring) * sr))
            t = np.arange(length, dtype=np.float32) / sr
            f0 = _midi_hz(note.midi)
            if inst == "_bass":
                sig = _bass_voice(f0, t, note.dur, sr, cache)
            else:
                sig = _voice(inst, f0, t, note.dur, sr, cache)
            _place(out, (gain * note.vel * sig).astype(np.float32), start)
    out += 0.22 * _pad(chord, n, eighth, sr) / 1.3

    if attrs.drums != "none":
        hits = _drum_hits(attrs.drums, sr, rng)
        for b in range(n_beats):
            _place(out, 0.6 * hits["kick"], int(round(b * beat * sr)))
            if attrs.drums == "full" and b % 2 == 1:
                _place(out, 0.35 * hits["snare"], int(round(b * beat * sr)))
        for e in range(2 * n_beats):
            _place(out, (0.18 if e % 2 == 0 else 0.12) * hits["hat"], int(round(e * eighth * sr)))

    peak = float(np.abs(out).max())
    if peak > 0:
        out *= 0.9 / peak
    return out


# -------------------------------------------------------------------------------------- captions

# SYNONYMS[attribute][value][split]: words a caption may use. Held-out words never appear in train
# captions; parse_prompt understands both. Adjective forms go before the noun, phrase forms after.
SYNONYMS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "tempo": {
        "fast": {"train": ("fast", "quick", "upbeat", "energetic", "up-tempo"),
                 "heldout": ("brisk", "lively", "speedy")},
        "medium": {"train": ("medium", "moderate", "mid-tempo"),
                   "heldout": ("moderately paced", "walking-pace")},
        "slow": {"train": ("slow", "calm", "relaxed", "laid-back"),
                 "heldout": ("leisurely", "unhurried", "sluggish")},
    },
    "mode": {
        "major": {"train": ("happy", "bright", "cheerful", "uplifting"),
                  "heldout": ("joyful", "sunny")},
        "minor": {"train": ("sad", "dark", "melancholic", "gloomy"),
                  "heldout": ("somber", "mournful", "wistful")},
    },
    "register": {
        "low": {"train": ("low", "deep", "bass-heavy", "low-pitched"),
                "heldout": ("rumbling", "low-lying", "sub-heavy")},
        "high": {"train": ("high", "high-pitched", "airy", "bright-pitched"),
                 "heldout": ("soaring", "lofty", "treble-heavy")},
    },
    "instrument": {
        "piano": {"train": ("piano", "grand piano"), "heldout": ("pianoforte",)},
        "organ": {"train": ("organ", "drawbar organ", "electric organ"), "heldout": ("hammond", "harmonium")},
        "pluck": {"train": ("pluck", "plucked string", "pluck synth"), "heldout": ("pizzicato", "harp-like")},
        "square lead": {"train": ("square lead", "square wave lead", "chiptune lead"),
                        "heldout": ("8-bit", "pulse wave")},
        "saw bass": {"train": ("saw bass", "sawtooth bass", "synth bass"),
                     "heldout": ("buzzy sawtooth", "sawtooth synth")},
        "bell": {"train": ("bell", "bells", "chimes"), "heldout": ("glockenspiel", "celesta")},
    },
    "drums": {
        "none": {"train": ("no drums", "no percussion", "without drums", "drumless"),
                 "heldout": ("percussion-free", "unaccompanied by percussion")},
        "kick-hat": {"train": ("with kick and hi-hat", "light drums", "with a simple kick and hat beat"),
                     "heldout": ("a sparse kick-and-hats groove", "minimal beat")},
        "full": {"train": ("full drums", "with a full drum kit", "with kick, snare and hats"),
                 "heldout": ("a complete drum kit", "a backbeat with snare")},
    },
}

# PHRASES[attribute][value][split]: phrase forms (placed after the noun), same split rules.
PHRASES: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "tempo": {
        "fast": {"train": ("at a fast pace", "with an upbeat feel", "at a quick tempo"),
                 "heldout": ("moving at a brisk speed", "with lively momentum")},
        "medium": {"train": ("at a moderate pace", "at a medium tempo", "with a mid-tempo feel"),
                   "heldout": ("moving at a walking-pace speed", "moderately paced")},
        "slow": {"train": ("at a slow pace", "with a relaxed feel", "at a calm tempo"),
                 "heldout": ("moving at a leisurely speed", "with unhurried momentum")},
    },
    "mode": {
        "major": {"train": ("in a bright major key", "in a major key", "with a happy mood",
                            "in a cheerful major key"),
                  "heldout": ("feeling joyful", "with a sunny character")},
        "minor": {"train": ("in a dark minor key", "in a minor key", "with a sad mood", "in a melancholic minor key"),
                  "heldout": ("feeling mournful", "with a somber character", "feeling wistful")},
    },
    "register": {
        "low": {"train": ("low register", "low pitched", "in a deep range", "bass-heavy"),
                "heldout": ("set in a rumbling range", "sitting low-lying")},
        "high": {"train": ("high register", "high pitched", "in a high range", "airy"),
                 "heldout": ("set in a soaring range", "sitting lofty")},
    },
}
_NOUNS = {"train": ("melody", "tune", "track", "piece", "song"), "heldout": ("composition", "number", "ditty")}

# Templates: slots {tempo_adj} {mode_adj} {register_adj} {inst} {noun} {tempo_ph} {mode_ph}
# {register_ph} {drums_ph}. Empty slots vanish with the small words that lean on them.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "a {tempo_adj} {mode_adj} {inst} {noun}, {register_ph}, {drums_ph}",
        "{tempo_adj} {mode_adj} {inst} {noun} {mode_ph}, {register_ph}, {drums_ph}",
        "{inst} {noun}, {tempo_ph}, {mode_ph}, {register_adj}, {drums_ph}",
        "{register_adj} {inst} {noun} {tempo_ph} {mode_ph}, {drums_ph}",
        "{mode_adj} and {tempo_adj} {noun} played on {inst}, {register_ph}, {drums_ph}",
        "{tempo_adj} {register_adj} {inst} {noun}, {mode_adj}, {drums_ph}",
    ),
    "heldout": (
        "imagine {inst}: a {mode_adj} {noun} {tempo_ph}; {register_ph}; {drums_ph}",
        "{drums_ph} -- {register_adj} {inst} {noun}, {mode_ph}, {tempo_adj}",
        "{noun} for {inst} {register_ph}, {tempo_adj} yet {mode_adj}, {drums_ph}",
        "i want a {tempo_adj} {noun} {mode_ph} featuring {inst} ({register_adj}) and {drums_ph}",
    ),
}
_ATTRS_IN_CAPTIONS = ("tempo", "mode", "register", "instrument", "drums")
_EMPTY = "\x00"  # marks a vanished slot while tidying
_INST_FILLERS = {"{inst}:": "some music", "on {inst}": "a synth", "for {inst}": "solo instrument",
                 "featuring {inst}": "one instrument"}  # instrument-free words where grammar needs a noun


def caption(attrs: Attributes, rng: np.random.Generator, split: str = "train", words: str | None = None) -> str:
    """A caption naming 2..5 of tempo, mode, register, instrument, drums in `split`'s templates.

    `words` picks the vocabulary: `split`'s own (the default), or "all", the words of both splits:
    the tiny world's stand-in for a language model's knowledge (`musicrl.tiny.text`); templates
    stay `split`'s, so held-out sentence shapes stay unseen.
    """
    _check("split", split, SPLITS)
    words = split if words is None else words
    _check("words", words, SPLITS + ("all",))
    k = int(rng.integers(2, len(_ATTRS_IN_CAPTIONS) + 1))
    named = set(rng.choice(_ATTRS_IN_CAPTIONS, size=k, replace=False).tolist())
    template = TEMPLATES[split][int(rng.integers(len(TEMPLATES[split])))]
    values = attrs.to_dict()

    def vocab(by_split: dict) -> tuple:
        return by_split["train"] + by_split["heldout"] if words == "all" else by_split[words]

    def pick(table: dict, attr: str) -> str:
        options = vocab(table[attr][values[attr]])
        return options[int(rng.integers(len(options)))]

    slots = {s: _EMPTY for s in ("tempo_adj", "mode_adj", "register_adj", "inst", "tempo_ph", "mode_ph",
                                 "register_ph", "drums_ph")}
    for attr in ("tempo", "mode", "register"):
        if attr in named:
            # the template decides where an attribute goes: its adjective slot, its phrase slot, or either
            has_adj, has_ph = f"{{{attr}_adj}}" in template, f"{{{attr}_ph}}" in template
            if has_adj and (not has_ph or rng.random() < 0.5):
                slots[f"{attr}_adj"] = pick(SYNONYMS, attr)
            else:
                slots[f"{attr}_ph"] = pick(PHRASES, attr)
    if "instrument" in named:
        slots["inst"] = pick(SYNONYMS, "instrument")
    else:
        slots["inst"] = next((w for ctx, w in _INST_FILLERS.items() if ctx in template), _EMPTY)
    if "drums" in named:
        slots["drums_ph"] = pick(SYNONYMS, "drums")
    nouns = vocab(_NOUNS)
    slots["noun"] = nouns[int(rng.integers(len(nouns)))]
    return _tidy(template.format(**slots))


def _tidy(text: str) -> str:
    e = re.escape(_EMPTY)
    text = re.sub(rf"{e}\s*(and|yet)\s+|\s+(and|yet|with)\s*{e}", "", text)  # conjunctions lose a side
    text = re.sub(rf"\(\s*{e}\s*\)", "", text).replace(_EMPTY, "")
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,;)])", r"\1", text)
    text = re.sub(r"([,;])(\s*[,;])+", r"\1", text)
    text = re.sub(r"^\s*(--\s*)?[,;]?\s*", "", text)
    text = re.sub(r"(\s*[,;:]|\s*--)+\s*$", "", text)
    text = re.sub(r"([,;])\s*(yet|and)\b", r"\1", text)
    text = re.sub(r"\ba (?=[aeiou8])", "an ", text)
    return re.sub(r"\s+", " ", text).strip()


# words understood beyond the ones captions produce (what people type)
_EXTRA_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "tempo": {"fast": ("rapid", "driving", "high-tempo", "uptempo"), "slow": ("sleepy", "chill", "downtempo"),
              "medium": ("mid tempo", "medium tempo", "moderate tempo", "medium-tempo")},
    "mode": {"major": ("major", "joyous", "playful"), "minor": ("minor", "sorrowful", "moody", "somber")},
    "register": {"low": ("low register", "lower register", "low-end"),
                 "high": ("high register", "upper register", "treble")},
    "instrument": {"piano": ("keys",), "square lead": ("square", "chiptune", "square wave"),
                   "saw bass": ("sawtooth", "saw"), "pluck": ("plucked", "harp"), "bell": ("chime",)},
    "drums": {"none": ("no drum", "without percussion", "no beat", "a cappella"),
              "kick-hat": ("kick and hat", "kick-hat", "kick & hat", "hi-hat", "hats"),
              "full": ("full kit", "drum kit", "snare", "full drum")},
}


def _lexicon() -> dict[str, tuple[str, str]]:
    """phrase -> (attribute, value) for every word captions use, in either split, and _EXTRA_WORDS."""
    entries: dict[str, tuple[str, str]] = {}
    sources = [(attr, value, words) for table in (SYNONYMS, PHRASES) for attr, values in table.items()
               for value, by_split in values.items() for words in by_split.values()]
    sources += [(attr, value, words) for attr, values in _EXTRA_WORDS.items() for value, words in values.items()]
    for attr, value, words in sources:
        for w in words:
            if entries.setdefault(w, (attr, value)) != (attr, value):
                raise AssertionError(f"{w!r} names both {entries[w]} and {(attr, value)}")
    return entries


LEXICON: Mapping[str, tuple[str, str]] = MappingProxyType(_lexicon())  # read-only
# one alternation, longest phrase first: at each position the longest phrase wins and consumes its
# words ('bright-pitched' is a register, not the mood 'bright'); whole words only
_PROMPT_RE = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(w) for w in sorted(LEXICON, key=lambda w: (-len(w), w))) + r")(?![\w-])"
)


def parse_prompt(text: str) -> dict[str, str]:
    """Attribute values a text names, e.g. {'tempo': 'fast', 'mode': 'minor', 'drums': 'none'}.

    Keys are among tempo, mode, register, instrument, drums; an attribute the text does not name
    is absent. Understands the words of both caption splits plus common extras ('chiptune', 'snare',
    'moody'...). Where phrases overlap the longer one wins; the first mention of an attribute wins.
    """
    found: dict[str, str] = {}
    for _, _, attr, value in mentions(re.sub(r"\s+", " ", text)):
        found.setdefault(attr, value)
    return found


def mentions(text: str) -> list[tuple[int, int, str, str]]:
    """(start, end, attribute, value) of each phrase of the lexicon in `text`, in order (case-blind)."""
    return [(m.start(1), m.end(1), *LEXICON[m.group(1)]) for m in _PROMPT_RE.finditer(text.lower())]


# -------------------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Example:
    audio: np.ndarray  # float32 [S] at SAMPLE_RATE
    caption: str
    attrs: Attributes
    seed: int


def example(seed: int, duration_s: float = 4.0, split: str = "train") -> Example:
    """The corpus item for `seed`: attributes, caption and audio all derive from it.

    Train seeds are < HELDOUT_SEED_OFFSET and held-out seeds >= it, so the splits never share a clip.
    """
    _check("split", split, SPLITS)
    seed = int(seed)
    if seed < 0 or (split == "train") != (seed < HELDOUT_SEED_OFFSET):
        side = "< " if split == "train" else ">= "
        raise UserError(f"a {split} seed must be {side}{HELDOUT_SEED_OFFSET} (and >= 0), got {seed}")
    attr_rng, caption_rng = (np.random.default_rng([seed, i]) for i in (0, 1))
    attrs = sample_attributes(attr_rng)
    audio = render(attrs, duration_s, SAMPLE_RATE, seed=seed)
    return Example(audio=audio, caption=caption(attrs, caption_rng, split), attrs=attrs, seed=seed)


def examples(n: int, start_seed: int = 0, duration_s: float = 4.0, split: str = "train") -> Iterator[Example]:
    """`n` consecutive examples; for split='heldout' the seeds are HELDOUT_SEED_OFFSET + start_seed + i."""
    base = start_seed + (HELDOUT_SEED_OFFSET if split == "heldout" else 0)
    for i in range(n):
        yield example(base + i, duration_s, split)
