"""Degradations: level 0 is a no-op, damage grows with the level, each kind does what it says."""

import numpy as np
import pytest

from musicrl.tiny import synth
from musicrl.tiny.degrade import DEGRADATIONS, degrade
from musicrl.errors import UserError

SR = synth.SAMPLE_RATE


@pytest.fixture(scope="module")
def clips():
    return [synth.example(s, duration_s=2.0).audio for s in range(3)]


def snr_db(clean, x):
    clean, x = clean.astype(np.float64), x.astype(np.float64)
    return 10 * np.log10(np.sum(clean**2) / max(np.sum((clean - x) ** 2), 1e-30))


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_level_zero_is_unchanged(clips, kind):
    out = degrade(clips[0], SR, kind, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out, clips[0])
    assert out is not clips[0]


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_snr_falls_as_the_level_rises(clips, kind):
    levels = np.linspace(0.1, 1.0, 7)
    for x in clips:
        snrs = [snr_db(x, degrade(x, SR, kind, lv, np.random.default_rng(1))) for lv in levels]
        assert all(a > b for a, b in zip(snrs, snrs[1:])), (kind, np.round(snrs, 1))
        assert snrs[-1] < 15.0  # level 1 is severe


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_shape_dtype_and_finite(clips, kind):
    out = degrade(clips[1], SR, kind, 0.6, np.random.default_rng(2))
    assert out.shape == clips[1].shape and out.dtype == np.float32 and np.isfinite(out).all()


def test_each_kind_does_what_it_says(clips):
    x, rng = clips[0], np.random.default_rng
    assert snr_db(x, degrade(x, SR, "noise", 1.0, rng(0))) == pytest.approx(0.0, abs=0.5)
    dropped = degrade(x, SR, "dropouts", 1.0, rng(0))
    assert 0.45 < np.mean((dropped == 0) & (x != 0)) < 0.55
    low = degrade(x, SR, "lowpass", 1.0, rng(0))
    f = np.fft.rfftfreq(len(x), 1 / SR)
    above = f > 1500
    ratio = np.sum(np.abs(np.fft.rfft(low))[above] ** 2) / np.sum(np.abs(np.fft.rfft(x))[above] ** 2)
    assert ratio < 1e-4
    crushed = degrade(x, SR, "bitcrush", 1.0, rng(0))
    assert len(np.unique(crushed)) <= 2**3 + 1
    clipped = degrade(x, SR, "clipping", 1.0, rng(0))
    assert np.sqrt(np.mean(clipped**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-3)  # loudness kept
    assert len(np.unique(np.round(np.abs(clipped), 5))) < len(x) * 0.2  # mostly flat tops


def test_bad_arguments(clips):
    with pytest.raises(UserError):
        degrade(clips[0], SR, "reverb", 0.5, np.random.default_rng(0))
    with pytest.raises(UserError):
        degrade(clips[0], SR, "noise", 1.5, np.random.default_rng(0))
    with pytest.raises(UserError):
        degrade(np.stack([clips[0]] * 2), SR, "noise", 0.5, np.random.default_rng(0))
