"""Pretraining the tiny MusicGen LM: loss semantics, learning, and exact resume."""

import pytest
import torch

from musicrl.tiny import synth
from musicrl.tiny.lm import LMTrainConfig, lm_loss, train_lm


def test_null_condition_ignores_the_caption(random_policy):
    codes = torch.randint(0, random_policy.vocab_size, (2, random_policy.num_codebooks, 8))
    drop = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        a = lm_loss(random_policy, ["fast piano", "slow organ"], codes, drop)
        b = lm_loss(random_policy, ["something else entirely", "x"], codes, drop)
        c = lm_loss(random_policy, ["something else entirely", "x"], codes, ~drop)
    torch.testing.assert_close(a, b)
    assert (a - c).abs() > 0  # with a caption, the text does reach the decoder


def test_loss_falls_when_fitting_a_batch(random_musicgen_dir):
    from musicrl.model.policy import MusicGenPolicy

    torch.manual_seed(0)
    policy = MusicGenPolicy.from_pretrained(str(random_musicgen_dir))
    policy.model.train()
    codes = torch.randint(0, policy.vocab_size, (4, policy.num_codebooks, 10))
    prompts = ["fast piano"] * 4
    opt = torch.optim.Adam([p for p in policy.model.decoder.parameters()], lr=3e-3)
    no_drop = torch.zeros(4, dtype=torch.bool)
    first = lm_loss(policy, prompts, codes, no_drop).item()
    for _ in range(30):
        loss = lm_loss(policy, prompts, codes, no_drop)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_train_lm_resumes_to_the_same_weights(tmp_path, random_musicgen_dir):
    from transformers import MusicgenForConditionalGeneration

    codec_dir = tmp_path / "codec"
    MusicgenForConditionalGeneration.from_pretrained(random_musicgen_dir).audio_encoder.save_pretrained(codec_dir)
    cfg = dict(num_clips=8, clip_s=0.5, crop_frames=10, batch_size=4, hidden_size=32, num_layers=1, heads=2, warmup=1,
               text_pretrain_steps=2, prefix_frames=5, prefix_steps=2, val_clips=3)
    full = train_lm(codec_dir, tmp_path / "a", LMTrainConfig(steps=4, checkpoint_every=5, **cfg), progress=False, work_dir=tmp_path / "wa")
    # "killed" after step 5, in the clip-start phase (its checkpoint written), then the same command again
    half = train_lm(codec_dir, tmp_path / "c", LMTrainConfig(steps=4, checkpoint_every=5, **cfg), progress=False,
                    work_dir=tmp_path / "wc", stop_after=5)  # fmt: skip
    assert half is None
    resumed = train_lm(codec_dir, tmp_path / "c", LMTrainConfig(steps=4, checkpoint_every=5, **cfg), progress=False, work_dir=tmp_path / "wc")
    a = MusicgenForConditionalGeneration.from_pretrained(full).state_dict()
    c = MusicgenForConditionalGeneration.from_pretrained(resumed).state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)
    # the learning curve: one row per checkpoint (steps 5 and 6), the same in the resumed run
    log = (tmp_path / "wa" / "log.csv").read_text().splitlines()
    assert log[0] == "step,phase,lr,train_loss,held_out_loss"
    assert [r.split(",")[:2] for r in log[1:]] == [["5", "starts"], ["6", "starts"]]
    assert all(0 < float(r.split(",")[4]) < 10 for r in log[1:])
    assert (tmp_path / "wc" / "log.csv").read_text().splitlines() == log
    assert (full / "training_log.csv").read_text().splitlines() == log
    assert (full / "training_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_the_code_cache_follows_the_codec(tmp_path, random_musicgen_dir):
    """Codes cached for one codec are never reused for another (the LM would learn the wrong tokens)."""
    from transformers import MusicgenForConditionalGeneration

    from musicrl.model.codec import Codec
    from musicrl.model.spectral_codec import SpectralCodecConfig, SpectralCodecModel
    from musicrl.tiny.lm import encode_corpus

    cfg = LMTrainConfig(num_clips=4, clip_s=0.5, batch_size=2)
    encodec = Codec.from_encodec(MusicgenForConditionalGeneration.from_pretrained(random_musicgen_dir).audio_encoder)
    spectral = Codec.from_encodec(SpectralCodecModel(SpectralCodecConfig()))
    cache = tmp_path / "codes.pt"
    a = encode_corpus(encodec, cfg, cache, progress=False)
    assert torch.equal(encode_corpus(encodec, cfg, cache, progress=False)["codes"], a["codes"])  # cache hit
    b = encode_corpus(spectral, cfg, cache, progress=False)
    assert b["key"]["codec"] != a["key"]["codec"]
    audio = torch.stack([torch.from_numpy(synth.example(i, duration_s=0.5).audio) for i in range(4)])[:, None]
    assert torch.equal(b["codes"].long(), spectral.encode(audio))  # re-encoded with the new codec


def test_config_rejects_an_unknown_text_vocabulary():
    assert LMTrainConfig().text_words == "train"
    with pytest.raises(ValueError, match="text_words"):
        LMTrainConfig(text_words="heldout")


@pytest.mark.parametrize("size", [dict(hidden_size=256, heads=6), dict(num_layers=0), dict(heads=0)])
def test_config_rejects_a_decoder_shape_that_cannot_be_built(size):
    LMTrainConfig(hidden_size=256, num_layers=6, heads=8)  # the larger LM of docs/results/lm-adherence.md
    with pytest.raises(ValueError, match="heads dividing hidden_size"):
        LMTrainConfig(**size)
