"""`laion/larger_clap_music`'s architecture with random weights, and reward heads on it, for tests and
benchmarks where no hub is reachable (the MusicGen side is `musicrl.model.realsize`).

Where the numbers come from (public copies of the checkpoint's files, read for this module):

- `config.json` of laion/larger_clap_music at commit a0b4534a14f58e20944452dff00a22a06ce629d1
  (https://huggingface.co/laion/larger_clap_music/blob/a0b4534a/config.json, 628 bytes, written by
  transformers 4.35.0.dev0): `projection_dim` 512, `projection_hidden_act` "relu",
  `logit_scale_init_value` 14.285714285714285, `text_config` = {} (ClapTextConfig's defaults:
  RoBERTa-base, 12 layers, width 768, 12 heads, FFN 3072, vocab 50265, 514 positions), and
  `audio_config` = {"depths": [2, 2, 12, 2], "hidden_size": 1024, "patch_embeds_hidden_size": 128}
  over ClapAudioConfig's defaults (HTSAT-base: spec_size 256, window 8, patch 4, heads
  [4, 8, 16, 32], 64 mel bins, `enable_fusion` False). The copies of laion/larger_clap_general and
  larger_clap_music_and_speech carry the same audio/text lines. The defaults are transformers'
  own and have not changed between 4.35 and 5.x; `LARGER_CLAP_MUSIC` spells them out so that a
  future change of a default cannot silently change this architecture.
- `preprocessor_config.json`: the file as uploaded with laion/larger_clap_general (same uploader,
  same "Upload processor" commit series, 541 bytes, mirrored at
  huggingface.co/JackIsNotInTheBox/Generate_Audio_for_Video_Checkpoints, commit 36bf52a7) and
  laion/clap-htsat-unfused: 48 kHz, 64 mel bins over 50-14,000 Hz, FFT 1024, hop 480, 10 s inputs
  (480,000 samples), `truncation` "rand_trunc" (no fusion), `padding` "repeatpad". The
  larger_clap_music copy itself was not found; its model has `enable_fusion` False, which is what
  "rand_trunc" goes with (the fused checkpoints ship "fusion").

The tokenizer is the one thing that is not the real one: RoBERTa's 50,265-piece BPE cannot be
downloaded here, so `byte_tokenizer` is RoBERTa's kind (byte-level BPE, `<s> ... </s>`, the same
special ids) with the 256 byte symbols and no merges; its ids stay inside the real vocabulary, so the
text tower is the real one.
"""

from __future__ import annotations

from pathlib import Path

import torch

# laion/larger_clap_music's config.json, with ClapAudioConfig's/ClapTextConfig's defaults written out
LARGER_CLAP_MUSIC = {
    "projection_dim": 512, "projection_hidden_act": "relu", "logit_scale_init_value": 14.285714285714285,
    "audio_config": {
        "depths": [2, 2, 12, 2], "hidden_size": 1024, "patch_embeds_hidden_size": 128,  # the file's own lines
        "num_attention_heads": [4, 8, 16, 32], "window_size": 8, "spec_size": 256, "patch_size": 4,
        "patch_stride": [4, 4], "num_mel_bins": 64, "enable_fusion": False, "mlp_ratio": 4.0,
        "projection_dim": 512,
    },
    "text_config": {
        "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1, "projection_dim": 512,
        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
    },
}  # fmt: skip
# its preprocessor_config.json (see the module docstring)
LARGER_CLAP_FEATURES = {
    "feature_size": 64, "sampling_rate": 48_000, "hop_length": 480, "fft_window_size": 1024, "max_length_s": 10,
    "frequency_min": 50, "frequency_max": 14_000, "truncation": "rand_trunc", "padding": "repeatpad",
}  # fmt: skip


def larger_clap_music_config():
    from transformers import ClapConfig

    return ClapConfig(**LARGER_CLAP_MUSIC)


def larger_clap_feature_extractor():
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(**LARGER_CLAP_FEATURES)


def byte_tokenizer():
    """RoBERTa's tokenizer kind over bytes only: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>`=4, then
    the 256 byte-level symbols (ids 5-260, inside RoBERTa's 50,265)."""
    from tokenizers import pre_tokenizers
    from transformers import RobertaTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    return RobertaTokenizer(vocab=vocab, merges=[], add_prefix_space=True)


def save_random_larger_clap(path: str | Path, seed: int = 0) -> Path:
    """Random weights in larger_clap_music's architecture, with its feature extractor and the byte
    tokenizer, saved with `save_pretrained` (~0.78 GB in fp32, as the real checkpoint's 776 MB)."""
    from transformers import ClapModel, ClapProcessor

    torch.manual_seed(seed)
    path = Path(path)
    ClapModel(larger_clap_music_config()).save_pretrained(path)
    ClapProcessor(feature_extractor=larger_clap_feature_extractor(), tokenizer=byte_tokenizer()).save_pretrained(path)
    return path


def save_random_heads(clap_dir: str | Path, out: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """An untrained quality head and preference head (the trainers' default shapes) on the CLAP in
    `clap_dir`, saved as `out/quality` and `out/preference`; each names the backbone by relative path."""
    from musicrl.rewards.backbone import load_backbone
    from musicrl.rewards.preference import PreferenceModel
    from musicrl.rewards.quality import QualityModel

    clap = load_backbone(clap_dir)
    out = Path(out)
    torch.manual_seed(seed)
    quality = QualityModel(clap, str(clap_dir)).save_pretrained(out / "quality")
    preference = PreferenceModel(clap, str(clap_dir), clap_term=True).save_pretrained(out / "preference")
    return quality, preference
