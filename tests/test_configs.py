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
