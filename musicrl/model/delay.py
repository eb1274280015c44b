"""MusicGen's delay pattern as pure functions.

Codebook k is shifted right by k frames, so that at decoding step j the model predicts
codebook 0 of frame j, codebook 1 of frame j-1, ... (audiocraft's `DelayedPatternProvider`,
transformers' `build_delay_pattern_mask`). The decoder sees `[BOS] + delayed` and predicts
`delayed` one position ahead; positions outside a codebook's window hold the pad token and are
forced, never sampled.
"""

from __future__ import annotations

import torch


def delay(codes: torch.Tensor, pad_id: int) -> torch.Tensor:
    """codes [B, K, T] -> delayed [B, K, T+K-1], codebook k occupying positions k..k+T-1."""
    B, K, T = codes.shape
    out = codes.new_full((B, K, T + K - 1), pad_id)
    for k in range(K):
        out[:, k, k : k + T] = codes[:, k]
    return out


def undelay(delayed: torch.Tensor) -> torch.Tensor:
    """delayed [B, K, T+K-1] (or [B, K, T+K-1, ...]) -> [B, K, T, ...]: the inverse of `delay`."""
    K = delayed.shape[1]
    T = delayed.shape[2] - K + 1
    if T <= 0:
        raise ValueError(f"delayed sequence of length {delayed.shape[2]} is shorter than K={K}")
    return torch.stack([delayed[:, k, k : k + T] for k in range(K)], dim=1)


def valid_mask(num_codebooks: int, num_frames: int, device=None) -> torch.Tensor:
    """[K, T+K-1] bool: True where a delayed position holds a real token (sampled), False where forced pad."""
    K, T = num_codebooks, num_frames
    j = torch.arange(T + K - 1, device=device)  # [T+K-1]
    k = torch.arange(K, device=device)[:, None]  # [K, 1]
    return (j >= k) & (j < k + T)


def decoder_inputs(codes: torch.Tensor, pad_id: int, bos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [B, K, T] -> (inputs [B, K, T+K-1], targets [B, K, T+K-1]) for teacher forcing.

    inputs = [BOS] + delayed[:-1], targets = delayed: the logits at input position j predict targets[j].
    """
    delayed = delay(codes, pad_id)  # [B, K, T+K-1]
    bos = delayed.new_full(delayed.shape[:2] + (1,), bos_id)
    return torch.cat([bos, delayed[..., :-1]], dim=-1), delayed
