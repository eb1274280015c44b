"""Best-of-n under each reward: what a listener hears from the base model at almost no KL.

Best-of-n draws n clips of a prompt from the base model and keeps the one a reward scores highest.
Its KL to the base is at most log n - (n - 1)/n nats per clip (1.2 nats at n = 8), whatever the
reward, so it is the yardstick an RL run is held against: what the reward can buy a listener when the
policy hardly moves. Each prompt gets 1 + n clips of the base, drawn with their own seeds: clip 0 is
the base's clip that a listener hears against the pick among clips 1..m, for m = 1, 2, 4, ..., n
(m = 1 is one base clip against another: 50% and no change up to the noise of the prompts, a check).
For each reward that picks, and each m, it reports what `musicrl eval` reports of a model on single
pairs:

- the judging panel's expected share of decisive votes (`--raters`, seed 0, as `musicrl eval --raters`);
- per-attribute adherence and its change on the same prompts (the project's estimators);
- the single-pair CLAP win rate against clip 0.

The rewards that pick:
- `clap`: the tiny CLAP, MusicRL-R's main term;
- `R`: MusicRL-R's reward, CLAP + 0.3 quality, each standardised over all the clips;
- `adherence`: the oracle adherence reward (matched attributes);
- `raters`: a perfect preference model, the mean utility of 5 other raters from the same population
  (panel seed 1, as `experiments/oracle_u.py`);
- `rm`: a preference model trained on votes, when `--rm DIR` is given (MusicRL-U's reward).

With `--against BASE`, clip 0 (the clip listeners hear the pick against) comes from BASE with the same
seed, and the candidates from `--model`: best-of-n on a fine-tuned model, judged against the base's
very clips of a run without `--against`.

    python experiments/best_of_n.py --n 16 --num-prompts 256 --seed 7 --out bon.json [--rm runs/preference]
    python experiments/best_of_n.py --model runs/musicrl-u/final --against tiny --rm runs/preference --out u.json

Results: docs/results/best-of-n.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16, help="largest n (m runs over powers of two up to n)")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--seed", type=int, default=7, help="which unseen captions (as `musicrl eval --seed`)")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--model", default="tiny")
    p.add_argument("--against", help="the model clip 0 comes from (default: --model)")
    p.add_argument("--rm", help="a preference model directory: also pick by it")
    p.add_argument("--raters", type=int, default=5, help="the judging panel (seed 0), as `musicrl eval --raters`")
    p.add_argument("--out", default="best_of_n.json")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from musicrl.logs import quiet_transformers
    from musicrl.model.generator import Clip
    from musicrl.model.policy import MusicGenPolicy
    from musicrl.model.sampling import SamplingConfig
    from musicrl.rewards.combine import build_reward
    from musicrl.rewards.rerank import total
    from musicrl.tiny import synth
    from musicrl.tiny.adherence import ATTRIBUTES, matches
    from musicrl.tiny.prompts import resolve_prompts
    from musicrl.tiny.simulate import Panel, adherence, expected_share, perceive
    from musicrl.train import evaluate as ev
    from tqdm.auto import tqdm

    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    n1 = args.n + 1
    prompts = resolve_prompts("synth-unseen", args.num_prompts, args.seed)[: args.num_prompts]
    policy = MusicGenPolicy.from_pretrained(args.model)
    sampling = SamplingConfig()  # `musicrl eval`'s defaults: temperature 1, top-k 250, guidance 3
    s = ev.generate(policy, prompts, n1, args.duration, sampling, args.seed, progress=True)  # rows [p0]*n1 + ...
    P = len(prompts)
    if args.against:  # clip 0 of each prompt from the base, with the seed it has in the base's own run
        from musicrl.model.engine import FastSampler

        base = MusicGenPolicy.from_pretrained(args.against)
        seeds = [args.seed + i * n1 for i in range(P)]  # row i * n1 of `ev.generate`'s rows
        codes = torch.cat([FastSampler(base).sample(prompts[i : i + 64], 1, args.duration, sampling=sampling,
                                                    seeds=seeds[i : i + 64]).codes for i in range(0, P, 64)])  # fmt: skip
        audio0 = torch.cat([base.decode(codes[i : i + 64]).cpu() for i in range(0, P, 64)])  # [P, 1, S]
        s.audio[::n1] = audio0.to(s.audio.dtype)

    comps = {"clap": {"type": "clap", "model": "tiny"}, "quality": {"type": "quality", "model": "tiny"}}
    if args.rm:
        comps["rm"] = {"type": "preference", "model": args.rm}
    judges = build_reward({"components": comps, "normalize": False}, torch.device("cpu")).eval().rewards
    raw = {}
    for name, judge in judges.items():
        with torch.no_grad():
            raw[name] = torch.cat([judge(s.audio[i : i + 64], s.sample_rate, s.prompts[i : i + 64]).float().cpu()
                                   for i in range(0, len(s.prompts), 64)]).numpy().reshape(P, n1)  # fmt: skip
    heard = [perceive(Clip(a[0].float().numpy(), s.sample_rate)) for a in tqdm(s.audio, desc="hear", unit="clip")]
    heard = [heard[i * n1 : (i + 1) * n1] for i in range(P)]  # [P][n1]
    other_raters = Panel.default(5, 0.35, seed=1)
    pick = {
        "clap": raw["clap"],
        "R": total({k: torch.from_numpy(raw[k]) for k in ("clap", "quality")}, {"quality": 0.3}).numpy(),
        "adherence": np.array([[adherence(prompts[i], h) for h in heard[i]] for i in range(P)]),
        "raters": np.array([[np.mean([r.value(h, prompts[i]) for r in other_raters.raters]) for h in heard[i]]
                            for i in range(P)]),  # fmt: skip
    }
    if args.rm:
        pick["rm"] = raw["rm"]
    panel = Panel.default(args.raters, seed=0)
    asked = [{k: v for k, v in synth.parse_prompt(pr).items() if k in ATTRIBUTES} for pr in prompts]

    hits = [[{a: float(matches(a, heard[i][j][a], v)) for a, v in asked[i].items()} for j in range(n1)]
            for i in range(P)]  # fmt: skip  [P][n1]: each clip's matched attributes

    rows = []
    ms = [m for m in (2**k for k in range(args.n.bit_length())) if m <= args.n]
    for name, score in pick.items():
        for m in ms:
            c = 1 + np.argmax(score[:, 1 : 1 + m], axis=1)  # [P] the pick among clips 1..m
            e = expected_share(panel, [(prompts[i], heard[i][0], heard[i][c[i]]) for i in range(P)])
            change = {}
            for a in ATTRIBUTES:
                d = np.array([hits[i][c[i]][a] - hits[i][0][a] for i in range(P) if a in asked[i]])
                mean, h = ev.mean_ci(d)
                change[a] = {"diff": mean, "ci95": h, "clips": len(d),
                             "rate": float(np.mean([hits[i][c[i]][a] for i in range(P) if a in asked[i]]))}
            clap = ev.win_rate(raw["clap"][:, 0], raw["clap"][np.arange(P), c])
            rows.append({"pick": name, "m": m, "kl_bound": math.log(m) - (m - 1) / m, "panel": e,
                         "adherence": change, "mean_rise": float(np.mean([v["diff"] for v in change.values()])),
                         "clap_win": clap})  # fmt: skip
            print(f"{name:>9} m={m:<3} KL<={rows[-1]['kl_bound']:.2f}  panel {e['share']:.1%} "
                  f"({e['ci95'][0]:.1%}-{e['ci95'][1]:.1%})  adherence {rows[-1]['mean_rise']:+.1%} ("
                  + ", ".join(f"{a} {v['diff']:+.0%}" for a, v in change.items())
                  + f")  CLAP {clap['score']:.0%} ({clap['win_ci95'][0]:.0%}-{clap['win_ci95'][1]:.0%})", flush=True)
    base_rates = {a: float(np.mean([hits[i][0][a] for i in range(P) if a in asked[i]])) for a in ATTRIBUTES}
    report = {"model": args.model, "against": args.against or args.model, "prompts": P, "seed": args.seed, "n": args.n, "duration_s": args.duration,
              "sampling": sampling.to_dict(), "base_rates": base_rates,
              "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"report: {args.out}; plot: {plot(report, Path(args.out).with_suffix('.png'))}")
    return 0


def plot(report: dict, out_png: Path) -> Path:
    """Panel share, mean adherence change and CLAP win against best-of-n's KL bound, one line per pick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    picks = list(dict.fromkeys(r["pick"] for r in report["rows"]))
    for k, name in enumerate(picks):
        rows = [r for r in report["rows"] if r["pick"] == name]
        x = [r["kl_bound"] for r in rows]
        for ax, y, lo_hi in (
            (axes[0], [r["panel"]["share"] for r in rows], [r["panel"]["ci95"] for r in rows]),
            (axes[1], [r["mean_rise"] * 100 for r in rows], None),
            (axes[2], [r["clap_win"]["score"] for r in rows], [r["clap_win"]["win_ci95"] for r in rows]),
        ):
            ax.plot(x, y, "o-", color=f"C{k}", label=f"best-of-n by {name}")
            if lo_hi:
                ax.fill_between(x, [a for a, _ in lo_hi], [b for _, b in lo_hi], color=f"C{k}", alpha=0.12)
    for ax, bar, title in ((axes[0], 0.65, "judging panel: expected share of decisive votes"),
                           (axes[1], 10, "adherence: mean change, points per attribute"),
                           (axes[2], 0.65, "CLAP: single pairs won")):  # fmt: skip
        ax.axhline(bar, color="k", ls="--", lw=0.8)
        ax.set_xlabel("KL to the base, at most (nats per clip)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"best-of-n from the base, {report['prompts']} fresh prompts (seed {report['seed']}), "
                 f"one clip against one; dashed: issue 30's bars", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


if __name__ == "__main__":
    raise SystemExit(main())
