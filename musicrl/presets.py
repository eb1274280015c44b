"""YAML presets -> dicts, with `key=value` overrides (dotted keys reach into nested mappings).

Presets are data, never executed: `yaml.safe_load` only. Validation is the config dataclass's job.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import yaml

from musicrl.errors import UserError


def config_dir() -> Path:
    """The shipped presets (the repository's configs/, installed as the package musicrl.configs)."""
    return Path(str(files("musicrl.configs")))


def load_yaml(spec: str) -> dict:
    """A path, or a preset name under configs/ (e.g. 'rl/musicrl-r' or 'rl/musicrl-r.yaml')."""
    root = config_dir()
    candidates = [Path(spec), root / spec, root / f"{spec}.yaml"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserError(f"config not found: {spec} (a YAML file, or a preset under {root})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of config keys")
    return _numbers(data)


# YAML 1.1 (PyYAML) reads 3e-4 as a string (it wants 3.0e-4); people write 3e-4
_EXP_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _numbers(obj):
    """Strings like '3e-4' anywhere in a loaded config -> float."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    if isinstance(obj, str) and _EXP_FLOAT.match(obj.strip()):
        return float(obj)
    return obj


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """['steps=10', 'reward.components.clap.weight=2'] -> a new dict; values parsed as YAML scalars."""
    out = yaml.safe_load(yaml.safe_dump(config))  # deep copy
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"override {key}: {p} is not a mapping")
        node[parts[-1]] = _numbers(value)
    return out


def load_prompts(spec: str) -> list[str]:
    """A text file, one prompt per line, or the name of a prompt list shipped under configs/prompts/."""
    path = Path(spec).expanduser()
    if not path.is_file():
        path = config_dir() / "prompts" / f"{spec}.txt"
    if not path.is_file():
        shipped = sorted(p.stem for p in (config_dir() / "prompts").glob("*.txt"))
        raise UserError(f"prompt file not found: {spec} (a text file, or one of: {', '.join(shipped)})")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise UserError(f"prompt file {spec} has no prompts")
    return prompts
