"""What the simulated panel expects of a model against the base when the two clips of a pair share
their seed (`musicrl eval`, and `musicrl app --paired-seeds`) and when each draws its own (the arena's
default), on the same fresh prompts; and base against base on two seeds, the no-effect control.

    python experiments/seed_pairing.py runs/loop_dpo/dpo/final --num-prompts 512 \
        --out docs/results/data/seed_pairing_loop_dpo_cb1_512.json

Results: docs/results/closed-loop.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--base", default="tiny")
    p.add_argument("--num-prompts", type=int, default=512)
    p.add_argument("--seed", type=int, default=7, help="the evaluation's seed (musicrl eval --seed)")
    p.add_argument("--raters", type=int, default=10, help="panel size (the closed loop's 10)")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import torch

    from musicrl.model.policy import MusicGenPolicy
    from musicrl.model.sampling import SamplingConfig
    from musicrl.tiny.prompts import resolve_prompts
    from musicrl.model.generator import Clip
    from musicrl.tiny.simulate import Panel, expected_share, perceive
    from musicrl.train import evaluate as ev

    torch.set_num_threads(1)
    prompts = resolve_prompts("synth-unseen", args.num_prompts, args.seed)[: args.num_prompts]
    sampling, other_seed = SamplingConfig(), args.seed + 100_000  # clip i: seed + i, so no clip shares a seed
    base, model = MusicGenPolicy.from_pretrained(args.base), MusicGenPolicy.from_pretrained(args.model)
    b_same = ev.generate(base, prompts, 1, args.duration, sampling, args.seed, progress=True)
    b_other = ev.generate(base, prompts, 1, args.duration, sampling, other_seed, progress=True)
    m_same = ev.generate(model, prompts, 1, args.duration, sampling, args.seed, progress=True)
    # each set of clips heard once (the estimators are most of the run after sampling), then paired up
    heard = {k: [perceive(Clip(x[0].float().cpu().numpy(), s.sample_rate)) for x in s.audio]
             for k, s in (("b_same", b_same), ("b_other", b_other), ("m_same", m_same))}  # fmt: skip
    panel = Panel.default(args.raters, seed=0)

    def share(a: str, b: str) -> dict:  # b's share of the decisive votes, the panel's expectation
        return expected_share(panel, list(zip(prompts, heard[a], heard[b])))

    out = {"model": args.model, "base": args.base, "pairs": len(prompts), "seed": args.seed, "raters": args.raters,
           "paired seeds": share("b_same", "m_same"), "independent seeds": share("b_other", "m_same"),
           "base vs base, independent seeds": share("b_other", "b_same")}  # fmt: skip
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
