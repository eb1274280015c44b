"""The frozen CLAP backbone that the learned rewards (quality, user preference) put their heads on.

Why a small head on a frozen CLAP, not a model of its own: MusicRL trained its reward models on top
of pretrained audio/text encoders (a from-scratch preference model stayed at chance); the head is
cheap to train on a few thousand votes or ratings, the backbone is already loaded for the CLAP
reward, and the same code serves the tiny CLAP and LAION's. Embeddings are computed once per clip
and cached during training, so training the head is seconds of CPU.

A head is only valid on the backbone it was trained on: `fingerprint` hashes the backbone's
projection weights, stored beside the head and checked on load (a retrained tiny CLAP would
otherwise silently turn a saved head into noise).

A head's directory names its backbone in `config.json`: a name as given ('tiny', a hub id) or, for a
local directory, its path relative to the head's directory (so the two can move together).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from musicrl.errors import UserError


def load_backbone(name: str | Path, device: str | torch.device = "cpu"):
    """A `ClapReward` (the frozen CLAP plus its feature pipeline) by name, directory or 'tiny'."""
    from musicrl.logs import quiet_transformers
    from musicrl.rewards.clap import ClapReward

    quiet_transformers()
    return ClapReward.from_pretrained(str(name), device=device)


def fingerprint(clap) -> str:
    """A short hash of the backbone's audio and text projection weights (identifies the checkpoint)."""
    h = hashlib.sha256()
    state = {**{f"a.{k}": v for k, v in clap.model.audio_projection.state_dict().items()},
             **{f"t.{k}": v for k, v in clap.model.text_projection.state_dict().items()}}
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def stored_name(backbone: str | Path, model_dir: str | Path) -> str:
    """How `config.json` in `model_dir` names `backbone`: a local directory relative to `model_dir`."""
    name = str(backbone)
    if name != "tiny" and Path(name).expanduser().is_dir():
        return os.path.relpath(Path(name).expanduser().resolve(), Path(model_dir).resolve())
    return name


def resolve_stored(name: str, model_dir: str | Path) -> str:
    """The inverse of `stored_name`: a relative path is taken from `model_dir`."""
    if name == "tiny" or Path(name).is_absolute():
        return name
    local = Path(model_dir) / name
    if name.startswith(".") or local.is_dir():
        return str(local)
    return name  # a hub id


def check_fingerprint(clap, expected: str | None, what: str, model_dir) -> None:
    if expected and fingerprint(clap) != expected:
        raise UserError(
            f"the {what} head in {model_dir} was trained on a different CLAP backbone "
            f"(fingerprint {expected}, loaded {fingerprint(clap)}); retrain it with `musicrl train-reward`"
        )


def mlp(in_dim: int, hidden: int, layers: int, dropout: float) -> torch.nn.Sequential:
    """`layers` hidden layers of width `hidden` (GELU, dropout), then one linear output unit."""
    mods: list[torch.nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [torch.nn.Linear(d, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout)]
        d = hidden
    mods.append(torch.nn.Linear(d, 1))
    return torch.nn.Sequential(*mods)


def read_clip(path: str | Path) -> tuple[np.ndarray, int]:
    """(mono float32 [S], sample rate) of an audio file; a missing file is a one-line UserError."""
    from musicrl.audio import read_wav

    if not Path(path).is_file():
        raise UserError(f"clip file missing: {path}")
    return read_wav(path)


@torch.inference_mode()
def embed_clips(clap, clips: list[tuple[np.ndarray, int]], batch_size: int = 64,
                progress: bool = False, desc: str = "embedding clips") -> torch.Tensor:
    """[(audio [S], sr)] -> unit-norm CLAP audio embeddings [N, D] on the CPU.

    Clips of equal length and rate are batched together (the embedding of a clip does not depend on
    its batch: `ClapReward` is pure), others go in their own batches.
    """
    from tqdm.auto import tqdm

    groups: dict[tuple[int, int], list[int]] = {}
    for i, (audio, sr) in enumerate(clips):
        groups.setdefault((len(audio), int(sr)), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(clips)
    bar = tqdm(total=len(clips), desc=desc, disable=not progress, dynamic_ncols=True)
    for (_, sr), idx in groups.items():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            audio = torch.as_tensor(np.stack([clips[i][0] for i in chunk]))[:, None]  # [b, 1, S]
            emb = clap.embed_audio(audio, sr).float().cpu()  # [b, D]
            for i, e in zip(chunk, emb):
                out[i] = e
            bar.update(len(chunk))
    bar.close()
    if not clips:
        return torch.zeros(0, 0)
    return torch.stack(out)  # type: ignore[arg-type]


def embed_clip_files(clap, paths: list, progress: bool = False) -> torch.Tensor:
    """The embeddings [N, D] (CPU) of the clips at `paths`, in order. Under torchrun each process reads
    and embeds its own part of them (what training a head costs: a CLAP forward per clip) and the
    parts are gathered, so every process holds them all."""
    from musicrl.train.distributed import join

    ranks, _ = join(torch.device(clap.device))
    if len(paths) < ranks.world:  # too few to share: every process embeds them all
        return embed_clips(clap, [read_clip(p) for p in paths], progress=progress)
    part = ranks.part(len(paths))
    emb = embed_clips(clap, [read_clip(p) for p in paths[part]], progress=progress and ranks.main)  # [n / world, D]
    return ranks.gather_parts(emb.to(clap.device), len(paths)).cpu()


def _read_config(model_dir: Path, model_type: str) -> dict:
    """A head directory's config.json; one-line errors for what is missing, unreadable or foreign."""
    import json

    cfg_path, weights = model_dir / "config.json", model_dir / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise UserError(f"no {model_type} model in {model_dir} (needs config.json and model.safetensors)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("model_type") != model_type:
        got = config.get("model_type") if isinstance(config, dict) else None
        raise UserError(f"{model_dir} holds a {got!r} model, not a {model_type!r} one")
    return config


def backbone_of(model_dir: str | Path, model_type: str) -> str:
    """The backbone a saved head names, resolved against its directory (without loading anything)."""
    import json

    cfg_path = Path(model_dir) / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
        return resolve_stored(config["backbone"], model_dir)
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"no {model_type} model in {model_dir} (unreadable config.json)") from None


class HeadModel(torch.nn.Module):
    """An MLP head on a frozen CLAP backbone: what the quality and the preference model share.

    The backbone is held, not owned (frozen, not saved). A saved head is a directory: `config.json`
    (model type, backbone name and fingerprint, the head's shape, the subclass's `own_config`, and
    any `extra` such as the training recipe) and `model.safetensors` (the head's weights only).
    A subclass sets MODEL_TYPE, KIND (for messages), INPUTS (how many embeddings wide the head's
    input is) and OPTIONS (the entries of its `own_config` that its constructor takes back on load).
    """

    MODEL_TYPE = ""
    KIND = ""
    INPUTS = 1
    OPTIONS: tuple[str, ...] = ()

    def __init__(self, clap, backbone_name: str, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.clap = clap
        self.backbone_name = str(backbone_name)
        self.embed_dim = int(clap.model.config.projection_dim)
        self.hidden_size, self.num_layers, self.dropout = int(hidden_size), int(num_layers), float(dropout)
        self.head = mlp(self.INPUTS * self.embed_dim, self.hidden_size, self.num_layers, self.dropout).to(clap.device)

    def own_config(self) -> dict:
        """Config entries of the subclass (its options, its score range)."""
        return {}

    def config(self, model_dir: str | Path, extra: dict | None = None) -> dict:
        return {
            "model_type": self.MODEL_TYPE, "backbone": stored_name(self.backbone_name, model_dir),
            "backbone_fingerprint": fingerprint(self.clap), "embed_dim": self.embed_dim,
            "hidden_size": self.hidden_size, "num_layers": self.num_layers, "dropout": self.dropout,
            **self.own_config(), **(extra or {}),
        }  # fmt: skip

    def save_pretrained(self, model_dir: str | Path, extra: dict | None = None) -> Path:
        """Write config.json + model.safetensors (head only); `extra` goes into the config (e.g. the recipe)."""
        import json

        from safetensors.torch import save_file

        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(model_dir / "model.safetensors"))
        (model_dir / "config.json").write_text(json.dumps(self.config(model_dir, extra), indent=2) + "\n")
        return model_dir

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu", clap=None):
        """A directory written by `save_pretrained`, evaluation mode and frozen. The backbone is loaded
        unless `clap` (a loaded one, to share) is given, and must match the head's fingerprint; an
        option missing from an older config keeps the constructor's default."""
        from safetensors.torch import load_file

        from musicrl.model.hub import snapshot

        model_dir = snapshot(Path(model_dir).expanduser())  # a hub cache's folder -> its snapshot
        if not model_dir.is_dir():
            raise UserError(f"no {cls.KIND} model directory {model_dir}")
        config = _read_config(model_dir, cls.MODEL_TYPE)
        try:
            backbone = resolve_stored(config["backbone"], model_dir)
            if clap is None:
                clap = load_backbone(backbone, device)
            check_fingerprint(clap, config.get("backbone_fingerprint"), cls.KIND, model_dir)
            model = cls(clap, backbone, config["hidden_size"], config["num_layers"], config["dropout"],
                        **{k: config[k] for k in cls.OPTIONS if k in config})
        except KeyError as e:
            raise UserError(f"{model_dir}/config.json lacks {e.args[0]!r}") from None
        if model.embed_dim != config.get("embed_dim"):
            raise UserError(f"{model_dir}: head expects {config.get('embed_dim')}-d embeddings, "
                            f"the backbone gives {model.embed_dim}")
        state = load_file(str(model_dir / "model.safetensors"))
        model.head.load_state_dict({k: v.to(clap.device) for k, v in state.items()})
        return model.eval().requires_grad_(False)

    def score_audio(self, audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> torch.Tensor:
        """audio [B, 1, S] with its B prompts -> scores [B]."""
        raise NotImplementedError


class HeadReward:
    """`reward(audio [B, 1, S], sample_rate, prompts) -> [B]`: a frozen head model's score."""

    MODEL: type[HeadModel] = HeadModel

    def __init__(self, model: HeadModel):
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, device: str | torch.device = "cpu", clap=None):
        return cls(cls.MODEL.from_pretrained(name_or_dir, device, clap))

    @torch.inference_mode()
    def __call__(self, audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> torch.Tensor:
        if len(prompts) != audio.shape[0]:
            raise UserError(f"{audio.shape[0]} clips but {len(prompts)} prompts")
        return self.model.score_audio(audio, sample_rate, list(prompts))


def check_head_training(cfg) -> None:
    """The checks every head-training config shares (lr, epochs, sizes, dropout, validation share)."""
    for name in ("lr", "epochs", "batch_size", "hidden_size"):
        if not getattr(cfg, name) > 0:
            raise UserError(f"{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.num_layers < 0 or not 0 <= cfg.dropout < 1 or cfg.weight_decay < 0:
        raise UserError("num_layers >= 0, 0 <= dropout < 1 and weight_decay >= 0 are required")
    if not 0 <= cfg.val_fraction < 1:
        raise UserError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
