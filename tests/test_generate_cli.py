"""`musicrl generate` as a user runs it: files out, one-line errors in, real-size architecture too."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from musicrl.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "musicrl.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_generate_writes_wavs_and_sidecars(random_musicgen_dir, tmp_path, capsys):
    out = tmp_path / "clips"
    rc = main(["generate", "fast bright chiptune lead", "--model", str(random_musicgen_dir), "--duration", "0.5",
               "--num-samples", "2", "--seed", "5", "--out", str(out)])  # fmt: skip
    assert rc == 0
    wavs = sorted(out.glob("*.wav"))
    assert [w.name for w in wavs] == ["fast-bright-chiptune-lead-seed5.wav", "fast-bright-chiptune-lead-seed6.wav"]
    audio, sr = sf.read(wavs[0])
    assert sr == 16000 and audio.shape == (8000,) and np.isfinite(audio).all()
    meta = json.loads(wavs[0].with_suffix(".json").read_text())
    assert meta["prompt"] == "fast bright chiptune lead" and meta["seed"] == 5 and meta["guidance_scale"] == 3.0
    # the tokens beside the WAV decode to its audio
    from musicrl.model.policy import MusicGenPolicy
    from musicrl.votes.files import read_codes

    codes = read_codes(out / meta["codes"])
    assert meta["codes"] == "fast-bright-chiptune-lead-seed5.codes.npy" and codes.shape == (4, 25)
    decoded = MusicGenPolicy.from_pretrained(str(random_musicgen_dir)).decode(torch.as_tensor(codes)[None])[0, 0]
    np.testing.assert_allclose(audio, np.clip(decoded.numpy(), -1, 1), atol=1 / 32767 + 1e-6)
    # the same seed gives the same clip
    main(["generate", "fast bright chiptune lead", "--model", str(random_musicgen_dir), "--duration", "0.5",
          "--seed", "6", "--out", str(tmp_path / "again")])  # fmt: skip
    again, _ = sf.read(tmp_path / "again" / "fast-bright-chiptune-lead-seed6.wav")
    # (batched and single decoding may differ in the last bit of a 16-bit sample, not more)
    np.testing.assert_allclose(again, sf.read(wavs[1])[0], atol=1e-4)


def test_best_of_writes_each_groups_highest_scored_clip(random_musicgen_dir, tmp_path):
    from musicrl.commands.common import load_rewards
    from musicrl.model.generator import Generator

    prompt, out = "slow dark piano", tmp_path / "best"
    rc = main(["generate", prompt, "--model", str(random_musicgen_dir), "--duration", "0.5", "--num-samples", "2",
               "--best-of", "3", "--seed", "10", "--rerank", "clap=tiny", "--out", str(out)])  # fmt: skip
    assert rc == 0
    # every candidate, scored as the command scores them: clip j picks among seeds 10+3j .. 12+3j
    clips = Generator.from_pretrained(str(random_musicgen_dir)).generate(prompt, 6, 0.5, seed=10)
    clap = load_rewards("clap=tiny", "--rerank", "cpu")["clap"]
    with torch.no_grad():
        scores = clap(torch.from_numpy(np.stack([c.audio for c in clips]))[:, None], clips[0].sample_rate, [prompt] * 6)
    best = [10 + int(scores[:3].argmax()), 13 + int(scores[3:].argmax())]
    metas = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert sorted(m["seed"] for m in metas) == best
    for m in metas:
        assert m["best_of"] == 3 and m["rerank"] == "clap=tiny"
        assert m["candidate_seeds"] == ([10, 11, 12] if m["seed"] < 13 else [13, 14, 15])
        assert m["scores"]["clap"] == pytest.approx(float(scores[m["seed"] - 10]), abs=1e-4)
        assert m["scores"]["clap"] == pytest.approx(max(float(scores[s - 10]) for s in m["candidate_seeds"]), abs=1e-4)


def test_best_of_weighs_rewards_by_their_spread_not_their_scale():
    from musicrl.rewards.rerank import best_of

    big = torch.tensor([0.0, 100.0, 40.0, 1.0, 2.0, 3.0])  # on a scale 100x the other's
    small = torch.tensor([0.5, 0.0, 0.9, 0.0, 0.0, 0.0])
    assert best_of({"big": big}, 3).tolist() == [1, 5]
    # standardised, clip 2 (second on both) beats clip 1 (first on big, last on small)
    assert best_of({"big": big, "small": small}, 3).tolist() == [2, 5]
    assert best_of({"big": big}, 1).tolist() == list(range(6))


@pytest.mark.parametrize(
    "args, message",
    [
        (["   "], "prompt is empty"),
        (["x", "--duration", "0"], "--duration must be > 0"),
        (["x", "--duration", "-2"], "--duration must be > 0"),
        (["x", "--duration", "999"], "beyond this model's maximum"),
        (["x", "--model", "/no/such/dir"], "no such model directory"),
        (["x", "--model", "nobody/no-such-model"], "hub is unreachable"),
        (["x", "--out", "/proc/forbidden"], "cannot create output directory"),
        (["x", "--num-samples", "0"], "--num-samples must be >= 1"),
        (["x", "--best-of", "0"], "--best-of must be >= 1"),
        (["x", "--best-of", "2", "--rerank", "clap"], "--rerank item 'clap' is not name=model"),
        (["x", "--best-of", "2", "--rerank", "mine=/no/such/rm"], "/no/such/rm"),
    ],
)
def test_bad_input_gets_one_line_error(random_musicgen_dir, args, message):
    if "--model" not in args:
        args = [*args, "--model", str(random_musicgen_dir)]
    r = run_cli("generate", *args, "--out", "/tmp/musicrl-test-out") if "--out" not in args else run_cli("generate", *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_every_subcommand_has_help():
    from musicrl.cli import COMMANDS

    for name in COMMANDS:
        r = run_cli(name, "--help")
        assert r.returncode == 0 and "usage: musicrl " + name in r.stdout


@pytest.mark.parametrize("command, args", [
    ("generate", ["x", "--duration", "0.2"]),
    ("eval", ["--models", "tiny", "--num-prompts", "1", "--duration", "0.2"]),
    ("simulate-votes", ["--num", "1", "--duration", "0.2"]),
])  # fmt: skip
def test_model_commands_take_threads_and_refuse_a_negative_count(tmp_path, command, args):
    r = run_cli(command, *args, "--out", str(tmp_path / "out"), "--threads", "-1")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--threads must be >= 0" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_generate_threads_reach_torch(random_musicgen_dir, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["generate", "x", "--model", str(random_musicgen_dir), "--duration", "0.2", "--out", str(tmp_path),
                     "--threads", "1"]) == 0  # fmt: skip
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_default_to_one_for_the_shipped_tiny_models_only(monkeypatch):
    """A tiny model's decoding step is ~170 small ops: on a CPU another job shares, a second thread
    makes each op wait (up to 10x slower). So without --threads the shipped tiny models run on one
    thread; any other model keeps torch's choice, and an explicit --threads always wins."""
    from musicrl.commands.common import apply_threads

    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    apply_threads(None, ["tiny"])
    apply_threads(None, ["tiny", "tiny-r"])
    apply_threads(None, ["tiny", "facebook/musicgen-small"])  # a real model among them: torch's choice
    apply_threads(None, [])
    apply_threads(3, ["tiny"])
    apply_threads(0, ["tiny"])
    assert set_to == [1, 1, 3]
