"""WAV files and resampling round trips."""

import numpy as np
import pytest
import soundfile as sf
import torch

from musicrl.audio import read_wav, resample, write_wav
from musicrl.errors import UserError


def _sines(freqs, sr, seconds=1.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.4 * sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs)) / len(freqs)).astype(np.float32)


@pytest.mark.parametrize("as_torch", [False, True])
def test_wav_round_trip_is_16_bit_pcm(tmp_path, as_torch):
    x = _sines([440, 1000], 16000)
    audio = torch.from_numpy(x)[None] if as_torch else x  # [1, S] or [S]
    path = write_wav(tmp_path / "a.wav", audio, 16000)
    assert sf.info(path).subtype == "PCM_16"
    y, sr = read_wav(path)
    assert sr == 16000 and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1.0 / 32767)


def test_wav_clips_out_of_range_and_refuses_bad_audio(tmp_path):
    write_wav(tmp_path / "loud.wav", np.array([2.0, -3.0, 0.5], dtype=np.float32), 8000)
    y, _ = read_wav(tmp_path / "loud.wav")
    np.testing.assert_allclose(y, [1.0, -1.0, 0.5], atol=1e-4)
    with pytest.raises(UserError):
        write_wav(tmp_path / "nan.wav", np.array([0.0, np.nan]), 16000)
    with pytest.raises(UserError):
        write_wav(tmp_path / "stereo.wav", np.zeros((2, 100)), 16000)
    with pytest.raises(UserError):
        write_wav(tmp_path / "missing" / "dir" / "a.wav", np.zeros(100), 16000)
    with pytest.raises(UserError):
        read_wav(tmp_path / "nope.wav")


def test_read_wav_mixes_stereo_to_mono(tmp_path):
    left, right = _sines([300], 22050), _sines([500], 22050)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 22050, subtype="PCM_16")
    y, sr = read_wav(tmp_path / "st.wav")
    assert sr == 22050 and y.shape == left.shape
    np.testing.assert_allclose(y, (left + right) / 2, atol=2.0 / 32767)


@pytest.mark.parametrize("mid_sr", [24000, 44100, 32000])
def test_resample_round_trip(mid_sr):
    x = torch.from_numpy(_sines([220, 1000, 3100], 16000))
    up = resample(x, 16000, mid_sr)
    assert up.shape[-1] == int(np.ceil(len(x) * mid_sr / 16000))
    back = resample(up, mid_sr, 16000)
    assert back.shape == x.shape
    inner = slice(400, -400)  # the edges see zero padding
    err = (back - x)[inner].pow(2).mean().sqrt() / x[inner].pow(2).mean().sqrt()
    assert err < 1e-2


def test_resample_keeps_pitch_and_removes_aliases():
    x = torch.from_numpy(_sines([1000], 16000, seconds=2.0))
    y = resample(x, 16000, 44100).numpy()
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.fft.rfftfreq(len(y), 1 / 44100)[np.argmax(spectrum)] == pytest.approx(1000, abs=1)
    high = torch.from_numpy(_sines([7000], 16000))
    down = resample(high, 16000, 8000)  # 7 kHz is above the new Nyquist (4 kHz): filtered out
    assert down[200:-200].abs().max() < 0.01 * high.abs().max()


def test_resample_batches_and_identity():
    x = torch.randn(2, 3, 1000)
    y = resample(x, 16000, 24000)
    assert y.shape == (2, 3, 1500)
    torch.testing.assert_close(y[1, 2], resample(x[1, 2], 16000, 24000))
    assert resample(x, 16000, 16000) is x
    with pytest.raises(UserError):
        resample(x, 0, 16000)
