"""Best-of-n: of each group of n clips of one prompt, keep the one the rewards score highest.

No training: the pick's distribution is at most log n - (n - 1)/n nats per clip from the model's own
(1.2 nats at n = 8), so it is both the cheapest alignment there is and the yardstick an RL run is
held against (docs/results/best-of-n.md). With several rewards, each is standardised over all the
clips scored together and the standardised scores are summed, so no reward wins by its scale alone.
"""

from __future__ import annotations

import torch


def total(scores: dict[str, torch.Tensor], weights: dict[str, float] | None = None) -> torch.Tensor:
    """scores: name -> [B] raw rewards of the same B clips. Returns [B]: one reward's raw score, or the
    weighted sum (weights: name -> factor, default 1 each) of several, each standardised over the B clips."""
    if not scores:
        raise ValueError("no reward to total")
    w = weights or {}
    return sum(w.get(name, 1.0) * ((s - s.mean()) / s.std() if len(scores) > 1 and s.numel() > 1 and s.std() > 0 else s).float()
               for name, s in scores.items())  # fmt: skip


def best_of(scores: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """scores: name -> [G * n] raw rewards of G groups of n clips, group g in rows g*n .. g*n + n - 1.
    Returns [G], the row of each group's pick (the first of equal totals)."""
    if n < 1 or not scores:
        raise ValueError("best_of needs n >= 1 and at least one reward")
    groups = total(scores).view(-1, n)  # [G, n]
    return groups.argmax(1) + torch.arange(len(groups)) * n
