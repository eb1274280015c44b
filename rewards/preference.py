"""User-preference reward: a Bradley-Terry score of (prompt, clip), learned from people's A/B votes.

score(prompt, clip) = MLP([a, t, a * t]) + w * CLAP_SCALE * cos(a, t), with a, t the frozen CLAP
audio and text embeddings: a judges the clip on its own (taste), a * t how it relates to the prompt
(adherence), and the CLAP score itself, with one learned weight w (initialised at 0), hands the head
CLAP's own judgement of adherence, which the MLP would otherwise have to rebuild from a * t with a
few thousand votes. Measured on 2,000 simulated votes (8 vote sets x 5 prompt splits, see
`rewards.train_preference`) it closes 0.3 points of the gap to the noise ceiling (4.2 -> 3.8).
Frozen, because MusicRL found a preference model trained from scratch on its votes stayed at chance
while one on a pretrained backbone learned; the head alone trains in seconds.
P(clip x preferred to clip y for a prompt) = sigmoid(score(x) - score(y)); the score itself is an
unbounded logit, comparable only between clips.

Saved like `rewards.quality`: `config.json` (head shape, backbone name/relative path + fingerprint)
and `model.safetensors` (head only); the trainer adds `metrics.json` and `reliability.png`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from musicrl.errors import UserError
from rewards import backbone as bb

MODEL_TYPE = "musicrl-preference"
# cos(a, t) is in [-1, 1]: scaled so that Adam at lr 1e-3 moves the term to a few logits in a few
# hundred steps (the head's other inputs are unit-norm embeddings too)
CLAP_SCALE = 10.0


class PreferenceModel(torch.nn.Module):
    """(audio embedding [B, D], text embedding [B, D]) -> Bradley-Terry score [B]."""

    def __init__(self, clap, backbone_name: str, hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.3, clap_term: bool = False):
        super().__init__()
        self.clap = clap
        self.backbone_name = str(backbone_name)
        self.embed_dim = int(clap.model.config.projection_dim)
        self.hidden_size, self.num_layers, self.dropout = int(hidden_size), int(num_layers), float(dropout)
        self.clap_term = bool(clap_term)  # False: a head saved before the term existed
        self.head = bb.mlp(3 * self.embed_dim, self.hidden_size, self.num_layers, self.dropout)
        if self.clap_term:  # on the head, so it is trained, saved and loaded with it
            self.head.register_parameter("clap_weight", torch.nn.Parameter(torch.zeros(())))
        self.head.to(clap.device)

    def score_embeddings(self, audio_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """audio_emb, text_emb [B, D] -> scores [B]."""
        a = audio_emb.to(self.clap.device, torch.float32)
        t = text_emb.to(self.clap.device, torch.float32)
        score = self.head(torch.cat([a, t, a * t], dim=-1))[:, 0]
        if self.clap_term:
            score = score + self.head.clap_weight * CLAP_SCALE * (a * t).sum(-1)
        return score

    def forward(self, audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> torch.Tensor:
        """audio [B, 1, S], B prompts -> scores [B]."""
        return self.score_embeddings(self.clap.embed_audio(audio, sample_rate), self.clap.embed_text(list(prompts)))

    def config(self, model_dir: str | Path, extra: dict | None = None) -> dict:
        return {
            "model_type": MODEL_TYPE, "backbone": bb.stored_name(self.backbone_name, model_dir),
            "backbone_fingerprint": bb.fingerprint(self.clap), "embed_dim": self.embed_dim,
            "hidden_size": self.hidden_size, "num_layers": self.num_layers, "dropout": self.dropout,
            "clap_term": self.clap_term, **(extra or {}),
        }  # fmt: skip

    def save_pretrained(self, model_dir: str | Path, extra: dict | None = None) -> Path:
        bb.save_head(model_dir, self.config(model_dir, extra), self.head)
        return Path(model_dir)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu",
                        clap=None) -> "PreferenceModel":
        """A directory written by `save_pretrained`. `clap`: a loaded backbone to share (fingerprint-checked)."""
        model_dir = Path(model_dir).expanduser()
        if not model_dir.is_dir():
            raise UserError(f"no preference model directory {model_dir}")
        return bb.load_head_model(cls, model_dir, MODEL_TYPE, "preference", device, clap, options=("clap_term",))


class PreferenceReward:
    """`reward(audio [B, 1, S], sample_rate, prompts) -> [B]`: the Bradley-Terry score (a logit)."""

    def __init__(self, model: PreferenceModel):
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu",
                        clap=None) -> "PreferenceReward":
        return cls(PreferenceModel.from_pretrained(model_dir, device, clap))

    @torch.inference_mode()
    def __call__(self, audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> torch.Tensor:
        if len(prompts) != audio.shape[0]:
            raise UserError(f"{audio.shape[0]} clips but {len(prompts)} prompts")
        return self.model(audio, sample_rate, prompts)
