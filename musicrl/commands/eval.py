"""`musicrl eval`: compare models under each reward (means, CIs, paired win rates, KL), or plot a run."""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace
from pathlib import Path

from musicrl.commands.common import add_device, add_threads, apply_threads, load_rewards
from musicrl.errors import UserError
from musicrl.model.device import resolve_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", help="comma-separated models; win rates are of each later model over the first")
    p.add_argument("--prompts", default="synth-unseen",
                   help="a text file (one prompt per line), synth-unseen (default: held-out clips' captions in "
                        "training words, none a training prompt) or synth-heldout (held-out words and templates)")
    p.add_argument("--num-prompts", type=int, default=128, help="prompts used from the list (default 128)")
    p.add_argument("--num-samples", type=int, default=1,
                   help="clips per prompt and model (default 1). Win rates compare single pairs of clips (clip j "
                        "of a prompt from each model, the same seed), as a listener hears them; with more than "
                        "one, the report adds the win rate of per-prompt means")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--temperature", type=float, default=1.0, help="logits are divided by this (default 1)")
    p.add_argument("--rewards", default="clap=tiny,quality=tiny",
                   help="name=model pairs; names clap, quality, or anything else for a preference model dir")
    p.add_argument("--raters", type=int, default=0,
                   help="tiny world: also judge with a default panel of N simulated raters (their utility, and "
                        "one panel ballot on each single pair of clips, with the share of decisive votes the panel "
                        "expects on those pairs: compare models by that, not by the ballots)")
    p.add_argument("--adherence", action="store_true",
                   help="tiny world: the share of clips that have the tempo, register, mode and drums their "
                        "prompt names, per model, and its change on the same prompts and seeds")
    p.add_argument("--reference", help="model to measure KL against (default: the first of --models)")
    p.add_argument("--seed", type=int, default=0,
                   help="which unseen or held-out captions are drawn (another set per seed, never a training "
                        "prompt) and the clips' noise")
    p.add_argument("--out", help="write the report as JSON here, and a plot of each reward vs KL beside it (.png)")
    p.add_argument("--run", help="plot a training run directory instead: reward vs KL (RL: RUN/reward_vs_kl.png) or "
                   "implicit-reward accuracy, margins, log-probs and KL (DPO: RUN/dpo.png)")
    add_device(p)
    add_threads(p)


def _judges(spec: str, raters: int, device):
    judges = load_rewards(spec, "--rewards", device) if spec else {}
    if raters:
        from musicrl.tiny.simulate import Panel, raters_judge

        judges["raters"] = raters_judge(Panel.default(raters))
    if not judges:
        raise UserError("nothing to judge with: give --rewards and/or --raters")
    return judges


def _tiny_judgements(args: argparse.Namespace, samples: list, report: dict) -> list[str]:
    """The tiny world's judgements of single pairs, added to `report`: per-attribute adherence
    (--adherence) and one panel ballot per pair with the panel's expected share (--raters). Returns the lines to print."""
    lines = []
    if args.adherence:
        from musicrl.tiny.adherence import adherence_report, format_adherence

        report["adherence"] = adherence_report(samples)
        lines.append(format_adherence(report["adherence"]))
    if args.raters:
        from musicrl.tiny.simulate import Panel, panel_single_pairs

        report["panel"] = {}
        for s in samples[1:]:
            pair = f"{s.model} over {samples[0].model}"
            v = report["panel"][pair] = panel_single_pairs(Panel.default(args.raters), samples[0], s)
            lines.append(f"{'panel':>12}  {pair}: {v['decisive_win']:.0%} of {v['a'] + v['b']} decisive votes "
                         f"(95% CI {v['ci95'][0]:.0%}–{v['ci95'][1]:.0%}; {v['tie']} ties) on {v['pairs']} single pairs")
            if (e := v["expected"])["share"] is not None:
                lines.append(f"{'':>12}  the panel expects {e['share']:.1%} (95% CI {e['ci95'][0]:.1%}–{e['ci95'][1]:.1%} "
                             f"over the pairs) with {e['p_decisive']:.0%} decisive: the same pairs without the ballots' noise")
                lines.append(f"{'':>12}  both clips of a pair share a seed, as in `musicrl app --paired-seeds`; the arena's "
                             "default draws a seed for each and reads a point or two lower (docs/results/closed-loop.md)")
    return lines


def run(args: argparse.Namespace) -> int:
    from musicrl.train import evaluate as ev

    if args.run:
        print(ev.plot_run(args.run))
        return 0
    if not args.models:
        raise UserError("give --models A,B (or --run DIR to plot a run)")
    models = [m for m in args.models.split(",") if m]
    if args.num_samples < 1 or args.num_prompts < 1:
        raise UserError("--num-samples and --num-prompts must be >= 1")

    from musicrl.logs import quiet_transformers
    from musicrl.model.policy import MusicGenPolicy
    from musicrl.model.sampling import SamplingConfig
    from musicrl.tiny.prompts import resolve_prompts

    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, guidance_scale=args.guidance)
    apply_threads(args.threads, models)
    quiet_transformers()
    device = resolve_device(args.device)
    judges = _judges(args.rewards, args.raters, device)
    prompts = resolve_prompts(args.prompts, args.num_prompts, args.seed)[: args.num_prompts]
    policies = {m: MusicGenPolicy.from_pretrained(m, device=device) for m in models}
    samples = [ev.generate(policies[m], prompts, args.num_samples, args.duration, sampling, args.seed, progress=True) for m in models]
    for s, m in zip(samples, models):
        s.model = m
    report = ev.compare(samples, judges, args.num_samples)
    report["sampling"] = {**asdict(sampling), "duration_s": args.duration, "seed": args.seed}  # what the clips were drawn with
    ref_name = args.reference or models[0]
    reference = policies.get(ref_name) or MusicGenPolicy.from_pretrained(ref_name, device=device)
    kl_sampling = replace(sampling, top_k=0)  # KL over the full (tempered, guided) distributions
    report["kl"] = {}
    for s, m in zip(samples, models):
        if m != ref_name:
            mean, h = ev.kl_to_reference(policies[m], reference, s, kl_sampling, progress=True)
            report["kl"][m] = {"mean": mean, "ci95": h}
    lines = _tiny_judgements(args, samples, report)
    print("\n".join([ev.format_report(report), *lines]))
    if args.out:
        ev.save_report(report, args.out)
        print(f"report: {args.out}; plot: {ev.plot_report(report, Path(args.out).with_suffix('.png'))}")
        if "adherence" in report:
            from musicrl.tiny.adherence import plot_adherence

            print(f"adherence plot: {plot_adherence(report['adherence'], Path(args.out).with_suffix('.adherence.png'))}")
    return 0
