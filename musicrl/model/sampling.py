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


def kth_largest(x: torch.Tensor, k: int) -> torch.Tensor:
    """x [..., V] -> [..., 1]: the k-th largest value, exactly `topk(x, k).values[..., -1:]`.

    CPU topk is slow for large k (k=250 of V=256: ~10x slower than the equivalent kthvalue), and
    the value itself is all that is needed; either way the result is the same element of x.
    """
    V = x.shape[-1]
    if 2 * k > V and x.device.type == "cpu":  # (CUDA topk is fast and graph-safe: keep it there)
        return torch.kthvalue(x, V - k + 1, dim=-1, keepdim=True).values
    return torch.topk(x, k, dim=-1, sorted=False).values.amin(-1, keepdim=True)


def process_logits(cond: torch.Tensor, uncond: torch.Tensor | None, cfg: SamplingConfig) -> torch.Tensor:
    """Raw logits [..., V] (conditional, and unconditional when guided) -> log-probs [..., V] sampled from.

    Filtered tokens get -inf. Differentiable in the kept entries. The rollout engine calls it at every
    step (also inside a CUDA graph), teacher forcing once per sequence: the same code, so the same numbers.
    """
    logits = cond.float()
    if cfg.guided:
        if uncond is None:
            raise ValueError("guidance_scale != 1 needs the unconditional logits")
        logits = uncond.float() + cfg.guidance_scale * (logits - uncond.float())
    if cfg.temperature != 1.0:  # x / 1.0 == x exactly: skipping is the same
        logits = logits / cfg.temperature
    if 0 < cfg.top_k < logits.shape[-1]:
        logits = logits.masked_fill(logits < kth_largest(logits, cfg.top_k), float("-inf"))
    if 0 < cfg.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass strictly before it already reaches p (the top token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= cfg.top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits.log_softmax(-1)


def geometric_mixture(logp: torch.Tensor, ref_logp: torch.Tensor, coef: float) -> torch.Tensor:
    """Log-probs [..., V] of pi^(1 - coef) * ref^coef, normalised over the last axis (Nash-MD's
    mixture, Munos et al. 2023): the two sampling distributions' log-probs [..., V] in.

    A token either filters out (-inf) stays out. coef 0 and 1 return the inputs themselves, so
    that sampling the mixture then draws exactly the policy's or the reference's tokens (a
    renormalisation could move the last bit, and 0 * -inf would be NaN).
    """
    if coef == 0:
        return logp
    if coef == 1:
        return ref_logp
    return ((1 - coef) * logp + coef * ref_logp).log_softmax(-1)


_MASK32 = 0xFFFFFFFF
_STEP_SALT = 0x9E3779B9  # mixed into the step number before hashing


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32 shape) on int64 tensors holding values < 2^32.

    Multipliers are < 2^31 so products stay below 2^63: no signed overflow on any device. The first
    mask makes a new tensor; the rest works in place on it (the engine hashes [C, B, K, V] at once).
    """
    x = x & _MASK32
    x ^= x >> 16
    x *= 0x7FEB352D
    x &= _MASK32
    x ^= x >> 15
    x *= 0x5BD1E995
    x &= _MASK32
    x ^= x >> 16
    return x


def token_hash(num_codebooks: int, vocab: int, device=None) -> torch.Tensor:
    """[K, V]: the hash of each (codebook, token) cell, shared by every row and step."""
    k = torch.arange(num_codebooks, device=device)[:, None]  # [K, 1]
    v = torch.arange(vocab, device=device)[None, :]  # [1, V]
    return hash32(k * vocab + v + 1)


def gumbel_chunk(seed_hash: torch.Tensor, noise_hash: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Gumbel(0,1) noise [C, B, K, V] for C steps at once, determined by (seed, step, codebook, token).

    seed_hash: [B] `hash32(seeds)`; noise_hash: [K, V] `token_hash(K, V)`; steps: [C] int64.
    """
    h = hash32(seed_hash[None, :] ^ hash32(steps + _STEP_SALT)[:, None])  # [C, B]
    h = hash32(h[:, :, None, None] ^ noise_hash)  # [C, B, K, V]
    u = h.double().add_(0.5).div_(2.0**32)  # in (0, 1), never 0 or 1
    return u.log_().neg_().log_().neg_().float()


def gumbel_noise(seeds: torch.Tensor, step: int, num_codebooks: int, vocab: int) -> torch.Tensor:
    """Gumbel(0,1) noise [B, K, V] determined by (seed, step, codebook, token) alone. seeds: [B] int64."""
    dev = seeds.device
    steps = torch.tensor([step], device=dev)
    return gumbel_chunk(hash32(seeds.long()), token_hash(num_codebooks, vocab, dev), steps)[0]


def sample_tokens(logp: torch.Tensor, seeds: torch.Tensor, step: int) -> torch.Tensor:
    """Draw one token per row from log-probs [B, K, V] by Gumbel-max; returns [B, K] long."""
    B, K, V = logp.shape
    return (logp + gumbel_noise(seeds, step, K, V).to(logp.device)).argmax(-1)
