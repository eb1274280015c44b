"""One ballot per pair against what the panel expects on the same pairs, for every model of some
`musicrl eval --raters N` reports: how far a single ballot on each of 256 pairs strays from the
panel's own expectation (the diagonal).

    python experiments/ballot_vs_expected.py eval1.json eval2.json ... --out ballot_vs_expected.png
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def points(paths: list[Path]) -> list[dict]:
    """One point per (report, model over base) with both shares and intervals."""
    out = []
    for path in paths:
        for pair, v in json.loads(path.read_text()).get("panel", {}).items():
            e = v.get("expected") or {}
            if e.get("share") is None:
                raise SystemExit(f"{path}: {pair} has no expected share (a report from before `expected`)")
            out.append({"label": pair.split(" over ")[0], "ballot": v["decisive_win"], "ballot_ci": v["ci95"],
                        "expected": e["share"], "expected_ci": e["ci95"], "report": path.name})  # fmt: skip
    return out


def short(model: str) -> str:
    """runs/h2h/rloo/final -> h2h/rloo; runs/r/checkpoints/step-000240 -> r@240."""
    model = re.sub(r"/checkpoints/step-0*(\d+)$", r"@\1", re.sub(r"/final$", "", model))
    return model.removeprefix("runs/")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("ballot_vs_expected.png"))
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points(args.reports)
    fig, ax = plt.subplots(figsize=(8, 7.5))
    for q in pts:
        x, y = 100 * q["expected"], 100 * q["ballot"]
        ax.errorbar(x, y, xerr=[[x - 100 * q["expected_ci"][0]], [100 * q["expected_ci"][1] - x]],
                    yerr=[[y - 100 * q["ballot_ci"][0]], [100 * q["ballot_ci"][1] - y]], fmt="o", capsize=2, alpha=0.8)
        ax.annotate(short(q["label"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    lo, hi = 40, 75
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.axhline(50, color="grey", lw=0.5)
    ax.axvline(50, color="grey", lw=0.5)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="the panel expects, % of decisive votes (95% CI over the pairs)",
           ylabel="one ballot per pair, % of decisive votes (95% Wilson CI)",
           title="Single pairs against the base: the ballots against their expectation")  # fmt: skip
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    for q in pts:
        print(f"{short(q['label']):<32} expected {q['expected']:.1%}  ballots {q['ballot']:.0%}  ({q['report']})")
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
