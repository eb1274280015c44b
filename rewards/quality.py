"""Quality reward: a predicted mean opinion score (MOS, 1-5) of a clip, whatever its prompt.

MusicRL's quality reward is a MOS model on a pretrained audio backbone, trained on people's 1-5
ratings. Here: a small MLP head on frozen CLAP audio embeddings (`musicrl.rewards.backbone` says why: cheap,
the backbone is shared with the CLAP reward, one code path for the tiny and the real CLAP), squashed
into [1, 5] by 1 + 4 * sigmoid. Trained by `musicrl.rewards.train_quality` from ratings, or in the tiny world
from synthetic ratings of clean (5) and degraded (down to 1) renders.

Saved as every head on the backbone is (`musicrl.rewards.backbone.HeadModel`): a directory with
`config.json` (the head's shape and its backbone: a name such as 'tiny', or a path relative to the
directory, with the backbone's fingerprint) and `model.safetensors` (the head only). `from_pretrained('tiny')` loads `musicrl/assets/tiny/quality`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from musicrl.rewards import backbone as bb

MIN_SCORE, MAX_SCORE = 1.0, 5.0


class QualityModel(bb.HeadModel):
    """CLAP audio embedding [B, D] -> MOS [B] in [1, 5]."""

    MODEL_TYPE = "musicrl-quality"
    KIND = "quality"

    def __init__(self, clap, backbone_name: str, hidden_size: int = 256, num_layers: int = 2,
                 dropout: float = 0.1):
        super().__init__(clap, backbone_name, hidden_size, num_layers, dropout)

    def own_config(self) -> dict:
        return {"score_range": [MIN_SCORE, MAX_SCORE]}

    def score_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        """emb [B, D] -> MOS [B] in [MIN_SCORE, MAX_SCORE]."""
        logit = self.head(emb.to(self.clap.device, torch.float32))[:, 0]
        return MIN_SCORE + (MAX_SCORE - MIN_SCORE) * torch.sigmoid(logit)

    def forward(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """audio [B, 1, S] -> MOS [B]."""
        return self.score_embeddings(self.clap.embed_audio(audio, sample_rate))

    def score_audio(self, audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> torch.Tensor:
        return self(audio, sample_rate)  # a clip's quality, whatever its prompt

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = "tiny", device: str | torch.device = "cpu",
                        clap=None) -> "QualityModel":
        """'tiny' or a directory. `clap`: an already loaded backbone to share (checked by fingerprint)."""
        from musicrl.model import hub

        return super().from_pretrained(hub.resolve(name_or_dir, "quality"), device, clap)


class QualityReward(bb.HeadReward):
    """`reward(audio [B, 1, S], sample_rate, prompts) -> [B]`: the predicted MOS (1-5); prompts unused."""

    MODEL = QualityModel

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = "tiny", device: str | torch.device = "cpu",
                        clap=None) -> "QualityReward":
        return super().from_pretrained(name_or_dir, device, clap)
