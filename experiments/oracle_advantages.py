"""Oracle RL with the preset's advantage split by attribute, two ways, against the `rl/oracle-adherence`
preset's one summed reward.

The preset sums the four 0/1 points (tempo, register, mode, drums), takes a leave-one-out baseline
and divides by each prompt's spread, and every token of a clip gets that one advantage.

- `per-attribute` (GDPO-style decoupled normalisation). A prompt's advantage is driven
  by whichever attributes vary most among its 8 clips: mode and drums often split 4-4, tempo rarely
  differs, so its signal is small beside theirs, and tempo is the attribute that does not rise. Here
  each attribute's points get their own leave-one-out baseline and their own per-prompt standard
  deviation (an attribute that does not vary within the prompt contributes 0), and the attributes'
  advantages are summed and divided by the batch's standard deviation.
- `windows`: each attribute's advantage reaches only the frames thought to decide it. On one seed,
  the policy gradient on a clip's first 0.5 s alone (a setting since removed) kept the preset's mode
  and drums gains and lost its tempo gain, which suggested that mode, drums and register are settled
  at a clip's start and tempo over the whole clip (a second seed then gained tempo too:
  docs/results/rl-oracle.md). The tokens of the first `--early-seconds` get the preset's whole
  advantage, the later ones only tempo's share of it (the leave-one-out baseline is linear, so the
  preset's advantage splits by attribute exactly). `--attributes tempo --early-seconds 0` trains on
  tempo's point alone; `--early-seconds` of the clip's whole length is the preset's own advantage on
  the named attributes' points (`--attributes tempo,mode duration_s=4 --early-seconds 4`), which is
  what `musicrl train --config rl/oracle-adherence duration_s=4 'reward.components.adherence.points=[tempo, mode]'`
  runs.

Everything else is the preset, overrides as for `musicrl train`:

    python experiments/oracle_advantages.py per-attribute temperature=0.6 steps=200 out_dir=runs/oracle-gdpo --threads 1
    python experiments/oracle_advantages.py windows temperature=0.6 out_dir=runs/oracle-windows --threads 1
    musicrl eval --models tiny,runs/oracle-windows/final --adherence --temperature 0.6 \
        --num-prompts 256 --seed 7 --rewards clap=tiny
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("advantage", choices=("per-attribute", "windows"))
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of the rl/oracle-adherence preset")
    p.add_argument("--attributes", default="tempo,register,mode,drums", help="the points scored")
    p.add_argument("--early-seconds", type=float, default=0.5, help="windows: frames that get every attribute's advantage")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)

    import torch

    from musicrl.presets import apply_overrides, load_yaml
    from musicrl.tiny.adherence import ORACLE_ATTRIBUTES, adherence_table
    from musicrl.tiny.prompts import rl_prompts
    from musicrl.train.rl_config import RLConfig
    from musicrl.train.rl_trainer import RLTrainer, leave_one_out as loo

    torch.set_num_threads(args.threads)
    cfg = RLConfig.from_dict(apply_overrides(load_yaml("rl/oracle-adherence"), args.overrides))
    attributes = args.attributes.split(",")
    if not set(attributes) <= set(ORACLE_ATTRIBUTES) or (args.advantage == "windows" and "tempo" not in attributes):
        raise SystemExit(f"--attributes: some of {ORACLE_ATTRIBUTES} (windows: tempo among them)")
    if args.advantage == "windows" and (cfg.normalize_advantages != "prompt" or cfg.baseline != "rloo"):
        raise SystemExit("windows splits the preset's advantage: normalize_advantages=prompt, baseline=rloo")
    prompts, eval_prompts = rl_prompts(cfg)

    def reward(audio, sample_rate, rows):  # the summed points, and each attribute's, from one hearing of each clip
        table = adherence_table(rows, audio, sample_rate)
        points = {a: torch.tensor([float(m.get(a, False)) for m in table]) for a in attributes}  # [B] each
        return sum(points.values()), points

    class SplitAdvantage(RLTrainer):
        def _score(self, audio, prompts, parts):
            total, components = super()._score(audio, prompts, parts)
            self._components = components  # [B] each, the step's global batch in row order
            return total, components

        def advantages(self, reward, prompts):
            k = self.cfg.samples_per_prompt
            if args.advantage == "per-attribute":
                adv = sum(a / (a.std(1, keepdim=True) + 1e-4) for a in (loo(r.to(reward.device), k)  # 0 where flat
                                                                      for r in self._components.values())).view(-1)  # fmt: skip
                return (adv / (adv.std() + 1e-6)).detach()
            T, early = (round(s * self.policy.frame_rate) for s in (self.cfg.duration_s, args.early_seconds))
            spread = loo(reward, k).std(1, keepdim=True) + 1e-4  # [P, 1] the preset's divisor
            tempo = (loo(self._components["tempo"].to(reward.device), k) / spread).view(-1)  # [B] tempo's share
            adv = tempo[:, None].repeat(1, T)  # [B, T] a per-frame advantage
            adv[:, :early] = super().advantages(reward, prompts)[:, None]  # the preset's whole advantage
            return adv.detach()

    return 0 if SplitAdvantage(cfg, prompts, eval_prompts, reward=reward).train(resume=args.resume) else 1


if __name__ == "__main__":
    raise SystemExit(main())
