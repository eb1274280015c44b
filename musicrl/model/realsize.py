"""Real-size architectures with random weights, for tests and benchmarks where no hub is reachable.

`musicgen_small_config()` mirrors facebook/musicgen-small: a T5-base text encoder, a 24-layer
1024-wide decoder over 4 codebooks of 2048, and the 32 kHz EnCodec. The tokenizer is byte-level
(`ByT5Tokenizer`) because the real SentencePiece vocabulary cannot be downloaded here; token ids
stay inside T5's vocabulary, so the architecture and every code path are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import torch


def musicgen_small_config():
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

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
        vocab_size=2048, max_position_embeddings=2048, num_hidden_layers=24, ffn_dim=4096,
        num_attention_heads=16, hidden_size=1024, num_codebooks=4, pad_token_id=2048, bos_token_id=2048,
        decoder_start_token_id=2048,
    )  # fmt: skip
    return MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=codec.to_dict(), decoder=decoder.to_dict())


def save_random_musicgen_small(path: str | Path, seed: int = 0, dtype=torch.float32) -> Path:
    """Random weights in musicgen-small's architecture, saved with `save_pretrained` (~2.3 GB in fp32)."""
    from transformers import ByT5Tokenizer, GenerationConfig, MusicgenForConditionalGeneration

    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(musicgen_small_config()).to(dtype)
    model.generation_config = GenerationConfig(
        max_length=1500, do_sample=True, top_k=250, guidance_scale=3.0,
        pad_token_id=2048, bos_token_id=2048, decoder_start_token_id=2048,
    )  # fmt: skip
    path = Path(path)
    model.save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return path
