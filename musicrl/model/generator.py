"""A thin generation wrapper: prompt -> audio clips, for the CLI and the app (audiocraft's split).

The policy samples codes, the frozen codec decodes them; nothing here trains.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

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


@dataclass(frozen=True)
class Sampled:
    """One request's tokens, not yet decoded (`Generator.sample_batch`)."""

    codes: torch.Tensor  # long [n, K, T]
    seeds: list[int]  # [n]
    settings: dict  # the sampling settings and duration_s, as `Clip.settings`


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
        return self.decode_sampled(self.sample_batch([(prompt, num_samples, seed)], duration_s, progress, **settings)[0])

    def sample_batch(
        self, requests: Sequence[tuple[str, int, int]], duration_s: float = 4.0, progress: bool = False, **settings
    ) -> list[Sampled]:
        """The tokens of several `generate` calls of one duration and settings, sampled as one batch:
        requests are (prompt, num_samples, seed). `decode_sampled` of each equals its own `generate`
        bit for bit: a row's tokens depend only on its seed (counter-based noise).

        Decoding is left to the caller, one request at a time, because the codec's float sums differ
        with its batch size; the app's batcher decodes in each request's own thread, beside the next batch.
        """
        for prompt, n, _ in requests:
            if not prompt or not prompt.strip():
                raise UserError("the prompt is empty")
            if n < 1:
                raise UserError(f"num_samples must be >= 1, got {n}")
        unknown = set(settings) - set(SamplingConfig.__dataclass_fields__)
        if unknown:
            raise UserError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
        sampling = SamplingConfig(**settings)
        rows = [p.strip() for p, n, _ in requests for _ in range(n)]  # [B] = sum of num_samples
        seeds = [s + i for _, n, s in requests for i in range(n)]  # request r's row i: seed_r + i, as `generate`
        rollout = self.sampler.sample(rows, 1, duration_s, sampling=sampling, seeds=seeds, progress=progress)
        info = {**sampling.to_dict(), "duration_s": float(duration_s)}
        bounds = np.cumsum([0] + [n for _, n, _ in requests])
        return [Sampled(rollout.codes[a:b], rollout.seeds[a:b].tolist(), info) for a, b in zip(bounds[:-1], bounds[1:])]

    def decode_sampled(self, sampled: Sampled) -> list[Clip]:
        """One request's clips from its tokens (see `sample_batch`)."""
        audio = self.policy.decode(sampled.codes)[:, 0].float().cpu().numpy()  # [n, S]
        codes = sampled.codes.cpu().numpy()  # [n, K, T]
        return [Clip(a, self.sample_rate, int(s), dict(sampled.settings), c) for a, s, c in zip(audio, sampled.seeds, codes)]
