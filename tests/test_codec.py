"""The Codec interface (musicrl.codec) and the tiny codec's trainer (musicrl.tiny.codec)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor, EncodecConfig, EncodecModel

from musicrl.codec import Codec
from musicrl.errors import UserError
from musicrl.hub import TINY_DIR
from musicrl.tiny import codec as tiny


@pytest.fixture(scope="module")
def random_model() -> EncodecModel:
    """The tiny architecture with random weights, codebooks k-means-initialised on noise."""
    torch.manual_seed(0)
    model = EncodecModel(tiny.tiny_codec_config()).eval()
    with torch.no_grad():
        z = model.encoder(_audio(4, 16_000, seed=9))  # [4, D, 50]
    tiny.kmeans_init(model, z, iters=2, frames_per_step=200, g=torch.Generator().manual_seed(0))
    return model


def _audio(b: int, s: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(b, 1, s, generator=g)


def test_tiny_config_targets():
    config = tiny.tiny_codec_config()
    assert config.sampling_rate == 16_000 and config.audio_channels == 1
    assert config.num_quantizers == 4 and config.frame_rate == 50 and config.hop_length == 320
    assert config.chunk_length_s is None and config.normalize is False
    n_floats = sum(t.numel() for t in EncodecModel(config).state_dict().values())
    assert n_floats * 4 < 3.5e6  # a few MB in fp32, shipped in the repo


def test_shapes_dtype_and_metadata(random_model):
    codec = Codec.from_encodec(random_model)
    assert (codec.sample_rate, codec.frame_rate, codec.num_codebooks, codec.codebook_size) == (16_000, 50.0, 4, 256)
    codes = codec.encode(_audio(2, 16_000))
    assert codes.shape == (2, 4, 50) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 256
    assert len(torch.unique(codes[:, 0])) > 1  # random codebooks: not everything on one code
    audio = codec.decode(codes)
    assert audio.shape == (2, 1, 50 * 320) and audio.dtype == torch.float32
    # a length that is not a multiple of the hop rounds the frame count up
    assert codec.encode(_audio(1, 16_100)).shape == (1, 4, 51)
    assert codec.decode(codec.encode(_audio(1, 16_100))).shape == (1, 1, 51 * 320)
    with pytest.raises(ValueError):
        codec.encode(_audio(1, 16_000)[:, 0])
    with pytest.raises(ValueError):
        codec.decode(codes[:, :3])


def test_same_codes_and_audio_as_musicgens_calls(random_model):
    """MusicGen calls encode(bandwidth=None) and decode(codes[None], audio_scales=[None])."""
    codec = Codec.from_encodec(random_model)
    x = _audio(2, 8_000, seed=1)
    ref = random_model.encode(x).audio_codes[0]  # the default (first) bandwidth
    assert torch.equal(codec.encode(x), ref)
    ref_audio = random_model.decode(ref[None], audio_scales=[None]).audio_values
    assert torch.allclose(codec.decode(ref), ref_audio, atol=1e-6)


def test_num_codebooks_picks_the_bandwidth():
    config = EncodecConfig(sampling_rate=16_000, target_bandwidths=[0.8, 1.6], codebook_size=256, num_filters=4,
                           hidden_size=16, num_lstm_layers=1)
    model = EncodecModel(config)
    assert Codec.from_encodec(model).num_codebooks == 4  # the largest bandwidth by default
    assert Codec.from_encodec(model, num_codebooks=2).num_codebooks == 2
    with pytest.raises(UserError):
        Codec.from_encodec(model, num_codebooks=3)


def test_save_load_round_trip(random_model, tmp_path):
    random_model.save_pretrained(tmp_path)
    loaded = Codec.from_pretrained(tmp_path)
    codec = Codec.from_encodec(random_model)
    x = _audio(1, 6_400, seed=2)
    assert torch.equal(loaded.encode(x), codec.encode(x))
    assert torch.allclose(loaded.decode(codec.encode(x)), codec.decode(codec.encode(x)), atol=1e-6)
    assert not any(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training


def test_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such model directory"):
        Codec.from_pretrained(tmp_path / "nope")
    with pytest.raises(UserError, match="cannot load codec"):
        Codec.from_pretrained(tmp_path)  # exists, but holds no model


def test_training_quantizer_matches_inference(random_model):
    """Our RVQ (training side) picks exactly the codes EncodecModel's own quantizer picks."""
    z = torch.randn(2, random_model.config.hidden_size, 30)
    _, _, codes = tiny.quantize(random_model, z, None, None)
    assert torch.equal(codes, random_model.quantizer.encode(z, 1.6))


def test_kmeans_init_and_dead_code_reseeding():
    torch.manual_seed(0)
    model = EncodecModel(tiny.tiny_codec_config())
    centers = 3 * torch.randn(32, 64)  # fewer blobs than codes
    z = (centers[torch.randint(32, (1024,))] + 0.01 * torch.randn(1024, 64)).T[None]  # [1, D, N]
    tiny.kmeans_init(model, z, iters=20, frames_per_step=1024, g=torch.Generator().manual_seed(0))
    zq, commit, _ = tiny.quantize(model, z, None, None)
    assert commit.item() < 0.01  # relative to the frames' variance: k-means found the blobs
    cb = model.quantizer.layers[0].codebook
    assert bool(cb.inited) and torch.isfinite(cb.embed).all()
    cb.cluster_size.zero_()  # every code looks dead: all must be re-seeded from the batch
    x = torch.randn(64, 64)
    cfg = tiny.CodecTrainConfig()
    tiny._ema_update(cb, x, torch.zeros(64, dtype=torch.long), cfg, torch.Generator().manual_seed(0))
    dists = (cb.embed[1:, None] - x[None]).norm(dim=-1).min(dim=1).values
    assert dists.max() < 1e-5  # dead codes now sit on batch vectors


def _small_cfg(**kw) -> tiny.CodecTrainConfig:
    base = dict(steps=4, batch_size=2, clip_s=0.5, render_s=0.6, quantize_after=1, kmeans_clips=4,
                kmeans_iters=2, warmup_steps=1, checkpoint_every=1)
    return tiny.CodecTrainConfig(**{**base, **kw})


def test_train_codec_writes_a_loadable_model(tmp_path):
    out = tiny.train_codec(tmp_path / "codec", _small_cfg(steps=2), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    codec = Codec.from_pretrained(out)
    state = codec.model.state_dict()
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert all(bool(layer.codebook.inited) for layer in codec.model.quantizer.layers)
    y = codec.decode(codec.encode(_audio(1, 8_000)))
    assert torch.isfinite(y).all()
    fe = AutoFeatureExtractor.from_pretrained(out)
    assert fe.sampling_rate == 16_000 and fe.feature_size == 1


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cfg = _small_cfg()
    straight = tiny.train_codec(tmp_path / "a", cfg, progress=False, work_dir=tmp_path / "wa")
    real_step = tiny._train_step

    def crash_at_3(model, opt, loss_fn, step, cfg):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(model, opt, loss_fn, step, cfg)

    monkeypatch.setattr(tiny, "_train_step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        tiny.train_codec(tmp_path / "b", cfg, progress=False, work_dir=tmp_path / "wb")
    monkeypatch.setattr(tiny, "_train_step", real_step)
    resumed = tiny.train_codec(tmp_path / "b", cfg, progress=False, work_dir=tmp_path / "wb")
    a = EncodecModel.from_pretrained(straight).state_dict()
    b = EncodecModel.from_pretrained(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="different CodecTrainConfig"):
        tiny.train_codec(tmp_path / "b", _small_cfg(lr=1e-3), progress=False, work_dir=tmp_path / "wb")


def test_si_snr_and_perplexity():
    x = torch.randn(2, 1000)
    assert tiny.si_snr(3 * x, x).min() > 60  # scale does not matter
    assert abs(tiny.si_snr(x + x.std() * torch.randn(2, 1000), x).mean().item()) < 1.0  # ~0 dB
    codes = torch.stack([torch.arange(256).repeat(4), torch.zeros(1024, dtype=torch.long)])
    assert torch.allclose(tiny.perplexity(codes, 256), torch.tensor([256.0, 1.0]))


@pytest.mark.skipif(not (TINY_DIR / "codec" / "model.safetensors").exists(), reason="tiny codec not built")
@pytest.mark.xfail(strict=True, reason="the shipped interim codec (600 CPU steps) misses this bar; retraining it is open work")
def test_trained_tiny_codec_reconstructs_synth_music():
    from musicrl import synth

    codec = Codec.from_pretrained("tiny")
    x = torch.as_tensor(np.stack([e.audio for e in synth.examples(8, 0, 2.0, "heldout")]))[:, None]
    codes = codec.encode(x)
    y = codec.decode(codes)[..., : x.shape[-1]]
    assert tiny.si_snr(y[:, 0], x[:, 0]).mean() > 0.0
    again = codec.encode(y)
    agreement = (again == codes).float().mean(dim=(0, 2))  # [K]
    assert agreement[0] > 0.5 and agreement.mean() > 0.3
    assert math.isclose(codec.frame_rate, 50.0)
