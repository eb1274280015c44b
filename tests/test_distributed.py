"""Data-parallel training (torchrun, 2 CPU processes on gloo) equals one process with the same
global batch: the RL step (EMA, micro-batches, flat groups skipped, the reward's running
normalisation; LoRA with the sampled KL; Nash-MD and online DPO), the DPO step, resuming under 2 processes from a
checkpoint they wrote, and an epoch of each reward head (its clips embedded in parts); the RL and DPO
runs again with fsdp=true (the decoder sharded over the 2 processes). The runs are tests/distributed_worker.py's."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from musicrl.errors import UserError
from musicrl.train.distributed import Ranks
from tests import distributed_worker

ATOL = 2e-5  # float sums in another order; measured differences are under 6e-6, the updates ~1e-3


@pytest.fixture(scope="module")
def runs(random_musicgen_dir, tmp_path_factory):
    """(one process's results, two processes' results, the starting weights) of every run."""
    from musicrl.tiny.clap import save_random_clap

    policy = str(random_musicgen_dir)
    clap = str(save_random_clap(tmp_path_factory.mktemp("clap"), 0, n_captions=50))
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(distributed_worker.__file__)), policy, clap, str(two)]  # fmt: skip
    launched = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # one process: here, meanwhile
        single = distributed_worker.run_all(policy, clap, one)
        start = distributed_worker.trained(distributed_worker.rl_trainer(policy, one / "start"))
    finally:
        torch.set_num_threads(threads)
        output = launched.communicate(timeout=300)[0]
    assert launched.returncode == 0, output[-3000:]
    return single, torch.load(two / "results.pt"), start, (one, two)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for k, want in a.items():
        torch.testing.assert_close(b[k], want, atol=ATOL, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("run", ["rl/step1", "rl/resumed", "lora/step1", "nash_md/step1", "online_dpo/step1", "value/step1",
                                 "dpo/step1", "dpo/resumed", "preference", "quality"])  # fmt: skip
def test_two_processes_update_as_one(runs, run):
    single, double, _, _ = runs
    assert_same(single[run], double[run])


@pytest.mark.parametrize("run", ["fsdp-rl/step1", "fsdp-rl/resumed", "fsdp-dpo/step1", "fsdp-dpo/resumed"])
def test_fsdp_on_two_processes_updates_as_one(runs, run):
    """FSDP2 (fully_shard) runs on a CPU with gloo in the installed torch: the decoder sharded over 2
    processes, rollouts and evaluation on gathered weights, checkpoints written whole and resumed
    into shards."""
    single, double, _, _ = runs
    assert double["meta"]["sharded"].all() and not single["meta"]["sharded"].any()  # one process: nothing to shard
    assert_same(single[run], double[run])


def test_the_compared_updates_are_far_larger_than_the_tolerance(runs):
    single, _, start, _ = runs
    for run in ("rl/step1", "nash_md/step1", "online_dpo/step1", "fsdp-rl/step1"):
        moved = max((single[run][k] - start[k]).abs().max().item() for k in start if k.startswith("w"))
        assert moved > 20 * ATOL, run
    again = max((single["rl/resumed"][k] - single["rl/step1"][k]).abs().max().item() for k in start if k.startswith("w"))
    assert again > 20 * ATOL  # the resumed step moved them too
    assert single["rl/resumed"]["norm/loud/count"] == 16  # 2 steps x 8 clips: every clip of every rank
    assert any(k.startswith("ema") for k in single["rl/step1"])


def test_rank_0_logs_the_global_metrics_and_writes_the_checkpoints(runs):
    import csv

    _, _, _, (one, two) = runs
    for name in ("rl", "dpo"):
        a, b = (list(csv.DictReader((d / name / "metrics.csv").open())) for d in (one, two))
        assert len(a) == len(b) == 2  # one row a step: rank 1 wrote none
        for ra, rb in zip(a, b):
            for key in ra:
                if not key.startswith("time/"):
                    assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-4, abs=1e-6, nan_ok=True), key
        assert sorted(p.name for p in (two / name / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
        assert (two / name / "final" / "config.json").exists()


def test_shares_that_do_not_divide_are_one_line_errors():
    assert Ranks(1, 2).share(6, "x") == slice(3, 6)
    with pytest.raises(UserError, match="prompts_per_step=4 must be divisible by the number of processes \\(3\\)"):
        Ranks(0, 3).share(4, "prompts_per_step")


def test_a_checkpoint_written_under_fsdp_loads_in_one_process_without_it(runs, random_musicgen_dir, tmp_path):
    import shutil

    from musicrl.train.checkpoints import latest_checkpoint

    _, double, _, (_, two) = runs
    shutil.copytree(two / "fsdp-rl", tmp_path / "run")
    trainer = distributed_worker.rl_trainer(str(random_musicgen_dir), tmp_path / "run", skip_flat_groups=False, eval_every=2)
    assert trainer.load_checkpoint(latest_checkpoint(tmp_path / "run")) == 2
    assert_same(double["fsdp-rl/resumed"], distributed_worker.trained(trainer))  # live weights, EMA, reward statistics


def test_fsdp_is_for_full_fine_tuning_and_same_passes_everywhere():
    from musicrl.train.po_config import DPOConfig
    from musicrl.train.rl_config import RLConfig

    reward = {"components": {"clap": {}}}
    with pytest.raises(UserError, match="fsdp is for full fine-tuning"):
        RLConfig(reward=reward, fsdp=True, lora_rank=16)
    with pytest.raises(UserError, match="fsdp is for full fine-tuning"):
        DPOConfig(votes="v.jsonl", fsdp=True, lora_rank=16)
    with pytest.raises(UserError, match="skip_flat_groups does not work with fsdp"):
        RLConfig(reward=reward, fsdp=True, skip_flat_groups=True)
    assert RLConfig(reward=reward, fsdp=True).fsdp and not RLConfig(reward=reward).fsdp


def test_the_learned_baseline_starts_from_the_seed_not_from_what_ran_before(random_musicgen_dir, tmp_path):
    def head(seed):
        trainer = distributed_worker.rl_trainer(str(random_musicgen_dir), tmp_path / str(seed), baseline="value", seed=seed)
        return [p.detach().clone() for p in trainer.value.parameters()]

    first = head(0)
    torch.rand(7)  # the global random state moves on
    assert all(torch.equal(a, b) for a, b in zip(first, head(0)))  # (every process starts the same head)
    assert not torch.equal(first[0], head(1)[0])
