"""Every model argument takes a hub id, a local directory, or a hub cache's folder for one repository
(HF_HOME/hub/models--org--name, as `hf download` leaves it): a fake cache built from random tiny models."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from musicrl.errors import UserError
from musicrl.model import hub

REV = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(hub_dir: Path, repo_id: str, model_dir: Path, rev: str = REV, ref: bool = True) -> Path:
    """`model_dir`'s files as the hub cache stores a download: content-addressed blobs, a snapshot of
    relative symlinks to them, and refs/main naming the snapshot. Returns the repository's folder."""
    repo = hub_dir / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / rev
    for src in (p for p in model_dir.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, blob)
        link = snap / src.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(rev)
    return repo


@pytest.fixture(scope="module")
def cache(tmp_path_factory, random_musicgen_dir):
    from musicrl.tiny.clap import save_random_clap

    home = tmp_path_factory.mktemp("hf_home")
    clap_dir = save_random_clap(tmp_path_factory.mktemp("clap"))
    fake_cache(home / "hub", "acme/musicgen-random", random_musicgen_dir)
    fake_cache(home / "hub", "acme/clap-random", clap_dir)
    return home


def test_a_cache_folder_resolves_to_the_snapshot_refs_main_names(tmp_path, random_musicgen_dir):
    repo = fake_cache(tmp_path, "acme/m", random_musicgen_dir)
    fake_cache(tmp_path, "acme/m", random_musicgen_dir, rev="f" * 40, ref=False)  # a newer, unnamed one
    snap = repo / "snapshots" / REV
    assert hub.resolve(str(repo), "musicgen") == str(snap)
    assert hub.resolve(str(snap), "musicgen") == str(snap)  # a snapshot is a model directory already
    assert hub.resolve(str(random_musicgen_dir), "musicgen") == str(random_musicgen_dir)  # plain: itself
    (repo / "refs" / "main").unlink()
    assert hub.resolve(str(repo), "musicgen") == str(repo / "snapshots" / ("f" * 40))  # newest
    shutil.rmtree(repo / "snapshots")
    (repo / "snapshots").mkdir()
    with pytest.raises(UserError, match="without a snapshot"):
        hub.resolve(str(repo), "musicgen")


def test_the_policy_and_the_clap_reward_load_from_a_cache_folder_and_its_snapshot(cache):
    import torch

    from musicrl.model.policy import MusicGenPolicy
    from musicrl.rewards.clap import ClapReward

    repo = cache / "hub" / "models--acme--musicgen-random"
    for where in (repo, repo / "snapshots" / REV):
        policy = MusicGenPolicy.from_pretrained(str(where))
        assert policy.model.config.decoder.num_codebooks == 4
    clap = ClapReward.from_pretrained(cache / "hub" / "models--acme--clap-random")
    score = clap(torch.zeros(1, 1, 16_000), 16_000, ["a slow piano tune"])
    assert score.shape == (1,) and torch.isfinite(score).all()


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "musicrl.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})  # fmt: skip


@pytest.mark.slow
def test_a_hub_id_loads_offline_from_a_copied_cache_and_a_missing_one_is_a_fast_one_line_error(cache, tmp_path):
    env = {"HF_HOME": str(cache), "OMP_NUM_THREADS": "1"}
    r = run_cli("generate", "lofi beat", "--model", "acme/musicgen-random", "--duration", "0.2", "--threads", "1",
                "--out", str(tmp_path / "out"), env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "out").glob("*.wav"))) == 1
    start = time.monotonic()
    r = run_cli("generate", "x", "--model", "acme/not-downloaded", "--threads", "1", "--out", str(tmp_path / "o"),
                env={**env, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert time.monotonic() - start < 60  # the import and one cache lookup, no retries
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "hub is unreachable" in lines[0] and "hf download acme/not-downloaded" in lines[0]
    assert "models--acme--not-downloaded" in lines[0]
