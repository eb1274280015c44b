"""The tiny world's corpus: deterministic clips, attributes, captions that say what the clip is."""

import json
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from musicrl.tiny import synth
from musicrl.tiny.attributes import register_hz
from musicrl.cli import main
from musicrl.errors import UserError


def test_example_is_a_pure_function_of_its_seed():
    a, b = synth.example(7, duration_s=1.0), synth.example(7, duration_s=1.0)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert (a.caption, a.attrs, a.seed) == (b.caption, b.attrs, b.seed)
    np.testing.assert_array_equal(synth.render(a.attrs, 1.0, seed=3), synth.render(a.attrs, 1.0, seed=3))


def test_different_seeds_differ():
    clips = [synth.example(s, duration_s=1.0) for s in range(4)]
    assert len({c.caption for c in clips}) == 4
    # the same attributes with another seed still give another melody
    x, y = synth.render(clips[0].attrs, 1.0, seed=0), synth.render(clips[0].attrs, 1.0, seed=1)
    assert np.abs(x - y).max() > 0.05


@pytest.mark.parametrize("instrument", synth.INSTRUMENTS)
def test_render_shape_level_and_every_instrument(instrument):
    attrs = synth.sample_attributes(np.random.default_rng(0), instrument=instrument, drums="full", register="high")
    x = synth.render(attrs, duration_s=1.5, sample_rate=16000, seed=1)
    assert x.dtype == np.float32 and x.shape == (24000,)
    assert np.isfinite(x).all() and 0.5 < np.abs(x).max() <= 0.95
    assert synth.render(attrs, duration_s=0.5, sample_rate=24000).shape == (12000,)


def test_instruments_sound_different():
    """Same score, six timbres: their spectral envelopes (log energy in 24 log-spaced bands) differ."""
    base = synth.sample_attributes(np.random.default_rng(0), drums="none")
    edges = np.geomspace(50, 8000, 25)
    envelopes = []
    for inst in synth.INSTRUMENTS:
        x = synth.render(synth.Attributes(**{**base.to_dict(), "instrument": inst}), 2.0, seed=0)
        power, f = np.abs(np.fft.rfft(x)) ** 2, np.fft.rfftfreq(len(x), 1 / 16000)
        envelopes.append([np.log10(power[(f >= lo) & (f < hi)].sum() + 1e-9) for lo, hi in zip(edges, edges[1:])])
    e = np.array(envelopes)
    dist = np.sqrt(((e[:, None] - e[None]) ** 2).mean(-1))  # [I, I] rms difference in decades
    assert dist[~np.eye(len(e), dtype=bool)].min() > 0.3


@pytest.mark.parametrize("contour, rises", [("rising", True), ("falling", False)])
def test_melody_follows_its_contour(contour, rises):
    for inst in ("piano", "organ", "square lead"):
        attrs = synth.sample_attributes(np.random.default_rng(1), instrument=inst, contour=contour, drums="none")
        x = synth.render(attrs, seed=2)
        first, second = register_hz(x[: len(x) // 2], 16000), register_hz(x[len(x) // 2 :], 16000)
        assert (second > first) == rises


def test_sample_attributes_is_uniform_and_pins():
    rng = np.random.default_rng(0)
    draws = [synth.sample_attributes(rng) for _ in range(1200)]
    for name, values in [("instrument", synth.INSTRUMENTS), ("tempo", tuple(synth.TEMPO_WORDS)),
                         ("mode", synth.MODES), ("register", synth.REGISTERS), ("drums", synth.DRUMS),
                         ("contour", synth.CONTOURS), ("key", tuple(range(12)))]:  # fmt: skip
        counts = Counter(getattr(d, name) for d in draws)
        assert set(counts) == set(values)
        expected = len(draws) / len(values)
        assert all(abs(c - expected) < 0.3 * expected for c in counts.values()), (name, counts)
    for d in draws:
        lo, hi = synth.TEMPO_WORDS[d.tempo]
        assert lo <= d.bpm <= hi
    pinned = synth.sample_attributes(rng, mode="minor", instrument="bell", tempo="fast")
    assert (pinned.mode, pinned.instrument, pinned.tempo) == ("minor", "bell", "fast")
    assert synth.sample_attributes(rng, bpm=100).tempo == "medium"
    with pytest.raises(UserError):
        synth.sample_attributes(rng, bpm=88)  # in the gap between slow and medium
    with pytest.raises(UserError):
        synth.sample_attributes(rng, colour="blue")


def test_attributes_dict_round_trip_and_validation():
    a = synth.sample_attributes(np.random.default_rng(3))
    assert synth.Attributes.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    with pytest.raises(UserError):
        synth.Attributes(**{**a.to_dict(), "mode": "dorian"})
    with pytest.raises(UserError):
        synth.Attributes(**{**a.to_dict(), "tempo": "slow", "bpm": 150.0})
    with pytest.raises(UserError):
        synth.Attributes.from_dict({"instrument": "piano"})


def _captions(split: str, n: int):
    offset = synth.HELDOUT_SEED_OFFSET if split == "heldout" else 0
    for s in range(n):
        attrs = synth.sample_attributes(np.random.default_rng([s, 0]))
        yield attrs, synth.caption(attrs, np.random.default_rng([s + offset, 1]), split)


@pytest.mark.parametrize("split", synth.SPLITS)
def test_parse_prompt_recovers_what_each_caption_names(split):
    named = Counter()
    for attrs, text in _captions(split, 600):
        parsed = synth.parse_prompt(text)
        assert len(parsed) >= 2, text
        for key, value in parsed.items():
            assert getattr(attrs, key) == value, (text, parsed)
        named.update(parsed.keys())
    # every attribute is named sometimes and omitted sometimes
    assert all(100 < named[k] < 600 for k in ("tempo", "mode", "register", "instrument", "drums")), named


def test_heldout_templates_and_synonyms_never_appear_in_train():
    assert not set(synth.TEMPLATES["train"]) & set(synth.TEMPLATES["heldout"])
    heldout_words = set()
    for table in (synth.SYNONYMS, synth.PHRASES):
        for values in table.values():
            for by_split in values.values():
                assert not set(by_split["train"]) & set(by_split["heldout"])
                heldout_words |= set(by_split["heldout"])
    train_text = " | ".join(text for _, text in _captions("train", 1500))
    for w in heldout_words:
        assert not re.search(r"(?<![\w-])" + re.escape(w) + r"(?![\w-])", train_text), w
    assert any(w in " ".join(t for _, t in _captions("heldout", 200)) for w in ("brisk", "mournful", "pianoforte"))


def test_text_prior_captions_use_every_word_in_train_templates_only():
    rng = np.random.default_rng(0)
    attrs = [synth.sample_attributes(rng) for _ in range(400)]
    texts = [synth.caption(a, rng, "train", words="all") for a in attrs]
    for a, text in zip(attrs, texts):  # still true captions of their clip
        assert all(getattr(a, k) == v for k, v in synth.parse_prompt(text).items()), text
    joined = " | ".join(texts)
    assert "brisk" in joined or "lively" in joined or "speedy" in joined  # held-out words appear
    assert "fast" in joined or "quick" in joined  # and so do train words
    # held-out sentence shapes never: their fixed words ("imagine", "i want a", "--") are absent
    assert not re.search(r"\bimagine\b|\bi want a\b| -- ", joined)
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)  # words=None is the split's own vocabulary
    assert synth.caption(attrs[0], r1, "heldout") == synth.caption(attrs[0], r2, "heldout", words="heldout")
    with pytest.raises(UserError):
        synth.caption(attrs[0], rng, "train", words="everything")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a fast upbeat piano melody in a bright major key, high register, with full drums",
         {"tempo": "fast", "instrument": "piano", "mode": "major", "register": "high", "drums": "full"}),
        ("slow melancholic organ tune in minor, low pitched, no percussion",
         {"tempo": "slow", "instrument": "organ", "mode": "minor", "register": "low", "drums": "none"}),
        ("bright-pitched chiptune lead", {"register": "high", "instrument": "square lead"}),
        ("deep bass-heavy sawtooth synth, somber, with kick and hi-hat",
         {"register": "low", "instrument": "saw bass", "mode": "minor", "drums": "kick-hat"}),
        ("Leisurely GLOCKENSPIEL ditty", {"tempo": "slow", "instrument": "bell"}),
        ("something nice", {}),
    ],
)
def test_parse_prompt_on_hand_written_text(text, expected):
    assert synth.parse_prompt(text) == expected


def test_heldout_examples_use_their_own_seeds():
    clips = list(synth.examples(2, start_seed=5, duration_s=0.5, split="heldout"))
    assert [c.seed for c in clips] == [synth.HELDOUT_SEED_OFFSET + 5, synth.HELDOUT_SEED_OFFSET + 6]
    with pytest.raises(UserError):
        synth.example(5, split="heldout")
    with pytest.raises(UserError):
        synth.example(synth.HELDOUT_SEED_OFFSET, split="train")


def test_cli_writes_clips_and_captions(tmp_path):
    out = tmp_path / "corpus"
    assert main(["synth", "--num", "3", "--out", str(out), "--seed", "10", "--duration", "0.5"]) == 0
    wavs = sorted(out.glob("*.wav"))
    assert len(wavs) == 3
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [10, 11, 12]
    for r in rows:
        audio, sr = sf.read(out / r["file"])
        info = sf.info(out / r["file"])
        assert sr == 16000 and audio.shape == (8000,) and info.subtype == "PCM_16"
        ex = synth.example(r["seed"], duration_s=0.5)
        assert r["caption"] == ex.caption and synth.Attributes.from_dict(r["attributes"]) == ex.attrs
        np.testing.assert_allclose(audio, ex.audio, atol=1 / 32000)


def test_cli_heldout_split_uses_heldout_seeds_and_words(tmp_path):
    out = tmp_path / "heldout"
    assert main(["synth", "--num", "2", "--out", str(out), "--duration", "0.25", "--split", "heldout"]) == 0
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [synth.HELDOUT_SEED_OFFSET, synth.HELDOUT_SEED_OFFSET + 1]
    assert [r["caption"] for r in rows] == [synth.example(r["seed"], 0.25, "heldout").caption for r in rows]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num", "0"], "--num must be >= 1"),
        (["--num", "2", "--duration", "0"], "--duration must be in"),
        (["--num", "2", "--duration", "nan"], "--duration must be in"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(tmp_path, capsys, args, message):
    assert main(["synth", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_unwritable_dir_exits_2_with_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = subprocess.run([sys.executable, "-m", "musicrl.cli", "synth", "--num", "1", "--out", str(blocker / "sub")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot create output directory" in r.stderr
