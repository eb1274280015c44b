"""The runs that tests/test_distributed.py compares: one process (in the test's own process), and
the same runs in each of the processes `torchrun --nproc-per-node 2` starts (`python -m
torch.distributed.run ... tests/distributed_worker.py POLICY_DIR OUT`), where rank 0 saves what they
trained into OUT/results.pt. Every run has the same global batch whatever the number of processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from musicrl.train import distributed

RL_PROMPTS = ["flat", "loud", "flat", "bright"]  # each step: all 4, in an order drawn from (seed, step)


def loud_unless_flat(audio, sample_rate, prompts):  # [B,1,S] -> [B]: the same for every clip of "flat"
    return torch.stack([torch.tensor(0.5) if p == "flat" else a.pow(2).mean() for a, p in zip(audio, prompts)])


def rl_trainer(policy_dir: str, out: Path, **kw):
    """A 2-step RL run with the knobs that data parallelism must keep exact: EMA, micro-batches,
    flat groups left out (a process may have no row left to train on), the reward's running
    normalisation (it must see the global batch), batch-normalised advantages; LoRA with `lora_rank`."""
    from musicrl.model.policy import MusicGenPolicy
    from musicrl.rewards.combine import WeightedReward
    from musicrl.train.rl_config import RLConfig
    from musicrl.train.rl_trainer import RLTrainer

    cfg = RLConfig(**{"reward": {"components": {"clap": {}}}, "model": policy_dir, "out_dir": str(out), "steps": 2,
                      "prompts_per_step": 4, "samples_per_prompt": 2, "duration_s": 0.2, "lr": 1e-3, "grad_accum": 2,
                      "ema_decay": 0.5, "skip_flat_groups": True, "eval_every": 100, "checkpoint_every": 1,
                      "device": "cpu", **kw})  # fmt: skip
    policy = MusicGenPolicy.from_pretrained(policy_dir, device="cpu")
    reward = WeightedReward({"loud": loud_unless_flat}, {"loud": 1.0})
    return RLTrainer(cfg, RL_PROMPTS, ["e"], policy=policy, reward=reward)


def trained(trainer) -> dict:
    """The live trained weights and, with EMA, the averages; the reward's running statistics."""
    whole = distributed.full_state  # FSDP shards -> whole tensors on rank 0 (every rank takes part)
    ranks = trainer.ranks
    out = {f"w{i}": whole(p.detach().clone(), ranks) for i, p in enumerate(trainer.trained)}
    out.update({f"ema{i}": whole(e.clone(), ranks) for i, e in enumerate(getattr(trainer, "ema", None) or [])})
    reward = getattr(trainer, "reward", None)
    state = reward.state_dict() if hasattr(reward, "state_dict") else {}
    out.update({f"norm/{k}/{n}": torch.tensor(v) for k, s in state.get("norms", {}).items() for n, v in s.items()})
    return out


def rl_runs(policy_dir: str, out: Path) -> dict:
    """'rl/step1': after one step; 'rl/resumed': stopped after step 1, resumed to 2; 'lora/step1';
    'nash_md/step1', 'online_dpo/step1' and 'value/step1' (the learned baseline's weights too)."""
    results = {}
    first = rl_trainer(policy_dir, out / "rl")
    first.train(progress=False, stop_after=1)
    results["rl/step1"] = trained(first)
    resumed = rl_trainer(policy_dir, out / "rl")
    resumed.train(resume=True, progress=False)
    results["rl/resumed"] = trained(resumed)
    lora = rl_trainer(policy_dir, out / "lora", lora_rank=4, steps=1, skip_flat_groups=False, ema_decay=0.0,
                      normalize_advantages="prompt", kl_estimator="sampled")  # fmt: skip
    lora.train(progress=False)
    results["lora/step1"] = trained(lora)
    for objective in ("nash_md", "online_dpo"):  # rivals seeded and scored apart; a prompt's pair on one process
        other = rl_trainer(policy_dir, out / objective, objective=objective, steps=1, skip_flat_groups=False, ema_decay=0.0)
        other.train(progress=False)
        results[f"{objective}/step1"] = trained(other)
    value = rl_trainer(policy_dir, out / "value", baseline="value", steps=1, skip_flat_groups=False, ema_decay=0.0)
    value.train(progress=False)  # the learned baseline: over the global batch's prompts; its own gradient summed
    results["value/step1"] = {**trained(value), **{f"v{i}": p.detach().clone() for i, p in enumerate(value.value.parameters())}}
    return results


def dpo_trainer(policy_dir: str, out: Path, **kw):
    """A 2-step DPO run on 6 random pairs, 4 a step in 2 micro-batches (the pass wraps in step 2)."""
    from musicrl.model.policy import MusicGenPolicy
    from musicrl.train.dpo_trainer import DPOTrainer
    from musicrl.train.pairs import PreferencePair
    from musicrl.train.po_config import DPOConfig

    cfg = DPOConfig(votes="random pairs", model=policy_dir, out_dir=str(out), steps=2, batch_size=4, grad_accum=2,
                    lr=1e-3, guidance_scale=1.0, eval_every=100, checkpoint_every=1, device="cpu", **kw)  # fmt: skip
    policy = MusicGenPolicy.from_pretrained(policy_dir, device="cpu")
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(policy.vocab_size, (12, policy.num_codebooks, 6), generator=gen)  # [2 x 6 clips, K, T]
    pairs = [PreferencePair(f"prompt {i}", codes[2 * i], codes[2 * i + 1]) for i in range(6)]
    return DPOTrainer(cfg, pairs, policy=policy)


def dpo_runs(policy_dir: str, out: Path, name: str = "dpo", **kw) -> dict:
    """'dpo/step1': after one step (and its logged metrics); 'dpo/resumed': stopped after 1, resumed to 2."""
    first = dpo_trainer(policy_dir, out / name, **kw)
    first.train(progress=False, stop_after=1)
    results = {f"{name}/step1": trained(first)}
    resumed = dpo_trainer(policy_dir, out / name, **kw)
    resumed.train(resume=True, progress=False)
    return {**results, f"{name}/resumed": trained(resumed)}


def fsdp_runs(policy_dir: str, out: Path) -> dict:
    """The RL run (without skip_flat_groups) and the DPO run with fsdp=true: 'fsdp-rl/...', 'fsdp-dpo/...'."""
    results = {}
    first = rl_trainer(policy_dir, out / "fsdp-rl", fsdp=True, skip_flat_groups=False, eval_every=2)
    first.train(progress=False, stop_after=1)
    results["fsdp-rl/step1"] = trained(first)
    resumed = rl_trainer(policy_dir, out / "fsdp-rl", fsdp=True, skip_flat_groups=False, eval_every=2)
    resumed.train(resume=True, progress=False)
    results["fsdp-rl/resumed"] = trained(resumed)
    results["meta"] = {"sharded": torch.tensor([first.sharded, resumed.sharded])}  # FSDP did shard (2 processes)
    return {**results, **dpo_runs(policy_dir, out, "fsdp-dpo", fsdp=True)}


def head_runs(clap_dir: str, out: Path) -> dict:
    """One epoch of each reward head on 5 random clips (parts of 2 and 3), votes on 3 prompts, one
    held out: 'preference', 'quality' (the heads' saved weights)."""
    import numpy as np

    from musicrl.audio import write_wav
    from musicrl.rewards.train_preference import PreferenceTrainConfig, train_preference
    from musicrl.rewards.train_quality import QualityTrainConfig, train_quality_from_ratings
    from musicrl.votes.rows import VoteRow

    rng = np.random.default_rng(0)
    clips = [out / "clips" / f"{i}.wav" for i in range(5)]
    if os.environ.get("RANK", "0") == "0":
        for c in clips:
            c.parent.mkdir(parents=True, exist_ok=True)
            write_wav(c, torch.from_numpy(rng.uniform(-0.5, 0.5, 16000).astype(np.float32)), 16000)
    distributed.join(torch.device("cpu"))[0].barrier()  # the clips are written before anyone reads them
    votes = [VoteRow(f"prompt {i % 3}", clips[i % 5], clips[(i + 2) % 5], "ab"[i % 2]) for i in range(9)]
    train_preference(votes, out / "preference", PreferenceTrainConfig(epochs=1, batch_size=4, val_fraction=0.34),
                     backbone=clap_dir, progress=False)  # fmt: skip
    ratings = [(c, float(i % 5 + 1)) for i, c in enumerate(clips)]
    train_quality_from_ratings(ratings, out / "quality", QualityTrainConfig(epochs=1, batch_size=2, val_fraction=0.0),
                               backbone=clap_dir, progress=False)  # fmt: skip
    return {name: head_weights(out / name) for name in ("preference", "quality")}


def head_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def run_all(policy_dir: str, clap_dir: str, out: Path) -> dict:
    return {**rl_runs(policy_dir, out), **dpo_runs(policy_dir, out), **head_runs(clap_dir, out), **fsdp_runs(policy_dir, out)}


if __name__ == "__main__":

    torch.set_num_threads(1)
    policy_dir, clap_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    results = run_all(policy_dir, clap_dir, out)
    if os.environ.get("RANK", "0") == "0":
        torch.save(results, out / "results.pt")
    distributed.leave()
