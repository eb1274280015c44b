"""The closed loop's judge of round 2 (`musicrl.tiny.simulate.panel_expectation`): what the simulated
panel expects on the stored pairs."""

import json

import numpy as np

from musicrl.tiny.simulate import panel_expectation
from musicrl.tiny import synth
from musicrl.audio import write_wav


def _votes(tmp_path, n: int):
    """n round-2 pairs whose retrained clip has what the prompt asks (and the taste likes: full drums,
    major) and whose base clip has none of it, the retrained side alternating between a and b; plus
    one base-vs-base vote, which is not round 2."""
    rng = np.random.default_rng(0)
    want = dict(tempo="fast", mode="major", register="high", drums="full")
    other = dict(tempo="slow", mode="minor", register="low", drums="none")
    rows = []
    for i in range(n):
        good, bad = synth.sample_attributes(rng, **want), synth.sample_attributes(rng, **other)
        prompt = synth.caption(good, rng, "train")
        paths = []
        for name, attrs in (("good", good), ("bad", bad)):
            path = tmp_path / f"{i}_{name}.wav"
            write_wav(path, synth.render(attrs, 3.0, seed=i), synth.SAMPLE_RATE)
            paths.append(str(path))
        new_is_a = i % 2 == 0  # the retrained model's clip on side a, else on side b
        clip_a, clip_b = paths if new_is_a else paths[::-1]
        model_a, model_b = ("run", "tiny") if new_is_a else ("tiny", "run")
        rows.append({"prompt": prompt, "clip_a": clip_a, "clip_b": clip_b, "model_a": model_a,
                     "model_b": model_b, "choice": "tie"})  # fmt: skip
    rows.append({**rows[0], "model_a": "tiny", "model_b": "tiny"})
    path = tmp_path / "votes_all.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_expected_round2_sees_which_side_the_panel_prefers(tmp_path):
    path = _votes(tmp_path, 6)
    e = panel_expectation(path, "tiny", voters=5)
    assert e["pairs"] == 6  # the base-vs-base vote is not a round-2 pair
    assert e["p_retrained_wins_decisive"] > 0.9  # whichever side the retrained clip is on
    assert e["p_decisive"] == 1.0
    assert e["population_utility"]["retrained"] > e["population_utility"]["base"] + 1.0
    flipped = panel_expectation(path, "run", voters=5)  # now "tiny" is the challenger: the worse clips
    assert flipped["p_retrained_wins_decisive"] < 0.1
