"""The prompt contrast of the RL trainer: counterfactual prompts, the reward's preference between two
texts on one clip, and an update that moves log pi(y|x) - log pi(y|x') the way the reward says."""

import pytest
import torch

from musicrl.errors import UserError
from musicrl.rewards.combine import WeightedReward
from musicrl.tiny import synth
from musicrl.tiny.prompts import flip_attribute, resolve_prompts
from musicrl.train.rl_config import RLConfig
from musicrl.train.rl_trainer import RLTrainer, step_seed

PROMPTS = ["a happy piano tune, high register", "a sad piano tune, high register",
           "a fast happy organ melody", "a slow sad organ melody"]  # fmt: skip


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


def mood(audio, sample_rate, prompts):  # [B]: +1 for a happy prompt, -1 for a sad one, whatever the clip
    return torch.tensor([1.0 if synth.parse_prompt(p).get("mode") == "major" else -1.0 for p in prompts])


def make(tmp_path, policy_dir, contrast=flip_attribute, **kw):
    from musicrl.model.policy import MusicGenPolicy

    cfg = dict(reward={"components": {"clap": {}}}, model=str(policy_dir), out_dir=str(tmp_path / "run"), steps=2,
               prompts_per_step=4, samples_per_prompt=2, duration_s=0.2, lr=1e-3, kl_coef=0.0, eval_every=100,
               checkpoint_every=100, device="cpu", contrast_coef=1.0, contrast_prompts="flip")  # fmt: skip
    cfg = RLConfig(**{**cfg, **kw})
    reward = WeightedReward({"mood": mood}, {"mood": 1.0}, normalize=True)
    policy = MusicGenPolicy.from_pretrained(str(policy_dir))
    return RLTrainer(cfg, PROMPTS, PROMPTS, policy=policy, reward=reward, contrast=lambda p: flip_attribute(p, "mode"))


def test_the_preference_is_the_rewards_between_the_two_texts_and_leaves_its_statistics_alone(tmp_path, random_musicgen_dir):
    tr = make(tmp_path, random_musicgen_dir)
    audio = torch.zeros(4, 1, 100)
    reward, _ = tr.reward(audio, 16_000, PROMPTS)
    count = tr.reward.norms["mood"].count
    alts, pref = tr.contrast_preference(audio, reward, PROMPTS)
    assert alts == [flip_attribute(p, "mode") for p in PROMPTS]
    assert pref.tolist() == [1.0, -1.0, 1.0, -1.0]  # a happy prompt's clip fits 'happy' better under this reward
    assert tr.reward.norms["mood"].count == count and tr.reward.training  # frozen for the contrast, then back


def test_an_update_moves_the_log_ratio_between_the_two_prompts_the_way_the_reward_prefers(tmp_path, random_musicgen_dir):
    """The reward depends on the prompt only, so every RLOO advantage is 0 and the update is the
    contrast's alone: after it, log pi(y|x) - log pi(y|x') (against the reference) has the sign of the
    reward's preference on the very clips of the step."""
    tr = make(tmp_path, random_musicgen_dir, contrast_coef=10.0)
    cfg = tr.cfg
    metrics = tr.step(0)
    assert metrics["contrast/decisive"] == 1.0 and metrics["contrast/own_wins"] == 0.5
    roll = tr.reference.sample(tr.prompts_for(0), cfg.samples_per_prompt, cfg.duration_s, sampling=cfg.sampling,
                               seed=step_seed(cfg.seed, 0))  # the step's clips: sampled by the weights before the update
    alts = [flip_attribute(p, "mode") for p in roll.prompts]
    with torch.no_grad():
        def ratio(model, prompts):
            return model.log_probs(prompts, roll.codes, cfg.sampling).sum((1, 2))

        margin = (ratio(tr.policy, roll.prompts) - ratio(tr.reference, roll.prompts)) - (ratio(tr.policy, alts) - ratio(tr.reference, alts))
    pref = mood(None, 0, roll.prompts)
    assert (pref * margin).mean() > 0
    assert ((pref * margin) > 0).float().mean() >= 0.75, (pref, margin)


def test_batch_contrast_is_the_next_prompt_of_the_step(tmp_path, random_musicgen_dir):
    tr = make(tmp_path, random_musicgen_dir, contrast_prompts="batch")
    assert tr.contrast_prompts_of(["a", "a", "b", "b", "c", "c"]) == ["b", "b", "c", "c", "a", "a"]


def test_contrast_settings_are_checked(tmp_path, random_musicgen_dir):
    with pytest.raises(UserError, match="contrast_prompts must be 'batch' or 'flip'"):
        RLConfig(reward={"components": {"clap": {}}}, contrast_prompts="swap")
    with pytest.raises(UserError, match="contrast_coef must be >= 0"):
        RLConfig(reward={"components": {"clap": {}}}, contrast_coef=-1.0)
    with pytest.raises(UserError, match="prompts_per_step >= 2"):
        RLConfig(reward={"components": {"clap": {}}}, contrast_coef=1.0, prompts_per_step=1)
    with pytest.raises(UserError, match="needs a flip function"):
        from musicrl.model.policy import MusicGenPolicy

        cfg = RLConfig(reward={"components": {"clap": {}}}, model=str(random_musicgen_dir), contrast_coef=1.0,
                       contrast_prompts="flip", device="cpu")  # fmt: skip
        RLTrainer(cfg, PROMPTS, PROMPTS, policy=MusicGenPolicy.from_pretrained(str(random_musicgen_dir)),
                  reward=WeightedReward({"mood": mood}, {"mood": 1.0}))  # fmt: skip
