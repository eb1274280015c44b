"""The shipped presets (YAML) and prompt lists, installed as `musicrl.configs` (package data only)."""
