"""ClapReward: a pure function of (audio, sample rate, prompt), windows, resampling, the text cache.

Most tests use a randomly initialised tiny ClapModel (fast); the last ones use the shipped tiny CLAP
when it is present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import ClapFeatureExtractor, ClapModel

from musicrl.tiny import synth
from musicrl.errors import UserError
from musicrl.model.hub import TINY_DIR
from musicrl.tiny.clap import save_random_clap, tiny_clap_config, tiny_feature_extractor, tiny_tokenizer
from musicrl.rewards.clap import ClapLogMel, ClapReward, repeat_pad, window_starts

SR = 16_000
SHIPPED = (TINY_DIR / "clap" / "config.json").exists()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory):
    return save_random_clap(tmp_path_factory.mktemp("random_clap"))


@pytest.fixture(scope="module")
def reward(random_dir):
    return ClapReward.from_pretrained(random_dir)


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED:
        pytest.skip("the shipped tiny CLAP is not built yet (python -m musicrl.tiny.clap)")
    return ClapReward.from_pretrained("tiny")


def clips(seeds, duration_s=4.0, sr=SR):
    """Held-out synth clips [B, 1, S] rendered directly at `sr`, and their examples."""
    exs = [synth.example(synth.HELDOUT_SEED_OFFSET + s, duration_s, "heldout") for s in seeds]
    audio = np.stack([synth.render(e.attrs, duration_s, sr, seed=e.seed) for e in exs])
    return torch.as_tensor(audio)[:, None], exs


LAION = dict(feature_size=64, sampling_rate=48_000, hop_length=480, max_length_s=10, fft_window_size=1024,
             frequency_min=50, frequency_max=14_000)


@pytest.mark.parametrize("fe,seconds", [
    (tiny_feature_extractor(), 4.0),
    (tiny_feature_extractor(), 2.3),  # repeat-padded
    (ClapFeatureExtractor(**LAION, truncation="rand_trunc"), 1.7),  # laion/larger_clap_* settings
    (ClapFeatureExtractor(**LAION, truncation="fusion"), 1.7),  # laion/clap-htsat-fused: HTK mels, 4 copies
], ids=["tiny", "tiny-short", "larger_clap", "htsat-fused"])
def test_torch_log_mel_matches_feature_extractor(fe, seconds):
    x = torch.as_tensor(np.random.default_rng(0).standard_normal(int(seconds * fe.sampling_rate)) * 0.1,
                        dtype=torch.float32)
    expected = fe(x.numpy(), sampling_rate=fe.sampling_rate, return_tensors="pt")["input_features"]
    ours = ClapLogMel(fe)(repeat_pad(x[None], fe.nb_max_samples))
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected.float(), atol=2e-3, rtol=0)  # dB


def test_window_starts_cover_the_clip_with_full_windows():
    assert window_starts(100, 100) == [0]
    assert window_starts(30, 100) == [0]
    assert window_starts(250, 100) == [0, 100, 150]
    assert window_starts(300, 100) == [0, 100, 200]


def test_batch_equals_one_by_one_and_ignores_other_items(reward):
    audio, exs = clips(range(4))
    prompts = [e.caption for e in exs]
    batched = reward(audio, SR, prompts)
    singles = torch.cat([reward(audio[i : i + 1], SR, prompts[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=0)
    # item 0 scored beside other clips and prompts: unchanged
    other, others = clips(range(10, 13))
    mixed = reward(torch.cat([audio[:1], other]), SR, prompts[:1] + [e.caption for e in others])
    torch.testing.assert_close(mixed[0], batched[0], atol=1e-5, rtol=0)
    assert batched.shape == (4,) and batched.abs().max() <= 1 + 1e-6


def test_text_cache_gives_identical_results(random_dir):
    audio, exs = clips(range(2))
    audio = torch.cat([audio, audio[:1]])
    prompts = [e.caption for e in exs] + ["a slow piano tune"]
    cached = ClapReward.from_pretrained(random_dir, cache_size=2)
    uncached = ClapReward.from_pretrained(random_dir, cache_size=0)
    first = cached(audio, SR, prompts)
    assert len(cached._text_cache) == 2  # bounded LRU
    assert torch.equal(cached(audio, SR, prompts), first)  # hits and misses alike
    assert torch.equal(uncached(audio, SR, prompts), first)


def test_long_clip_is_the_mean_of_its_windows(reward):
    audio, _ = clips([5], duration_s=10.0)  # windows of 4 s at 0, 4 and 6 s
    w = reward.window
    parts = [reward.embed_audio(audio[..., s : s + w], SR) for s in (0, w, audio.shape[-1] - w)]
    expected = torch.nn.functional.normalize(torch.cat(parts).mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(reward.embed_audio(audio, SR), expected, atol=1e-5, rtol=0)
    reward.max_windows = 2  # embedded in two passes: same result
    try:
        torch.testing.assert_close(reward.embed_audio(audio, SR), expected, atol=1e-5, rtol=0)
    finally:
        reward.max_windows = 64
    # a whole-clip embedding is not the same thing: the windows matter
    assert not torch.allclose(reward.embed_audio(audio[..., :w], SR), expected, atol=1e-3)


def test_window_s_is_configurable_and_bounded(random_dir):
    two = ClapReward.from_pretrained(random_dir, window_s=2.0)
    audio, _ = clips([6])
    halves = torch.cat([two.embed_audio(audio[..., i * 2 * SR : (i + 1) * 2 * SR], SR) for i in range(2)])
    expected = torch.nn.functional.normalize(halves.mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(two.embed_audio(audio, SR), expected, atol=1e-5, rtol=0)
    with pytest.raises(UserError):
        ClapReward.from_pretrained(random_dir, window_s=30.0)  # longer than the model's 4 s input


def test_fusion_models_score_purely(tmp_path):
    # the LAION "fused" kind (clap-htsat-fused): 4 mel copies, is_longer never set by us
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = tiny_clap_config(len(tokenizer))
    config.audio_config.enable_fusion = True
    ClapModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    fe = tiny_feature_extractor().to_dict() | {"truncation": "fusion"}
    ClapFeatureExtractor(**{k: v for k, v in fe.items() if k != "feature_extractor_type"}).save_pretrained(tmp_path)
    fused = ClapReward.from_pretrained(tmp_path)
    audio, exs = clips([0, 1], duration_s=5.0)
    prompts = [e.caption for e in exs]
    batched = fused(audio, SR, prompts)
    singles = torch.cat([fused(audio[i : i + 1], SR, prompts[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=0)


def test_embeddings_can_feed_a_trained_head(reward):
    audio, exs = clips([3])
    emb = reward.embed_audio(audio, SR)  # [1, D]
    assert emb.shape == (1, reward.embed_dim) and not emb.requires_grad
    head = torch.nn.Linear(reward.embed_dim, 1)
    head(emb).sum().backward()  # not an inference-mode tensor: usable as training input
    assert head.weight.grad is not None


def test_bad_input_is_a_user_error(reward):
    audio, _ = clips([0])
    with pytest.raises(UserError):
        reward(audio, SR, ["one", "two"])
    with pytest.raises(UserError):
        reward(audio.expand(1, 2, -1), SR, ["stereo"])


def test_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such model directory"):
        ClapReward.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(UserError, match="cannot load clap"):
        ClapReward.from_pretrained(tmp_path)  # exists, holds no model


@pytest.mark.parametrize("sr", [32_000, 44_100])
def test_resampling_is_handled(shipped_or_random, sr):
    signal = pytest.importorskip("scipy.signal")
    reward = shipped_or_random
    a16, exs = clips(range(3))
    up, down = sr // np.gcd(sr, SR), SR // np.gcd(sr, SR)
    high = torch.as_tensor(signal.resample_poly(a16.numpy(), up, down, axis=-1).astype(np.float32))  # [B, 1, S']
    prompts = [e.caption for e in exs]
    # the same band-limited music at another rate scores the same (own-vs-other margins are 0.3-1)
    torch.testing.assert_close(reward(high, sr, prompts), reward(a16, SR, prompts), atol=0.02, rtol=0)
    # (the embeddings agree to a cosine of 0.97-1.0: two resamplers differ a little near 8 kHz, hi-hat land)
    assert ((reward.embed_audio(high, sr) * reward.embed_audio(a16, SR)).sum(-1) > 0.95).all()


@pytest.fixture(scope="module")
def shipped_or_random(random_dir):
    return ClapReward.from_pretrained("tiny" if SHIPPED else random_dir)


def test_shipped_tiny_clap_prefers_the_own_caption(shipped):
    n = 40
    audio, exs = clips(range(500, 500 + n))
    rng = np.random.default_rng(0)
    emb = shipped.embed_audio(audio, SR)  # [n, D]
    # fresh captions of held-out clips, in training words, and in held-out words and templates (never
    # paired with audio in training; known to the text tower only through its text prior)
    for split in ("train", "heldout"):
        own = [synth.caption(e.attrs, rng, split) for e in exs]
        own_score = (emb * shipped.embed_text(own)).sum(-1)
        other_score = (emb * shipped.embed_text(own[1:] + own[:1])).sum(-1)  # clip i, caption of clip i+1
        torch.testing.assert_close(own_score[:4], shipped(audio[:4], SR, own[:4]), atol=1e-5, rtol=0)
        assert (own_score > other_score).float().mean().item() >= 0.9, split


def test_shipped_tiny_clap_loads_and_scores_in_range(shipped):
    audio, exs = clips([1, 2])
    scores = shipped(audio, SR, [e.caption for e in exs])
    assert scores.shape == (2,) and torch.isfinite(scores).all() and scores.abs().max() <= 1 + 1e-6
    assert shipped.sample_rate == SR and shipped.embed_audio(audio, SR).shape[1] == 128
