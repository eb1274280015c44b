"""laion/larger_clap_music's architecture (random weights, `musicrl.rewards.realsize`) through the
project's CLAP reward and its heads, loaded from a `save_pretrained` directory like the real checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicrl.rewards.realsize import LARGER_CLAP_FEATURES, larger_clap_music_config

pytestmark = pytest.mark.usefixtures("one_thread")
SR = 48_000


def test_the_clap_config_is_larger_clap_musics():
    """The published checkpoint is 776 MB of fp32 weights: 194M parameters, HTSAT-base + RoBERTa-base."""
    from transformers import ClapModel

    config = larger_clap_music_config()
    a, t = config.audio_config, config.text_config
    assert (a.depths, a.hidden_size, a.patch_embeds_hidden_size, a.num_attention_heads) == ([2, 2, 12, 2], 1024, 128, [4, 8, 16, 32])
    assert (a.spec_size, a.window_size, a.num_mel_bins, a.enable_fusion) == (256, 8, 64, False)
    assert (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.vocab_size) == (12, 768, 12, 50265)
    assert config.projection_dim == 512
    with torch.device("meta"):
        model = ClapModel(config)
    assert sum(p.numel() for p in model.parameters()) * 4 / 1e6 == pytest.approx(776, abs=1)


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    from musicrl.rewards.realsize import save_random_larger_clap

    return save_random_larger_clap(tmp_path_factory.mktemp("larger_clap") / "clap")


@pytest.fixture(scope="module")
def reward(clap_dir):
    from musicrl.rewards.clap import ClapReward

    return ClapReward.from_pretrained(clap_dir)


def noise(seconds: float, sr: int = SR, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.standard_normal(int(seconds * sr)) * 0.1, dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [1.7, 10.0])
def test_its_log_mel_is_the_checkpoints_feature_extractor(clap_dir, reward, seconds):
    from transformers import AutoFeatureExtractor

    from musicrl.rewards.clap import repeat_pad

    fe = AutoFeatureExtractor.from_pretrained(clap_dir)  # what the directory ships
    assert {k: fe.to_dict()[k] for k in LARGER_CLAP_FEATURES} == LARGER_CLAP_FEATURES
    x = noise(seconds)
    expected = fe(x.numpy(), sampling_rate=SR, return_tensors="pt")["input_features"]  # [1, 1, 1001, 64]
    ours = reward.log_mel(repeat_pad(x[None], fe.nb_max_samples))
    assert ours.shape == expected.shape == (1, 1, 1001, 64)
    torch.testing.assert_close(ours, expected.float(), atol=2e-3, rtol=0)  # dB


@pytest.mark.slow
def test_windows_of_10_s_at_48_khz(reward):
    assert (reward.sample_rate, reward.window, reward.input_samples, reward.embed_dim) == (SR, 10 * SR, 10 * SR, 512)
    audio = noise(12.0)[None, None]  # windows at 0 s and 2 s (the last one end-aligned)
    parts = torch.cat([reward.embed_audio(audio[..., s : s + 10 * SR], SR) for s in (0, 2 * SR)])
    expected = torch.nn.functional.normalize(parts.mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(reward.embed_audio(audio, SR), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_batched_equals_one_by_one_on_musicgen_clips(reward, clap_dir, tmp_path):
    """1 s clips at MusicGen's 32 kHz (resampled to 48 kHz): the CLAP score and both heads on it."""
    from musicrl.rewards.preference import PreferenceReward
    from musicrl.rewards.quality import QualityReward
    from musicrl.rewards.realsize import save_random_heads

    audio = torch.stack([noise(1.0, 32_000, seed) for seed in range(3)])[:, None]  # [3, 1, 32000]
    prompts = ["lofi hip hop beat, 80 bpm", "epic orchestral trailer music", "lofi hip hop beat, 80 bpm"]
    quality_dir, preference_dir = save_random_heads(clap_dir, tmp_path)
    scorers = [reward, QualityReward.from_pretrained(quality_dir, clap=reward),
               PreferenceReward.from_pretrained(preference_dir, clap=reward)]  # fmt: skip
    for score in scorers:
        batched = score(audio, 32_000, prompts)
        singles = torch.cat([score(audio[i : i + 1], 32_000, prompts[i : i + 1]) for i in range(3)])
        assert batched.shape == (3,) and torch.isfinite(batched).all()
        torch.testing.assert_close(batched, singles, atol=1e-5, rtol=0)
    quality = scorers[1](audio, 32_000, prompts)
    assert ((quality >= 1) & (quality <= 5)).all()
    # a saved head finds its backbone again through its directory (the relative path in config.json)
    reloaded = PreferenceReward.from_pretrained(preference_dir)
    torch.testing.assert_close(reloaded(audio, 32_000, prompts), scorers[2](audio, 32_000, prompts), atol=1e-5, rtol=0)
