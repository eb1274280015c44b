"""The quality (MOS) reward: synthetic (tiny world) and rated training, save/reload, purity, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from musicrl.tiny import synth
from musicrl.audio import write_wav
from musicrl.cli import main
from musicrl.tiny.degrade import degrade
from musicrl.errors import UserError
from musicrl.model.hub import TINY_DIR
from musicrl.tiny.clap import save_random_clap
from musicrl.rewards.quality import QualityReward
from musicrl.rewards.train_quality import QualityTrainConfig, spearman, train_quality_from_ratings
from musicrl.tiny.quality import TinyQualityConfig, synthetic_eval_set, train_tiny_quality
from musicrl.votes.rows import load_ratings


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    # a small vocabulary is enough for a random model
    return save_random_clap(tmp_path_factory.mktemp("clap"), n_captions=200)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    cfg = TinyQualityConfig(num_clips=40, eval_clips=55, duration_s=2.0, epochs=60)
    return out, train_tiny_quality(out, cfg, backbone="tiny", progress=False)


def test_synthetic_training_ranks_degradation_levels(trained):
    out, m = trained
    # the shipped CLAP as backbone but 40 clips, not 600: weaker than the shipped head (0.84, checked
    # below) but clearly ranking (measured 0.52; random backbones give 0.14-0.60, too spread to test on)
    assert m["spearman_vs_level"] > 0.35
    assert m["train_clips"] == 40 * 6
    assert set(m["spearman_by_kind"]) == {"noise", "clipping", "dropouts", "lowpass", "bitcrush"}
    assert (out / "quality_vs_level.png").stat().st_size > 1000
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "musicrl-quality" and config["train_config"]["num_clips"] == 40


def test_reload_is_identical_pure_and_in_range(trained):
    out, _ = trained
    reward = QualityReward.from_pretrained(out)
    audio = torch.as_tensor(np.stack([synth.example(i, 2.0).audio for i in range(3)]))[:, None]
    batched = reward(audio, synth.SAMPLE_RATE, ["", "x", "y"])
    single = torch.cat([reward(audio[i : i + 1], synth.SAMPLE_RATE, [""]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    assert torch.equal(QualityReward.from_pretrained(out)(audio, synth.SAMPLE_RATE, ["", "", ""]), batched)
    assert ((batched >= 1) & (batched <= 5)).all()


@pytest.mark.skipif(not (TINY_DIR / "quality" / "config.json").exists(), reason="tiny quality model not built yet")
def test_shipped_tiny_quality_ranks_held_out_degradations():
    reward = QualityReward.from_pretrained("tiny")
    clips, levels, _ = synthetic_eval_set(TinyQualityConfig(eval_clips=110, seed=1))
    audio = torch.as_tensor(np.stack([c for c, _ in clips]))[:, None]
    scores = reward(audio, synth.SAMPLE_RATE, [""] * len(clips)).numpy()
    assert -spearman(scores, levels) >= 0.7


def _rated_clips(tmp_path, n=8):
    rows = []
    for i in range(n):
        ex = synth.example(i, 1.0)
        level = (i % 4) / 3
        audio = degrade(ex.audio, synth.SAMPLE_RATE, "noise", level, np.random.default_rng(i))
        write_wav(tmp_path / f"c{i}.wav", audio, synth.SAMPLE_RATE)
        rows.append({"audio": f"c{i}.wav", "rating": 5 - round(4 * level)})
    return rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_training_from_a_ratings_file_averages_each_clip(tmp_path, clap_dir):
    rows = _rated_clips(tmp_path)
    path = _write(tmp_path / "ratings.jsonl", rows + [{"audio": "c0.wav", "rating": 1}])
    ratings = dict(load_ratings(path))
    assert len(ratings) == 8 and ratings[tmp_path / "c0.wav"] == 3.0  # (5 + 1) / 2
    cfg = QualityTrainConfig(epochs=5, val_fraction=0.25)
    m = train_quality_from_ratings(list(ratings.items()), tmp_path / "model", cfg, backbone=str(clap_dir),
                                   progress=False)
    assert m["val_clips"] == 2 and m["train_clips"] == 6 and 0 <= m["val_mae"] <= 4
    assert (tmp_path / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "row, message",
    [
        ({"audio": "c0.wav", "rating": 3, "stars": 2}, "unknown column"),
        ({"audio": "c0.wav"}, "missing column"),
        ({"audio": "c0.wav", "rating": 7}, "from 1 to 5"),
        ({"audio": "c0.wav", "rating": "good"}, "from 1 to 5"),
        ({"audio": "gone.wav", "rating": 3}, "clip file missing"),
    ],
)
def test_malformed_ratings_are_one_line_user_errors(tmp_path, row, message):
    rows = _rated_clips(tmp_path, 1)
    with pytest.raises(UserError, match=message) as e:
        load_ratings(_write(tmp_path / "r.jsonl", rows + [row]))
    assert "\n" not in str(e.value)


def test_empty_ratings_and_cli_exit_code(tmp_path, capsys):
    with pytest.raises(UserError, match="no ratings"):
        load_ratings(_write(tmp_path / "empty.jsonl", []))
    bad = _write(tmp_path / "bad.jsonl", [{"audio": "x.wav", "rating": 0}])
    assert main(["train-reward", "quality", "--ratings", str(bad), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "from 1 to 5" in err and len(err.splitlines()) == 1


def test_ratings_from_a_vote_store(tmp_path):
    from musicrl.votes.store import VoteStore

    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    c = store.add_clip(synth.example(0, 1.0).audio, synth.SAMPLE_RATE, model_id="m", model_version="1",
                       prompt="p", seed=0)
    store.add_rating(c.id, 4, session="s1")
    store.add_rating(c.id, 2, session="s2")
    store.close()
    ratings = load_ratings(f"sqlite:///{tmp_path}/votes.db")
    assert len(ratings) == 1 and ratings[0][1] == 3.0 and ratings[0][0].is_file()


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 50), rng.normal(size=50) + rng.integers(0, 5, 50)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
