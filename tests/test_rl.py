"""The RL trainer on a random tiny MusicGen with a cheap, pure reward."""

import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from musicrl.errors import UserError
from musicrl.train.checkpoints import latest_checkpoint
from musicrl.tiny.prompts import resolve_prompts, rl_prompts
from musicrl.train.rl_config import RLConfig
from musicrl.train.rl_trainer import RLTrainer, exact_kl
from musicrl.rewards.combine import WeightedReward

REWARD_CFG = {"components": {"clap": {}}}  # validated only; the tests pass the reward object itself


def loudness(audio, sample_rate, prompts):  # [B,1,S] -> [B]: a pure function of the audio
    return audio.pow(2).mean((1, 2))


def make(tmp_path, policy_dir, device="cpu", **kw):
    from musicrl.model.policy import MusicGenPolicy

    cfg = RLConfig(reward=REWARD_CFG, model=str(policy_dir), out_dir=str(tmp_path / "run"), steps=2,
                   prompts_per_step=2, samples_per_prompt=2, duration_s=0.2, lr=1e-3, eval_every=100,
                   checkpoint_every=1, eval_prompts_count=2, device=device, **kw)  # fmt: skip
    policy = MusicGenPolicy.from_pretrained(str(policy_dir), device=device)
    return RLTrainer(cfg, *rl_prompts(cfg), policy=policy, reward=WeightedReward({"loud": loudness}, {"loud": 1.0}))


def decoder_params(trainer):
    return {k: v.detach().clone() for k, v in trainer.policy.model.decoder.state_dict().items()}


def test_one_step_changes_trainable_params_with_finite_loss(tmp_path, random_musicgen_dir):
    tr = make(tmp_path, random_musicgen_dir)
    before = decoder_params(tr)
    text_before = {k: v.clone() for k, v in tr.policy.model.text_encoder.state_dict().items()}
    m = tr.step(0)
    assert all(torch.isfinite(torch.tensor(m[k])) for k in ("loss", "kl", "entropy", "reward"))
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    after = decoder_params(tr)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(v, tr.policy.model.text_encoder.state_dict()[k]) for k, v in text_before.items())
    m2 = tr.step(1)
    assert m2["kl"] > 0  # the policy has moved away from the reference
    assert set(m2) >= {"reward/loud", "time/rollout", "time/decode", "time/reward", "time/update"}


def test_cpu_steps_log_no_memory_peak(tmp_path, random_musicgen_dir):
    assert "mem/peak_gib" not in make(tmp_path, random_musicgen_dir).step(0)  # CUDA's counter only


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_a_cuda_step_in_bf16_logs_its_peak_memory(tmp_path, random_musicgen_dir, lora_rank):
    tr = make(tmp_path, random_musicgen_dir, device="cuda", mixed_precision="bf16", gradient_checkpointing=True, lora_rank=lora_rank)
    weights = sum(p.numel() * p.element_size() for p in tr.policy.model.parameters()) / 2**30
    before = [p.detach().clone() for p in tr.trained]
    m = tr.step(0)
    assert torch.isfinite(torch.tensor(m["loss"])) and m["kl"] == pytest.approx(0.0, abs=1e-3)
    assert any(not torch.equal(b, p) for b, p in zip(before, tr.trained))
    # full: the policy and its reference copy are both resident; LoRA: one network, adapters off for the reference
    assert m["mem/peak_gib"] >= (2 if lora_rank == 0 else 1) * weights


def test_exact_kl_matches_brute_force():
    torch.manual_seed(0)
    p = torch.randn(2, 3, 5).log_softmax(-1)
    q = torch.randn(2, 3, 5).log_softmax(-1)
    brute = torch.zeros(2, 3)
    for i in range(2):
        for j in range(3):
            brute[i, j] = sum(p[i, j, v].exp() * (p[i, j, v] - q[i, j, v]) for v in range(5))
    torch.testing.assert_close(exact_kl(p, q), brute)
    # zero-probability tokens of p contribute nothing (no NaN from 0 * -inf)
    p_masked = p.clone()
    p_masked[..., 0] = -torch.inf
    p_masked = p_masked.log_softmax(-1)
    assert torch.isfinite(exact_kl(p_masked, q)).all()


def test_rloo_advantages(tmp_path, random_musicgen_dir):
    tr = make(tmp_path, random_musicgen_dir, normalize_advantages="none")
    adv = tr.advantages(torch.tensor([1.0, 3.0, 10.0, 10.0]), ["a", "a", "b", "b"])
    torch.testing.assert_close(adv, torch.tensor([-2.0, 2.0, 0.0, 0.0]))


def test_per_prompt_normalisation_weighs_every_prompt_the_same(tmp_path, random_musicgen_dir):
    reward = torch.tensor([1.0, 3.0, 10.0, 10.1])  # prompt a spreads 20x wider than prompt b
    per_prompt = make(tmp_path, random_musicgen_dir, normalize_advantages="prompt").advantages(reward, ["a", "a", "b", "b"])
    s = 2**-0.5  # RLOO gives (-2, 2) and (-0.1, 0.1): each divided by its own std
    torch.testing.assert_close(per_prompt, torch.tensor([-s, s, -s, s]), rtol=1e-3, atol=0)
    batch = make(tmp_path, random_musicgen_dir).advantages(reward, ["a", "a", "b", "b"])
    assert batch[1] / batch[3] == pytest.approx(20.0, rel=1e-4)  # the batch std keeps the 20x


@pytest.mark.parametrize("ema_decay", [0.0, 0.5])
def test_resume_equals_uninterrupted(tmp_path, random_musicgen_dir, ema_decay):
    full = make(tmp_path / "a", random_musicgen_dir, ema_decay=ema_decay)
    full.train(progress=False)
    interrupted = make(tmp_path / "b", random_musicgen_dir, ema_decay=ema_decay)
    interrupted.train(progress=False, stop_after=1)  # "killed" after step 1's checkpoint
    resumed = make(tmp_path / "b", random_musicgen_dir, ema_decay=ema_decay)
    resumed.train(resume=True, progress=False)
    a, b = decoder_params(full), decoder_params(resumed)  # the live weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    if ema_decay:  # and the averages
        assert all(torch.equal(x, y) for x, y in zip(full.ema, resumed.ema))
    assert latest_checkpoint(tmp_path / "b" / "run").name == "step-000002"
    assert (tmp_path / "b" / "run" / "final" / "config.json").exists()


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_ema_checkpoint_holds_the_average_and_training_goes_on_from_the_live_weights(tmp_path, random_musicgen_dir, lora_rank):
    tr = make(tmp_path, random_musicgen_dir, ema_decay=0.5, lora_rank=lora_rank)
    trained = lambda: [p.detach().clone() for p in tr.trained]  # noqa: E731
    w0 = trained()
    tr.step(0)
    w1 = trained()
    tr.step(1)
    w2 = trained()
    ema = [0.25 * a + 0.25 * b + 0.5 * c for a, b, c in zip(w0, w1, w2)]  # 0.5 * (0.5 * w0 + 0.5 * w1) + 0.5 * w2
    for e, x in zip(tr.ema, ema):
        torch.testing.assert_close(e, x)
    ckpt = tr.save_checkpoint(2)
    assert all(torch.equal(p, w) for p, w in zip(trained(), w2))  # saving put the live weights back
    from musicrl.model.policy import MusicGenPolicy

    saved = MusicGenPolicy.from_pretrained(str(ckpt))
    r = tr.policy.sample(["x"], 1, 0.2, sampling=tr.cfg.sampling, seed=1)
    with tr.ema_weights():  # the checkpoint's model is the average, LoRA merged or not
        want = tr.policy.log_probs(r.prompts, r.codes, tr.cfg.sampling)
    live = tr.policy.log_probs(r.prompts, r.codes, tr.cfg.sampling)
    got = saved.log_probs(r.prompts, r.codes, tr.cfg.sampling)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert (got - live).abs().max() > 1e-3  # and not the live weights


def test_lora_reference_is_the_adapter_free_model(tmp_path, random_musicgen_dir):
    tr = make(tmp_path, random_musicgen_dir, lora_rank=4)
    base = {k: v.clone() for k, v in tr.policy.model.decoder.state_dict().items() if "lora_" not in k}
    tr.step(0)
    m = tr.step(1)
    assert m["kl"] > 0
    after = tr.policy.model.decoder.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base.items())  # only adapters train
    ckpt = tr.save_checkpoint(2)
    from musicrl.model.policy import MusicGenPolicy

    merged = MusicGenPolicy.from_pretrained(str(ckpt))  # a plain HF model, adapters merged
    r = tr.policy.sample(["x"], 1, 0.2, sampling=tr.cfg.sampling, seed=1)
    torch.testing.assert_close(merged.log_probs(r.prompts, r.codes, tr.cfg.sampling), r.log_probs, atol=1e-4, rtol=0)


def test_every_parameter_that_takes_a_gradient_is_one_the_optimizer_steps(tmp_path):
    """The tiny LM's text (128 wide) reaches its decoder (192) through enc_to_dec_proj, outside the
    decoder: it must not collect gradients that no optimizer ever applies."""
    tr = make(tmp_path, "tiny")
    assert tr.policy.model.enc_to_dec_proj is not None
    grads = {id(p) for p in tr.policy.model.parameters() if p.requires_grad}
    assert grads and grads == {id(p) for p in tr.trained}


def test_train_modules_trains_only_the_named_modules(tmp_path, random_musicgen_dir):
    tr = make(tmp_path, random_musicgen_dir, train_modules=["encoder_attn"])
    before = decoder_params(tr)
    tr.step(0)
    after = decoder_params(tr)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".encoder_attn." in k for k in changed)
    assert any(k.endswith("encoder_attn.q_proj.weight") for k in changed)


def test_train_modules_with_lora_adapts_only_inside_them(tmp_path, random_musicgen_dir):
    tr = make(tmp_path, random_musicgen_dir, lora_rank=4, train_modules=["encoder_attn"])
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in tr.policy.model.decoder.named_parameters() if ".lora_A" in n}
    assert adapted and all(".encoder_attn." in n for n in adapted)
    assert {n.rsplit(".", 1)[-1] for n in adapted} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    tr.step(0)
    assert tr.step(1)["kl"] > 0


def test_train_modules_naming_nothing_is_a_one_line_error(tmp_path, random_musicgen_dir):
    with pytest.raises(UserError, match="name no module of the decoder"):
        make(tmp_path, random_musicgen_dir, train_modules=["cross_attention"])
    with pytest.raises(UserError, match="train_modules must be a non-empty list"):
        make(tmp_path, random_musicgen_dir, train_modules="encoder_attn")


@pytest.mark.parametrize(
    "override, message",
    [
        ("bogus=1", "unknown config key(s): bogus"),
        ("kl_coef=-0.1", "kl_coef must be >= 0"),
        ("reward.components.user.model=/no/such/rm", "/no/such/rm"),
        ("top_k=250", "exact KL needs the full distribution"),
        ("steps=0", "steps must be >= 1"),
        ("ema_decay=1", "ema_decay must be in [0, 1)"),
        ("normalize_advantages=yes", "normalize_advantages must be 'batch', 'prompt' or 'none'"),
        ("lr=fast", "lr must be a number, got 'fast'"),
        ("steps=2.5", "steps must be a whole number"),
        ("gradient_checkpointing=maybe", "gradient_checkpointing must be true or false, got 'maybe'"),
        ("--threads=-1", "--threads must be >= 0"),
    ],
)
def test_bad_configs_get_one_line_errors(tmp_path, override, message):
    config = tmp_path / "rl.yaml"  # a preference-only preset: nothing else to load before the error
    config.write_text("reward: {components: {user: {type: preference, model: runs/preference}}}\n")
    args = ["--threads", "-1"] if override == "--threads=-1" else [override]
    r = subprocess.run([sys.executable, "-m", "musicrl.cli", "train", "--config", str(config), *args],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]


def test_config_validation_in_python():
    with pytest.raises(UserError):
        RLConfig(reward=REWARD_CFG, samples_per_prompt=1)
    with pytest.raises(UserError):
        RLConfig(reward={})


def test_rl_raises_a_reward_the_policy_can_reach(tmp_path):
    """The whole loop learns: on the shipped tiny LM, a reward for pitch height (log2 of the register
    frequency, musicrl.tiny.attributes) rises within a dozen steps, with prompts that name no register."""
    import numpy as np

    from musicrl.tiny import attributes

    def height(audio, sample_rate, prompts):  # [B, 1, S] -> [B], octaves
        return torch.tensor([float(np.log2(attributes.register_hz(a[0].numpy(), sample_rate))) for a in audio])

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a piano melody\nan organ piece with drums\n")
    cfg = RLConfig(reward=REWARD_CFG, model="tiny", prompts=str(prompts), out_dir=str(tmp_path / "run"), steps=12,
                   prompts_per_step=2, samples_per_prompt=4, duration_s=1.0, guidance_scale=3.0, lr=3e-4,
                   kl_coef=0.02, eval_every=100, checkpoint_every=100, eval_prompts_count=2, device="cpu")  # fmt: skip
    tr = RLTrainer(cfg, *rl_prompts(cfg), reward=WeightedReward({"height": height}, {"height": 1.0}))
    r = [tr.step(s)["reward/height"] for s in range(cfg.steps)]
    assert np.mean(r[-4:]) > np.mean(r[:4]) + 0.5, r  # up by more than half an octave (measured: +1.0)


def test_unseen_eval_prompts_are_in_training_words_and_never_training_prompts(heldout_words):
    """The default RL evaluation prompts: new captions the tiny LM can follow (training words only),
    none equal to a training prompt, the same for the same seed."""
    from musicrl.tiny import synth
    unseen = resolve_prompts("synth-unseen", 64)
    assert len(unseen) == 64 and unseen == resolve_prompts("synth-unseen", 64)
    assert not set(unseen) & set(resolve_prompts("synth"))
    assert not [p for p in unseen if any(w in p for w in heldout_words)]
    assert all(synth.parse_prompt(p) for p in unseen)
    assert RLConfig(reward=REWARD_CFG).eval_prompts == "synth-unseen"


def test_no_evaluation_seed_draws_a_training_prompt_as_unseen():
    """`musicrl eval --seed S` draws other unseen captions; training always uses the one fixed set of
    training captions, so none of them is ever judged as unseen (seeds 1 and 3 once drew 2 and 3)."""
    train = resolve_prompts("synth")
    assert rl_prompts(RLConfig(reward=REWARD_CFG, seed=3))[0] == train == resolve_prompts("synth", seed=3)
    for seed in range(5):
        unseen = resolve_prompts("synth-unseen", 64, seed=seed)
        assert len(set(unseen)) == 64 and not set(unseen) & set(train), seed
    assert resolve_prompts("synth-unseen", 64, seed=1) != resolve_prompts("synth-unseen", 64, seed=3)


def test_rl_solves_a_token_toy_problem_on_the_tiny_model(tmp_path):
    """The trainer's first check: reward = share of frames whose first-codebook token lies in a chosen
    set (read from the sampled codes, not the audio). From ~0.15 it must reach near its maximum within
    a few dozen steps. This fails if rows, rewards, advantages and log-probs are misaligned, if the
    sign is wrong, or if the log-probs are not those the tokens were sampled from."""
    import numpy as np

    torch.set_num_threads(1)
    prompts = ["a fast major piano melody, high register", "slow minor organ tune, low pitched"]
    cfg = RLConfig(reward=REWARD_CFG, model="tiny", out_dir=str(tmp_path / "run"), steps=24, prompts_per_step=2,
                   samples_per_prompt=4, duration_s=0.5, guidance_scale=1.0, lr=2e-3, kl_coef=0.0, eval_every=100,
                   checkpoint_every=100, device="cpu")  # fmt: skip
    tr = token_share_trainer(cfg, prompts)
    r = [tr.step(s)["reward/share"] for s in range(cfg.steps)]
    assert np.mean(r[:3]) < 0.3, r
    assert np.mean(r[-5:]) > 0.9, r  # measured: 0.12 at step 1, 0.91 by step 12, 1.0 from step 19


def token_share_trainer(cfg: RLConfig, prompts: list[str], scale: float = 1.0) -> RLTrainer:
    """An RLTrainer on the shipped tiny LM (cfg.model) whose reward is `scale` x the share of a clip's
    frames whose first-codebook token lies in a chosen set: 32 of the 256, ~15% of the tiny LM's
    frames. Read from the codes decoded for the reward (the rollout's rows, then any rivals')."""
    from musicrl.model.policy import MusicGenPolicy

    chosen, seen = torch.arange(32), {}
    policy = MusicGenPolicy.from_pretrained(cfg.model)
    decode = policy.decode

    def keep_codes(codes):
        seen["codes"] = codes
        return decode(codes)

    def share(audio, sample_rate, prompts):  # [B]: the rows just decoded
        return scale * torch.isin(seen["codes"][:, 0], chosen).float().mean(1)

    policy.decode = keep_codes
    return RLTrainer(cfg, prompts, prompts, policy=policy, reward=WeightedReward({"share": share}, {"share": 1.0}, normalize=False))


def loud_unless_flat(audio, sample_rate, prompts):  # [B,1,S] -> [B]: constant on the prompt "flat"
    return torch.stack([torch.tensor(0.5) if p == "flat" else a.pow(2).mean() for a, p in zip(audio, prompts)])


def make_flat(tmp_path, policy_dir, prompts, **kw):
    from musicrl.model.policy import MusicGenPolicy

    cfg = RLConfig(reward=REWARD_CFG, model=str(policy_dir), out_dir=str(tmp_path / "run"), steps=2,
                   prompts_per_step=2, samples_per_prompt=3, duration_s=0.2, lr=1e-3, eval_every=100,
                   checkpoint_every=1, eval_prompts_count=2, device="cpu", skip_flat_groups=True, **kw)  # fmt: skip
    policy = MusicGenPolicy.from_pretrained(str(policy_dir), device="cpu")
    return RLTrainer(cfg, prompts, ["e1", "e2"], policy=policy,
                     reward=WeightedReward({"r": loud_unless_flat}, {"r": 1.0}))  # fmt: skip


def test_skip_flat_groups_keeps_exactly_the_rows_of_prompts_whose_rewards_differ(tmp_path, random_musicgen_dir):
    from musicrl.model.policy import Rollout

    tr = make_flat(tmp_path, random_musicgen_dir, ["flat", "loud"])
    codes = torch.arange(9 * 2 * 4).view(9, 2, 4)  # [B, K, T], every row distinct
    roll = Rollout(codes, codes.float() / 100, ["a"] * 3 + ["b"] * 3 + ["c"] * 3, torch.arange(9), None)
    target = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0, 0.0, 3.0, 3.0, 3.0 + 1e-3])  # a flat, b and c not
    kept, adv, tgt = tr._informative(roll, tr.advantages(target, roll.prompts), target)
    assert kept.prompts == ["b"] * 3 + ["c"] * 3
    assert torch.equal(kept.codes, codes[3:]) and torch.equal(kept.log_probs, codes[3:].float() / 100)
    assert torch.equal(kept.seeds, torch.arange(3, 9)) and torch.equal(tgt, target[3:])
    assert adv.abs().sum() > 0


def test_skip_flat_groups_updates_on_the_informative_prompts_only(tmp_path, random_musicgen_dir):
    flat = make_flat(tmp_path / "a", random_musicgen_dir, ["flat", "flat"])
    before = decoder_params(flat)
    m = flat.step(0)
    assert m["informative"] == 0.0 and m["grad_norm"] == 0.0  # nothing to learn: no update at all
    assert all(torch.equal(v, decoder_params(flat)[k]) for k, v in before.items())
    mixed = make_flat(tmp_path / "b", random_musicgen_dir, ["flat", "loud"])
    m = mixed.step(0)
    assert m["informative"] == 0.5 and m["grad_norm"] > 0  # the "loud" prompt's 3 rows of 6
    assert any(not torch.equal(v, decoder_params(mixed)[k]) for k, v in before.items())


def test_skip_flat_groups_is_for_the_reward_objective_only():
    with pytest.raises(UserError, match="skip_flat_groups needs objective=reward"):
        RLConfig(reward=REWARD_CFG, objective="nash_md", skip_flat_groups=True)


def test_resume_may_move_the_run_and_change_its_bookkeeping_but_not_what_it_learns(tmp_path, random_musicgen_dir):
    import shutil

    first = make(tmp_path / "a", random_musicgen_dir, ema_decay=0.5)
    first.train(progress=False, stop_after=1)
    shutil.copytree(tmp_path / "a" / "run", tmp_path / "b" / "run")  # moved, extended, checkpointed less often
    moved = make(tmp_path / "b", random_musicgen_dir, ema_decay=0.5, keep_checkpoints=5)
    moved.cfg = replace(moved.cfg, steps=3)
    moved.train(resume=True, progress=False)
    assert latest_checkpoint(tmp_path / "b" / "run").name == "step-000003"
    with pytest.raises(UserError, match=r"another kl_coef \(only steps, out_dir"):
        make(tmp_path / "a", random_musicgen_dir, ema_decay=0.5, kl_coef=0.5).train(resume=True, progress=False)


def test_a_checkpoint_older_than_a_setting_resumes_with_the_runs_value(tmp_path, random_musicgen_dir):
    from musicrl.train import checkpoints as ckpt

    tr = make(tmp_path, random_musicgen_dir)
    path = tr.train(progress=False, stop_after=1)
    state = torch.load(path / ckpt.TRAINER_STATE, weights_only=False)
    del state["config"]["skip_flat_groups"]  # as written before the setting existed
    torch.save(state, path / ckpt.TRAINER_STATE)
    assert make(tmp_path, random_musicgen_dir).load_checkpoint(path) == 1


def test_coarse_codebooks_takes_the_policy_gradient_of_the_first_codebooks_only(tmp_path, random_musicgen_dir):
    from musicrl.train import tuning

    tr = make(tmp_path, random_musicgen_dir, kl_coef=0.0, coarse_codebooks=1)
    tuning.eval_mode(tr.policy)
    roll, _ = tr._rollouts(0)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.25])  # [b]
    tr._micro_step(roll, adv, adv, 0, 4, 1.0)
    got = torch.cat([p.grad.flatten() for p in tr.trained])
    grads = []
    for codebooks in (slice(0, 1), slice(None)):  # the first codebook's tokens; every token
        tr.opt.zero_grad(set_to_none=True)
        _, logp = tuning.teacher_forced(tr.policy, roll.prompts, roll.codes, tr.cfg.sampling)  # [b, K, T]
        (-(adv[:, None, None] * logp)[:, codebooks].sum() / logp.numel()).backward()  # per token of the whole clip
        grads.append(torch.cat([p.grad.flatten() for p in tr.trained]))
    assert roll.codes.shape[1] > 1 and got.norm() > 0
    assert torch.allclose(got, grads[0], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(got, grads[1], rtol=1e-2, atol=1e-5)


def test_coarse_codebooks_is_validated():
    with pytest.raises(UserError, match="coarse_codebooks must be >= 0"):
        RLConfig(reward=REWARD_CFG, coarse_codebooks=-1)
    with pytest.raises(UserError, match="coarse_codebooks needs objective=reward"):
        RLConfig(reward=REWARD_CFG, objective="nash_md", coarse_codebooks=1)
