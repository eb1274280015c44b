"""Does a clip have what its prompt asks for? The tiny world's crisp measure of prompt adherence.

A tiny-world prompt names some of tempo, register, mode and drums (`synth.parse_prompt`); the
project's estimators (`musicrl.tiny.attributes`) hear those four from audio. A clip adheres on an
attribute when the heard value is the asked one (drums: any kit heard counts for 'kick-hat' or
'full', as the estimator hears drums but not which kit).

- `heard_matches(prompt, audio, sr)`: {attribute: True/False} for the attributes the prompt names;
- `AdherenceReward`: the oracle adherence reward, one point per matched attribute (a reward-shaped
  callable, so the RL trainer can be checked on a dense reward it can verify);
- `adherence_table(prompts, audio, sr)`: matches of many clips, for the evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from musicrl.errors import UserError
from musicrl.tiny import synth
from musicrl.tiny.attributes import DRUMS_PRESENT, estimate_all

ATTRIBUTES = ("tempo", "register", "mode", "drums")  # what the estimators hear
ORACLE_ATTRIBUTES = ATTRIBUTES  # what the oracle reward scores: all four (without drums, RL traded drums for mode)


def matches(attr: str, heard: str, asked: str) -> bool:
    """Whether a heard value is the asked one (drums heard, kit unknown, fit either kit)."""
    return heard == asked or (attr == "drums" and heard == DRUMS_PRESENT and asked != "none")


def heard_matches(prompt: str, audio: np.ndarray, sample_rate: int) -> dict[str, bool]:
    """{attribute: matched} for each of ATTRIBUTES that `prompt` names; audio [S] mono."""
    asked = {k: v for k, v in synth.parse_prompt(prompt).items() if k in ATTRIBUTES}
    if not asked:
        return {}
    heard = estimate_all(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate)
    return {k: matches(k, heard[k], v) for k, v in asked.items()}


def adherence_table(prompts: list[str], audio: torch.Tensor, sample_rate: int) -> list[dict[str, bool]]:
    """audio [B, 1, S] -> one {attribute: matched} dict per clip."""
    return [heard_matches(p, a[0].float().cpu().numpy(), sample_rate) for p, a in zip(prompts, audio)]


def oracle_rewards(reward_cfg: dict) -> dict[str, "AdherenceReward"]:
    """An `AdherenceReward` for each component of type 'adherence' in a reward config (any stage)."""
    from musicrl.rewards.combine import SequentialConfig, parse_config

    cfg = parse_config(reward_cfg)
    stages = [w for _, w in cfg.stages] if isinstance(cfg, SequentialConfig) else [cfg]
    return {name: AdherenceReward(c.points or ORACLE_ATTRIBUTES) for w in stages for name, c in w.components.items()
            if c.type == "adherence"}  # fmt: skip


class AdherenceReward:
    """Oracle adherence: the points of the attributes the prompt names and the clip has. `points` is
    {attribute: points} or attributes worth one point each (by default all four: 0 to 4 a clip).

    Called like any reward (audio [B, 1, S], sample_rate, prompts) -> [B].
    """

    def __init__(self, points: dict[str, float] | tuple[str, ...] = ORACLE_ATTRIBUTES):
        self.points = dict(points) if isinstance(points, dict) else dict.fromkeys(points, 1.0)
        unknown = set(self.points) - set(ATTRIBUTES)
        if unknown:
            raise UserError(f"unknown attributes {sorted(unknown)} in the oracle's points; choose from {', '.join(ATTRIBUTES)}")

    def __call__(self, audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> torch.Tensor:
        table = adherence_table(prompts, audio, sample_rate)
        return torch.tensor([float(sum(w for a, w in self.points.items() if m.get(a, False))) for m in table])


def adherence_report(samples: list) -> dict:
    """How often each model's clips have what their prompt names, per attribute, and the change of
    each later model over the first on the same prompts and seeds (`musicrl.train.evaluate.Samples`).

    {"rates": {model: {attr: {"rate", "ci95": [lo, hi], "clips"}}, "mean": {model: mean of the rates},
     "change": {"B over A": {attr: {"diff", "ci95", "clips"}, "mean_rise": mean of the diffs}}}."""
    from musicrl.train.evaluate import mean_ci, wilson

    tables = {s.model: adherence_table(s.prompts, s.audio, s.sample_rate) for s in samples}
    out: dict = {"rates": {}, "mean": {}, "change": {}}
    for model, table in tables.items():
        rates = {}
        for attr in ATTRIBUTES:
            hits = [m[attr] for m in table if attr in m]
            if hits:
                rates[attr] = {"rate": float(np.mean(hits)), "ci95": list(wilson(sum(hits), len(hits))), "clips": len(hits)}
        out["rates"][model] = rates
        out["mean"][model] = float(np.mean([r["rate"] for r in rates.values()])) if rates else float("nan")
    base = samples[0].model
    for s in samples[1:]:
        change = {}
        for attr in ATTRIBUTES:
            d = np.array([float(b[attr]) - float(a[attr]) for a, b in zip(tables[base], tables[s.model]) if attr in a])
            if len(d):
                change[attr] = {"diff": float(d.mean()), "ci95": mean_ci(d)[1], "clips": len(d)}
        change["mean_rise"] = float(np.mean([c["diff"] for c in change.values()])) if change else float("nan")
        out["change"][f"{s.model} over {base}"] = change
    return out


def format_adherence(report: dict) -> str:
    lines = []
    for model, rates in report["rates"].items():
        cells = ", ".join(f"{a} {r['rate']:.0%} ({r['ci95'][0]:.0%}–{r['ci95'][1]:.0%}, {r['clips']})" for a, r in rates.items())
        lines.append(f"{'adherence':>12}  {model}: {cells}; mean {report['mean'][model]:.0%}")
    for pair, change in report["change"].items():
        cells = ", ".join(f"{a} {c['diff']:+.0%} ± {c['ci95']:.0%}" for a, c in change.items() if a != "mean_rise")
        lines.append(f"{'adherence':>12}  {pair}: {cells}; mean rise {change['mean_rise']:+.1%} (points per attribute)")
    return "\n".join(lines)


def plot_adherence(report: dict, out_png: str | Path) -> Path:
    """One group of bars per attribute: each model's adherence rate with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["rates"])
    attrs = [a for a in ATTRIBUTES if any(a in r for r in report["rates"].values())]
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(attrs), 3.8))
    for i, m in enumerate(models):
        rates = report["rates"][m]
        x = [j + (i - (len(models) - 1) / 2) * width for j, a in enumerate(attrs) if a in rates]
        y = [rates[a]["rate"] for a in attrs if a in rates]
        err = [[rates[a]["rate"] - rates[a]["ci95"][0] for a in attrs if a in rates],
               [rates[a]["ci95"][1] - rates[a]["rate"] for a in attrs if a in rates]]  # fmt: skip
        label = "/".join([p for p in Path(m).parts if p != "checkpoints"][-2:])
        ax.bar(x, y, width, yerr=err, capsize=3, color=f"C{i % 10}", label=label)
    ax.set_xticks(range(len(attrs)), attrs)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("clips with what the prompt names (95% CI)")
    ax.set_title("adherence, one clip per prompt")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
