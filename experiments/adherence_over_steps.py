"""How one RL run's adherence moves with its training steps: each attribute's rate (95% CI) at the
base and at each checkpoint, from `musicrl eval --adherence` reports on the same prompts and seeds.

    python experiments/adherence_over_steps.py A.json B.json ... --steps 150,200,250,300 --out PNG [--bar 0.9]

The first model of the first report is the base (step 0); every later model of every report is one
checkpoint, in order, at the step --steps gives it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adherence_vs_kl import ATTRIBUTES


def series(reports: list[dict], steps: list[int]) -> dict[str, list[tuple[int, float, float, float]]]:
    """{attribute: [(step, rate, low, high)]}: the base at step 0, then each checkpoint."""
    rates = [reports[0]["adherence"]["rates"][reports[0]["models"][0]]]
    rates += [r["adherence"]["rates"][m] for r in reports for m in r["models"][1:]]
    if len(rates) != len(steps) + 1:
        raise SystemExit(f"--steps: {len(steps)} steps for {len(rates) - 1} checkpoints")
    return {a: [(s, x[a]["rate"], *x[a]["ci95"]) for s, x in zip([0, *steps], rates)] for a in ATTRIBUTES}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--steps", required=True, help="comma-separated, one per checkpoint in order")
    ap.add_argument("--bar", type=float, default=0.9, help="a target rate to draw (default 0.9)")
    ap.add_argument("--title", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = series([json.loads(Path(p).read_text()) for p in args.reports], [int(s) for s in args.steps.split(",")])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (a, pts) in enumerate(data.items()):
        x = [s + 4 * (i - 1.5) for s, *_ in pts]  # side by side at each step
        y = [100 * r for _, r, _, _ in pts]
        err = [[100 * (r - lo) for _, r, lo, _ in pts], [100 * (hi - r) for _, r, _, hi in pts]]
        ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, label=a)
    ax.axhline(100 * args.bar, color="gray", ls="--", lw=0.8, label=f"bar ({100 * args.bar:.0f}%)")
    ax.set_xlabel("RL step (0: the base)")
    ax.set_ylabel("clips with the asked value, % (95% CI)")
    ax.set_title(args.title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
