"""How close the preference model gets to the simulated raters' noise ceiling, over many vote sets.

One vote set of 2,000 votes holds ~330 prompts; a 20% prompt split leaves ~330 decisive held-out votes,
whose accuracy alone has a standard error of ~2.5 points, and vote sets differ by as much again. So
the gap (noise ceiling - held-out accuracy) is averaged over `--sets` vote sets (`musicrl
simulate-votes` seeds 0..sets-1) x `--splits` prompt splits (`PreferenceTrainConfig.seed`), each
through the real `train_preference`, once with and once without the head's CLAP term.

    python experiments/preference_rm.py --sets 8 --splits 5 --out benchmarks/results/preference_rm.json

About 9 min on 2 CPU cores (8 sets: 2 min of simulation, then 80 trainings of 4-6 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", type=int, default=8, help="vote sets (simulate-votes seeds 0..N-1)")
    p.add_argument("--splits", type=int, default=5, help="prompt splits per set (train seeds 0..N-1)")
    p.add_argument("--votes", type=int, default=2000)
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--work-dir", help="keep the vote sets here (default: a temporary directory)")
    p.add_argument("--out", help="write the per-split results and the summary as JSON here")
    args = p.parse_args(argv)

    from tqdm.auto import tqdm

    from musicrl.logs import quiet_transformers
    from musicrl.tiny.simulate import Panel, simulate_votes
    from musicrl.rewards import backbone as bb
    from musicrl.rewards.train_preference import PreferenceTrainConfig, train_preference
    from musicrl.votes.rows import load_votes

    quiet_transformers()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="preference_rm_"))
    clap = bb.load_backbone(args.backbone, "cpu")
    rows = []
    bar = tqdm(total=args.sets * args.splits * 2, desc="trainings")
    for s in range(args.sets):
        vote_dir = work / f"votes-{s}"
        path = vote_dir / "votes.jsonl"
        if not path.exists():
            path = simulate_votes(args.votes, Panel.default(5, 0.35, s), s, vote_dir)
        votes = load_votes(path)
        for split in range(args.splits):
            for clap_term in (True, False):
                cfg = PreferenceTrainConfig(seed=split, clap_term=clap_term)
                val = train_preference(votes, work / "model", cfg, backbone=args.backbone, clap=clap,
                                       progress=False)["val"]
                rows.append({"set": s, "split": split, "clap_term": clap_term, "accuracy": val["accuracy"],
                             "noise_ceiling": val["noise_ceiling"], "decisive_votes": val["decisive_votes"]})
                bar.update()
    bar.close()

    summary = {}
    print(f"{'head':<22}{'accuracy':>10}{'ceiling':>10}{'gap mean':>10}{'median':>8}{'range':>14}   (points)")
    for clap_term in (True, False):
        r = [x for x in rows if x["clap_term"] == clap_term]
        gap = 100 * np.array([x["noise_ceiling"] - x["accuracy"] for x in r])
        name = "with CLAP term" if clap_term else "without (MLP only)"
        summary[name] = {"accuracy": float(np.mean([x["accuracy"] for x in r])),
                         "noise_ceiling": float(np.mean([x["noise_ceiling"] for x in r])),
                         "gap_mean": float(gap.mean()), "gap_median": float(np.median(gap)),
                         "gap_min": float(gap.min()), "gap_max": float(gap.max()),
                         "gap_sem": float(gap.std(ddof=1) / np.sqrt(len(gap))), "splits": len(gap)}
        m = summary[name]
        print(f"{name:<22}{m['accuracy']:>10.3f}{m['noise_ceiling']:>10.3f}{m['gap_mean']:>10.2f}"
              f"{m['gap_median']:>8.2f}{m['gap_min']:>7.1f}..{m['gap_max']:<5.1f}  (± {m['gap_sem']:.2f} s.e.)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "summary": summary, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
