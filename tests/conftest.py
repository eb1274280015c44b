import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def random_musicgen_dir(tmp_path_factory):
    """A randomly initialised tiny MusicGen (with a random tiny EnCodec), saved like a real checkpoint."""
    from transformers import EncodecConfig, EncodecModel

    from musicrl.tiny.musicgen import build

    torch.manual_seed(0)
    codec = EncodecModel(
        EncodecConfig(
            sampling_rate=16000, target_bandwidths=[1.6], upsampling_ratios=[8, 5, 4, 2], num_filters=4,
            hidden_size=16, codebook_size=256, num_lstm_layers=1, normalize=False,
        )  # fmt: skip
    )
    for layer in codec.quantizer.layers:  # random (not all-zero) codebooks so codes are informative
        layer.codebook.embed.normal_()
    model, tokenizer = build(codec, hidden_size=64, num_layers=2, heads=4)
    path = tmp_path_factory.mktemp("random_musicgen")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def random_policy(random_musicgen_dir):
    from musicrl.policy import MusicGenPolicy

    return MusicGenPolicy.from_pretrained(str(random_musicgen_dir))
