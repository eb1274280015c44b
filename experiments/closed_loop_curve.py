"""Plot a closed loop's round-2 ratings with their 95% intervals against the round-2 votes cast so far.

Reads `round2_curve` of a `benchmarks/closed_loop.py` report (OUT/loop.json: both models' leaderboard
ratings and bootstrap intervals after every 50 round-2 votes) and marks the count from which the
intervals stay apart.

    python experiments/closed_loop_curve.py runs/loop_dpo/loop.json --out curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="closed loop, round 2")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = json.loads(args.report.read_text())["round2_curve"]
    n = [q["votes"] for q in curve["points"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, colour in (("retrained", "retrained", "tab:red"), ("base", "base", "tab:blue")):
        mid, lo, hi = zip(*(q[key] for q in curve["points"]))
        ax.plot(n, mid, color=colour, label=label)
        ax.fill_between(n, lo, hi, color=colour, alpha=0.2)
    if curve["apart_from"] is not None:
        ax.axvline(curve["apart_from"], color="grey", ls="--", lw=1,
                   label=f"intervals apart from {curve['apart_from']} votes on")  # fmt: skip
    ax.set_xlabel("round-2 votes (base vs retrained)")
    ax.set_ylabel("leaderboard rating (95% bootstrap interval)")
    ax.set_title(args.title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
