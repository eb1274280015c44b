"""The Bradley-Terry preference reward: it learns a planted taste, its tie policies, save/reload, bad input."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from musicrl.tiny import synth
from musicrl.cli import main
from musicrl.errors import UserError
from musicrl.tiny.simulate import Rater, simulate_votes
from musicrl.tiny.clap import save_random_clap
from musicrl.rewards.preference import PreferenceModel, PreferenceReward
from musicrl.rewards.train_preference import (
    PreferenceTrainConfig,
    bt_loss,
    calibration,
    split_by_prompt,
    targets,
    train_preference,
)
from musicrl.votes.rows import VoteRow, load_votes


def _random_clap(path, seed):
    return save_random_clap(path, seed, n_captions=200)  # a small vocabulary is enough for a random model


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return _random_clap(tmp_path_factory.mktemp("clap"), 0)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A rater who only cares for a high register, and a model trained on it, on the shipped tiny CLAP
    (which hears register on 100% of held-out clips: what is tested is the head's learning)."""
    votes_dir = tmp_path_factory.mktemp("votes")
    rater = Rater({"register": {"high": 1.5}}, noise=0.5, seed=0)
    path = simulate_votes(200, rater, 0, votes_dir, duration_s=2.0, clips_per_prompt=4, keep_prob=0.0)
    out = tmp_path_factory.mktemp("pref")
    metrics = train_preference(load_votes(path), out, PreferenceTrainConfig(val_fraction=0.4),
                               backbone="tiny", progress=False)
    return path, out, metrics


def _row(choice, prompt="p"):
    return VoteRow(prompt, None, None, choice)  # type: ignore[arg-type]


def test_recovers_a_planted_preference_near_the_noise_ceiling(planted):
    _, out, m = planted
    val = m["val"]
    assert val["decisive_votes"] >= 25
    assert val["accuracy"] >= 0.8  # chance is 0.5
    assert val["accuracy"] >= val["noise_ceiling"] - 0.12
    assert 0 <= val["ece"] <= 1 and len(val["calibration_bins"]) == 10
    assert (out / "reliability.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text())["val"]["accuracy"] == val["accuracy"]


def test_save_reload_gives_identical_scores_and_batched_equals_one_by_one(planted, clap_dir):
    path, out, _ = planted
    reward = PreferenceReward.from_pretrained(out)
    audio = torch.as_tensor(np.stack([synth.example(i, 2.0).audio for i in range(3)]))[:, None]
    prompts = ["a high piano tune", "low organ", "a high piano tune"]
    batched = reward(audio, synth.SAMPLE_RATE, prompts)
    single = torch.cat([reward(audio[i : i + 1], synth.SAMPLE_RATE, prompts[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    again = PreferenceReward.from_pretrained(out)(audio, synth.SAMPLE_RATE, prompts)
    assert torch.equal(batched, again)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "musicrl-preference" and not config["backbone"].startswith("/")


def test_the_clap_term_is_the_clap_score_with_a_learned_weight(clap_dir):
    """score = MLP([a, t, a * t]) + w * CLAP_SCALE * cos(a, t): with the MLP's output silenced and w = 1,
    the preference score is CLAP_SCALE times the CLAP reward itself."""
    from musicrl.rewards.backbone import load_backbone
    from musicrl.rewards.clap import ClapReward
    from musicrl.rewards.preference import CLAP_SCALE

    clap = load_backbone(clap_dir)
    model = PreferenceModel(clap, str(clap_dir), clap_term=True).eval()
    assert model.head.clap_weight.item() == 0.0  # starts as the MLP alone
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.zero_()
        model.head.clap_weight.fill_(1.0)
    audio = torch.as_tensor(np.stack([synth.example(i, 2.0).audio for i in range(3)]))[:, None]
    prompts = ["a high piano tune", "low organ", "fast drums"]
    expected = CLAP_SCALE * ClapReward.from_pretrained(clap_dir)(audio, synth.SAMPLE_RATE, prompts)
    torch.testing.assert_close(model(audio, synth.SAMPLE_RATE, prompts), expected, atol=1e-5, rtol=0)


def test_the_clap_term_is_trained_saved_and_reloaded(planted):
    from safetensors.torch import load_file

    _, out, _ = planted
    weight = load_file(str(out / "model.safetensors"))["clap_weight"]
    assert weight.item() != 0.0  # trained (it starts at 0)
    assert json.loads((out / "config.json").read_text())["clap_term"] is True
    assert PreferenceModel.from_pretrained(out).head.clap_weight.item() == weight.item()


def test_a_head_saved_before_the_clap_term_still_loads(planted, clap_dir, tmp_path):
    """Directories written before the term existed have no `clap_term` in config.json and no weight
    for it: they load as the plain MLP and score as they did."""
    from musicrl.rewards.backbone import load_backbone

    clap = load_backbone(clap_dir)
    old = PreferenceModel(clap, str(clap_dir), clap_term=False).eval()
    old.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["clap_term"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    loaded = PreferenceModel.from_pretrained(tmp_path / "old", clap=clap)
    assert not loaded.clap_term and not hasattr(loaded.head, "clap_weight")
    audio = torch.as_tensor(np.stack([synth.example(i, 2.0).audio for i in range(2)]))[:, None]
    prompts = ["a high piano tune", "low organ"]
    assert torch.equal(loaded(audio, synth.SAMPLE_RATE, prompts), old(audio, synth.SAMPLE_RATE, prompts))


def test_a_head_refuses_a_different_backbone(planted, tmp_path):
    from musicrl.rewards.backbone import load_backbone

    other = load_backbone(_random_clap(tmp_path / "other", 1))
    with pytest.raises(UserError, match="different CLAP backbone"):
        PreferenceModel.from_pretrained(planted[1], clap=other)


def test_tie_and_both_bad_policies():
    rows = [_row("a"), _row("b"), _row("tie"), _row("both_bad")]
    keep, y = targets(rows, PreferenceTrainConfig())  # ties half, both_bad excluded
    assert keep == [0, 1, 2] and y.tolist() == [1.0, 0.0, 0.5]
    keep, y = targets(rows, PreferenceTrainConfig(ties="drop"))
    assert keep == [0, 1] and y.tolist() == [1.0, 0.0]
    keep, y = targets(rows, PreferenceTrainConfig(both_bad="tie"))
    assert keep == [0, 1, 2, 3] and y.tolist() == [1.0, 0.0, 0.5, 0.5]
    keep, _ = targets(rows, PreferenceTrainConfig(both_bad="tie", ties="drop"))
    assert keep == [0, 1]


def test_bt_loss_is_minus_log_sigmoid_for_wins_and_half_wins_for_ties():
    d = torch.tensor([0.7, -1.2])
    torch.testing.assert_close(bt_loss(d, torch.ones(2)), -torch.nn.functional.logsigmoid(d).mean())
    # a tie is optimal at equal scores: loss log 2, zero gradient
    d0 = torch.zeros(1, requires_grad=True)
    loss = bt_loss(d0, torch.full((1,), 0.5))
    loss.backward()
    assert abs(loss.item() - np.log(2)) < 1e-6 and abs(d0.grad.item()) < 1e-7
    assert bt_loss(torch.tensor([1.0]), torch.tensor([0.5])) > loss


def test_validation_holds_out_whole_prompts():
    prompts = [f"p{i % 10}" for i in range(100)]
    val = split_by_prompt(prompts, 0.2, seed=0)
    assert len(val) == 2 and val <= set(prompts)
    assert split_by_prompt(prompts, 0.2, seed=0) == val and split_by_prompt(prompts, 0.0, 0) == set()
    with pytest.raises(UserError):
        split_by_prompt(["only"] * 5, 0.2, 0)


def test_calibration_error_of_known_predictions():
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.55, 0.55])
    y = np.array([0, 0, 1, 1, 1, 0])
    ece, bins = calibration(p, y)
    assert abs(ece - (2 / 6 * 0.05 + 2 / 6 * 0.05 + 2 / 6 * 0.05)) < 1e-9
    assert [b["n"] for b in bins] == [2, 0, 0, 0, 0, 2, 0, 0, 0, 2]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: {**r, "colour": "red"}, "unknown column"),
        (lambda r: {k: v for k, v in r.items() if k != "choice"}, "missing column"),
        (lambda r: {**r, "choice": "left"}, "bad choice"),
        (lambda r: {**r, "clip_b": "nowhere.wav"}, "clip file missing"),
    ],
)
def test_malformed_votes_are_one_line_user_errors(planted, tmp_path, change, message):
    good = json.loads(planted[0].read_text().splitlines()[0])
    base = planted[0].parent
    good = {**good, "clip_a": str(base / good["clip_a"]), "clip_b": str(base / good["clip_b"])}  # absolute paths
    path = _write(tmp_path / "votes.jsonl", [good, change(good)])
    with pytest.raises(UserError, match=message) as e:
        load_votes(path)
    assert "\n" not in str(e.value)


def test_empty_or_missing_votes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no votes"):
        load_votes(_write(tmp_path / "empty.jsonl", []))
    with pytest.raises(UserError, match="no such votes file"):
        load_votes(tmp_path / "absent.jsonl")
    with pytest.raises(UserError, match="no such vote database"):
        load_votes(f"sqlite:///{tmp_path}/absent.db")


def test_votes_from_a_vote_store(tmp_path):
    from musicrl.votes.store import VoteStore

    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    a, b = (store.add_clip(synth.example(i, 1.0).audio, synth.SAMPLE_RATE, model_id="m", model_version="1",
                           prompt="calm piano", seed=i) for i in range(2))
    store.record_vote(clip_a=a.id, clip_b=b.id, choice="b", session="s1")
    store.close()
    rows = load_votes(f"sqlite:///{tmp_path}/votes.db")
    assert [(r.prompt, r.choice) for r in rows] == [("calm piano", "b")]
    assert rows[0].clip_a.is_file() and rows[0].clip_b.is_file()


def test_cli_exit_code_2_on_bad_votes(tmp_path, capsys):
    bad = _write(tmp_path / "votes.jsonl", [{"prompt": "x", "clip_a": "a.wav", "clip_b": "b.wav", "choice": "meh"}])
    assert main(["train-reward", "preference", "--votes", str(bad), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad choice" in err and len(err.splitlines()) == 1


def test_cli_trains_with_or_without_the_clap_term(planted, clap_dir, tmp_path, capsys):
    path = planted[0]
    for flag, expected in (("--clap-term", True), ("--no-clap-term", False)):
        out = tmp_path / flag
        assert main(["train-reward", "preference", "--votes", str(path), "--out", str(out), "--backbone",
                     str(clap_dir), "--epochs", "2", flag]) == 0
        printed = capsys.readouterr()
        report = json.loads(printed.out[: printed.out.rindex("}") + 1])
        lo, hi = report["val_accuracy_ci95"]  # the held-out accuracy comes with its interval
        assert lo <= report["val_accuracy"] <= hi and hi - lo > 0.1
        assert ("warning: validation has" in printed.err) == (report["val_votes"] < 50)
        assert json.loads((out / "config.json").read_text())["clap_term"] is expected
        assert PreferenceModel.from_pretrained(out).clap_term is expected


REWARDS = Path(__file__).resolve().parents[1] / "rewards"
# what opens the vote database, or reads votes from it: only the commands may, through musicrl.votes.rows
DB_MODULES = ("sqlalchemy", "psycopg", "musicrl.votes.store", "musicrl.votes.schema")
DB_NAMES = {"VoteStore", "load_votes", "load_ratings", "open_engine", "create_engine"}


def _imports(path: Path):
    """(line, module or module.name) of every import in a source file, top-level or inside a function."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module or ""
            yield from ((node.lineno, f"{node.module}.{a.name}") for a in node.names)


def test_reward_modules_never_open_a_database():
    """The reward trainers take rows: no module of the rewards imports (even lazily, inside a
    function) or names what opens the vote database, and importing them all loads none of it."""
    for path in sorted(REWARDS.glob("*.py")):
        for line, module in _imports(path):
            assert not module.startswith(DB_MODULES) and module.split(".")[-1] not in DB_NAMES, (path.name, line)
        names = {getattr(n, "id", getattr(n, "attr", None)) for n in ast.walk(ast.parse(path.read_text()))}
        assert not names & DB_NAMES, (path.name, names & DB_NAMES)
    code = (
        "import importlib, sys; "
        f"[importlib.import_module('musicrl.rewards.' + m) for m in {[p.stem for p in REWARDS.glob('*.py')]!r}]; "
        f"print([m for m in sys.modules if m.startswith({DB_MODULES!r})])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_reward_modules_never_import_the_tiny_world():
    """The tiny world may use the rewards (its quality head's synthetic ratings), never the reverse."""
    for path in sorted(REWARDS.glob("*.py")):
        for line, module in _imports(path):
            assert not module.startswith("musicrl.tiny"), (path.name, line, module)
