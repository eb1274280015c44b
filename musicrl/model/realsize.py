"""Real-size architectures with random weights, for tests and benchmarks where no hub is reachable.

`musicgen_config(size)` mirrors facebook/musicgen-small, -medium and -large: a T5-base text encoder
(all three), the 32 kHz EnCodec, and a decoder over 4 codebooks of 2048 whose depth, width, heads and
FFN are the published configs' (`DECODERS`, from the checkpoints' config.json: small 24 x 1024,
16 heads, FFN 4096; medium 48 x 1536, 24 heads, FFN 6144; large 48 x 2048, 32 heads, FFN 8192).
Their nominal sizes are 300M, 1.5B and 3.3B; counted, the decoders alone hold 0.42B, 1.84B and 3.26B
parameters, and with the text encoder and codec 0.59B, 2.01B and 3.42B (the fp32 musicgen-medium
checkpoint is 8.04 GB: 2.01B).
The tokenizer is byte-level (`ByT5Tokenizer`) because the real SentencePiece vocabulary cannot be
downloaded here; token ids stay inside T5's vocabulary, so the architecture and every code path are
the real ones. LAION's CLAP is `musicrl.rewards.realsize`.
"""

from __future__ import annotations

from pathlib import Path

import torch


# decoder (layers, width, heads, FFN) of each published MusicGen
DECODERS = {"small": (24, 1024, 16, 4096), "medium": (48, 1536, 24, 6144), "large": (48, 2048, 32, 8192)}


def musicgen_config(size: str = "small"):
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    layers, width, heads, ffn = DECODERS[size]
    text = T5Config(
        vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
        feed_forward_proj="relu", is_encoder_decoder=False,
    )  # fmt: skip
    codec = EncodecConfig(
        sampling_rate=32000, target_bandwidths=[2.2], upsampling_ratios=[8, 5, 4, 4], num_filters=64,
        hidden_size=128, codebook_size=2048, num_lstm_layers=2, normalize=False, use_causal_conv=False,
        chunk_length_s=None, overlap=None,
    )  # fmt: skip
    decoder = MusicgenDecoderConfig(
        vocab_size=2048, max_position_embeddings=2048, num_hidden_layers=layers, ffn_dim=ffn,
        num_attention_heads=heads, hidden_size=width, num_codebooks=4, pad_token_id=2048, bos_token_id=2048,
        decoder_start_token_id=2048,
    )  # fmt: skip
    return MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=codec.to_dict(), decoder=decoder.to_dict())


def musicgen_small_config():
    return musicgen_config("small")


def randomize_codebooks(codec) -> None:
    """Standard-normal codebook vectors for a freshly built EnCodec. transformers leaves them at zero
    (a trained checkpoint loads them), so every code would decode to the same audio: a random model's
    clips would all be byte-identical, whatever the prompt and seed, and the arena would refuse every
    pair as the same audio twice."""
    with torch.no_grad():
        for layer in codec.quantizer.layers:
            layer.codebook.embed.normal_()


def save_random_musicgen_small(path: str | Path, seed: int = 0, dtype=torch.float32) -> Path:
    """Random weights in musicgen-small's architecture, saved with `save_pretrained` (~2.3 GB in fp32)."""
    from transformers import ByT5Tokenizer, GenerationConfig, MusicgenForConditionalGeneration

    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(musicgen_small_config())
    randomize_codebooks(model.audio_encoder)
    model = model.to(dtype)
    model.generation_config = GenerationConfig(
        max_length=1500, do_sample=True, top_k=250, guidance_scale=3.0,
        pad_token_id=2048, bos_token_id=2048, decoder_start_token_id=2048,
    )  # fmt: skip
    path = Path(path)
    model.save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return path
