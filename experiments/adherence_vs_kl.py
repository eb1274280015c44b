"""Where RL runs sit: each attribute's adherence change over the base (95% CI) against KL, from
`musicrl eval --adherence` reports that share their first model and prompts; or, with --map, one
attribute's adherence against another's, with the bar both must cross.

    python experiments/adherence_vs_kl.py A.json B.json ... --out adherence_vs_kl.png [--labels a,b,...]
    python experiments/adherence_vs_kl.py A.json B.json ... --out map.png --map tempo,mode [--bar 0.9]

Every later model of every report is one point per attribute panel; --labels names them in order
(default: the last two parts of each model's path), and a label '-' leaves that model out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ATTRIBUTES = ("tempo", "register", "mode", "drums")


def points(reports: list[dict]) -> list[tuple[str, float, float, dict, dict]]:
    """(model, KL mean, KL ci95, {attribute: change dict}, {attribute: rate dict}) of every later model,
    report by report."""
    out = []
    for r in reports:
        base, adherence = r["models"][0], r["adherence"]
        for m in r["models"][1:]:
            change = adherence["change"][f"{m} over {base}"]
            out.append((m, r["kl"][m]["mean"], r["kl"][m]["ci95"], change, adherence["rates"][m]))
    return out


def plot_vs_kl(axes, kept: list, first_change: dict) -> None:
    """One panel per attribute: each model's adherence change (95% CI) against its KL to the base."""
    for ax, a in zip(axes, ATTRIBUTES):
        for i, ((_, kl, kl_ci, change, _), label) in enumerate(kept):
            c = change[a]
            ax.errorbar(kl, 100 * c["diff"], xerr=kl_ci, yerr=100 * c["ci95"], fmt="os^Dv"[i // 10], color=f"C{i % 10}",
                        capsize=3, label=label)  # fmt: skip
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks([20, 50, 100, 200, 400], ["20", "50", "100", "200", "400"])
        ax.minorticks_off()
        ax.set_xlabel("KL to the base, nats per clip")
        ax.set_title(f"{a} (of {first_change[a]['clips']} clips)")
    axes[0].set_ylabel("adherence change, points (95% CI)")


def plot_map(ax, kept: list, base: dict, x: str, y: str, bar: float) -> None:
    """Attribute y's adherence against x's, one point per model (95% CIs), the base as a star."""
    def err(c):  # [2, 1] distances from the rate to its interval's ends, in points
        return [[100 * (c["rate"] - c["ci95"][0])], [100 * (c["ci95"][1] - c["rate"])]]

    ax.fill_between([100 * bar, 100], 100 * bar, 100, color="0.9", zorder=0)
    ax.plot(100 * base[x]["rate"], 100 * base[y]["rate"], "k*", ms=12, label="base")
    for i, ((*_, rates), label) in enumerate(kept):
        cx, cy = rates[x], rates[y]
        ax.errorbar(100 * cx["rate"], 100 * cy["rate"], xerr=err(cx), yerr=err(cy), fmt="os^Dv"[i // 10],
                    color=f"C{i % 10}", capsize=2, lw=0.8, label=label)  # fmt: skip
    ax.set_xlabel(f"{x}: clips with the asked {x}, % (of {base[x]['clips']})")
    ax.set_ylabel(f"{y}: clips with the asked {y}, % (of {base[y]['clips']})")
    ax.set_title(f"the bar: both ≥ {bar:.0%} (the shaded corner)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--labels", help="comma-separated, one per model point in order")
    ap.add_argument("--map", help="X,Y: attribute Y's adherence against X's instead of changes against KL")
    ap.add_argument("--bar", type=float, default=0.9, help="--map: the adherence both attributes must reach")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = [json.loads(Path(p).read_text()) for p in args.reports]
    pts = points(reports)
    labels = args.labels.split(",") if args.labels else ["/".join(Path(m).parts[-2:]) for m, *_ in pts]
    if len(labels) != len(pts):
        raise SystemExit(f"--labels: {len(labels)} labels for {len(pts)} models")
    kept = [(p, label) for p, label in zip(pts, labels) if label != "-"]
    if args.map:
        x, y = args.map.split(",")
        if not {x, y} <= set(ATTRIBUTES):
            raise SystemExit(f"--map: two of {ATTRIBUTES}, comma-separated")
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        plot_map(ax, kept, reports[0]["adherence"]["rates"][reports[0]["models"][0]], x, y, args.bar)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        fig, axes = plt.subplots(1, len(ATTRIBUTES), figsize=(4.2 * len(ATTRIBUTES), 3.8), sharey=True)
        plot_vs_kl(axes, kept, pts[0][3])
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
