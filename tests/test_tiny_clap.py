"""The tiny CLAP's config, loss and trainer: loadable by the generic classes, exact resume."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoFeatureExtractor, AutoProcessor, AutoTokenizer, ClapModel

from musicrl.tiny import synth
from musicrl.errors import UserError
from musicrl.tiny import clap as tiny_clap
from musicrl.tiny.clap import (
    ClapTrainConfig, contrastive_loss, match_matrix, tiny_clap_config, tiny_tokenizer, train_clap,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_contrastive_loss_is_symmetric_infonce_without_duplicates():
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    model = ClapModel(tiny_clap_config(len(tokenizer))).eval()
    with torch.no_grad():
        model.logit_scale_a.fill_(2.0)  # distinct temperatures: each direction keeps its own
    tok = tokenizer(["a slow piano tune", "fast organ, no drums", "bells"], padding=True, return_tensors="pt")
    feats = torch.randn(3, 1, 63, 64) * 10 - 40  # 4 s of the 64-bin front end
    out = model(**tok, input_features=feats, return_loss=True)
    ours = contrastive_loss(out.logits_per_text, out.logits_per_audio, torch.eye(3, dtype=torch.bool))
    labels = torch.arange(3)
    text_to_audio = F.cross_entropy(out.logits_per_text, labels)
    audio_to_text = F.cross_entropy(out.logits_per_audio, labels)
    torch.testing.assert_close(ours, (text_to_audio + audio_to_text) / 2)
    # transformers' return_loss transposes logits_per_audio: both of its terms rank audio per text
    hf_terms = (text_to_audio + F.cross_entropy(out.logits_per_audio.t(), labels)) / 2
    torch.testing.assert_close(out.loss, hf_terms)
    # caption 0 also fits clip 1 and the model ranks clip 1 first: no longer a mistake
    both = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    logits = torch.tensor([[3.0, 5.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    eye = torch.eye(3, dtype=torch.bool)
    assert contrastive_loss(logits, logits.t(), both) < contrastive_loss(logits, logits.t(), eye) - 0.1


def test_hard_negative_texts_join_each_audios_softmax_and_only_fitting_texts_rank_audio():
    logits_per_audio = torch.tensor([[5.0, 0.0, 4.0], [0.0, 5.0, 0.0]])  # 2 clips x (2 captions + 1 hard negative)
    match = torch.tensor([[1, 0], [0, 1], [0, 0]], dtype=torch.bool)  # the flip fits no clip
    plain = contrastive_loss(logits_per_audio[:, :2].t(), logits_per_audio[:, :2], match[:2])
    hard = contrastive_loss(logits_per_audio.t(), logits_per_audio, match)
    # the text -> audio term is the same (a text that fits no clip has no target); the audio -> text
    # term now also has to beat the hard negative, which clip 0 scores almost as high as its caption
    text_term = -F.log_softmax(logits_per_audio[:, :2].t(), -1).diagonal().mean()
    audio_term = -F.log_softmax(logits_per_audio, -1)[torch.arange(2), torch.arange(2)].mean()
    torch.testing.assert_close(hard, (text_term + audio_term) / 2)
    assert hard > plain + 0.05


def test_a_hard_negative_step_trains_on_the_finer_front_end(tmp_path, monkeypatch):
    cfg = ClapTrainConfig(pool_clips=8, epochs=1, batch_size=4, eval_every=100, eval_clips=32, checkpoint_every=100,
                          text_pretrain_steps=0, mel_bins=64, hard_negatives=True)
    seen = []
    real_loss = tiny_clap.contrastive_loss

    def record(logits_per_text, logits_per_audio, match):
        seen.append((logits_per_audio.shape, match))
        return real_loss(logits_per_text, logits_per_audio, match)

    monkeypatch.setattr(tiny_clap, "contrastive_loss", record)
    out = train_clap(tmp_path / "clap", cfg, progress=False)
    for shape, match in seen:  # every train caption names a flippable attribute: 4 captions + 4 flips
        assert tuple(shape) == (4, 8) and match.shape == (8, 4)
        assert match[:4].diagonal().all() and not match[4:].diagonal().any()  # a flip never fits its own clip
    assert ClapModel.from_pretrained(out).config.audio_config.num_mel_bins == 64
    fe = AutoFeatureExtractor.from_pretrained(out)
    assert (fe.feature_size, fe.fft_window_size, fe.hop_length) == (64, 2048, 1024)
    coarse = tiny_clap.tiny_feature_extractor(32)  # the earlier front end keeps its own STFT
    assert (coarse.feature_size, coarse.fft_window_size, coarse.hop_length) == (32, 1024, 512)
    with pytest.raises(UserError, match="front end"):
        ClapTrainConfig(mel_bins=48)  # only the front ends whose STFT fills the tower's 64x64 image


def test_match_matrix_follows_the_named_attributes():
    exs = [synth.example(s) for s in range(40)]
    caps = ["a slow tune", "fast bell melody, no drums"]
    m = match_matrix(caps + [e.caption for e in exs[2:]], [e.attrs for e in exs])
    assert m.diagonal().all()
    for j, e in enumerate(exs):
        if j != 0:
            assert bool(m[0, j]) == (e.attrs.tempo == "slow")
        if j != 1:
            a = e.attrs
            assert bool(m[1, j]) == (a.tempo == "fast" and a.instrument == "bell" and a.drums == "none")


def test_saved_directory_loads_with_the_auto_classes(tmp_path):
    cfg = ClapTrainConfig(pool_clips=8, epochs=1, batch_size=4, eval_every=100, eval_clips=32,
                          checkpoint_every=1, text_pretrain_steps=2)
    out = train_clap(tmp_path / "clap", cfg, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json",
        "tokenizer.json", "tokenizer_config.json"]
    ids = AutoTokenizer.from_pretrained(out)("a slow piano tune").input_ids
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) == 6  # <s> a slow piano tune </s>
    assert AutoFeatureExtractor.from_pretrained(out).sampling_rate == 16_000
    AutoProcessor.from_pretrained(out)
    ClapModel.from_pretrained(out)


@pytest.mark.slow
def test_resumed_training_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = ClapTrainConfig(pool_clips=8, epochs=2, batch_size=4, eval_every=100, eval_clips=32,
                          checkpoint_every=2, warmup_steps=1, text_pretrain_steps=3)
    whole = train_clap(tmp_path / "whole", cfg, progress=False)
    real_step = tiny_clap._train_step

    def crash_at_step_3(*args):
        if args[5] == 3:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(tiny_clap, "_train_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):  # after the step-2 checkpoint, before the end
        train_clap(tmp_path / "resumed", cfg, progress=False, work_dir=tmp_path / "work")
    monkeypatch.setattr(tiny_clap, "_train_step", real_step)
    resumed = train_clap(tmp_path / "resumed", cfg, progress=False, work_dir=tmp_path / "work")
    a, b = ClapModel.from_pretrained(whole).state_dict(), ClapModel.from_pretrained(resumed).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    with pytest.raises(UserError, match="different ClapTrainConfig"):
        train_clap(tmp_path / "other", replace(cfg, lr=1e-4), progress=False, work_dir=tmp_path / "work")


def test_frozen_text_tower_keeps_its_pretrained_weights_and_the_rest_learns(tmp_path):
    cfg = ClapTrainConfig(pool_clips=8, epochs=2, batch_size=4, eval_every=100, eval_clips=32,
                          checkpoint_every=100, warmup_steps=1, text_pretrain_steps=0, lr=1e-2)
    torch.manual_seed(cfg.seed)  # train_clap's init: the same seed, the same tokenizer length
    init = ClapModel(tiny_clap_config(len(tiny_tokenizer()))).state_dict()
    trained = ClapModel.from_pretrained(train_clap(tmp_path / "clap", cfg, progress=False)).state_dict()
    text = [k for k in init if k.startswith("text_model.")]
    assert text and all(torch.equal(init[k], trained[k]) for k in text)
    moved = [k for k in init if k.startswith(("text_projection.", "audio_model.")) and not torch.equal(init[k], trained[k])]
    assert any(k.startswith("text_projection.") for k in moved) and any(k.startswith("audio_model.") for k in moved)


def test_config_is_validated():
    with pytest.raises(UserError):
        ClapTrainConfig(text_words="heldout")
    with pytest.raises(UserError):
        ClapTrainConfig(batch_size=1)
    with pytest.raises(UserError):
        ClapTrainConfig(pool_clips=10, batch_size=64)
    with pytest.raises(UserError, match="codec_prob"):
        ClapTrainConfig(codec_prob=1.5)
    with pytest.raises(UserError, match="needs a codec"):
        ClapTrainConfig(codec="")
    ClapTrainConfig(codec="", codec_prob=0.0)  # clean renders only


def test_codec_version_is_the_round_trip_plus_a_noise_floor_at_the_asked_level():
    from musicrl.model.codec import Codec

    codec = Codec.from_pretrained("tiny")
    audio = torch.as_tensor(synth.example(3, 1.0).audio)[None]  # [1, S]
    silent = tiny_clap.codec_version(audio, codec, torch.tensor([-300.0]), seed=0)
    round_trip = codec.decode(codec.encode(audio[:, None]))[:, 0, : audio.shape[-1]]
    torch.testing.assert_close(silent, round_trip)
    assert (silent - audio).abs().mean() > 1e-3  # the codec is lossy: a different domain
    noisy = tiny_clap.codec_version(audio, codec, torch.tensor([-40.0]), seed=0)
    rms = (noisy - silent).pow(2).mean().sqrt().item()
    assert 0.0095 < rms < 0.0105  # -40 dBFS
    assert torch.equal(noisy, tiny_clap.codec_version(audio, codec, torch.tensor([-40.0]), seed=0))


def test_batches_take_the_codec_version_at_the_configured_rate():
    attrs = [synth.sample_attributes(np.random.default_rng(i)) for i in range(64)]
    rates = {}
    for p in (0.0, 0.5, 1.0):
        cfg = ClapTrainConfig(pool_clips=64, batch_size=32, codec_prob=p)
        coded = torch.cat([tiny_clap._batch(step, cfg, attrs)[3] for step in range(8)])  # [256]
        rates[p] = coded.float().mean().item()
    assert rates[0.0] == 0.0 and rates[1.0] == 1.0 and 0.4 < rates[0.5] < 0.6


def test_shipped_tiny_clap_retrieves_from_held_out_paraphrases():
    from musicrl.model.hub import TINY_DIR
    from musicrl.tiny.clap import evaluate_clap

    if not (TINY_DIR / "clap" / "config.json").exists():
        pytest.skip("the shipped tiny CLAP is not built")
    r = evaluate_clap("tiny", n=128)  # 4 groups of 32 held-out clips
    # the bar is R@1 >= 0.5 on held-out captions (measured here: 0.64 held-out words, 0.63 train
    # words; 0.60 / 0.62 on 256 clips); the old model without the text prior got 0.09 on held-out words
    assert r["r1_heldout_words"] >= 0.5 and r["r1_train_words"] >= 0.5
    assert r["own_vs_mismatched_heldout_words"] >= 0.9
    # the same clips through the codec, as the policy's samples are: 0.61 on 256 clips (0.48 for a
    # model trained on clean renders alone)
    assert r["codec_round_trip"]["r1_train_words"] >= 0.5
