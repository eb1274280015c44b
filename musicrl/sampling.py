"""The sampling distribution, written once so that sampling and teacher forcing agree exactly.

`process_logits` maps raw decoder logits to the log-probabilities actually sampled from:
classifier-free guidance (on logits, as transformers' `ClassifierFreeGuidanceLogitsProcessor`),
temperature, top-k, top-p. `gumbel_noise` is a counter-based RNG: the noise for (seed, step,
codebook, token) is a pure hash, so a sample depends only on its own seed, never on its batch,
device or the order of calls (batch of N == N singles).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from musicrl.errors import UserError


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn. MusicGen's published defaults: top_k=250, guidance 3."""

    temperature: float = 1.0
    """Logits are divided by this (> 0)."""
    top_k: int = 250
    """Keep the k most likely tokens per codebook and step; 0 = off."""
    top_p: float = 0.0
    """Keep the smallest set whose probability reaches p; 0 = off (applied after top-k)."""
    guidance_scale: float = 3.0
    """Classifier-free guidance: uncond + g * (cond - uncond) on logits; 1 = no guidance (one pass)."""

    def __post_init__(self):
        if not self.temperature > 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.top_p <= 1:
            raise UserError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.guidance_scale < 1:
            raise UserError(f"guidance_scale must be >= 1, got {self.guidance_scale}")

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def process_logits(cond: torch.Tensor, uncond: torch.Tensor | None, cfg: SamplingConfig) -> torch.Tensor:
    """Raw logits [..., V] (conditional, and unconditional when guided) -> log-probs [..., V] sampled from.

    Filtered tokens get -inf. Differentiable in the kept entries.
    """
    logits = cond.float()
    if cfg.guided:
        if uncond is None:
            raise ValueError("guidance_scale != 1 needs the unconditional logits")
        logits = uncond.float() + cfg.guidance_scale * (logits - uncond.float())
    logits = logits / cfg.temperature
    V = logits.shape[-1]
    if 0 < cfg.top_k < V:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]  # [..., 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < cfg.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass strictly before it already reaches p (the top token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= cfg.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.log_softmax(-1)


_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32 shape) on int64 tensors holding values < 2^32.

    Multipliers are < 2^31 so products stay below 2^63: no signed overflow on any device.
    """
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    x = x ^ (x >> 16)
    return x


def gumbel_noise(seeds: torch.Tensor, step: int, num_codebooks: int, vocab: int) -> torch.Tensor:
    """Gumbel(0,1) noise [B, K, V] determined by (seed, step, codebook, token) alone. seeds: [B] int64."""
    dev = seeds.device
    h = _hash32(_hash32(seeds.long()) ^ _hash32(torch.tensor(step + 0x9E3779B9, device=dev)))  # [B]
    k = torch.arange(num_codebooks, device=dev)[:, None]  # [K, 1]
    v = torch.arange(vocab, device=dev)[None, :]  # [1, V]
    h = _hash32(h[:, None, None] ^ _hash32(k * vocab + v + 1)[None])  # [B, K, V]
    u = (h.double() + 0.5) / 2.0**32  # in (0, 1), never 0 or 1
    return -torch.log(-torch.log(u)).float()


def sample_tokens(logp: torch.Tensor, seeds: torch.Tensor, step: int) -> torch.Tensor:
    """Draw one token per row from log-probs [B, K, V] by Gumbel-max; returns [B, K] long."""
    B, K, V = logp.shape
    return (logp + gumbel_noise(seeds, step, K, V).to(logp.device)).argmax(-1)
