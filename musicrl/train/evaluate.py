"""Comparing models: per-reward means with confidence intervals, paired win rates, KL to a reference,
and the reward-vs-KL picture of a training run.

Every model generates from the same prompts with the same seeds, so comparisons are paired: the
win rate of B over A under a reward is the fraction of prompts where B's mean score beats A's
(ties, equal to 1e-9, are counted apart and reported).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musicrl.errors import UserError
from musicrl.model.policy import MusicGenPolicy
from musicrl.train.rl_trainer import exact_kl
from musicrl.votes.leaderboard import wilson_band
from musicrl.model.sampling import SamplingConfig


def mean_ci(x: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% interval."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size < 2:
        return float(x.mean()) if x.size else float("nan"), float("nan")
    return float(x.mean()), float(z * x.std(ddof=1) / math.sqrt(x.size))


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (the leaderboard's `wilson_band`, one value)."""
    if n == 0:
        return float("nan"), float("nan")
    lo, hi = wilson_band(np.float64(k), np.float64(n), z)
    return float(lo), float(hi)


@dataclass
class Samples:
    model: str
    prompts: list[str]  # [P*n]
    codes: torch.Tensor  # [P*n, K, T]
    audio: torch.Tensor  # [P*n, 1, S]
    sample_rate: int


def generate(policy: MusicGenPolicy, prompts: list[str], n: int, duration_s: float, sampling: SamplingConfig, seed: int,
             max_rows: int = 512, progress: bool = False) -> Samples:
    """n clips of each prompt, rows [p0]*n + [p1]*n + ..., sampled and decoded in chunks of whole
    prompts of at most `max_rows` rows (at least one prompt). Row i is seeded `seed + i` whatever the
    chunking, so the clips are those of one big batch, without its memory (one batch of 64 prompts x
    64 clips a model took the box to ~15 GB in use with 3 tiny models; in chunks, 2 models of 16 x 64
    peaked at 3.1 GB RSS). progress: a bar of clips on stderr."""
    from tqdm.auto import tqdm

    per = max(1, max_rows // n)  # prompts per chunk
    rows, codes, audio = [], [], []
    with tqdm(total=len(prompts) * n, desc=f"sample {policy.name}", unit="clip", disable=not progress, dynamic_ncols=True) as bar:
        for i in range(0, len(prompts), per):
            roll = policy.sample(prompts[i : i + per], n, duration_s, sampling=sampling, seed=seed + i * n)
            rows += roll.prompts
            codes.append(roll.codes.cpu())
            audio.append(policy.decode(roll.codes).cpu())
            bar.update(len(roll.prompts))
    return Samples(policy.name, rows, torch.cat(codes), torch.cat(audio), policy.sample_rate)


def compare(samples: list[Samples], judges: dict, n: int) -> dict:
    """Scores of every model under every judge, and win rates of each later model over the first.

    The headline is the listener's: single pairs, clip j of a prompt from one model against clip j
    of the same prompt from the other (the same seed), over all P*n pairs. With n > 1 the win rate
    of per-prompt means is given too; it rises with n where gains are small against the spread of a
    prompt's clips, so it says more about the mean than about what one listener hears. The prompts
    and each model's per-prompt means are kept, so wins can be recounted on any subset."""
    report = {"models": [s.model for s in samples], "prompts": samples[0].prompts[::n], "rewards": {}, "win_rates": {}}
    scores = {}
    for name, judge in judges.items():
        for s in samples:
            with torch.no_grad():
                v = judge(s.audio, s.sample_rate, s.prompts).float().cpu().numpy()  # [P*n]
            scores[(name, s.model)] = v.reshape(-1, n)  # [P, n]
            m, h = mean_ci(v)
            per_prompt = scores[(name, s.model)].mean(1).tolist()  # [P]
            report["rewards"].setdefault(name, {})[s.model] = {"mean": m, "ci95": h, "per_prompt": per_prompt}
    base = samples[0].model
    for s in samples[1:]:
        for name in judges:
            a, b = scores[(name, base)], scores[(name, s.model)]  # [P, n]
            w = win_rate(a.reshape(-1), b.reshape(-1))
            if n > 1:
                w["per_prompt_mean"] = {**win_rate(a.mean(1), b.mean(1)), "by_samples": win_rate_by_samples(a, b)}
            report["win_rates"].setdefault(name, {})[f"{s.model} over {base}"] = w
    return report


def win_rate(a: np.ndarray, b: np.ndarray) -> dict:
    """b against a, pair by pair: shares of wins, ties (equal to 1e-9) and losses; `score`, the win
    rate counting a tie as half a win, and its 95% Wilson interval `win_ci95`."""
    wins, ties = _wins(a, b)
    N = len(a)
    lo, hi = wilson(wins + 0.5 * ties, N)
    return {"win": wins / N, "tie": ties / N, "loss": (N - wins - ties) / N, "score": (wins + 0.5 * ties) / N,
            "win_ci95": [lo, hi], "pairs": N}


def _wins(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Pairs where b beats a, and ties (equal to 1e-9)."""
    return int((b > a + 1e-9).sum()), int((abs(b - a) <= 1e-9).sum())


def win_rate_by_samples(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Win rate of b over a (ties half) when each prompt's means use only its first m clips, m = 1, 2,
    4, ... n. a, b: [P, n] scores, clip j of both models drawn with the same seed.

    A prompt's win compares two means of m noisy clips: when B's gain is small against the spread
    of a prompt's clips, the win rate creeps from ~50% towards the share of prompts whose expected
    score B really raises as m grows. The curve shows how far a figure at n is from that limit."""
    n = a.shape[1]
    ms = sorted({2**i for i in range(n.bit_length())} | {n})  # powers of two up to n, then n
    out = {}
    for m in ms:
        wins, ties = _wins(a[:, :m].mean(1), b[:, :m].mean(1))
        out[str(m)] = (wins + 0.5 * ties) / len(a)
    return out


@torch.no_grad()
def kl_to_reference(policy: MusicGenPolicy, reference: MusicGenPolicy, s: Samples, sampling: SamplingConfig, batch: int = 8,
                    reference_sampling: SamplingConfig | None = None, progress: bool = False) -> tuple[float, float]:
    """Mean (and CI) over clips of the exact sequence KL(policy || reference), on the policy's own samples.

    reference_sampling: the reference's sampling distribution when it differs from the policy's (e.g.
    the same model at another guidance scale); None = `sampling`. progress: a bar of batches on stderr."""
    from tqdm.auto import tqdm

    ref_sampling = reference_sampling or sampling
    kls = []
    for i in tqdm(range(0, len(s.prompts), batch), desc=f"KL {s.model}", disable=not progress, dynamic_ncols=True):
        p, c = s.prompts[i : i + batch], s.codes[i : i + batch]
        kls.append(exact_kl(policy.distributions(p, c, sampling), reference.distributions(p, c, ref_sampling)).sum((1, 2)))
    return mean_ci(torch.cat(kls).cpu().numpy())


def plot_run(run_dir: str | Path, out_png: str | Path | None = None) -> Path:
    """Reward vs KL over a training run (metrics.csv, and eval.csv when present) as a PNG; a DPO run's
    own figure (`plot_preference_run`) for a DPO run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = _read_csv(run_dir / "metrics.csv")
    if not metrics:
        raise UserError(f"no metrics.csv with rows in {run_dir}")
    if "rewards/accuracy" in metrics[0]:
        return plot_preference_run(run_dir, out_png)
    evals = _read_csv(run_dir / "eval.csv")
    comps = sorted({k for r in metrics for k in r if k.startswith("reward/")})
    # one panel per reward component: their scales differ (CLAP ~0.3, quality ~4), and on one axis
    # a CLAP gain of 0.02 would be a flat line
    fig, axes = plt.subplots(1, 1 + len(comps), figsize=(5.5 * (1 + len(comps)), 4), squeeze=False)
    axes = axes[0]
    steps = np.array([r["step"] for r in metrics])
    kl = np.cumsum([r["kl"] for r in metrics]) / np.arange(1, len(metrics) + 1)
    ax = axes[0]
    sc = ax.scatter([r["kl"] for r in metrics], [r["reward"] for r in metrics], c=steps, cmap="viridis", s=12)
    fig.colorbar(sc, ax=ax, label="step")
    ax.set_xlabel("KL(policy || reference) per token")
    ax.set_ylabel("training reward (normalised sum)")
    ax.set_title("reward vs KL, every step")
    window = max(1, min(20, len(metrics) // 5))  # each step's batch is new prompts: noisy alone
    for ax, c in zip(axes[1:], comps):
        name, values = c.split("/", 1)[1], np.array([r[c] for r in metrics])
        ax.plot(steps, values, color="C0", alpha=0.25, lw=0.8, label="training, each step")
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="C0", label=f"training, mean of {window} steps")
        held = [r for r in evals if f"eval/{name}" in r]
        if held:
            ax.plot([r["step"] for r in held], [r[f"eval/{name}"] for r in held], "o--", color="C3", label="held-out prompts")
        ax2 = ax.twinx()
        ax2.plot(steps, kl, color="gray", alpha=0.6)
        ax2.set_ylabel("KL per token (running mean, gray)")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{name} reward")
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title(f"{name} over training")
    fig.tight_layout()
    out = Path(out_png) if out_png else run_dir / "reward_vs_kl.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_preference_run(run_dir: str | Path, out_png: str | Path | None = None) -> Path:
    """A DPO/IPO run (metrics.csv, eval.csv) as a PNG: implicit-reward accuracy and margin (training
    batches and held-out pairs), the chosen and rejected clips' log-probs, and KL to the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics, evals = _read_csv(run_dir / "metrics.csv"), _read_csv(run_dir / "eval.csv")
    if not metrics:
        raise UserError(f"no metrics.csv with rows in {run_dir}")
    steps = np.array([r["step"] for r in metrics])
    window = max(1, min(20, len(metrics) // 5))

    def curve(ax, key, label, color):
        v = np.array([r[key] for r in metrics], dtype=float)
        ax.plot(steps, v, color=color, alpha=0.25, lw=0.8)
        ax.plot(steps[window - 1 :], np.convolve(v, np.ones(window) / window, mode="valid"), color=color, label=label)
        held = [r for r in evals if f"eval/{key}" in r]
        if held:
            ax.plot([r["step"] for r in held], [r[f"eval/{key}"] for r in held], "o--", color=color, alpha=0.8,
                    label=f"{label} (held-out pairs)")  # fmt: skip

    fig, axes = plt.subplots(1, 4, figsize=(22, 4))
    panels = [("rewards/accuracy", "implicit-reward accuracy"), ("rewards/margin", "implicit-reward margin (nats x beta)")]
    for ax, (key, title) in zip(axes[:2], panels):
        curve(ax, key, key.split("/")[1], "C0")
        ax.set_title(title)
    curve(axes[2], "logps/chosen", "chosen", "C2")
    curve(axes[2], "logps/rejected", "rejected", "C3")
    axes[2].set_title("log-prob of a clip (sum over its tokens)")
    curve(axes[3], "kl_seq", "KL per clip", "C4")
    axes[3].set_title("KL(policy || reference), nats per clip")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png) if out_png else run_dir / "dpo.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_report(report: dict, out_png: str | Path) -> Path:
    """Each reward's mean (95% CI) against KL to the reference, one point per model of a
    `musicrl eval` report: where checkpoints or runs sit on the reward-KL frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["rewards"])
    kl = {m: report.get("kl", {}).get(m, {"mean": 0.0, "ci95": 0.0}) for m in report["models"]}  # the reference: 0
    short = {m: "/".join([p for p in Path(m).parts if p != "checkpoints"][-2:]) for m in report["models"]}
    curves = any(len(w.get("per_prompt_mean", {}).get("by_samples", {})) > 1
                 for pairs in report.get("win_rates", {}).values() for w in pairs.values())  # fmt: skip
    rows = 2 if curves else 1
    fig, axes = plt.subplots(rows, len(names), figsize=(5.5 * len(names), 4 * rows), squeeze=False)
    for ax, name in zip(axes[0], names):
        for i, m in enumerate(report["models"]):
            r = report["rewards"][name][m]
            ax.errorbar(kl[m]["mean"], r["mean"], xerr=kl[m]["ci95"], yerr=r["ci95"], fmt="o", color=f"C{i % 10}", capsize=3,
                        label=short[m])  # fmt: skip
        ax.set_xlabel("KL to the reference, nats per clip")
        ax.set_ylabel(f"{name} reward (mean, 95% CI)")
        ax.set_title(f"{name} vs KL")
        ax.legend(fontsize=7)
    for ax, name in zip(axes[1] if curves else [], names):
        for i, m in enumerate(report["models"][1:], start=1):
            pair = report["win_rates"].get(name, {}).get(f"{m} over {report['models'][0]}", {})
            w = pair.get("per_prompt_mean", {}).get("by_samples", {})
            ax.plot([int(k) for k in w], list(w.values()), "o-", color=f"C{i % 10}", label=short[m])
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clips per prompt and model in each prompt's mean")
        ax.set_ylabel(f"win rate over {short[report['models'][0]]} ({name})")
        ax.set_title(f"{name}: win rate vs clips per prompt")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [{k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()} for r in rows]


def format_report(report: dict) -> str:
    lines = []
    for name, per_model in report["rewards"].items():
        cells = ", ".join(f"{m}: {v['mean']:.4f} ± {v['ci95']:.4f}" for m, v in per_model.items())
        lines.append(f"{name:>12}  {cells}")
    for name, pairs in report["win_rates"].items():
        for pair, w in pairs.items():
            lines.append(f"{name:>12}  {pair}: single pairs {_fmt_win(w)}")
            if "per_prompt_mean" in w:
                pm = w["per_prompt_mean"]
                curve = ", ".join(f"{m}: {v:.0%}" for m, v in pm["by_samples"].items())
                lines.append(f"{'':>12}  per-prompt means: {_fmt_win(pm)}; by clips per prompt in each mean: {curve}")
    for m, v in report.get("kl", {}).items():
        lines.append(f"{'KL':>12}  {m} vs reference: {v['mean']:.2f} ± {v['ci95']:.2f} nats per clip")
    return "\n".join(lines)


def _fmt_win(w: dict) -> str:
    return (f"win {w['win']:.0%}, tie {w['tie']:.0%}, loss {w['loss']:.0%} of {w['pairs']}; "
            f"a tie as half a win: {w['score']:.0%} (95% CI {w['win_ci95'][0]:.0%}–{w['win_ci95'][1]:.0%})")


def save_report(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
