"""The tiny MusicGen: transformers' own classes with a small config, for the offline `tiny` world.

Text encoder: a 2-layer T5 encoder over bytes (`ByT5Tokenizer` needs no vocabulary file, so nothing
is downloaded). Codec: the spectral codec of `musicrl.tiny.codec` (EnCodec's API; any EnCodec-API
model works). Decoder: a 4-layer MusicGen LM over its K=4 codebooks. Saved with `save_pretrained`,
it loads exactly like facebook/musicgen-* once `musicrl.model.codec` is imported (which registers the
tiny codec's model type with transformers).
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    ByT5Tokenizer,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)

MAX_DURATION_S = 10.0  # positions are sized for this; the corpus clips are 4 s


def text_encoder_config(vocab_size: int = 384) -> T5Config:
    return T5Config(
        vocab_size=vocab_size, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
        dropout_rate=0.1, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    )  # fmt: skip


def build(codec, *, hidden_size: int = 256, num_layers: int = 4, heads: int = 8):
    """A randomly initialised tiny MusicGen around `codec` (an EnCodec-API model), and its tokenizer."""
    tokenizer = ByT5Tokenizer()
    frame_rate = codec.config.sampling_rate / codec.config.hop_length
    K = codec.quantizer.get_num_quantizers_for_bandwidth(max(codec.config.target_bandwidths))
    max_len = int(MAX_DURATION_S * frame_rate) + K
    V = codec.config.codebook_size
    decoder = MusicgenDecoderConfig(
        vocab_size=V, max_position_embeddings=max_len, num_hidden_layers=num_layers,
        ffn_dim=4 * hidden_size, num_attention_heads=heads, hidden_size=hidden_size, dropout=0.1,
        num_codebooks=K, pad_token_id=V, bos_token_id=V, decoder_start_token_id=V,
    )  # fmt: skip
    config = MusicgenConfig(
        text_encoder=text_encoder_config(len(tokenizer)).to_dict(),
        audio_encoder=codec.config.to_dict(),
        decoder=decoder.to_dict(),
    )
    model = MusicgenForConditionalGeneration(config)
    model.audio_encoder.load_state_dict(codec.state_dict())
    model.generation_config = GenerationConfig(
        max_length=max_len, do_sample=True, top_k=250, guidance_scale=3.0,
        pad_token_id=V, bos_token_id=V, decoder_start_token_id=V,
    )  # fmt: skip
    return model, tokenizer


def save_random(path: str | Path) -> Path:
    """A randomly initialised MusicGen of test size (a random 4 x 256 EnCodec, 2 x 64 decoder), saved
    like a real checkpoint: the fixture of the tests and the plumbing runs of the benchmarks."""
    import torch
    from transformers import EncodecConfig, EncodecModel

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
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)
