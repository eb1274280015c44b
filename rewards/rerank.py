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


class BestOf:
    """A generator that draws `n` clips for each clip asked of it and returns the one `rewards` score
    highest: `musicrl generate --best-of` and the arena's `MODEL+best-of-N` contestants.

    `generator`: anything with `generate(prompt, num_samples, duration_s, seed, **settings) -> [Clip]`
    (`musicrl.model.generator.Generator`); `rewards`: name -> (audio [B, 1, S], sample rate, prompts)
    -> [B]; `spec`: how the rewards were named (recorded). Clip j of a call with seed s is picked
    among seeds s + jn .. s + jn + n - 1, and its settings record `best_of`, `rerank`, its `scores`
    and its `candidate_seeds`.
    """

    def __init__(self, generator, rewards: dict, n: int, spec: str):
        if n < 2:
            raise ValueError("BestOf needs n >= 2")
        self.generator, self.rewards, self.n, self.spec = generator, rewards, n, spec
        self.model_id = f"{generator.model_id}+best-of-{n}"
        self.version = generator.version  # the weights'; model_id tells the two apart on the leaderboard
        self.max_duration_s = generator.max_duration_s
        self.sample_rate = getattr(generator, "sample_rate", None)
        self.checkpoint = getattr(generator, "checkpoint", None)

    def generate(self, prompt: str, num_samples: int = 1, duration_s: float = 4.0, seed: int = 0, **settings) -> list:
        from dataclasses import replace

        import numpy as np

        n = self.n
        clips = self.generator.generate(prompt, num_samples * n, duration_s, seed, **settings)
        audio = torch.from_numpy(np.stack([c.audio for c in clips]))[:, None]  # [num_samples * n, 1, S]
        with torch.no_grad():
            scores = {name: r(audio, clips[0].sample_rate, [prompt] * len(clips)).float().cpu()
                      for name, r in self.rewards.items()}  # fmt: skip
        picks = []
        for i in best_of(scores, n).tolist():
            group = clips[i - i % n : i - i % n + n]
            info = {"best_of": n, "rerank": self.spec, "scores": {k: round(float(v[i]), 4) for k, v in scores.items()},
                    "candidate_seeds": [c.seed for c in group]}  # fmt: skip
            picks.append(replace(clips[i], settings={**clips[i].settings, **info}))
        return picks
