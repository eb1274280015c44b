"""A thin generation wrapper: prompt -> audio clips, for the CLI and the app (audiocraft's split).

The policy samples codes, the frozen codec decodes them; nothing here trains.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from musicrl.errors import UserError
from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig


@dataclass(frozen=True)
class Clip:
    """A mono clip: what generation returns and what the arena stores and raters hear."""

    audio: np.ndarray  # float32 [S] mono
    sample_rate: int
    seed: int | None = None  # the sampling seed, for generated clips
    settings: dict = field(default_factory=dict)  # temperature, top_k, top_p, guidance_scale, duration_s
    codes: np.ndarray | None = None  # int64 [K, T]: the tokens the audio was decoded from (generated clips)


def weights_version(model: torch.nn.Module) -> str:
    """A short content hash of the weights: it changes whenever a different checkpoint is served."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
        h.update(str(tuple(t.shape)).encode())
    return h.hexdigest()[:12]


class Generator:
    def __init__(self, policy: MusicGenPolicy, model_id: str):
        self.policy = policy
        self.model_id = model_id
        self.version = weights_version(policy.model.decoder)
        self.max_duration_s: float = policy.max_duration_s
        self.sample_rate: int = policy.sample_rate
        from musicrl.model.engine import FastSampler

        self.sampler = FastSampler(policy)  # same tokens as policy.sample, ~1.6x faster on CPU

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = "tiny", device: str = "cpu") -> "Generator":
        return cls(MusicGenPolicy.from_pretrained(str(name_or_dir), device=device), model_id=str(name_or_dir))

    def generate(
        self, prompt: str, num_samples: int = 1, duration_s: float = 4.0, seed: int = 0, progress: bool = False, **settings
    ) -> list[Clip]:
        """`num_samples` clips of one prompt; clip i has seed `seed + i`. settings: SamplingConfig fields."""
        if not prompt or not prompt.strip():
            raise UserError("the prompt is empty")
        unknown = set(settings) - set(SamplingConfig.__dataclass_fields__)
        if unknown:
            raise UserError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
        sampling = SamplingConfig(**settings)
        rollout = self.sampler.sample(
            [prompt.strip()], num_samples, duration_s, sampling=sampling, seed=seed, progress=progress
        )
        audio = self.policy.decode(rollout.codes)[:, 0].float().cpu().numpy()  # [N, S]
        info = {**sampling.to_dict(), "duration_s": float(duration_s)}
        codes = rollout.codes.cpu().numpy()  # [N, K, T]
        return [Clip(a, self.sample_rate, int(s), dict(info), c) for a, s, c in zip(audio, rollout.seeds.tolist(), codes)]
