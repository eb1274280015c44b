"""Simulated raters: utilities from a hidden taste, logistic votes, ties, the noise ceiling, vote files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musicrl.tiny import synth
from musicrl.errors import UserError
from musicrl.model.generator import Clip
from musicrl.tiny.simulate import Panel, Rater, adherence, perceive, simulate_votes


def clip(**fixed) -> synth.Example:
    """A silent clip whose true attributes the raters hear."""
    attrs = synth.sample_attributes(np.random.default_rng(0), **fixed)
    return synth.Example(np.zeros(synth.SAMPLE_RATE, dtype=np.float32), "", attrs, 0)


TASTE = {"mode": {"major": 1.0, "minor": -0.5}, "drums": {"full": 0.25}, "adherence": 2.0}


def test_utility_is_the_taste_plus_prompt_adherence():
    r = Rater(TASTE, noise=0.5)
    c = clip(mode="major", drums="none", tempo="fast", register="low")
    prompt = "a fast melody in a minor key"  # names tempo (kept) and mode (missed)
    assert synth.parse_prompt(prompt) == {"tempo": "fast", "mode": "minor"}
    assert adherence(prompt, perceive(c)) == 0.5
    assert r.utility(c.audio, synth.SAMPLE_RATE, prompt, c.attrs) == pytest.approx(1.0 + 0 + 2.0 * 0.5)
    assert r.utility(c.audio, synth.SAMPLE_RATE, "nothing named", c.attrs) == pytest.approx(1.0)


def test_without_attributes_the_rater_measures_the_audio():
    ex = synth.example(3)
    heard = perceive(ex.audio)  # bare audio: estimators only
    assert set(heard) == {"tempo", "register", "mode", "drums"}
    assert heard["register"] == ex.attrs.register and heard["tempo"] == ex.attrs.tempo
    assert heard["drums"] == ("none" if ex.attrs.drums == "none" else "drums")
    r = Rater({"register": {ex.attrs.register: 1.0}})
    assert r.utility(ex.audio, synth.SAMPLE_RATE, "") == 1.0


def test_drums_heard_without_their_kit():
    """From audio, raters hear whether there are drums, not which kit: such drums are worth the mean
    of the taste's two kits and match a prompt asking for either kit, never one asking for none."""
    from musicrl.tiny.simulate import adherence

    r = Rater({"drums": {"kick-hat": 0.2, "full": 0.6, "none": -1.0}})
    assert r.value({"drums": "drums"}, "") == pytest.approx(0.4)
    assert r.value({"drums": "none"}, "") == -1.0 and r.value({"drums": "full"}, "") == 0.6
    assert adherence("a song with full drums", {"drums": "drums"}) == 1.0
    assert adherence("a song with kick and hi-hat", {"drums": "drums"}) == 1.0
    assert adherence("a song without drums", {"drums": "drums"}) == 0.0
    assert adherence("a song without drums", {"drums": "none"}) == 1.0
    assert adherence("a song with full drums", {"drums": "kick-hat"}) == 0.0  # the truth still tells kits


def test_votes_follow_the_logistic_choice_and_ties():
    a, b = clip(mode="major", drums="none"), clip(mode="minor", drums="none")
    sure = Rater(TASTE, noise=0.0, seed=1)
    assert {sure.vote("", a, b) for _ in range(20)} == {"a"} and sure.vote("", b, a) == "b"
    assert Rater(TASTE, noise=0.7).vote("", a, clip(mode="major", drums="none")) == "tie"
    noisy = Rater(TASTE, noise=0.7, seed=2)
    wins = np.mean([noisy.vote("", a, b) == "a" for _ in range(4000)])
    p = 1 / (1 + np.exp(-1.5 / 0.7))
    assert abs(wins - p) < 4 * np.sqrt(p * (1 - p) / 4000)


def test_noise_ceiling_is_the_mean_of_max_p_over_decisive_pairs():
    r = Rater(TASTE, noise=1.0)
    a, b, c = clip(mode="major", drums="none"), clip(mode="minor", drums="none"), clip(mode="major", drums="full")
    pairs = [("", a, b), ("", b, c), ("", a, a)]  # the last is a tie: excluded
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    expected = np.mean([max(sig(1.5), 1 - sig(1.5)), max(sig(-1.75), 1 - sig(-1.75))])
    assert r.noise_ceiling(pairs) == pytest.approx(expected)
    # raters who disagree: a voter-blind model can do no better than the panel's mean probability
    lover, hater = Rater({"mode": {"major": 1.0}}), Rater({"mode": {"minor": 1.0}})
    assert Panel([lover, hater]).noise_ceiling(pairs[:1]) == pytest.approx(0.5)
    assert lover.noise_ceiling(pairs[:1]) > 0.8


def test_bad_tastes_are_user_errors():
    with pytest.raises(UserError, match="unknown taste attribute"):
        Rater({"colour": {"red": 1.0}})
    with pytest.raises(UserError, match="unknown value"):
        Rater({"mode": {"dorian": 1.0}})
    with pytest.raises(UserError, match="noise"):
        Rater({}, noise=-1)


def test_simulate_votes_writes_a_reproducible_vote_file(tmp_path):
    from musicrl.votes.rows import load_votes

    panel = Panel.default(3, noise=0.5, seed=0)
    path = simulate_votes(10, panel, 7, tmp_path / "a", duration_s=0.5, clips_per_prompt=3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 10 and all(r["choice"] in ("a", "b", "tie") for r in rows)
    assert all(r["p_a"] is None or 0 <= r["p_a"] <= 1 for r in rows) and {r["rater"] for r in rows} <= {0, 1, 2}
    assert len({r["prompt"] for r in rows}) == 4  # 3 pairs per prompt of 3 clips
    loaded = load_votes(path)  # the trainer's own checks: columns, choices, clip files
    assert loaded[0].clip_a.is_file()
    summary = json.loads((tmp_path / "a" / "simulation.json").read_text())
    assert summary["votes"] == 10 and 0.5 <= summary["noise_ceiling"] <= 1
    again = simulate_votes(10, Panel.default(3, noise=0.5, seed=0), 7, tmp_path / "b", duration_s=0.5,
                           clips_per_prompt=3)
    assert again.read_text() == path.read_text()


def test_simulate_votes_cli(tmp_path, capsys):
    from musicrl.cli import main

    assert main(["simulate-votes", "--num", "3", "--out", str(tmp_path), "--duration", "0.5", "--raters", "2"]) == 0
    assert len((tmp_path / "votes.jsonl").read_text().splitlines()) == 3
    assert main(["simulate-votes", "--num", "0", "--out", str(tmp_path)]) == 2


def test_votes_on_a_models_samples_are_judged_from_the_audio(tmp_path, random_musicgen_dir):
    import soundfile as sf

    from musicrl.cli import main

    out = tmp_path / "votes"
    assert main(["simulate-votes", "--num", "4", "--out", str(out), "--duration", "0.5", "--raters", "2",
                 "--clips-per-prompt", "2", "--model", str(random_musicgen_dir)]) == 0
    rows = [json.loads(line) for line in (out / "votes.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and len({r["prompt"] for r in rows}) == 4  # one pair per prompt of 2 clips
    audio, sr = sf.read(out / rows[0]["clip_a"])
    assert sr == 16_000 and len(audio) == 8_000  # the model's 0.5 s, decoded by its codec
    from musicrl.votes.files import read_codes

    assert read_codes(out / rows[0]["codes_a"]).shape == (4, 25) and rows[0]["settings_b"]["guidance_scale"] == 3.0
    summary = json.loads((out / "simulation.json").read_text())
    assert summary["clips_from"] == "model" and summary["keep_prob"] is None


def test_generated_clips_are_written_as_given_and_voted_on(tmp_path):
    import soundfile as sf

    calls = []

    def generate(prompt, n, seed):  # stands in for a model: tones of known pitch, no attributes
        calls.append((prompt, n))
        t = np.arange(8000) / 16_000
        return [Clip((0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32), 16_000) for f in (220.0, 1760.0)][:n]

    path = simulate_votes(3, Panel.default(2, noise=0.5, seed=0), 1, tmp_path, duration_s=0.5,
                          clips_per_prompt=2, generate=generate)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [n for _, n in calls] == [2, 2, 2] and [r["prompt"] for r in rows] == [p for p, _ in calls]
    written = {r[k]: sf.read(tmp_path / r[k])[0] for r in rows for k in ("clip_a", "clip_b")}
    pitch = {k: np.abs(np.fft.rfft(a)).argmax() * 2 for k, a in written.items()}  # Hz (0.5 s: 2 Hz bins)
    assert {round(p) for p in pitch.values()} == {220, 1760}
