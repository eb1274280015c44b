"""Online preference optimisation in the RL trainer (objective=online_dpo, nash_md) and the fast
sampler's geometric mixture (Nash-MD's rival samples), on the random and the shipped tiny MusicGen."""

import copy
import math

import numpy as np
import pytest
import torch

from musicrl.errors import UserError
from musicrl.model.engine import FastSampler, Mixture
from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig, geometric_mixture
from musicrl.train.rl_config import RLConfig
from tests.test_rl import REWARD_CFG, make, token_share_trainer

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["calm piano melody", "fast drums"]
GUIDED = SamplingConfig(top_k=0, guidance_scale=3.0)


@pytest.fixture(scope="module")
def policy_and_reference(random_musicgen_dir):
    """The random policy and a reference that differs from it (its decoder weights perturbed)."""
    policy = MusicGenPolicy.from_pretrained(str(random_musicgen_dir))
    reference = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in reference.model.decoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return policy, reference


def test_geometric_mixture_equals_the_normalised_product_by_brute_force():
    torch.manual_seed(0)
    logp, ref = torch.randn(3, 5).log_softmax(-1), torch.randn(3, 5).log_softmax(-1)
    logp[0, 1] = -torch.inf  # filtered out by the policy (top-k): out of the mixture
    logp = logp.log_softmax(-1)
    for coef in (0.0, 0.3, 0.5, 1.0):
        got = geometric_mixture(logp, ref, coef)
        for i in range(3):
            w = [logp[i, v].exp().item() ** (1 - coef) * ref[i, v].exp().item() ** coef for v in range(5)]
            want = torch.tensor([x / sum(w) for x in w]).log()
            torch.testing.assert_close(got[i], want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampling", [GUIDED, SamplingConfig(top_k=0, guidance_scale=1.0, temperature=0.8)])
def test_the_mixture_sampler_draws_each_token_from_the_normalised_geometric_mixture(policy_and_reference, sampling):
    """At every position of every row, the log-prob the sampler reports for its token (the one
    its Gumbel draw used) equals the brute-force mixture of the two models' full teacher-forced
    distributions there: (p^(1-c) q^c / sum over the codebook), computed from probabilities."""
    policy, reference = policy_and_reference
    coef = 0.3
    roll = FastSampler(policy).sample(PROMPTS, 3, num_frames=8, sampling=sampling, seed=5, mixture=Mixture(reference, coef))
    with torch.no_grad():
        p = policy.distributions(roll.prompts, roll.codes, sampling).exp()  # [B, K, T, V]
        q = reference.distributions(roll.prompts, roll.codes, sampling).exp()
    w = p ** (1 - coef) * q**coef
    want = (w / w.sum(-1, keepdim=True)).log().gather(-1, roll.codes[..., None])[..., 0]  # [B, K, T]
    torch.testing.assert_close(roll.log_probs, want, atol=1e-4, rtol=0)
    own = p.log().gather(-1, roll.codes[..., None])[..., 0]
    assert (roll.log_probs - own).abs().max() > 1e-2  # and not the policy's own


def test_mixture_coef_0_is_the_policys_samples_and_1_the_references(policy_and_reference):
    policy, reference = policy_and_reference
    draw = lambda pol, mixture=None: FastSampler(pol).sample(PROMPTS, 2, num_frames=8, sampling=GUIDED, seed=3,
                                                            mixture=mixture)  # fmt: skip
    own, ref = draw(policy), draw(reference)
    assert not torch.equal(own.codes, ref.codes)
    for mixed, alone in ((draw(policy, Mixture(reference, 0.0)), own), (draw(policy, Mixture(reference, 1.0)), ref)):
        assert torch.equal(mixed.codes, alone.codes) and torch.equal(mixed.log_probs, alone.log_probs)
    with pytest.raises(UserError, match="mixture_coef must be in"):
        Mixture(reference, 1.5)


def test_with_lora_the_mixtures_reference_is_the_policy_with_its_adapters_off(tmp_path, random_musicgen_dir):
    tr = make(tmp_path, random_musicgen_dir, objective="nash_md", lora_rank=4)
    with torch.no_grad():  # LoRA starts as the identity: move the adapters so that the two differ
        for n, p in tr.policy.model.decoder.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    sampler = FastSampler(tr.policy)
    with tr.policy.model.decoder.disable_adapter():
        base = sampler.sample(PROMPTS, 2, num_frames=8, sampling=GUIDED, seed=3)
    adapted = sampler.sample(PROMPTS, 2, num_frames=8, sampling=GUIDED, seed=3)
    mixed = sampler.sample(PROMPTS, 2, num_frames=8, sampling=GUIDED, seed=3, mixture=Mixture(None, 1.0))
    assert not torch.equal(base.codes, adapted.codes)
    assert torch.equal(mixed.codes, base.codes) and torch.equal(mixed.log_probs, base.log_probs)
    assert torch.equal(sampler.sample(PROMPTS, 2, num_frames=8, sampling=GUIDED, seed=3).codes, adapted.codes)  # adapters back on


def test_online_dpo_loss_at_step_zero_is_ln2(tmp_path, random_musicgen_dir):
    tr = make(tmp_path, random_musicgen_dir, objective="online_dpo", beta=0.5)
    m = tr.step(0)  # the batch's loss before its update: policy == reference
    assert m["loss"] == pytest.approx(math.log(2), abs=1e-6) and m["kl"] == pytest.approx(0, abs=1e-7)
    m2 = tr.step(1)
    assert m2["kl"] > 0 and m2["loss"] != pytest.approx(math.log(2), abs=1e-4)


def test_nash_md_step_logs_the_preference_over_the_mixture(tmp_path, random_musicgen_dir):
    tr = make(tmp_path, random_musicgen_dir, objective="nash_md", mixture_coef=0.5)
    before = [p.detach().clone() for p in tr.trained]
    m = tr.step(0)
    assert 0 < m["preference"] < 1 and math.isfinite(m["reward_rival"]) and m["kl"] == pytest.approx(0, abs=1e-7)
    assert any(not torch.equal(b, p) for b, p in zip(before, tr.trained))


@pytest.mark.parametrize("objective, kw", [("online_dpo", {}), ("nash_md", {}), ("nash_md", {"kl_estimator": "sampled", "lora_rank": 4})])
def test_resume_equals_uninterrupted(tmp_path, random_musicgen_dir, objective, kw):
    full = make(tmp_path / "a", random_musicgen_dir, objective=objective, **kw)
    full.train(progress=False)
    make(tmp_path / "b", random_musicgen_dir, objective=objective, **kw).train(progress=False, stop_after=1)  # "killed" after step 1
    resumed = make(tmp_path / "b", random_musicgen_dir, objective=objective, **kw)
    resumed.train(resume=True, progress=False)
    a, b = full.policy.model.decoder.state_dict(), resumed.policy.model.decoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "b" / "run" / "final" / "config.json").exists()


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"objective": "ppo"}, "objective must be 'reward', 'online_dpo' or 'nash_md'"),
        ({"objective": "online_dpo", "samples_per_prompt": 4}, "needs samples_per_prompt=2"),
        ({"objective": "online_dpo", "samples_per_prompt": 2, "grad_accum": 2, "prompts_per_step": 3}, "divisible by grad_accum"),
        ({"objective": "nash_md", "engine": "reference"}, "set engine=fast"),
        ({"objective": "nash_md", "mixture_coef": 1.5}, "mixture_coef in [0, 1]"),
        ({"objective": "nash_md", "beta": 0.0}, "beta must be > 0"),
    ],
)
def test_bad_objective_settings_are_one_line_errors(kw, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RLConfig(reward=REWARD_CFG, **kw)
    assert RLConfig(reward=REWARD_CFG, objective="nash_md", samples_per_prompt=1).samples_per_prompt == 1  # no RLOO needed


@pytest.mark.parametrize("objective", ["online_dpo", "nash_md"])
def test_a_few_steps_raise_a_token_toy_preference(tmp_path, objective):
    """test_rl.py's toy, as a preference: a clip's score is 10 x the share of its frames whose
    first-codebook token lies in a chosen set (~0.15 for the tiny LM), and P(a > b) =
    sigmoid(score(a) - score(b)). A dozen steps must raise the policy's share. (8 rows a step: with
    4, the reward objective's RLOO wanders off too, at these settings.)"""
    prompts = ["a fast major piano melody, high register", "slow minor organ tune, low pitched",
               "calm guitar in a major key", "loud drums and bass"]  # fmt: skip
    cfg = RLConfig(reward=REWARD_CFG, model="tiny", out_dir=str(tmp_path / "run"), steps=12, prompts_per_step=4,
                   samples_per_prompt=2, duration_s=0.5, guidance_scale=1.0, lr=2e-3, kl_coef=0.0, beta=0.1,
                   mixture_coef=0.5, objective=objective, eval_every=100, checkpoint_every=100, device="cpu")  # fmt: skip
    tr = token_share_trainer(cfg, prompts, scale=10)
    r = [tr.step(s)["reward/share"] / 10 for s in range(cfg.steps)]
    assert r[0] < 0.3, r
    assert np.mean(r[-3:]) > 0.6, r  # measured: 0.17 -> 0.86 (online DPO), 0.17 -> 0.90 (Nash-MD)
