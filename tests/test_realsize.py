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


def test_a_random_codec_decodes_different_codes_to_different_audio():
    """A freshly built EnCodec has all-zero codebooks; `randomize_codebooks` gives them vectors."""
    import torch
    from transformers import EncodecModel

    from musicrl.model.realsize import musicgen_config, randomize_codebooks

    torch.manual_seed(0)
    codec = EncodecModel(musicgen_config().audio_encoder).eval()
    codes = torch.randint(0, 2048, (2, 1, 1, 4, 10))  # two code sequences of 10 frames
    decode = lambda c: codec.decode(c, [None])[0]  # noqa: E731
    with torch.no_grad():
        assert torch.equal(decode(codes[0]), decode(codes[1]))  # transformers' init: codes do not matter
        randomize_codebooks(codec)
        assert (decode(codes[0]) - decode(codes[1])).abs().max() > 1e-3


@pytest.mark.slow
def test_the_musicgen_small_dpo_preset_trains_a_step_on_its_architecture(tmp_path):
    """po/small/dpo (LoRA 16, gradient checkpointing; bf16 autocast is CUDA's) on random weights: two
    generated clips, their codes kept by `generate`, one vote, one step, a merged checkpoint."""
    import json

    from musicrl.model.realsize import save_random_musicgen_small

    model_dir = save_random_musicgen_small(tmp_path / "musicgen-small-random")
    out = tmp_path / "clips"
    assert main(["generate", "lofi beat", "--model", str(model_dir), "--duration", "0.5", "--num-samples", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    a, b = sorted(out.glob("*.json"))
    sides = {s: json.loads(m.read_text()) for s, m in (("a", a), ("b", b))}
    vote = {"prompt": "lofi beat", "choice": "a", **{f"clip_{s}": m.name.replace(".json", ".wav") for s, m in (("a", a), ("b", b))},
            **{f"codes_{s}": sides[s]["codes"] for s in sides}}  # fmt: skip
    (out / "votes.jsonl").write_text(json.dumps(vote) + "\n")
    run = tmp_path / "run"
    assert main(["train", "--config", "po/small/dpo", "--votes", str(out / "votes.jsonl"), f"model={model_dir}",
                 f"out_dir={run}", "steps=1", "batch_size=1", "grad_accum=1", "eval_fraction=0", "device=cpu"]) == 0  # fmt: skip
    assert (run / "final" / "model.safetensors").is_file() or (run / "final" / "model.safetensors.index.json").is_file()


@pytest.mark.parametrize("size,layers,width,heads,ffn,decoder_b,total_gb", [
    ("small", 24, 1024, 16, 4096, 0.42, 2.35),  # facebook/musicgen-small: 2.36 GB fp32 checkpoint
    ("medium", 48, 1536, 24, 6144, 1.84, 8.02),  # facebook/musicgen-medium: 8.04 GB fp32 checkpoint (nominal 1.5B)
])  # fmt: skip
def test_musicgen_configs_have_the_published_shape_and_size(tmp_path, size, layers, width, heads, ffn, decoder_b, total_gb):
    """Config only (no weights): the saved config loads back through transformers, and a meta-device
    model of it counts the published checkpoint's parameters."""
    import torch
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

    from musicrl.model.realsize import musicgen_config

    musicgen_config(size).save_pretrained(tmp_path)
    config = MusicgenConfig.from_pretrained(tmp_path)
    d = config.decoder
    assert (d.num_hidden_layers, d.hidden_size, d.num_attention_heads, d.ffn_dim) == (layers, width, heads, ffn)
    assert (d.num_codebooks, d.vocab_size, config.text_encoder.d_model, config.audio_encoder.sampling_rate) == (4, 2048, 768, 32000)
    with torch.device("meta"):
        model = MusicgenForConditionalGeneration(config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.decoder) / 1e9 == pytest.approx(decoder_b, abs=0.01)
    assert count(model) * 4 / 1e9 == pytest.approx(total_gb, abs=0.03)  # fp32 bytes
