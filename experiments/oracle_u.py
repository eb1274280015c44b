"""The upper bound of MusicRL-U on the tiny world: RL whose reward is the simulated raters' own utility.

A preference model can at best predict what its raters like. This run gives the RL trainer that
perfect model: the reward of a clip is the mean utility of a panel of simulated raters
(`musicrl.tiny.simulate.raters_judge`, hearing tempo, register, mode and drums through `musicrl.tiny.attributes`),
drawn from the same population as the judging panel of `musicrl eval --raters 5` but not the same
people (panel seed 1; eval uses seed 0), as an RM trained on many people's votes would be. The rest is
the `rl/musicrl-u` preset (4 prompts x 4 samples of 4 s, guidance 3, kl_coef 0.02).

    python experiments/oracle_u.py --steps 300 --out runs/oracle_u
    python experiments/oracle_u.py --steps 150 --lr 5e-4 --samples-per-prompt 8 --normalize-advantages prompt \
        --ema-decay 0.98 --out runs/oracle_u_strong     # the oracle-adherence preset's trainer settings
    musicrl eval --models tiny,runs/oracle_u/checkpoints/step-000300 \
        --prompts benchmarks/results/rl_tiny/unseen_train_words.txt --rewards clap=tiny --raters 5 --num-samples 4

Results: docs/results/rl-tiny.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--normalize-advantages", default="batch", choices=("batch", "prompt", "none"))
    p.add_argument("--ema-decay", type=float, default=0.0, help="checkpoints hold an EMA of the weights (0: off)")
    p.add_argument("--out", default="runs/oracle_u")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    args = p.parse_args(argv)

    import torch

    from musicrl.tiny.simulate import raters_judge
    from musicrl.logs import quiet_transformers
    from musicrl.tiny.prompts import rl_prompts
    from musicrl.train.rl_config import RLConfig
    from musicrl.train.rl_trainer import RLTrainer
    from musicrl.tiny.simulate import Panel
    from musicrl.rewards.combine import WeightedReward

    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    # `reward` must name a valid combination; it is not built, the oracle below is passed instead
    cfg = RLConfig(reward={"components": {"clap": {}}}, model="tiny", prompts="synth", out_dir=args.out,
                   steps=args.steps, prompts_per_step=4, samples_per_prompt=args.samples_per_prompt, duration_s=4.0,
                   guidance_scale=3.0, kl_coef=0.02, lr=args.lr, normalize_advantages=args.normalize_advantages,
                   ema_decay=args.ema_decay, eval_every=10**6, checkpoint_every=50, keep_checkpoints=20)  # fmt: skip
    oracle = WeightedReward({"raters": raters_judge(Panel.default(5, 0.35, seed=1))}, {"raters": 1.0})
    RLTrainer(cfg, *rl_prompts(cfg), reward=oracle).train(progress=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
