"""Offline DPO/IPO from votes (musicrl.train.dpo_trainer, pairs, po_config) on a random tiny MusicGen."""

import math

import numpy as np
import pytest
import torch

from musicrl.cli import main
from musicrl.errors import UserError
from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig
from musicrl.train import tuning
from musicrl.train.checkpoints import latest_checkpoint, newest_checkpoint, read_info
from musicrl.train.dpo_trainer import DPOTrainer, preference_loss
from musicrl.train.pairs import PreferencePair, preference_pairs, split_pairs
from musicrl.train.po_config import DPOConfig
from musicrl.votes.rows import VoteRow

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["calm piano melody", "fast drums", "slow organ", "bright bells"]


@pytest.fixture(scope="module")
def sampled(random_musicgen_dir):
    """Two clips per prompt from the random model (guidance 3, full support): codes and their log-probs."""
    policy = MusicGenPolicy.from_pretrained(str(random_musicgen_dir))
    return policy.sample(PROMPTS, 2, num_frames=12, sampling=SamplingConfig(top_k=0, guidance_scale=3.0), seed=1)


def pairs_of(roll, tie_last=False) -> list[PreferencePair]:
    n = len(PROMPTS)
    return [PreferencePair(roll.prompts[2 * i], roll.codes[2 * i], roll.codes[2 * i + 1], tie=tie_last and i == n - 1)
            for i in range(n)]  # fmt: skip


def make(tmp_path, model_dir, pairs, eval_pairs=(), **kw):
    cfg = DPOConfig(**{"votes": "unused.jsonl", "model": str(model_dir), "out_dir": str(tmp_path / "run"), "steps": 4,
                       "batch_size": 2, "lr": 1e-3, "beta": 0.5, "checkpoint_every": 1, "eval_every": 2, "device": "cpu",
                       **kw})  # fmt: skip
    return DPOTrainer(cfg, pairs, eval_pairs, votes_hash="h")


def decoder_params(trainer):
    return {k: v.detach().clone() for k, v in trainer.policy.model.decoder.state_dict().items()}


def test_losses_equal_hand_computed_values_on_a_toy_batch():
    chosen, rejected = torch.tensor([1.0, -0.5, 0.2]), torch.tensor([0.0, 0.5, 0.6])  # log pi - log ref of each clip
    tie, tokens = torch.tensor([False, False, True]), torch.tensor([2.0, 2.0, 2.0])
    # beta 0.5, h = (1, -1, -0.4): -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077, -log sigmoid(-0.5) = 0.974077
    sig = preference_loss(chosen, rejected, tie, loss="sigmoid", beta=0.5)
    torch.testing.assert_close(sig, torch.tensor([0.474077, 0.974077, 0.798139]), atol=1e-6, rtol=0)
    # cDPO with e = 0.1: 0.9 * 0.474077 + 0.1 * 0.974077, and the mirror image
    cons = preference_loss(chosen, rejected, tie, loss="conservative", beta=0.5, label_smoothing=0.1)
    torch.testing.assert_close(cons[:2], torch.tensor([0.524077, 0.924077]), atol=1e-6, rtol=0)
    # IPO on per-token log-ratios h' = (0.5, -0.5, -0.2), target 1/(2 beta) = 1, and 0 for the tie
    ipo = preference_loss(chosen, rejected, tie, loss="ipo", beta=0.5, tokens_chosen=tokens, tokens_rejected=tokens)
    torch.testing.assert_close(ipo, torch.tensor([0.25, 2.25, 0.04]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss", ["sigmoid", "conservative"])
def test_at_step_zero_the_implicit_rewards_are_zero_and_the_loss_is_ln2(tmp_path, random_musicgen_dir, sampled, loss):
    tr = make(tmp_path, random_musicgen_dir, pairs_of(sampled), loss=loss)
    m = tr.step(0)  # the metrics of the batch before its update: policy == reference
    assert m["rewards/chosen"] == 0 and m["rewards/rejected"] == 0 and m["rewards/margin"] == 0
    assert m["rewards/accuracy"] == 0.5  # every pair's implicit rewards are equal: chance, not 0
    assert m["loss"] == pytest.approx(math.log(2), abs=1e-6) and m["kl"] == pytest.approx(0, abs=1e-7)
    m2 = tr.step(1)
    assert m2["kl"] > 0 and m2["rewards/chosen"] != 0  # the policy has moved


def test_rpo_adds_the_chosen_clips_per_token_nll_to_each_decisive_pair(tmp_path, random_musicgen_dir, sampled):
    pairs = pairs_of(sampled, tie_last=True)
    plain = make(tmp_path / "plain", random_musicgen_dir, pairs, loss="ipo", ties="zero_margin").score(pairs)
    rpo = make(tmp_path / "rpo", random_musicgen_dir, pairs, loss="ipo", ties="zero_margin", rpo_alpha=0.7).score(pairs)
    nll = -plain["logp_c"] / plain["tokens_c"]  # [P] per token, the chosen clip's
    assert (nll > 0).all()
    want = plain["loss"] + 0.7 * torch.where(plain["tie"], 0.0, nll)  # the tie (last pair) has no chosen clip
    torch.testing.assert_close(rpo["loss"], want)
    assert rpo["loss"][-1] == plain["loss"][-1] and (rpo["loss"][:-1] > plain["loss"][:-1]).all()
    with pytest.raises(UserError, match="rpo_alpha must be >= 0"):
        DPOConfig(votes="v.jsonl", rpo_alpha=-0.1)


def test_chosen_and_rejected_log_probs_are_the_rl_trainers_teacher_forced_ones(tmp_path, random_musicgen_dir, sampled):
    tr = make(tmp_path, random_musicgen_dir, pairs_of(sampled))
    pairs = tr.pairs
    with torch.no_grad():
        s = tr.score(pairs)
        codes = torch.stack([p.chosen for p in pairs] + [p.rejected for p in pairs])
        prompts = [p.prompt for p in pairs] * 2
        _, rl_logp = tuning.teacher_forced(tr.policy, prompts, codes, SamplingConfig(top_k=0, guidance_scale=3.0))
    ours = torch.cat([s["logp_c"], s["logp_r"]])
    torch.testing.assert_close(ours, rl_logp.sum((1, 2)), atol=1e-4, rtol=0)
    # and both equal the log-probs the tokens were sampled with (per token to 1e-4, here summed over 48)
    order = [2 * i for i in range(len(pairs))] + [2 * i + 1 for i in range(len(pairs))]
    torch.testing.assert_close(ours, sampled.log_probs[order].sum((1, 2)), atol=48e-4, rtol=0)
    torch.testing.assert_close(s["ref_c"], s["logp_c"])  # the reference starts as the policy


def test_coarse_codebooks_sums_the_implicit_reward_over_the_first_codebooks_only(tmp_path, random_musicgen_dir, sampled):
    pairs = pairs_of(sampled)
    tr = make(tmp_path / "c", random_musicgen_dir, pairs, coarse_codebooks=1)
    with torch.no_grad():
        s, whole = tr.score(pairs), make(tmp_path / "w", random_musicgen_dir, pairs).score(pairs)
        codes = torch.stack([p.chosen for p in pairs])
        _, logp = tuning.teacher_forced(tr.policy, [p.prompt for p in pairs], codes, SamplingConfig(top_k=0, guidance_scale=3.0))
    assert codes.shape[1] > 1
    torch.testing.assert_close(s["logp_c"], logp[:, :1].sum((1, 2)), atol=1e-4, rtol=0)  # [P]: codebook 0 only
    assert (s["logp_c"] - whole["logp_c"]).abs().min() > 1e-2
    assert (s["tokens_c"] == codes[0, :1].numel()).all() and (s["all_tokens_c"] == codes[0].numel()).all()
    torch.testing.assert_close(s["kl_c"], whole["kl_c"])  # the KL stays the whole clip's
    with pytest.raises(UserError, match="coarse_codebooks must be >= 0"):
        DPOConfig(votes="v.jsonl", coarse_codebooks=-1)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_resume_is_exact(tmp_path, random_musicgen_dir, sampled, lora_rank):
    pairs = pairs_of(sampled)
    full = make(tmp_path / "a", random_musicgen_dir, pairs, pairs[:1], lora_rank=lora_rank)
    full.train(progress=False)
    make(tmp_path / "b", random_musicgen_dir, pairs, pairs[:1], lora_rank=lora_rank).train(progress=False, stop_after=2)
    resumed = make(tmp_path / "b", random_musicgen_dir, pairs, pairs[:1], lora_rank=lora_rank)
    resumed.train(resume=True, progress=False)
    a, b = decoder_params(full), decoder_params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert latest_checkpoint(tmp_path / "b" / "run").name == "step-000004"
    assert (tmp_path / "b" / "run" / "metrics.csv").read_text().count("\n") == 5  # header + 4 steps, none twice


def test_lora_reference_is_the_adapter_free_model_and_checkpoints_are_merged(tmp_path, random_musicgen_dir, sampled):
    tr = make(tmp_path, random_musicgen_dir, pairs_of(sampled), lora_rank=4, steps=2)
    assert tr.reference is None
    last = tr.train(progress=False)
    saved = MusicGenPolicy.from_pretrained(str(last))  # loads without peft: adapters merged
    with torch.no_grad():
        p = tr.pairs[0]
        live = tr.policy.log_probs([p.prompt], p.chosen[None], tr.cfg.sampling)
        torch.testing.assert_close(saved.log_probs([p.prompt], p.chosen[None], tr.cfg.sampling), live, atol=1e-4, rtol=0)
    assert read_info(last)["votes_hash"] == "h" and (tmp_path / "run" / "dpo.png").is_file()


def test_ties_and_both_bad_are_handled_as_documented(random_musicgen_dir, tmp_path):
    from musicrl.audio import write_wav

    policy = MusicGenPolicy.from_pretrained(str(random_musicgen_dir))
    roll = policy.sample(["x"], 2, num_frames=10, seed=0)
    paths = []
    for i, c in enumerate(roll.codes):
        paths.append(write_wav(tmp_path / f"{i}.wav", policy.decode(c[None])[0, 0], policy.sample_rate))
        np.save(tmp_path / f"{i}.codes.npy", c.numpy().astype(np.int32))
    row = {"prompt": "x", "clip_a": paths[0], "clip_b": paths[1], "codes_a": tmp_path / "0.codes.npy", "codes_b": tmp_path / "1.codes.npy"}
    rows = [VoteRow(choice=c, **row) for c in ("a", "b", "tie", "both_bad")]
    args = (policy.codec, policy.num_codebooks, policy.vocab_size)
    pairs, counts = preference_pairs(rows, *args)
    assert len(pairs) == 2 and counts["ties_dropped"] == 1 and counts["both_bad_dropped"] == 1
    assert torch.equal(pairs[0].chosen, roll.codes[0]) and torch.equal(pairs[1].chosen, roll.codes[1])  # 'b' swaps
    pairs, counts = preference_pairs(rows, *args, ties="zero_margin")
    assert [p.tie for p in pairs] == [False, False, True] and counts["both_bad_dropped"] == 1
    # no stored codes: the WAV goes through the codec
    pairs, counts = preference_pairs([VoteRow("x", paths[0], paths[1], "a")], *args)
    assert counts["reencoded"] == 2 and pairs[0].chosen.shape == roll.codes[0].shape
    with pytest.raises(UserError, match="none of the 2 votes"):
        preference_pairs(rows[2:], *args)
    with pytest.raises(UserError, match="ties=zero_margin needs loss=ipo"):
        DPOConfig(votes="v.jsonl", ties="zero_margin")


def test_held_out_prompts_are_never_trained_on(sampled):
    pairs = pairs_of(sampled) * 3
    train, held = split_pairs(pairs, 0.5, seed=0)
    assert len(held) == 6 and not {p.prompt for p in train} & {p.prompt for p in held}
    assert split_pairs(pairs[:1], 0.5, seed=0) == (pairs[:1], [])  # one prompt: it is trained on


def _store_with_votes(data, model_dir, n_prompts=3, codes=True):
    """A SQLite vote store whose clips are the model's own (codes kept, as the arena does), voted on by
    simulated raters."""
    from musicrl.model.generator import Generator
    from musicrl.tiny.simulate import Panel
    from musicrl.votes.store import VoteStore

    store = VoteStore(f"sqlite:///{data}/votes.db", data)
    gen, panel = Generator.from_pretrained(model_dir), Panel.default(2, seed=0)
    for i in range(n_prompts):
        prompt = PROMPTS[i]
        clips = gen.generate(prompt, 2, 0.3, seed=10 * i)
        a, b = (store.add_clip(c.audio, c.sample_rate, model_id=gen.model_id, model_version=gen.version, prompt=prompt,
                               seed=c.seed, settings=c.settings, codes=c.codes if codes else None) for c in clips)  # fmt: skip
        choice = panel.vote(prompt, clips[0], clips[1])
        store.record_vote(clip_a=a.id, clip_b=b.id, choice="a" if choice in ("tie", "both_bad") else choice, session=f"s{i}")
    store.close()
    return f"sqlite:///{data}/votes.db"


def test_cli_trains_from_a_vote_store_and_writes_servable_checkpoints(tmp_path, random_musicgen_dir, capsys):
    url = _store_with_votes(tmp_path, random_musicgen_dir)
    out = tmp_path / "run"
    args = ["train", "--config", "po/dpo", "--db", url, f"model={random_musicgen_dir}", f"out_dir={out}", "steps=2",
            "batch_size=2", "eval_fraction=0.34", "checkpoint_every=1", "device=cpu", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "3 votes -> 3 pairs (2 to train on, 1 held out)" in err and "0 clips had no stored codes" in err
    assert latest_checkpoint(out).name == "step-000002" and newest_checkpoint(out) == out / "final"  # what the app serves
    assert read_info(out / "final")["reference"] == str(random_musicgen_dir)
    assert (out / "dpo.png").is_file() and (out / "eval.csv").read_text().count("\n") == 3  # step 0 and the end
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"rewards/accuracy", "rewards/margin", "logps/chosen", "logps/rejected", "kl"} <= set(header)
    MusicGenPolicy.from_pretrained(str(out / "final"))
    # the same votes from an hf export (the codes travel with it): the same pairs
    assert main(["votes", "export", "--db", url, "--data-dir", str(tmp_path), "--format", "hf", "--out", str(tmp_path / "ds")]) == 0
    assert main(["train", "--config", "po/dpo", "--votes", str(tmp_path / "ds"), f"model={random_musicgen_dir}",
                 f"out_dir={tmp_path / 'run2'}", "steps=1", "batch_size=2", "eval_fraction=0.34", "device=cpu"]) == 0
    assert "3 votes -> 3 pairs (2 to train on, 1 held out)" in capsys.readouterr().err


def one_line_error(capsys, args) -> str:
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    return lines[0]


def test_bad_input_is_a_one_line_error(tmp_path, random_musicgen_dir, capsys):
    from musicrl.votes.store import VoteStore

    def dpo(*args):  # (key=value overrides in one run: argparse takes the positionals once)
        return ["train", "--config", "po/dpo", *args, f"model={random_musicgen_dir}", f"out_dir={tmp_path / 'run'}", "device=cpu"]

    VoteStore(f"sqlite:///{tmp_path}/empty.db", tmp_path).close()
    assert "no votes in" in one_line_error(capsys, dpo("--db", f"sqlite:///{tmp_path}/empty.db"))
    assert "votes is required" in one_line_error(capsys, dpo())
    data = tmp_path / "store"
    data.mkdir()
    url = _store_with_votes(data, random_musicgen_dir, n_prompts=1)
    assert "loss must be one of" in one_line_error(capsys, [*dpo("--db", url), "loss=hinge"])
    next((data / "clips").rglob("*.wav")).unlink()  # a voted clip's file is gone
    assert "clip file missing" in one_line_error(capsys, dpo("--db", url))
    assert "--votes, --db and --data-dir are for preference" in one_line_error(capsys, ["train", "--config", "rl/musicrl-r", "--db", url])
