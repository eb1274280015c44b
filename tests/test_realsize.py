"""facebook/musicgen-small's architecture (random weights) through the same loading code."""

import pytest
import soundfile as sf

from musicrl.cli import main


@pytest.mark.slow
def test_musicgen_small_architecture_generates_one_second(tmp_path):
    from musicrl.model.realsize import save_random_musicgen_small

    model_dir = save_random_musicgen_small(tmp_path / "musicgen-small-random")
    out = tmp_path / "out"
    rc = main(["generate", "lofi beat", "--model", str(model_dir), "--duration", "1", "--out", str(out), "--top-k", "250"])
    assert rc == 0
    (wav,) = out.glob("*.wav")
    info = sf.info(wav)
    assert info.samplerate == 32000 and info.channels == 1
    assert info.frames == 32000  # 50 frames x 640 samples
