"""Quality reward: a predicted mean opinion score (MOS, 1-5) of a clip, whatever its prompt.

MusicRL's quality reward is a MOS model on a pretrained audio backbone, trained on people's 1-5
ratings. Here: a small MLP head on frozen CLAP audio embeddings (`rewards.backbone` says why: cheap,
the backbone is shared with the CLAP reward, one code path for the tiny and the real CLAP), squashed
into [1, 5] by 1 + 4 * sigmoid. Trained by `rewards.train_quality` from ratings, or in the tiny world
from synthetic ratings of clean (5) and degraded (down to 1) renders.

A saved model is a directory: `config.json` (the head's shape and its backbone: a name such as
'tiny', or a path relative to the directory, with the backbone's fingerprint) and
`model.safetensors` (the head only). `from_pretrained('tiny')` loads `musicrl/assets/tiny/quality`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from musicrl.errors import UserError
from rewards import backbone as bb

MODEL_TYPE = "musicrl-quality"
MIN_SCORE, MAX_SCORE = 1.0, 5.0


class QualityModel(torch.nn.Module):
    """CLAP audio embedding [B, D] -> MOS [B] in [1, 5]. The backbone is held, not owned (frozen, unsaved)."""

    def __init__(self, clap, backbone_name: str, hidden_size: int = 256, num_layers: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        self.clap = clap
        self.backbone_name = str(backbone_name)
        self.embed_dim = int(clap.model.config.projection_dim)
        self.hidden_size, self.num_layers, self.dropout = int(hidden_size), int(num_layers), float(dropout)
        self.head = bb.mlp(self.embed_dim, self.hidden_size, self.num_layers, self.dropout).to(clap.device)

    def score_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        """emb [B, D] -> MOS [B] in [MIN_SCORE, MAX_SCORE]."""
        logit = self.head(emb.to(self.clap.device, torch.float32))[:, 0]
        return MIN_SCORE + (MAX_SCORE - MIN_SCORE) * torch.sigmoid(logit)

    def forward(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """audio [B, 1, S] -> MOS [B]."""
        return self.score_embeddings(self.clap.embed_audio(audio, sample_rate))

    def config(self, model_dir: str | Path, extra: dict | None = None) -> dict:
        return {
            "model_type": MODEL_TYPE, "backbone": bb.stored_name(self.backbone_name, model_dir),
            "backbone_fingerprint": bb.fingerprint(self.clap), "embed_dim": self.embed_dim,
            "hidden_size": self.hidden_size, "num_layers": self.num_layers, "dropout": self.dropout,
            "score_range": [MIN_SCORE, MAX_SCORE], **(extra or {}),
        }  # fmt: skip

    def save_pretrained(self, model_dir: str | Path, extra: dict | None = None) -> Path:
        """Write config.json + model.safetensors (head only); `extra` goes into the config (e.g. the recipe)."""
        bb.save_head(model_dir, self.config(model_dir, extra), self.head)
        return Path(model_dir)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = "tiny", device: str | torch.device = "cpu",
                        clap=None) -> "QualityModel":
        """'tiny' or a directory. `clap`: an already loaded backbone to share (checked by fingerprint)."""
        from musicrl import hub

        model_dir = Path(hub.resolve(name_or_dir, "quality"))
        if not model_dir.is_dir():
            raise UserError(f"no quality model directory {name_or_dir}")
        return bb.load_head_model(cls, model_dir, MODEL_TYPE, "quality", device, clap)


class QualityReward:
    """`reward(audio [B, 1, S], sample_rate, prompts) -> [B]`: the predicted MOS (1-5); prompts unused."""

    def __init__(self, model: QualityModel):
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = "tiny", device: str | torch.device = "cpu",
                        clap=None) -> "QualityReward":
        return cls(QualityModel.from_pretrained(name_or_dir, device, clap))

    @torch.inference_mode()
    def __call__(self, audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> torch.Tensor:
        if len(prompts) != audio.shape[0]:
            raise UserError(f"{audio.shape[0]} clips but {len(prompts)} prompts")
        return self.model(audio, sample_rate)
