"""Reward combination: running normalisation, weighted sums, the sequential schedule, configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicrl.errors import UserError
from musicrl.presets import load_yaml
from musicrl.rewards.combine import (
    RunningNorm,
    SequentialReward,
    WeightedReward,
    build_reward,
    parse_config,
)

MUSICRL_R = {"components": {"clap": {"type": "clap"}, "quality": {"type": "quality"}}}
USER = {"components": {"user": {"type": "preference", "model": "some/dir"}}}


def loudness(audio, sr, prompts):  # a pure fake reward: mean |x| per clip
    return audio.abs().mean(dim=(1, 2))


def length_of_prompt(audio, sr, prompts):
    return torch.tensor([float(len(p)) for p in prompts])


def test_running_norm_matches_the_whole_stream():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, n) for n in (1, 7, 50, 3)]
    norm = RunningNorm()
    for c in chunks:
        norm.update(torch.tensor(c))
    allx = np.concatenate(chunks)
    assert norm.count == len(allx)
    assert norm.mean == pytest.approx(allx.mean(), abs=1e-12) and norm.std == pytest.approx(allx.std(), abs=1e-12)
    x = torch.tensor([1.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(norm(x), (x - allx.mean()) / allx.std())
    fresh = RunningNorm()
    fresh.load_state_dict(norm.state_dict())
    torch.testing.assert_close(fresh(x), norm(x))
    assert torch.equal(RunningNorm()(x), x)  # nothing seen yet: unchanged


def test_weighted_sum_of_normalised_components_and_raw_logging():
    w = WeightedReward({"loud": loudness, "len": length_of_prompt}, {"loud": 2.0, "len": -0.5})
    audio = torch.randn(4, 1, 100, generator=torch.Generator().manual_seed(0))
    prompts = ["a", "bb", "ccc", "dddd"]
    total, comps = w(audio, 16000, prompts)
    assert set(comps) == {"loud", "len"}
    torch.testing.assert_close(comps["len"], torch.tensor([1.0, 2.0, 3.0, 4.0]))  # raw, for logging
    z = lambda v: (v - v.mean()) / v.std(unbiased=False)  # noqa: E731
    torch.testing.assert_close(total, 2.0 * z(comps["loud"]) - 0.5 * z(comps["len"]), atol=1e-5, rtol=0)


def test_eval_freezes_statistics_and_is_pure():
    w = WeightedReward({"loud": loudness}, {"loud": 1.0})
    gen = torch.Generator().manual_seed(1)
    w(torch.randn(8, 1, 50, generator=gen), 16000, [""] * 8)
    before = w.state_dict()
    w.eval()
    audio = torch.randn(3, 1, 50, generator=gen)
    batched, _ = w(audio, 16000, [""] * 3)
    single = torch.cat([w(audio[i : i + 1], 16000, [""])[0] for i in range(3)])
    torch.testing.assert_close(batched, single)
    assert w.state_dict() == before
    w.train()
    w(audio, 16000, [""] * 3)
    assert w.state_dict() != before


def test_unnormalised_sum_is_the_plain_weighted_sum():
    w = WeightedReward({"loud": loudness, "len": length_of_prompt}, {"loud": 3.0, "len": 1.0}, normalize=False)
    audio = torch.ones(2, 1, 10)
    total, _ = w(audio, 16000, ["ab", "abc"])
    torch.testing.assert_close(total, torch.tensor([5.0, 6.0]))


def test_sequential_schedule_switches_at_the_step():
    r = WeightedReward({"loud": loudness}, {"loud": 1.0}, normalize=False)
    u = WeightedReward({"len": length_of_prompt}, {"len": 1.0}, normalize=False)
    seq = SequentialReward([(r, 10), (u, None)])
    audio = torch.ones(1, 1, 10)
    seq.set_step(9)
    assert seq.stage_index() == 0 and set(seq(audio, 16000, ["abc"])[1]) == {"loud"}
    seq.set_step(10)
    total, comps = seq(audio, 16000, ["abc"])
    assert seq.stage_index() == 1 and set(comps) == {"len"} and total.item() == 3.0
    assert seq.stage_index(10**6) == 1
    state = seq.state_dict()
    other = SequentialReward([(WeightedReward({"loud": loudness}, {"loud": 1.0}), 10),
                              (WeightedReward({"len": length_of_prompt}, {"len": 1.0}), None)])
    other.load_state_dict(state)
    assert other.step == 10


def test_the_shipped_presets_rewards_build_and_a_sequential_schedule_switches_stage():
    fakes = {"clap": loudness, "quality": loudness, "user": length_of_prompt}
    r = build_reward(load_yaml("rl/musicrl-r")["reward"], rewards=fakes)
    assert isinstance(r, WeightedReward) and set(r.weights) == {"clap", "quality"} and r.normalize
    u = build_reward(load_yaml("rl/musicrl-u")["reward"], rewards=fakes)
    assert isinstance(u, WeightedReward) and set(u.weights) == {"user"}
    ru = build_reward({"kind": "sequential", "stages": [{"steps": 500, "reward": MUSICRL_R}, {"reward": USER}]}, rewards=fakes)
    assert isinstance(ru, SequentialReward) and ru.bounds == [500]
    assert set(ru.stages[1].rewards) == {"user"}


@pytest.mark.parametrize(
    "config, message",
    [
        ({"kind": "mixture"}, "kind"),
        ({"components": {"clap": {"wieght": 1}}}, "unknown key"),
        ({"components": {"mood": {}}}, "type must be one of"),
        ({"components": {}}, "non-empty"),
        ({"components": {"clap": {"weight": "heavy"}}}, "weight must be a number"),
        ({"kind": "sequential", "stages": [{"reward": MUSICRL_R}, {"reward": MUSICRL_R}]}, "needs steps"),
        ({"kind": "sequential", "stages": [{"steps": 0, "reward": MUSICRL_R}]}, "positive integer"),
    ],
)
def test_bad_configs_are_one_line_user_errors(config, message):
    with pytest.raises(UserError, match=message) as e:
        parse_config(config)
    assert "\n" not in str(e.value)


def test_loaded_components_share_one_clap_backbone(tmp_path):
    from transformers import ClapModel

    from musicrl.tiny import synth
    from musicrl.tiny.clap import tiny_clap_config, tiny_feature_extractor, tiny_tokenizer
    from musicrl.rewards.backbone import load_backbone
    from musicrl.rewards.quality import QualityModel

    torch.manual_seed(0)
    clap_dir = tmp_path / "clap"
    tokenizer = tiny_tokenizer(n_captions=200)
    ClapModel(tiny_clap_config(len(tokenizer))).save_pretrained(clap_dir)
    tokenizer.save_pretrained(clap_dir)
    tiny_feature_extractor().save_pretrained(clap_dir)
    QualityModel(load_backbone(clap_dir), str(clap_dir)).save_pretrained(tmp_path / "quality")
    config = {"components": {"clap": {"model": str(clap_dir)}, "quality": {"model": str(tmp_path / "quality")}}}
    w = build_reward(config)
    assert w.rewards["quality"].model.clap is w.rewards["clap"]
    w.eval()
    audio = torch.as_tensor(np.stack([synth.example(i, 1.0).audio for i in range(2)]))[:, None]
    total, comps = w(audio, synth.SAMPLE_RATE, ["slow piano", "fast organ"])
    assert total.shape == (2,) and ((comps["quality"] >= 1) & (comps["quality"] <= 5)).all()
    assert ((comps["clap"] >= -1) & (comps["clap"] <= 1)).all()


@pytest.mark.parametrize("kind", ["preference", "quality"])
def test_a_reward_model_not_trained_yet_is_a_one_line_error_that_names_the_key(tmp_path, kind):
    """A preset names its reward models at runs/...; a new user has none there yet. The error says
    which component, that the directory is missing, how to make one and which key takes it."""
    missing = tmp_path / "runs" / f"{kind}-larger-clap"
    with pytest.raises(UserError) as e:
        build_reward({"components": {"r": {"type": kind, "model": str(missing)}}})
    text = str(e.value)
    assert "\n" not in text and f"no {kind} model at {missing} (no such directory)" in text
    assert f"musicrl train-reward {kind}" in text and "reward.components.r.model=DIR" in text
