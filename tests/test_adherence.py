"""The tiny world's adherence measure, the oracle adherence reward built on it, and counterfactual
prompts (one attribute flipped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicrl.tiny import synth
from musicrl.tiny.adherence import ATTRIBUTES, AdherenceReward, heard_matches
from musicrl.tiny.attributes import estimate_all
from musicrl.tiny.prompts import flip_attribute, resolve_prompts

DRUM_WORDS = {"none": "no drums", "kick-hat": "kick and hat drums", "full": "full drums"}
OTHER = {"tempo": {"slow": "fast", "medium": "slow", "fast": "medium"}, "register": {"low": "high", "high": "low"},
         "mode": {"major": "minor", "minor": "major"}, "drums": {"none": "full", "kick-hat": "none", "full": "none"}}


def prompt_for(values: dict[str, str]) -> str:
    tempo = "medium tempo" if values["tempo"] == "medium" else values["tempo"]
    return f"a {tempo} piece in a {values['mode']} key, {values['register']} register, {DRUM_WORDS[values['drums']]}"


def clips_heard_as_made(n: int) -> list[synth.Example]:
    """Corpus clips whose four attributes the estimators hear as rendered (nearly all of them)."""
    out, seed = [], 0
    while len(out) < n:
        e = synth.example(seed, 3.0)
        heard, truth = estimate_all(e.audio, synth.SAMPLE_RATE), e.attrs.to_dict()
        if all(heard[a] == truth[a] or (a == "drums" and heard[a] == "drums" and truth[a] != "none") for a in ATTRIBUTES):
            out.append(e)
        seed += 1
    assert seed < 2 * n  # the estimators hear clean renders right almost always
    return out


def test_oracle_reward_counts_exactly_the_matched_attributes():
    clips = clips_heard_as_made(10)
    prompts, expected = [], []
    for i, e in enumerate(clips):
        truth = e.attrs.to_dict()
        wrong = ATTRIBUTES[: i % 5]  # ask for another value of the first 0..4 attributes
        asked = {a: OTHER[a][truth[a]] if a in wrong else truth[a] for a in ATTRIBUTES}
        assert synth.parse_prompt(prompt_for(asked)) == asked  # the prompt names what we meant
        prompts.append(prompt_for(asked))
        expected.append(4 - len(wrong))  # all four count by default
    audio = torch.as_tensor(np.stack([e.audio for e in clips]))[:, None]  # [B, 1, S]
    assert AdherenceReward()(audio, synth.SAMPLE_RATE, prompts).tolist() == expected
    three = AdherenceReward(("tempo", "register", "mode"))(audio, synth.SAMPLE_RATE, prompts)
    assert three.tolist() == [3 - len(set(ATTRIBUTES[: i % 5]) - {"drums"}) for i in range(10)]
    only_mode = AdherenceReward(("mode",))(audio, synth.SAMPLE_RATE, prompts)
    assert only_mode.tolist() == [float("mode" not in ATTRIBUTES[: i % 5]) for i in range(10)]
    weighted = AdherenceReward({"tempo": 2.0, "mode": 0.5})(audio, synth.SAMPLE_RATE, prompts)
    assert weighted.tolist() == [2.0 * ("tempo" not in ATTRIBUTES[: i % 5]) + 0.5 * ("mode" not in ATTRIBUTES[: i % 5])
                                 for i in range(10)]  # fmt: skip


def test_only_named_attributes_count_and_unknown_ones_are_refused():
    e = clips_heard_as_made(1)[0]
    named = heard_matches(f"a {e.attrs.mode} melody", e.audio, synth.SAMPLE_RATE)
    assert named == {"mode": True}
    assert heard_matches("a melody", e.audio, synth.SAMPLE_RATE) == {}
    from musicrl.errors import UserError

    with pytest.raises(UserError, match="unknown attributes"):
        AdherenceReward(("timbre",))


def test_the_oracle_preset_builds_its_reward_from_the_tiny_world_and_only_there():
    from musicrl.errors import UserError
    from musicrl.presets import load_yaml
    from musicrl.rewards.combine import WeightedReward, build_reward
    from musicrl.tiny.adherence import oracle_rewards

    cfg = load_yaml("rl/oracle-adherence")["reward"]
    given = oracle_rewards(cfg)
    assert set(given) == {"adherence"} and isinstance(given["adherence"], AdherenceReward)
    reward = build_reward(cfg, rewards=given)
    assert isinstance(reward, WeightedReward) and reward.rewards["adherence"] is given["adherence"] and not reward.normalize
    with pytest.raises(UserError, match="tiny world's oracle"):  # the core cannot build it by itself
        build_reward(cfg)
    staged = {"kind": "sequential", "stages": [{"steps": 5, "reward": {"components": {"clap": {}}}}, {"reward": cfg}]}
    assert set(oracle_rewards(staged)) == {"adherence"}
    assert oracle_rewards(cfg)["adherence"].points == dict.fromkeys(ATTRIBUTES, 1.0)  # no points: all four, one each


def test_an_adherence_components_points_choose_and_weigh_its_attributes():
    from musicrl.errors import UserError
    from musicrl.presets import apply_overrides, load_yaml
    from musicrl.tiny.adherence import oracle_rewards

    preset = load_yaml("rl/oracle-adherence")
    weighted = apply_overrides(preset, ["reward.components.adherence.points={tempo: 2, mode: 1}"])["reward"]
    assert oracle_rewards(weighted)["adherence"].points == {"tempo": 2.0, "mode": 1.0}
    listed = apply_overrides(preset, ["reward.components.adherence.points=[tempo, register]"])["reward"]
    assert oracle_rewards(listed)["adherence"].points == {"tempo": 1.0, "register": 1.0}
    for bad, msg in (("{timbre: 1}", "unknown attributes"), ("{tempo: fast}", "mapping of attribute -> number"), ("{}", "non-empty")):
        with pytest.raises(UserError, match=msg):
            oracle_rewards(apply_overrides(preset, [f"reward.components.adherence.points={bad}"])["reward"])
    clap = {"components": {"clap": {"points": ["tempo"]}}}
    with pytest.raises(UserError, match="only a component of type 'adherence' has points"):
        oracle_rewards(clap)


def test_adherence_report_rates_changes_and_plot(tmp_path):
    from musicrl.tiny.adherence import adherence_report, plot_adherence
    from musicrl.train.evaluate import Samples

    clips = clips_heard_as_made(4)
    prompts = [prompt_for(e.attrs.to_dict()) for e in clips]  # every clip has all it is asked for
    audio = torch.as_tensor(np.stack([e.audio for e in clips]))[:, None]  # [4, 1, S]
    codes = torch.zeros(4, 4, 5, dtype=torch.long)
    worse = audio.clone()
    worse[:2] = torch.as_tensor(np.stack([e.audio for e in clips[2:]]))[:, None]  # clips 0, 1: another clip's audio
    report = adherence_report([Samples("A", prompts, codes, audio, synth.SAMPLE_RATE),
                               Samples("B", prompts, codes, worse, synth.SAMPLE_RATE)])  # fmt: skip
    assert all(r["rate"] == 1.0 and r["clips"] == 4 for r in report["rates"]["A"].values())
    assert report["mean"]["A"] == 1.0
    change = report["change"]["B over A"]
    assert all(-0.5 <= c["diff"] <= 0 for a, c in change.items() if a != "mean_rise") and change["mean_rise"] < 0
    png = plot_adherence(report, tmp_path / "a.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == round((1.6 + 1.5 * 4) * 110)


def test_flip_attribute_changes_exactly_one_named_attribute():
    prompts = resolve_prompts("synth")[:400]
    flipped = {}
    for p in prompts:
        q = flip_attribute(p)
        a, b = synth.parse_prompt(p), synth.parse_prompt(q)
        changed = [k for k in a if a[k] != b[k]]
        assert set(a) == set(b) and len(changed) == 1 and changed[0] in ("tempo", "mode", "register", "drums"), (p, q)
        flipped[changed[0]] = flipped.get(changed[0], 0) + 1
    assert set(flipped) == {"tempo", "mode", "register", "drums"}  # each attribute gets flipped
    assert flip_attribute(prompts[0]) == flip_attribute(prompts[0])  # deterministic
    sad = flip_attribute("a happy piano tune, high register", "mode")
    assert sad.startswith("a ") and sad.endswith(" piano tune, high register") and synth.parse_prompt(sad)["mode"] == "minor"
    assert synth.parse_prompt(flip_attribute("a happy piano tune, high register", "register"))["register"] == "low"
    assert flip_attribute("a piano tune") is None  # names none of the four
    assert flip_attribute("a happy piano tune", "tempo") is None
