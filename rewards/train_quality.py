"""Train the quality (MOS) reward head (`musicrl.rewards.quality`): a head fitted to target scores on
cached embeddings of a frozen backbone.

From people's ratings: `train_quality_from_ratings` takes `musicrl.votes.rows.RatingRow`s (a clip and
its mean opinion score, as `musicrl.votes.rows.load_ratings` reads them from a ratings file or a vote
store: the trainer opens no database). A random `val_fraction` of the clips is held out and the
Spearman correlation of score and MOS reported. The tiny world, which has no raters, fits the same
head to synthetic ratings of degraded renders (`musicrl.tiny.quality`). Training is MSE on the cached
embeddings: seconds. Under torchrun the clips are embedded in parts and the head trains on every
process as in one (as `musicrl.rewards.train_preference` says); rank 0 writes it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from musicrl.errors import UserError
from musicrl.rewards import backbone as bb
from musicrl.train import distributed
from musicrl.votes.rows import RatingRow


@dataclass(frozen=True)
class QualityTrainConfig:
    """How the quality head is trained. The defaults are the shipped tiny recipe."""

    lr: float = 2e-3
    """AdamW learning rate (constant)."""
    epochs: int = 300
    """Passes over the training clips (the head underfits with fewer: 60 epochs gave Spearman 0.80, 300 gave 0.86)."""
    batch_size: int = 128
    weight_decay: float = 1e-3
    hidden_size: int = 256
    """Width of the head's hidden layers."""
    num_layers: int = 2
    """Hidden layers of the head."""
    dropout: float = 0.1
    val_fraction: float = 0.15
    """Ratings input: fraction of the rated clips held out for the Spearman check."""
    seed: int = 0
    """Head init, shuffling and the validation split (and, in the tiny world, its clips and levels)."""

    def __post_init__(self):
        bb.check_head_training(self)


def spearman(x, y) -> float:
    """Spearman rank correlation (ties get their average rank); nan if either side is constant."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for u in np.unique(v):  # average rank within ties
            m = v == u
            r[m] = r[m].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def fit_head(clap, backbone: str, emb: torch.Tensor, target: torch.Tensor, cfg: QualityTrainConfig,
             progress: bool = False):
    """A new quality head on `clap` fitted by MSE to `target` MOS [N] on embeddings [N, D];
    returns (the model, frozen, the last epoch's mean loss)."""
    from tqdm.auto import tqdm

    from musicrl.rewards.quality import QualityModel

    torch.manual_seed(cfg.seed)
    model = QualityModel(clap, backbone, cfg.hidden_size, cfg.num_layers, cfg.dropout)
    opt = torch.optim.AdamW(model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    emb, target = emb.to(clap.device), target.to(clap.device)
    bar = tqdm(range(cfg.epochs), desc="quality head", disable=not progress, dynamic_ncols=True)
    total = float("nan")
    for _ in bar:
        model.train()
        losses = []
        for b in torch.randperm(len(emb), generator=gen).split(cfg.batch_size):
            loss = torch.nn.functional.mse_loss(model.score_embeddings(emb[b]), target[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        total = float(np.mean(losses))
        bar.set_postfix(mse=f"{total:.3f}", refresh=False)
    model.eval().requires_grad_(False)
    return model, total


@torch.no_grad()
def scores(model, emb: torch.Tensor) -> np.ndarray:
    """The model's MOS [N] of embeddings [N, D]."""
    return model.score_embeddings(emb).cpu().numpy()


def train_quality_from_ratings(ratings: list[RatingRow], out_dir: str | Path,
                               cfg: QualityTrainConfig = QualityTrainConfig(), backbone: str = "tiny",
                               device: str = "cpu", progress: bool = True, clap=None, source: str = "") -> dict:
    """Train on people's ratings (clip path, MOS); Spearman of score vs. MOS on held-out clips."""
    clap = clap if clap is not None else bb.load_backbone(backbone, device)
    n_val = int(round(cfg.val_fraction * len(ratings)))
    if cfg.val_fraction > 0 and (n_val < 2 or len(ratings) - n_val < 1):
        raise UserError(f"{len(ratings)} rated clips are too few to hold out {cfg.val_fraction:.0%} "
                        "(or use val_fraction 0)")
    order = np.random.default_rng([cfg.seed, 12]).permutation(len(ratings))
    val, train = order[:n_val], order[n_val:]
    emb = bb.embed_clip_files(clap, [p for p, _ in ratings], progress)  # [N, D], each process embedding its part
    mos = torch.tensor([r for _, r in ratings], dtype=torch.float32)
    ranks = distributed.join(torch.device(clap.device))[0]
    model, train_mse = fit_head(clap, backbone, emb[train], mos[train], cfg, progress and ranks.main)
    metrics: dict = {"train_mse": train_mse, "train_clips": len(train), "val_clips": len(val),
                     "config": asdict(cfg), "backbone": str(backbone), "source": str(source)}
    if len(val):
        s = scores(model, emb[val])
        metrics["val_spearman"] = spearman(s, mos[val].numpy())
        metrics["val_mae"] = float(np.abs(s - mos[val].numpy()).mean())
    ranks.write(lambda: save(model, out_dir, cfg, metrics))  # rank 0 writes
    return metrics


def save(model, out_dir: str | Path, cfg: QualityTrainConfig, metrics: dict) -> Path:
    """The model (its recipe in config.json) and metrics.json into `out_dir`."""
    out = Path(out_dir)
    model.save_pretrained(out, extra={"train_config": asdict(cfg)})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return out
