"""Where RL runs sit: each attribute's adherence change over the base (95% CI) against KL, from
`musicrl eval --adherence` reports that share their first model and prompts.

    python experiments/adherence_vs_kl.py A.json B.json ... --out adherence_vs_kl.png [--labels a,b,...]

Every later model of every report is one point per attribute panel; --labels names them in order
(default: the last two parts of each model's path), and a label '-' leaves that model out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ATTRIBUTES = ("tempo", "register", "mode", "drums")


def points(reports: list[dict]) -> list[tuple[str, float, float, dict]]:
    """(model, KL mean, KL ci95, {attribute: change dict}) of every later model, report by report."""
    out = []
    for r in reports:
        base = r["models"][0]
        for m in r["models"][1:]:
            out.append((m, r["kl"][m]["mean"], r["kl"][m]["ci95"], r["adherence"]["change"][f"{m} over {base}"]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--labels", help="comma-separated, one per model point in order")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points([json.loads(Path(p).read_text()) for p in args.reports])
    labels = args.labels.split(",") if args.labels else ["/".join(Path(m).parts[-2:]) for m, *_ in pts]
    if len(labels) != len(pts):
        raise SystemExit(f"--labels: {len(labels)} labels for {len(pts)} models")
    kept = [(p, label) for p, label in zip(pts, labels) if label != "-"]
    fig, axes = plt.subplots(1, len(ATTRIBUTES), figsize=(4.2 * len(ATTRIBUTES), 3.8), sharey=True)
    for ax, a in zip(axes, ATTRIBUTES):
        for i, ((_, kl, kl_ci, change), label) in enumerate(kept):
            c = change[a]
            ax.errorbar(kl, 100 * c["diff"], xerr=kl_ci, yerr=100 * c["ci95"], fmt="os^Dv"[i // 10], color=f"C{i % 10}",
                        capsize=3, label=label)  # fmt: skip
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks([20, 50, 100, 200, 400], ["20", "50", "100", "200", "400"])
        ax.minorticks_off()
        ax.set_xlabel("KL to the base, nats per clip")
        ax.set_title(f"{a} (of {pts[0][3][a]['clips']} clips)")
    axes[0].set_ylabel("adherence change, points (95% CI)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
