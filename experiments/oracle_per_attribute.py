"""Oracle RL with per-attribute advantages (GDPO-style decoupled normalisation), against the preset's
one summed reward.

The `rl/oracle-adherence` preset sums the four 0/1 points (tempo, register, mode, drums) and then
normalises each prompt's advantages. A prompt's advantage is then driven by whichever attributes vary
most among its 8 clips: mode and drums often split 4-4, tempo rarely differs, so its signal is small
beside theirs, and tempo is the attribute that does not rise. Here each attribute's points get their
own leave-one-out baseline and their own per-prompt standard deviation (an attribute that does not
vary within the prompt contributes 0), and the attributes' advantages are summed and divided by the
batch's standard deviation (GDPO: "Group reward-Decoupled normalization Policy
Optimization"). Everything else is the preset, overrides as for `musicrl train`.

    python experiments/oracle_per_attribute.py temperature=0.6 steps=200 out_dir=runs/oracle-gdpo --threads 1
    musicrl eval --models tiny,runs/oracle-gdpo/checkpoints/step-000200 --adherence --temperature 0.6 \
        --num-prompts 256 --seed 7 --rewards clap=tiny
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of the rl/oracle-adherence preset")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)

    import torch

    from musicrl.presets import apply_overrides, load_yaml
    from musicrl.rewards.combine import WeightedReward
    from musicrl.tiny.adherence import ORACLE_ATTRIBUTES, AdherenceReward
    from musicrl.tiny.prompts import rl_prompts
    from musicrl.train.rl_config import RLConfig
    from musicrl.train.rl_trainer import RLTrainer

    torch.set_num_threads(args.threads)
    cfg = RLConfig.from_dict(apply_overrides(load_yaml("rl/oracle-adherence"), args.overrides))
    prompts, eval_prompts = rl_prompts(cfg)
    # one component per attribute, raw 0/1 points; their sum is the preset's reward (logged as 'reward')
    reward = WeightedReward({a: AdherenceReward((a,)) for a in ORACLE_ATTRIBUTES}, {a: 1.0 for a in ORACLE_ATTRIBUTES},
                            normalize=False)  # fmt: skip

    class PerAttribute(RLTrainer):
        def _score(self, audio, prompts, parts):
            total, components = super()._score(audio, prompts, parts)
            self._components = components  # [B] each, the step's global batch in row order
            return total, components

        def advantages(self, reward, prompts):
            k = self.cfg.samples_per_prompt
            adv = 0
            for r in self._components.values():
                r = r.to(reward.device).float().view(-1, k)  # [P, k]
                a = r - (r.sum(1, keepdim=True) - r) / (k - 1)  # leave-one-out
                adv = adv + a / (a.std(1, keepdim=True) + 1e-4)  # 0 where the attribute is flat
            adv = adv.view(-1)
            return (adv / (adv.std() + 1e-6)).detach()

    return 0 if PerAttribute(cfg, prompts, eval_prompts, reward=reward).train(resume=args.resume) else 1


if __name__ == "__main__":
    raise SystemExit(main())
