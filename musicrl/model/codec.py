"""The neural audio codec every part of musicrl talks to: audio <-> discrete codes.

`Codec` wraps a model with transformers' `EncodecModel` API (frozen, eval mode, no grad) and calls
its own `encode`/`decode`, exactly as `MusicgenForConditionalGeneration` does: one frame (no
chunking), `audio_scales=None`, and the bandwidth that yields all K codebooks the LM predicts. So the
real `facebook/encodec_32khz` inside `facebook/musicgen-*` and the tiny world's spectral codec
(`musicrl.model.spectral_codec`, registered with transformers' Auto classes) go through the same code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, EncodecModel

from musicrl.model import hub
from musicrl.errors import UserError
from musicrl.model import spectral_codec as _spectral  # noqa: F401  registers the spectral codec with transformers


class Codec:
    """Audio [B, 1, S] at `sample_rate` <-> codes [B, K, T] (long, values < `codebook_size`)."""

    def __init__(self, model: EncodecModel, bandwidth: float):
        self.model = model.eval().requires_grad_(False)
        config = model.config
        self.bandwidth = bandwidth
        self.sample_rate: int = int(config.sampling_rate)
        self.hop_length: int = int(config.hop_length)
        # exact rate (config.frame_rate rounds up); 50.0 for both tiny and encodec_32khz
        self.frame_rate: float = self.sample_rate / self.hop_length
        self.num_codebooks: int = model.quantizer.get_num_quantizers_for_bandwidth(bandwidth)
        self.codebook_size: int = int(config.codebook_size)
        self.audio_channels: int = int(config.audio_channels)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, device: str | torch.device = "cpu") -> Codec:
        """'tiny' -> musicrl/assets/tiny/codec; otherwise a local directory or a hub id."""
        model = hub.load(AutoModel.from_pretrained, name_or_dir, "codec")
        return cls.from_encodec(model.to(device))

    @classmethod
    def from_encodec(cls, model: EncodecModel, num_codebooks: int | None = None) -> Codec:
        """Wrap an existing EncodecModel (e.g. `MusicgenForConditionalGeneration.audio_encoder`).

        `num_codebooks` (the LM's K) picks the bandwidth yielding exactly K codebooks; by default the
        largest configured bandwidth (MusicGen's codecs configure one: K=4).
        """
        if model.config.chunk_length_s is not None:
            raise UserError("chunked EnCodec models are not supported: MusicGen needs chunk_length_s=None")
        bandwidths = sorted(model.config.target_bandwidths)
        if num_codebooks is None:
            return cls(model, bandwidths[-1])
        for bw in bandwidths:
            if model.quantizer.get_num_quantizers_for_bandwidth(bw) == num_codebooks:
                return cls(model, bw)
        raise UserError(
            f"this codec offers no bandwidth with {num_codebooks} codebooks (target_bandwidths={bandwidths})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, C, S] float at `sample_rate` -> codes [B, K, T] long, T = ceil(S / hop)."""
        if audio.dim() != 3 or audio.shape[1] != self.audio_channels:
            raise ValueError(f"expected audio [B, {self.audio_channels}, S], got {tuple(audio.shape)}")
        audio = audio.to(self.device, torch.float32)
        out = self.model.encode(audio, bandwidth=self.bandwidth, return_dict=True)
        codes = out.audio_codes  # [frames=1, B, K, T]
        return codes[0].long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> audio [B, C, T * hop] float32."""
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise ValueError(f"expected codes [B, {self.num_codebooks}, T], got {tuple(codes.shape)}")
        codes = codes.to(self.device, torch.long)
        out = self.model.decode(codes[None], audio_scales=[None], return_dict=True)
        return out.audio_values  # [B, C, S]
