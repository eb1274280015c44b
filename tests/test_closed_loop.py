"""The closed loop's judge of round 2 (`musicrl.tiny.simulate.panel_expectation`): what the simulated
panel expects on the stored pairs."""

import json

import numpy as np

from musicrl.tiny.simulate import panel_expectation
from musicrl.tiny import synth
from musicrl.audio import write_wav


def _votes(tmp_path, n: int):
    """n round-2 pairs whose retrained clip has what the prompt asks (and the taste likes: full drums,
    major) and whose base clip has none of it, the retrained side alternating between a and b; plus
    one base-vs-base vote, which is not round 2."""
    rng = np.random.default_rng(0)
    want = dict(tempo="fast", mode="major", register="high", drums="full")
    other = dict(tempo="slow", mode="minor", register="low", drums="none")
    rows = []
    for i in range(n):
        good, bad = synth.sample_attributes(rng, **want), synth.sample_attributes(rng, **other)
        prompt = synth.caption(good, rng, "train")
        paths = []
        for name, attrs in (("good", good), ("bad", bad)):
            path = tmp_path / f"{i}_{name}.wav"
            write_wav(path, synth.render(attrs, 3.0, seed=i), synth.SAMPLE_RATE)
            paths.append(str(path))
        new_is_a = i % 2 == 0  # the retrained model's clip on side a, else on side b
        clip_a, clip_b = paths if new_is_a else paths[::-1]
        model_a, model_b = ("run", "tiny") if new_is_a else ("tiny", "run")
        rows.append({"prompt": prompt, "clip_a": clip_a, "clip_b": clip_b, "model_a": model_a,
                     "model_b": model_b, "choice": "tie"})  # fmt: skip
    rows.append({**rows[0], "model_a": "tiny", "model_b": "tiny"})
    path = tmp_path / "votes_all.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_expected_round2_sees_which_side_the_panel_prefers(tmp_path):
    path = _votes(tmp_path, 6)
    e = panel_expectation(path, "tiny", voters=5)
    assert e["pairs"] == 6  # the base-vs-base vote is not a round-2 pair
    assert e["p_retrained_wins_decisive"] > 0.9  # whichever side the retrained clip is on
    assert e["p_decisive"] == 1.0
    assert e["population_utility"]["retrained"] > e["population_utility"]["base"] + 1.0
    flipped = panel_expectation(path, "run", voters=5)  # now "tiny" is the challenger: the worse clips
    assert flipped["p_retrained_wins_decisive"] < 0.1


def _loop():
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    return importlib.import_module("benchmarks.closed_loop")


def test_dpo_route_trains_po_dpo_on_the_round1_votes_and_serves_its_run(tmp_path, monkeypatch):
    loop = _loop()
    calls = []
    monkeypatch.setattr(loop, "musicrl", lambda args, log, what: calls.append(args) or 1.0)
    args = loop.argparse.Namespace(route="dpo", steps=8, train_set=["lr=1e-5"], reward_set=[], duration=4.0)
    report: dict = {}
    times = loop.train(args, tmp_path, "tiny", "tiny", tmp_path / "votes.jsonl", report)
    assert times == {"dpo": 1.0} and "preference" not in report  # no preference model on this route
    (cmd,) = calls
    assert cmd[:5] == ["train", "--config", "po/dpo", "--votes", str(tmp_path / "votes.jsonl")]
    assert f"out_dir={tmp_path / 'dpo'}" in cmd and "steps=8" in cmd and "model=tiny" in cmd
    assert "checkpoint_every=2" in cmd and cmd.index("lr=1e-5") > cmd.index("steps=8")  # the user's overrides win
    assert loop.run_dir(tmp_path, "dpo") == tmp_path / "dpo" and loop.run_dir(tmp_path, "rl") == tmp_path / "musicrl-u"
    app = loop.loop_app("tiny", tmp_path, "app.log", {"route": "dpo", "reload_every": 5.0})
    cmd = app.cmd
    assert cmd[cmd.index("--models-dir") + 1] == loop.shown_path(tmp_path / "dpo")  # served beside the base
    assert "--paired-seeds" not in cmd
    paired = loop.loop_app("tiny", tmp_path, "app.log", {"route": "dpo", "reload_every": 5.0, "paired_seeds": True})
    assert "--paired-seeds" in paired.cmd  # --more-votes reads it back from loop.json's args


def test_rl_route_trains_the_preference_model_then_rl_on_it(tmp_path, monkeypatch):
    loop = _loop()
    calls = []

    def fake(args, log, what):
        calls.append(args)
        if args[0] == "train-reward":
            (tmp_path / "preference").mkdir()
            (tmp_path / "preference" / "metrics.json").write_text('{"val": {"accuracy": 0.6}}')
        return 1.0

    monkeypatch.setattr(loop, "musicrl", fake)
    args = loop.argparse.Namespace(route="rl", steps=4, train_set=[], reward_set=["--epochs=3"], duration=2.0)
    report: dict = {}
    assert loop.train(args, tmp_path, "tiny", "tiny", tmp_path / "votes.jsonl", report) == {"train_reward": 1.0, "rl": 1.0}
    assert [c[:3] for c in calls] == [["train-reward", "preference", "--votes"], ["train", "--config", "rl/musicrl-u"]]
    assert "--epochs=3" in calls[0] and report["preference"]["val"]["accuracy"] == 0.6
    assert f"reward.components.user.model={tmp_path / 'preference'}" in calls[1] and "duration_s=2.0" in calls[1]


def test_round2_curve_says_when_the_intervals_came_apart(tmp_path):
    loop = _loop()
    # round 1: base against itself (left out); round 2: the new model loses the first 100 votes 50-50,
    # then wins 3 in 4 of the next 300; a vote of the base against another model is left out too
    rows = [("tiny", "tiny", "a")] * 40 + [("run", "tiny", "a" if i % 2 else "b") for i in range(100)]
    rows += [("tiny", "run", "b" if i % 4 else "a") for i in range(300)] + [("tiny", "other", "a")] * 30
    path = tmp_path / "votes_all.jsonl"
    lines = [json.dumps({"vote_id": i, "model_a": a, "model_a_version": "", "model_b": b, "model_b_version": "",
                         "choice": c}) + "\n" for i, (a, b, c) in enumerate(rows)]
    path.write_text("".join(lines[::-1]))  # the curve follows vote ids, not the file's order
    c = loop.round2_curve(path, "run", "tiny")
    assert [p["votes"] for p in c["points"]] == list(range(50, 401, 50))
    assert not c["points"][1]["apart"]  # 50-50 after 100
    assert c["first_apart"] is not None and 100 < c["first_apart"] <= c["apart_from"] <= 400
    last = c["points"][-1]
    assert last["retrained"][1] > last["base"][2] and last["apart"]
    from musicrl.votes.leaderboard import leaderboard

    full = {r.model: r for r in leaderboard([r for r in rows if {r[0], r[1]} == {"run", "tiny"}]).ratings}
    assert last["retrained"][0] == round(full["run"].rating, 1)  # the last point is the leaderboard of all round-2 votes


def test_expected_share_is_what_the_panels_ballots_converge_to():
    from musicrl.tiny.simulate import Panel, expected_share

    rng = np.random.default_rng(3)
    keys = ("tempo", "register", "mode", "drums")  # what raters hear in a model's clip

    def heard():
        return {k: synth.sample_attributes(rng).to_dict()[k] for k in keys}

    pairs = [(synth.caption(synth.sample_attributes(rng), rng, "train"), heard(), heard()) for _ in range(300)]
    panel = Panel.default(5, seed=0)
    e = expected_share(panel, pairs)
    assert e["ci95"][0] < e["share"] < e["ci95"][1] and 0 < e["p_decisive"] < 1
    swapped = expected_share(panel, [(p, b, a) for p, a, b in pairs])
    assert abs(swapped["share"] - (1 - e["share"])) < 1e-3 and swapped["p_decisive"] == e["p_decisive"]
    votes = [panel.ballot(p, None, None, heard=(a, b))[1] for _ in range(30) for p, a, b in pairs]
    realised = votes.count("b") / (votes.count("a") + votes.count("b"))
    assert abs(realised - e["share"]) < 0.02  # 9,000 ballots: a standard error of about 0.006
    assert abs(votes.count("tie") / len(votes) - (1 - e["p_decisive"])) < 0.02
