"""Train the Bradley-Terry user-preference reward (`musicrl.rewards.preference`) from A/B votes.

Input: a list of `musicrl.votes.rows.VoteRow` (prompt, clip_a, clip_b, choice), which
`musicrl.votes.rows.load_votes` reads from a vote file or a vote store: the trainer opens no database.

Each vote becomes a soft target y = P(a preferred): a -> 1, b -> 0, tie -> 1/2 ("half a win each"),
or dropped with `ties="drop"`; both_bad says nothing about which is better, so it is dropped unless
`both_bad="tie"`. Loss: -[y log sigmoid(s_a - s_b) + (1 - y) log sigmoid(s_b - s_a)], which is
-log sigmoid(s_w - s_l) for a win. Validation holds out whole prompts (a model must generalise to
prompts it never saw), chosen at random with the seed. Reported on it: accuracy on decisive votes
(ties and both_bad excluded), the loss, the expected calibration error over 10 bins of P(a) with a
reliability plot, and, for simulated votes (a `p_a` column), the raters' noise ceiling on the same votes.

Under torchrun each process embeds its part of the clips (the cost: a CLAP forward per clip) and the
parts are gathered (`backbone.embed_clip_files`); then every process trains the head on the whole of
each batch, the same steps as one process. The head is an MLP on cached embeddings (seconds): sharing
its batches would save nothing worth a gradient all-reduce per step, and would draw other dropout
masks than one process. Rank 0 writes the model.

Measured (`benchmarks/preference_rm.py`: 2,000 votes of `musicrl simulate-votes`, 5 raters, noise
0.35, 8 vote sets x 5 prompt splits = 40 held-out sets of ~330 decisive votes, the shipped tiny CLAP):
held-out accuracy 0.710 against a noise ceiling of 0.749, **3.8 points** under it on average (± 0.4
s.e.; median 3.7; -0.4 to 7.9 by split); the head without its CLAP term gets 4.2 (0.4 to 9.0). One
split alone says little: its ~330 votes give an accuracy with a standard error of 2.5 points, and
vote sets differ as much again (sets 0 and 1 alone read 4.6-4.8 with the term, 5.5 without; sets
2 and 3, 2.6 and 2.8). The same head on perfect attribute features got 0.71-0.72, so with 2,000
votes the head is about as good as its input allows; what is left is the votes' own noise.
On votes about the base model's *own samples* (`simulate-votes --model tiny`, raters hearing tempo,
register and mode through `musicrl.tiny.attributes`) it is much weaker: 0.60 against a ceiling of 0.77 with
the 2,500-step LM, 0.56 against 0.74 with the shipped 4,500-step one (a third of its votes are ties:
its clips follow their prompts more often). The tiny CLAP barely hears what separates two samples of
one prompt: on the shipped LM's samples, attribute adherence explains under a tenth of the spread of
CLAP scores within a prompt (a wrong tempo costs 0.08, a wrong mode 0.01, against a spread of 0.13).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from musicrl.errors import UserError
from musicrl.rewards import backbone as bb
from musicrl.train import distributed
from musicrl.votes.choices import SCORE_A
from musicrl.votes.rows import VoteRow, votes_hash


@dataclass(frozen=True)
class PreferenceTrainConfig:
    """How the preference head is trained. The defaults are the measured recipe (see the report)."""

    lr: float = 1e-3
    """AdamW learning rate (constant)."""
    epochs: int = 40
    """Passes over the training votes."""
    batch_size: int = 128
    """Votes per step."""
    weight_decay: float = 0.05
    """AdamW weight decay on the head: votes are few, the input is 3 * D wide."""
    hidden_size: int = 64
    """Width of the head's hidden layers. Small on purpose: on 2,000 simulated votes with the tiny CLAP a
    256x2 head overfits (held-out accuracy 0.64) where 64x1 with dropout 0.3 gets 0.68."""
    num_layers: int = 1
    """Hidden layers of the head."""
    dropout: float = 0.3
    clap_term: bool = True
    """Add the CLAP score cos(a, t) with a learned weight to the head's output (`musicrl.rewards.preference`)."""
    ties: str = "half"
    """'half': a tie is half a win for each clip (target 1/2); 'drop': ties are not trained on."""
    both_bad: str = "exclude"
    """'exclude': both_bad votes are dropped; 'tie': treated as ties (then `ties` applies)."""
    val_fraction: float = 0.2
    """Fraction of the distinct prompts whose votes are held out (0: no validation)."""
    seed: int = 0
    """Validation split, head init and shuffling."""

    def __post_init__(self):
        if self.ties not in ("half", "drop"):
            raise UserError(f"ties must be 'half' or 'drop', got {self.ties!r}")
        if self.both_bad not in ("exclude", "tie"):
            raise UserError(f"both_bad must be 'exclude' or 'tie', got {self.both_bad!r}")
        bb.check_head_training(self)


# ------------------------------------------------------------------------------------- targets


def targets(rows: list[VoteRow], cfg: PreferenceTrainConfig) -> tuple[list[int], torch.Tensor]:
    """(indices of the votes trained on, their P(a preferred) targets [N]) per the tie/both_bad policy."""
    keep, y = [], []
    for i, r in enumerate(rows):
        choice = "tie" if (r.choice == "both_bad" and cfg.both_bad == "tie") else r.choice
        if choice == "both_bad" or (choice == "tie" and cfg.ties == "drop"):
            continue
        keep.append(i)
        y.append(SCORE_A[choice])
    return keep, torch.tensor(y, dtype=torch.float32)


def split_by_prompt(prompts: list[str], val_fraction: float, seed: int) -> set[str]:
    """The held-out prompts: round(val_fraction * distinct prompts) of them (at least one), at random."""
    distinct = sorted(set(prompts))
    if val_fraction == 0:
        return set()
    if len(distinct) < 2:
        raise UserError("validation holds out whole prompts: need votes on >= 2 distinct prompts (or val_fraction 0)")
    k = min(len(distinct) - 1, max(1, round(val_fraction * len(distinct))))
    order = np.random.default_rng([seed, 11]).permutation(len(distinct))
    return {distinct[i] for i in order[:k]}


def bt_loss(d: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss of score differences d = s_a - s_b [N] against soft targets y [N]."""
    return -(y * F.logsigmoid(d) + (1 - y) * F.logsigmoid(-d)).mean()


def calibration(p: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """(expected calibration error, per-bin {lo, hi, n, mean_p, freq}) of predictions p for outcomes y."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        row = {"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n,
               "mean_p": float(p[m].mean()) if n else None, "freq": float(y[m].mean()) if n else None}
        if n:
            ece += n / len(p) * abs(row["mean_p"] - row["freq"])
        table.append(row)
    return float(ece), table


# ------------------------------------------------------------------------------------- training


def _batches(n: int, size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + size] for i in range(0, n, size)]


@torch.no_grad()
def evaluate(model, A: torch.Tensor, T: torch.Tensor, pairs: torch.Tensor, y: torch.Tensor,
             p_true: list[float | None] | None = None) -> dict:
    """Metrics of `model` on pairs [N, 3] (clip a, clip b, prompt indices into A [C, D], T [P, D])."""
    model.eval()
    if len(pairs) == 0:
        return {"votes": 0}
    d = model.score_embeddings(A[pairs[:, 0]], T[pairs[:, 2]]) - model.score_embeddings(A[pairs[:, 1]], T[pairs[:, 2]])
    d = d.cpu()
    out = {"votes": len(pairs), "loss": bt_loss(d, y).item()}
    decisive = (y == 0) | (y == 1)
    out["decisive_votes"] = int(decisive.sum())
    if decisive.any():
        p, yy = torch.sigmoid(d[decisive]).numpy(), y[decisive].numpy()
        out["accuracy"] = float(((p > 0.5) == (yy == 1)).mean())
        out["ece"], out["calibration_bins"] = calibration(p, yy)
        if p_true is not None:
            known = [q for q, k in zip(p_true, decisive.tolist()) if k]
            if known and all(q is not None for q in known):
                out["noise_ceiling"] = float(np.mean([max(q, 1 - q) for q in known]))
    return out


def train_preference(votes: list[VoteRow], out_dir: str | Path, cfg: PreferenceTrainConfig = PreferenceTrainConfig(),
                     backbone: str = "tiny", device: str = "cpu", progress: bool = True, clap=None,
                     source: str = "") -> dict:
    """Train, evaluate and save the preference model into `out_dir`; returns the metrics."""
    from tqdm.auto import tqdm

    from musicrl.rewards.preference import PreferenceModel

    keep, y = targets(votes, cfg)
    if not keep:
        raise UserError("no votes left to train on (every vote was a tie or both_bad under this tie policy)")
    used = [votes[i] for i in keep]
    val_prompts = split_by_prompt([r.prompt for r in used], cfg.val_fraction, cfg.seed)
    is_val = torch.tensor([r.prompt in val_prompts for r in used])
    if (~is_val).sum() == 0:
        raise UserError("no training votes left after holding out validation prompts")

    clap = clap if clap is not None else bb.load_backbone(backbone, device)
    paths = sorted({str(p) for r in used for p in (r.clip_a, r.clip_b)})
    path_idx = {p: i for i, p in enumerate(paths)}
    A = bb.embed_clip_files(clap, paths, progress)  # [C, D], each process embedding its part
    prompts = sorted({r.prompt for r in used})
    prompt_idx = {p: i for i, p in enumerate(prompts)}
    T = torch.cat([clap.embed_text(prompts[i : i + 256]).float().cpu() for i in range(0, len(prompts), 256)])  # [P, D]
    pairs = torch.tensor([[path_idx[str(r.clip_a)], path_idx[str(r.clip_b)], prompt_idx[r.prompt]] for r in used])

    torch.manual_seed(cfg.seed)
    model = PreferenceModel(clap, backbone, cfg.hidden_size, cfg.num_layers, cfg.dropout, cfg.clap_term)
    opt = torch.optim.AdamW(model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tr_pairs, tr_y = pairs[~is_val], y[~is_val]
    gen = torch.Generator().manual_seed(cfg.seed)
    A, T = A.to(clap.device), T.to(clap.device)
    ranks = distributed.join(torch.device(clap.device))[0]  # under torchrun: one bar, and one writer, rank 0
    bar = tqdm(range(cfg.epochs), desc="preference model", disable=not (progress and ranks.main), dynamic_ncols=True)
    for _ in bar:
        model.train()
        for b in _batches(len(tr_pairs), cfg.batch_size, gen):
            pb = tr_pairs[b]
            d = model.score_embeddings(A[pb[:, 0]], T[pb[:, 2]]) - model.score_embeddings(A[pb[:, 1]], T[pb[:, 2]])
            loss = bt_loss(d, tr_y[b].to(d.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval().requires_grad_(False)

    p_true = [r.p_a for r in used]
    val_p = [q for q, v in zip(p_true, is_val.tolist()) if v]
    metrics = {
        "votes_in": len(votes), "votes_used": len(used), "ties": sum(r.choice == "tie" for r in votes),
        "both_bad": sum(r.choice == "both_bad" for r in votes), "prompts": len(prompts),
        "val_prompts": len(val_prompts), "clips": len(paths), "votes_hash": votes_hash(votes),
        "train": evaluate(model, A, T, tr_pairs, tr_y),
        "val": evaluate(model, A, T, pairs[is_val], y[is_val], val_p),
        "config": asdict(cfg), "backbone": str(backbone), "source": str(source),
    }  # fmt: skip
    ranks.write(lambda: _save(model, Path(out_dir), cfg, metrics))
    return metrics


def _save(model, out: Path, cfg: PreferenceTrainConfig, metrics: dict) -> None:
    model.save_pretrained(out, extra={"train_config": asdict(cfg), "votes_hash": metrics["votes_hash"]})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if metrics["val"].get("calibration_bins"):
        reliability_plot(metrics["val"], out / "reliability.png")


def reliability_plot(val: dict, path: Path) -> Path:
    """Observed frequency of 'a preferred' against the predicted P(a), per bin, with bin counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b for b in val["calibration_bins"] if b["n"]]
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.plot([b["mean_p"] for b in bins], [b["freq"] for b in bins], "o-", label="preference model")
    ax.set_ylabel("observed P(a preferred)")
    ax.set_title(f"held-out votes: accuracy {val['accuracy']:.3f}, ECE {val['ece']:.3f}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    hx.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["n"] for b in bins], width=0.09)
    hx.set_xlabel("predicted P(a preferred)")
    hx.set_ylabel("votes")
    hx.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
