"""Model comparison: paired win rates, intervals, KL, and the run plot."""

import numpy as np
import torch

from musicrl.train import evaluate as ev


def _samples(name, audio_level, P=4, n=2):
    audio = torch.full((P * n, 1, 100), float(audio_level))
    return ev.Samples(name, [f"p{i // n}" for i in range(P * n)], torch.zeros(P * n, 4, 5, dtype=torch.long), audio, 16000)


def test_compare_counts_wins_ties_and_losses():
    a, b = _samples("A", 0.1), _samples("B", 0.2)
    b.audio[:2] = 0.1  # prompt p0: a tie
    b.audio[2:4] = 0.05  # prompt p1: a loss
    judges = {"loud": lambda audio, sr, prompts: audio.abs().mean((1, 2))}
    r = ev.compare([a, b], judges, n=2)
    w = r["win_rates"]["loud"]["B over A"]
    assert (w["win"], w["tie"], w["loss"]) == (0.5, 0.25, 0.25)
    lo, hi = w["win_ci95"]
    assert w["score"] == 0.625 and lo < 0.625 < hi  # ties count half, in the score and its interval
    line = next(x for x in ev.format_report(r).splitlines() if "B over A: single pairs" in x)
    assert f"a tie as half a win: 62% (95% CI {lo:.0%}–{hi:.0%})" in line  # the interval printed beside its own score
    assert r["rewards"]["loud"]["A"]["mean"] == np.float32(0.1).item() or abs(r["rewards"]["loud"]["A"]["mean"] - 0.1) < 1e-6
    assert w["pairs"] == 8 and w["per_prompt_mean"]["pairs"] == 4  # single pairs of clips, and prompts
    assert w["per_prompt_mean"]["by_samples"] == {"1": 0.625, "2": 0.625}  # n = 2: the full mean again, ties half
    assert r["prompts"] == ["p0", "p1", "p2", "p3"]
    per_a, per_b = (np.array(r["rewards"]["loud"][m]["per_prompt"]) for m in "AB")
    assert np.allclose(per_b, [0.1, 0.05, 0.2, 0.2]) and np.allclose(per_a, 0.1)
    assert (per_b > per_a + 1e-9).mean() == w["win"]  # the win recounted from what the report keeps


def test_single_pairs_and_per_prompt_means_can_disagree():
    """B is much better on one clip of each prompt and a little worse on the other: its per-prompt
    means win every prompt, yet a listener comparing one clip with one clip prefers it half the time."""
    a, b = _samples("A", 0.5), _samples("B", 0.5)
    b.audio[0::2] = 0.9  # clip 0 of every prompt: far better
    b.audio[1::2] = 0.45  # clip 1: a little worse
    judges = {"loud": lambda audio, sr, prompts: audio.abs().mean((1, 2))}
    w = ev.compare([a, b], judges, n=2)["win_rates"]["loud"]["B over A"]
    assert (w["win"], w["loss"], w["pairs"]) == (0.5, 0.5, 8)
    assert w["per_prompt_mean"]["win"] == 1.0
    assert "single pairs win 50%, tie 0%, loss 50% of 8" in ev.format_report(ev.compare([a, b], judges, n=2))


def test_win_rate_by_samples_uses_each_prompts_first_clips():
    a = np.zeros((4, 4))
    b = np.array([
        [-1.0, 1, 1, 1],  # loses on its first clip, ties on 2, wins on 4
        [1.0, -3, 1, 1],  # wins on 1, loses on 2, ties on 4
        [1.0, 1, 1, 1],  # always wins
        [-1.0, -1, -1, 5],  # loses on 1 and 2, wins on 4
    ])  # fmt: skip
    assert ev.win_rate_by_samples(a, b) == {"1": 0.5, "2": 0.375, "4": 0.875}
    assert list(ev.win_rate_by_samples(a[:, :3], b[:, :3])) == ["1", "2", "3"]  # n itself ends the curve


def test_intervals():
    m, h = ev.mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    assert m == 2.5 and abs(h - 1.96 * np.std([1, 2, 3, 4], ddof=1) / 2) < 1e-12
    lo, hi = ev.wilson(50, 100)
    assert abs((lo + hi) / 2 - 0.5) < 1e-9 and 0.39 < lo < 0.41


def test_kl_to_itself_is_zero(random_policy):
    from musicrl.model.sampling import SamplingConfig

    s = SamplingConfig(top_k=0, guidance_scale=3.0)
    samples = ev.generate(random_policy, ["a", "b"], 1, 0.1, s, seed=0)
    mean, _ = ev.kl_to_reference(random_policy, random_policy, samples, s)
    assert abs(mean) < 1e-5


def test_generate_in_chunks_gives_the_clips_of_one_batch(random_policy):
    from musicrl.model.sampling import SamplingConfig

    s = SamplingConfig(top_k=0, guidance_scale=3.0)
    one = ev.generate(random_policy, ["a", "b", "c"], 2, 0.1, s, seed=5)
    chunked = ev.generate(random_policy, ["a", "b", "c"], 2, 0.1, s, seed=5, max_rows=3)  # one prompt a chunk
    assert chunked.prompts == one.prompts == ["a", "a", "b", "b", "c", "c"]
    assert torch.equal(chunked.codes, one.codes) and torch.allclose(chunked.audio, one.audio, atol=1e-5)
    assert len(set(map(tuple, one.codes.flatten(1).tolist()))) == 6  # the rows differ: the check has teeth


def test_kl_to_the_same_model_at_another_guidance(random_policy):
    from musicrl.train.rl_trainer import exact_kl
    from musicrl.model.sampling import SamplingConfig

    # random weights: conditional and unconditional logits are close, so the scales must be far apart
    s, ref = SamplingConfig(top_k=0, guidance_scale=20.0), SamplingConfig(top_k=0, guidance_scale=3.0)
    samples = ev.generate(random_policy, ["a", "b"], 1, 0.1, s, seed=0)
    mean, _ = ev.kl_to_reference(random_policy, random_policy, samples, s, reference_sampling=ref)
    with torch.no_grad():
        direct = exact_kl(random_policy.distributions(samples.prompts, samples.codes, s),
                          random_policy.distributions(samples.prompts, samples.codes, ref)).sum((1, 2)).mean().item()
    assert mean > 1e-3 and abs(mean - direct) < 1e-4 * max(1.0, direct)


def test_plot_run_draws_each_reward_component_on_its_own_panel(tmp_path):
    rows = ["step,reward,kl,reward/clap,reward/quality"] + [f"{i},0.1,{i / 100},0.3,3.{i}" for i in range(1, 9)]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "eval.csv").write_text("step,eval/clap,eval/quality,eval/kl_seq\n4,0.31,3.5,2.0\n8,0.33,3.6,4.0\n")
    out = ev.plot_run(tmp_path)
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    width = int.from_bytes(png[16:20], "big")  # IHDR: the scatter panel + one per component
    assert width == round(5.5 * 3 * 110)


def test_plot_report_puts_every_model_on_each_reward_panel(tmp_path):
    models = ["tiny", "runs/r/checkpoints/step-000240", "runs/ema/checkpoints/step-000240"]
    report = {
        "models": models,
        "rewards": {n: {m: {"mean": 0.3 + i / 100, "ci95": 0.01} for i, m in enumerate(models)} for n in ("clap", "quality")},
        "kl": {models[1]: {"mean": 98.0, "ci95": 1.5}, models[2]: {"mean": 40.0, "ci95": 1.0}},
    }
    out = ev.plot_report(report, tmp_path / "report.png")
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert int.from_bytes(png[16:20], "big") == round(5.5 * 2 * 110)  # one panel per reward
    assert int.from_bytes(png[20:24], "big") == round(4 * 110)  # no win-rate curves: one row

    report["win_rates"] = {n: {f"{m} over tiny": {"per_prompt_mean": {"by_samples": {"1": 0.5, "2": 0.55, "4": 0.6}}} for m in models[1:]}
                           for n in ("clap", "quality")}  # fmt: skip
    out = ev.plot_report(report, tmp_path / "curves.png")
    assert int.from_bytes(out.read_bytes()[20:24], "big") == round(4 * 2 * 110)  # a second row: win rate vs clips


def test_eval_cli_samples_at_the_asked_temperature_and_records_it(random_musicgen_dir, tmp_path, capsys):
    """`musicrl eval --temperature` reaches the sampler: the report records the settings the clips were
    drawn with, a cooler sampler draws other clips from the same seeds, and a bad value is a one-line error."""
    import json

    from musicrl.cli import main

    def run(temperature: str) -> dict:
        out = tmp_path / f"t{temperature}.json"
        rc = main(["eval", "--models", f"tiny,{random_musicgen_dir}", "--rewards", "clap=tiny",
                   "--num-prompts", "2", "--duration", "0.5", "--temperature", temperature, "--out", str(out),
                   "--threads", "1"])  # fmt: skip
        assert rc == 0
        return json.loads(out.read_text())

    warm, cool = run("1.0"), run("0.3")
    assert cool["sampling"] == {"temperature": 0.3, "top_k": 250, "top_p": 0.0, "guidance_scale": 3.0,
                                "duration_s": 0.5, "seed": 0}  # fmt: skip
    assert cool["kl"][str(random_musicgen_dir)]["mean"] > warm["kl"][str(random_musicgen_dir)]["mean"] > 0
    scores = lambda r: r["rewards"]["clap"][str(random_musicgen_dir)]["per_prompt"]
    assert scores(warm) != scores(cool)
    capsys.readouterr()
    assert main(["eval", "--models", "tiny,tiny", "--temperature", "0"]) == 2
    assert capsys.readouterr().err.strip() == "musicrl eval: error: temperature must be > 0, got 0.0"
