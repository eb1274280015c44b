"""The whole MusicRL-U loop on the tiny world, through the app and the CLI, with simulated raters.

    1. `musicrl app --model BASE --models-dir OUT/RUN` runs as a subprocess for the whole loop
       (the models dir is empty at first, so only BASE is served: pairs are two seeds of it);
    2. simulated raters (`musicrl.tiny.simulate.Panel.default`) vote through the app's JSON API;
    3. `musicrl votes export` -> OUT/votes.jsonl;
    4. `--route rl` (the default; RUN is musicrl-u): the RM -> RL route,
       `musicrl train-reward preference --votes OUT/votes.jsonl --out OUT/preference`, then
       `musicrl train --config rl/musicrl-u reward.components.user.model=OUT/preference
       out_dir=OUT/musicrl-u steps=N ...`;
       `--route dpo` (RUN is dpo): offline DPO straight from the round-1 votes, no preference model,
       `musicrl train --config po/dpo --votes OUT/votes.jsonl out_dir=OUT/dpo steps=N ...`;
    5. while it trains the app keeps running: it picks up each checkpoint of OUT/RUN, and finally
       OUT/RUN/final, by itself (--reload-every);
    6. the raters vote again, now on pairs of BASE against the retrained model;
    7. the leaderboard (Bradley-Terry, 95% bootstrap CIs) should show the retrained model above BASE,
       with intervals that do not overlap (for two models: the win rate's interval excludes 1/2).

Besides the votes, OUT/loop.json holds what the panel *expects* on the round-2 pairs (each clip heard
through `musicrl.tiny.attributes`, P(retrained preferred) averaged over the raters): the effect the
realized votes estimate. A per-vote edge of a few points needs several hundred decisive votes to show.
`round2` also holds the decisive-vote win rate (Wilson 95%) and `round2_curve` the two ratings and
intervals after every 50 round-2 votes (the project's leaderboard on the exported votes in the order
cast), with the first count at which the intervals were apart and the count from which they stayed apart.

Everything runs `nice`d with one torch thread per process. Logs of each step go to OUT/logs/;
OUT/loop.json holds the leaderboards and figures. Exit status 0 when the retrained model is rated
above the base with non-overlapping 95% intervals.

    python benchmarks/closed_loop.py --out runs/loop                      # the shipped tiny world
    python benchmarks/closed_loop.py --out runs/loop_dpo --route dpo      # DPO from the round-1 votes
    python benchmarks/closed_loop.py --out runs/loop_dpo --route dpo --paired-seeds   # round 2's two clips
                                                         # of a pair drawn with one seed (musicrl app --paired-seeds)
    python benchmarks/closed_loop.py --out /tmp/loop --random --rl-steps 2 --votes-before 40 \\
        --votes-after 20                                   # plumbing only: random tiny models
    python benchmarks/closed_loop.py --out runs/loop --more-votes 1000   # the same app, 1,000 more
                                                         # round-2 votes on the same two models
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.load_test import AppProcess, Tally, free_port, voter  # noqa: E402

SECRET = "closed-loop"
ROUTES = {"rl": "musicrl-u", "dpo": "dpo"}  # route -> its run directory under OUT, served by the app
DEFAULT_STEPS = {"rl": 60, "dpo": 200}  # dpo: the po/dpo preset's
CURVE_EVERY = 50  # round-2 votes between two points of round2_curve


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False",
            "MUSICRL_ADMIN_SECRET": SECRET}  # fmt: skip


def musicrl(args: list[str], log: Path, what: str) -> float:
    """Run one `musicrl` command (output to `log`); returns its wall time. Raises on failure."""
    t0 = time.monotonic()
    print(f"[loop] {what}: musicrl {' '.join(args)}", flush=True)
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", "musicrl.cli", *args], cwd=ROOT, env=env(), stdout=f,
                            stderr=subprocess.STDOUT).returncode  # fmt: skip
    if rc:
        raise SystemExit(f"[loop] {what} failed (exit {rc}); last lines of {log}:\n{log.read_text()[-2000:]}")
    return round(time.monotonic() - t0, 1)


def shown_path(path: Path) -> str:
    """How a path is passed to the CLI (and so names a model on the leaderboard): relative to the repo if inside."""
    return os.path.relpath(path, ROOT) if path.is_relative_to(ROOT) else str(path)


def vote_phase(app: AppProcess, n: int, voters: int, duration_s: float, seed: int, timeout_s: float) -> dict:
    from musicrl.tiny.simulate import Panel

    panel = Panel.default(voters, seed=0)  # the same people in both rounds
    tally = Tally(n)
    deadline = time.monotonic() + timeout_s
    t0 = time.monotonic()
    threads = [threading.Thread(target=voter, args=(i, panel.raters[i], app.url, tally, duration_s, deadline, seed),
                                daemon=True) for i in range(voters)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 10)
    if len(tally.confirmed) < n:
        raise SystemExit(f"[loop] only {len(tally.confirmed)} of {n} votes went through: {tally.errors[:3]}")
    choices = [c for (_, _, _, c) in tally.confirmed.values()]
    return {"votes": n, "wall_s": round(time.monotonic() - t0, 1), "choices": {c: choices.count(c) for c in ("a", "b", "tie")}}


def served(app: AppProcess) -> list[dict]:
    import httpx

    return httpx.get(app.url + "/api/admin/models", headers={"X-Admin-Secret": SECRET}, timeout=30).json()["models"]


def run_dir(out: Path, route: str) -> Path:
    """The training run's directory, which the app serves beside BASE."""
    return out / ROUTES[route]


def loop_app(base: str, out: Path, log_name: str, args: dict) -> AppProcess:
    """The loop's app (not started): BASE and whatever the route's run directory holds, its store in OUT/app."""
    # no per-session cap on the leaderboard: each simulated voter casts a hundred votes or more
    extra = ("--models-dir", shown_path(run_dir(out, args.get("route", "rl"))), "--reload-every",
             str(args["reload_every"]), "--per-session-cap", "0", *(("--paired-seeds",) if args.get("paired_seeds") else ()))  # fmt: skip
    app = AppProcess(base, out / "app", free_port(), out / "logs" / log_name, extra=extra)
    app.env = env()
    return app


def export_votes(out: Path, dest: Path, what: str) -> float:
    """`musicrl votes export` of the loop's store (OUT/app) to `dest` as JSONL; returns its wall time."""
    data = out / "app"
    return musicrl(["votes", "export", "--db", f"sqlite:///{data / 'votes.db'}", "--data-dir", str(data),
                    "--format", "jsonl", "--out", str(dest)], out / "logs" / f"{what}.log", what)  # fmt: skip


def wait_for_final(app: AppProcess, timeout_s: float) -> float:
    """Wait until the app serves the run's `final` checkpoint; returns the seconds waited."""
    t0 = time.monotonic()
    while not any(str(m.get("checkpoint") or "").endswith("final") for m in served(app)):
        if time.monotonic() - t0 > timeout_s:
            raise SystemExit("[loop] the app did not pick up the run's final checkpoint")
        time.sleep(1)
    return round(time.monotonic() - t0, 1)


def leaderboard(app: AppProcess) -> dict:
    import httpx

    return httpx.get(app.url + "/api/leaderboard", timeout=60).json()


def show(lb: dict) -> str:
    lines = ["| rank | model | rating | 95% CI | games | W-L-T |", "|---|---|---|---|---|---|"]
    for r in lb["ratings"]:
        lines.append(f"| {r['rank']} | `{r['model']}` | {r['rating']:.0f} | [{r['ci_low']:.0f}, {r['ci_high']:.0f}] "
                     f"| {r['games']} | {r['wins']}-{r['losses']}-{r['ties']} |")  # fmt: skip
    if not lb["ratings"]:
        lines.append("| – | (no rated model: all votes so far compare a model with itself) | | | | |")
    return "\n".join(lines) + f"\n\n{lb['n_votes']} informative votes; provisional: {lb['provisional'] or 'none'}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/loop", help="run directory (default runs/loop)")
    p.add_argument("--force", action="store_true", help="delete --out first if it exists")
    p.add_argument("--base", default="tiny", help="the model to start from and compare with (default tiny)")
    p.add_argument("--backbone", default="tiny", help="CLAP backbone of the preference model (default tiny)")
    p.add_argument("--random", action="store_true", help="plumbing run: random tiny MusicGen and CLAP (no assets needed)")
    p.add_argument("--voters", type=int, default=10)
    p.add_argument("--votes-before", type=int, default=400, help="votes on the base model's clips (default 400)")
    p.add_argument("--votes-after", type=int, default=150, help="votes on base vs retrained (default 150)")
    p.add_argument("--duration", type=float, default=2.0, help="clip length for votes and RL, s (default 2)")
    p.add_argument("--route", choices=sorted(ROUTES), default="rl",
                   help="rl: preference model, then rl/musicrl-u on it (default); dpo: po/dpo on the round-1 votes")
    p.add_argument("--steps", "--rl-steps", dest="steps", type=int, default=None,
                   help=f"training steps (default {DEFAULT_STEPS['rl']} for rl, {DEFAULT_STEPS['dpo']} for dpo)")
    p.add_argument("--train-set", "--rl-set", dest="train_set", action="append", default=[], metavar="KEY=VALUE",
                   help="more `musicrl train` overrides")
    p.add_argument("--reward-set", action="append", default=[], metavar="--FLAG=VALUE",
                   help="more `train-reward preference` flags (route rl), e.g. --reward-set=--epochs=50")  # fmt: skip
    p.add_argument("--reload-every", type=float, default=5.0, help="the app's checkpoint poll, s (default 5)")
    p.add_argument("--paired-seeds", action="store_true",
                   help="the app draws round 2's two clips of a pair with one seed (`musicrl app --paired-seeds`)")
    p.add_argument("--timeout", type=float, default=3600.0, help="per voting round and for the final model, s")
    p.add_argument("--no-nice", action="store_true", help="do not lower this run's CPU priority")
    p.add_argument("--more-votes", type=int, default=0, metavar="N",
                   help="continue the finished loop in --out: serve its models again on the same store and cast N "
                        "more round-2 votes (the leaderboard counts all of them)")  # fmt: skip
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = DEFAULT_STEPS[args.route]

    if not args.no_nice:
        os.nice(10)
    out = Path(args.out).resolve()
    if args.more_votes:
        return more_votes(out, args.more_votes)
    if out.exists() and any(out.iterdir()):
        if not args.force:
            raise SystemExit(f"[loop] {out} is not empty; pass --force to start over")
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    base, backbone = args.base, args.backbone
    if args.random:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        from musicrl.tiny.clap import save_random_clap
        from musicrl.tiny.musicgen import save_random

        base, backbone = str(save_random(out / "random-musicgen")), str(save_random_clap(out / "random-clap"))
    run, data = run_dir(out, args.route), out / "app"
    run.mkdir()
    data.mkdir()
    report: dict = {"base": base, "backbone": backbone, "args": vars(args), "timings_s": {}}

    app = loop_app(base, out, "app.log", vars(args))
    t = report["timings_s"]
    try:
        t["app_start"] = round(app.start(), 1)
        print(f"[loop] app at {app.url}, serving {[m['model'] for m in served(app)]}", flush=True)
        print(f"[loop] round 1: {args.votes_before} votes on {base}'s clips", flush=True)
        report["round1"] = vote_phase(app, args.votes_before, args.voters, args.duration, 1, args.timeout)
        report["leaderboard_before"] = leaderboard(app)
        votes = out / "votes.jsonl"
        t["export"] = export_votes(out, votes, "export")
        t.update(train(args, out, base, backbone, votes, report))
        t["swap_wait"] = wait_for_final(app, args.timeout)
        report["served_after"] = served(app)
        print(f"[loop] round 2: {args.votes_after} votes, serving {[m['model'] for m in report['served_after']]}", flush=True)
        report["round2"] = vote_phase(app, args.votes_after, args.voters, args.duration, 2, args.timeout)
        report["leaderboard_after"] = leaderboard(app)
    finally:
        app.stop()
    return finish(report, out)


def train(args, out: Path, base: str, backbone: str, votes: Path, report: dict) -> dict:
    """The route's training on the round-1 votes, into its run directory; returns the stages' wall times."""
    run, steps, t = run_dir(out, args.route), args.steps, {}
    common = [f"out_dir={run}", f"steps={steps}", f"model={base}", f"eval_every={max(1, steps)}",
              f"checkpoint_every={max(1, steps // 4)}"]  # fmt: skip
    if args.route == "dpo":
        t["dpo"] = musicrl(["train", "--config", "po/dpo", "--votes", str(votes), *common, *args.train_set,
                            "--threads", "1"], out / "logs" / "train.log", "DPO")  # fmt: skip
        return t
    t["train_reward"] = musicrl(["train-reward", "preference", "--votes", str(votes), "--out", str(out / "preference"),
                                 "--backbone", backbone, "--threads", "1", *args.reward_set],
                                out / "logs" / "train-reward.log", "preference model")  # fmt: skip
    report["preference"] = json.loads((out / "preference" / "metrics.json").read_text())
    overrides = [f"reward.components.user.model={out / 'preference'}", f"duration_s={args.duration}", *common]
    t["rl"] = musicrl(["train", "--config", "rl/musicrl-u", *overrides, *args.train_set, "--threads", "1"],
                      out / "logs" / "train.log", "RL")  # fmt: skip
    return t


def more_votes(out: Path, n: int) -> int:
    """`--more-votes`: the app of a finished loop again (same store, same models dir), n more round-2 votes."""
    path = out / "loop.json"
    if not path.is_file():
        raise SystemExit(f"[loop] {path} missing: --more-votes continues a finished loop")
    report = json.loads(path.read_text())
    a = report["args"]
    app = loop_app(report["base"], out, "app-more.log", a)
    extra = report.setdefault("more_votes", [])
    try:
        app.start()
        wait_for_final(app, a["timeout"])
        print(f"[loop] {n} more round-2 votes, serving {[m['model'] for m in served(app)]}", flush=True)
        # a new prompt seed per continuation, the same panel of raters
        extra.append(vote_phase(app, n, a["voters"], a["duration"], 3 + len(extra), a["timeout"]))
        report["leaderboard_after"] = leaderboard(app)
    finally:
        app.stop()
    return finish(report, out)


def finish(report: dict, out: Path) -> int:
    """The raters' expectation on every round-2 pair, the verdict, OUT/loop.json and the printout."""
    from musicrl.tiny.simulate import panel_expectation

    a, t = report["args"], report["timings_s"]
    base, run = report["base"], run_dir(out, a.get("route", "rl"))
    all_votes = out / "votes_all.jsonl"
    export_votes(out, all_votes, "export_all")
    report["expected_round2"] = panel_expectation(all_votes, base, a["voters"])
    lb = report["leaderboard_after"]
    rated = {r["model"]: r for r in lb["ratings"]}
    new = next((m["model"] for m in report["served_after"] if m["model_id"] == shown_path(run)), None)
    old = next((m["model"] for m in report["served_after"] if m["model_id"] == base), None)
    both = new in rated and old in rated
    report["retrained_rated_higher"] = bool(both and rated[new]["rating"] > rated[old]["rating"])
    report["retrained_above_base"] = bool(both and rated[new]["ci_low"] > rated[old]["ci_high"])
    if both:
        report["round2_decisive"] = decisive(rated[new])
        report["round2_curve"] = round2_curve(all_votes, new, old)
    (out / "loop.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    if "preference" in report:
        pref = report["preference"].get("val", {})
        print(f"\npreference model: val accuracy {pref.get('accuracy')}, noise ceiling {pref.get('noise_ceiling')}, "
              f"{report['preference'].get('votes_used')} votes used")  # fmt: skip
    print("\n## Leaderboard before (after round 1)\n\n" + show(report["leaderboard_before"]))
    print("\n## Leaderboard after (round 2)\n\n" + show(lb))
    print(f"\ntimings (s): {t}")
    print(f"the panel expects on the round-2 pairs: {report['expected_round2']}")
    if "round2_decisive" in report:
        c = report["round2_curve"]
        print(f"round 2, decisive votes: {report['round2_decisive']}; intervals first apart after "
              f"{c['first_apart']} round-2 votes, apart from {c['apart_from']} on")  # fmt: skip
    print(f"retrained rated higher: {report['retrained_rated_higher']}; above the base with non-overlapping 95% "
          f"intervals: {report['retrained_above_base']}  (report: {out / 'loop.json'})")  # fmt: skip
    return 0 if report["retrained_above_base"] else 1


def decisive(r: dict) -> dict:
    """The retrained model's round-2 record on the leaderboard as a share of the decisive votes (Wilson 95%)."""
    from musicrl.train.evaluate import wilson

    won, lost = r["wins"], r["losses"]
    lo, hi = wilson(won, won + lost)
    return {"won": won, "lost": lost, "ties": r["ties"], "share": round(won / max(1, won + lost), 4),
            "ci95": [round(lo, 4), round(hi, 4)]}  # fmt: skip


def round2_curve(all_votes: Path, new: str, old: str, every: int = CURVE_EVERY) -> dict:
    """Both models' ratings and 95% intervals after every `every` round-2 votes (new against old, in the
    order cast; the leaderboard's own fit on those votes), and when the intervals came apart: first
    (`first_apart`) and for good (`apart_from`: apart at that point and at every later one; None if not)."""
    from musicrl.votes.leaderboard import leaderboard
    from musicrl.votes.store import model_key

    rows = sorted((json.loads(line) for line in all_votes.read_text().splitlines()), key=lambda r: r["vote_id"])
    pairs = [(model_key(r["model_a"], r.get("model_a_version") or ""), model_key(r["model_b"], r.get("model_b_version") or ""),
              r["choice"]) for r in rows]  # fmt: skip
    pairs = [v for v in pairs if {v[0], v[1]} == {new, old}]
    points = []
    for n in sorted({*range(every, len(pairs), every), len(pairs)}):
        rated = {r.model: r for r in leaderboard(pairs[:n]).ratings}
        if {new, old} <= rated.keys():
            x, y = rated[new], rated[old]
            points.append({"votes": n, "retrained": [round(x.rating, 1), round(x.ci_low, 1), round(x.ci_high, 1)],
                           "base": [round(y.rating, 1), round(y.ci_low, 1), round(y.ci_high, 1)],
                           "apart": bool(x.ci_low > y.ci_high)})  # fmt: skip
    first = next((p["votes"] for p in points if p["apart"]), None)
    tail = [p["apart"] for p in points]
    lasting = next((p["votes"] for i, p in enumerate(points) if all(tail[i:])), None)
    return {"every": every, "first_apart": first, "apart_from": lasting, "points": points}


if __name__ == "__main__":
    sys.exit(main())
