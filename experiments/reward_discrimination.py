"""Does a reward hear adherence where RL needs it: among the clips of one prompt?

RL's advantage compares the k clips of one prompt, so a reward steers adherence only as far as it
prefers, of two clips of the same prompt, the one that has what the prompt names. For the base
model's clips of fresh prompts, two measures per attribute (tempo, register, mode, drums):

- within a prompt: of the same-prompt pairs whose clips differ in that attribute's match (and in no
  other named attribute's), the share where the reward scores the adherent clip higher (ties: half);
- on one clip, across texts (CLAP only): the clip scored under its prompt and under the prompt with
  that attribute flipped (`musicrl.tiny.prompts.flip_attribute`): the share of clips that have the
  asked value where CLAP prefers the prompt, or the flipped value where it prefers the flip.

    python experiments/reward_discrimination.py --out docs/results/data/reward_discrimination.json   # ~4 min

Writes the report as JSON and, beside it, a bar plot (.png) of each measure per attribute.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict

import torch

from musicrl.logs import quiet_transformers
from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig
from musicrl.rewards.combine import build_reward
from musicrl.tiny import synth
from musicrl.tiny.adherence import ATTRIBUTES, adherence_table, matches
from musicrl.tiny.attributes import estimate_all
from musicrl.tiny.prompts import flip_attribute, resolve_prompts
from musicrl.train.evaluate import wilson


def share(wins: list[float]) -> dict:
    n = len(wins)
    return {"share": sum(wins) / n if n else float("nan"), "ci95": list(wilson(sum(wins), n)) if n else None, "pairs": n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=11, help="picks the fresh (unseen) prompts")
    ap.add_argument("--clap", default="tiny", help="the CLAP reward's model")
    ap.add_argument("--quality", default="tiny", help="the quality model (a head on its own CLAP)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_transformers()
    policy = MusicGenPolicy.from_pretrained("tiny")
    prompts = resolve_prompts("synth-unseen", args.prompts, seed=args.seed)
    reward = build_reward({"components": {"clap": {"model": args.clap}, "quality": {"model": args.quality}}})
    scores = defaultdict(list)
    tables, heard, rows = [], [], []
    with torch.no_grad():
        for start in range(0, len(prompts), 8):
            roll = policy.sample(prompts[start:start + 8], args.samples, args.duration,
                                 sampling=SamplingConfig(guidance_scale=3.0), seed=args.seed * 1000 + start)  # fmt: skip
            audio = policy.decode(roll.codes)  # [B, 1, S]
            for name, r in reward.rewards.items():
                scores[name] += r(audio, policy.sample_rate, roll.prompts).float().tolist()
            tables += adherence_table(roll.prompts, audio, policy.sample_rate)
            heard += [estimate_all(a[0].numpy(), policy.sample_rate) for a in audio]
            rows += roll.prompts
            for attr in ATTRIBUTES:  # the same clip under its prompt with `attr` flipped
                flips = [flip_attribute(p, attr) for p in roll.prompts]
                idx = [n for n, f in enumerate(flips) if f is not None]
                flipped = torch.full((len(flips),), float("nan"))
                if idx:
                    flipped[idx] = reward.rewards["clap"](audio[idx], policy.sample_rate, [flips[n] for n in idx]).float().cpu()
                scores[f"clap_flipped_{attr}"] += flipped.tolist()
            print(f"{len(rows)}/{len(prompts) * args.samples} clips", flush=True)
    within = {name: {attr: [] for attr in ATTRIBUTES} for name in reward.rewards}
    k = args.samples
    for p in range(len(prompts)):
        for a, b in itertools.combinations(range(p * k, (p + 1) * k), 2):
            differ = [attr for attr in tables[a] if tables[a][attr] != tables[b][attr]]
            if len(differ) != 1:
                continue
            good, bad = (a, b) if tables[a][differ[0]] else (b, a)
            for name in within:
                d = scores[name][good] - scores[name][bad]
                within[name][differ[0]].append(1.0 if d > 0 else 0.5 if d == 0 else 0.0)
    across = {attr: [] for attr in ATTRIBUTES}
    for n, table in enumerate(tables):
        for attr, matched in table.items():
            flip = flip_attribute(rows[n], attr)
            if flip is None:
                continue
            other = synth.parse_prompt(flip)[attr]
            heard_flip = matches(attr, heard[n][attr], other)
            if matched == heard_flip:  # heard neither value (a third tempo), or both: no right answer
                continue
            d = scores["clap"][n] - scores[f"clap_flipped_{attr}"][n]
            across[attr].append(1.0 if (d > 0) == matched else 0.0)
    report = {"settings": vars(args),
              "within_prompt": {name: {a: share(w) for a, w in by.items()} for name, by in within.items()},
              "across_texts_clap": {a: share(w) for a, w in across.items()}}  # fmt: skip
    for name, by in report["within_prompt"].items():
        print(f"within a prompt, {name:8s}: " + ", ".join(f"{a} {s['share']:.0%} ({s['ci95'][0]:.0%}-{s['ci95'][1]:.0%}, {s['pairs']})" for a, s in by.items() if s["pairs"]))
    print("one clip, two texts, clap: " + ", ".join(f"{a} {s['share']:.0%} ({s['ci95'][0]:.0%}-{s['ci95'][1]:.0%}, {s['pairs']})" for a, s in report["across_texts_clap"].items() if s["pairs"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        plot(report, args.out.rsplit(".", 1)[0] + ".png")
    return 0


def plot(report: dict, out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = {f"{name}, two clips of one prompt": by for name, by in report["within_prompt"].items()}
    bars["clap, one clip under two texts"] = report["across_texts_clap"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / len(bars)
    for i, (label, by) in enumerate(bars.items()):
        x = [j + (i - (len(bars) - 1) / 2) * width for j, a in enumerate(ATTRIBUTES) if by[a]["pairs"]]
        y = [by[a]["share"] for a in ATTRIBUTES if by[a]["pairs"]]
        err = [[max(0.0, by[a]["share"] - by[a]["ci95"][0]) for a in ATTRIBUTES if by[a]["pairs"]],
               [max(0.0, by[a]["ci95"][1] - by[a]["share"]) for a in ATTRIBUTES if by[a]["pairs"]]]  # fmt: skip
        ax.bar(x, y, width, yerr=err, capsize=3, label=label)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(ATTRIBUTES)), ATTRIBUTES)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("reward prefers the adherent one (95% CI)")
    ax.set_title("does the reward hear what the prompt names?")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
