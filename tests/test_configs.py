"""YAML presets and key=value overrides (musicrl.presets)."""

from musicrl.presets import apply_overrides, load_yaml


def test_overrides_parse_yaml_scalars_and_exponent_floats():
    base = load_yaml("rl/musicrl-r")
    out = apply_overrides(base, ["lr=3e-4", "steps=10", "kl_coef=.5", "reward.components.clap.weight=2E0",
                                 "out_dir=runs/1e3x", "model=tiny"])
    assert out["lr"] == 3e-4 and isinstance(out["lr"], float)  # PyYAML alone gives the string '3e-4'
    assert out["steps"] == 10 and out["kl_coef"] == 0.5
    assert out["reward"]["components"]["clap"]["weight"] == 2.0
    assert out["out_dir"] == "runs/1e3x"  # not a number: stays a string
    assert base["lr"] == 2e-4  # the preset itself is untouched


def test_exponent_floats_in_a_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 3e-4\nreward: {components: {clap: {weight: 1e0}}}\nname: e5\n")
    data = load_yaml(str(path))
    assert data["lr"] == 3e-4 and data["reward"]["components"]["clap"]["weight"] == 1.0 and data["name"] == "e5"


def test_the_ru_presets_keep_their_kl_reference_on_the_model_given():
    """MusicRL-RU starts from an R run and is held by KL to it: `model=DIR` alone moves both. (With a
    `reference:` line the preset kept pointing at its own R run, and `model=DIR` stopped at start-up
    with 'no such model directory: runs/small-musicrl-r/final'.)"""
    from musicrl.train.rl_config import RLConfig

    for preset in ("rl/musicrl-ru", "rl/small/musicrl-ru"):
        cfg = RLConfig.from_dict(apply_overrides(load_yaml(preset), ["model=/data/my-r-run/final"]))
        assert cfg.model == "/data/my-r-run/final" and cfg.reference is None  # None: the starting model
        cfg = RLConfig.from_dict(apply_overrides(load_yaml(preset), ["reference=/data/other"]))
        assert cfg.reference == "/data/other"  # another reference is still one override away
