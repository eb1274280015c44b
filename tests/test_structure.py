"""The package's shape: one installed namespace, imports that run one way, presets that ship inside it."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from musicrl.presets import config_dir, load_prompts, load_yaml

ROOT = Path(__file__).resolve().parent.parent
# The core: everything installed under `musicrl` but the tiny world itself and the CLI commands.
CORE = [p for p in (ROOT / "musicrl").rglob("*.py") if not {"tiny", "commands"} & set(p.relative_to(ROOT).parts)]
CORE += [*(ROOT / "app").rglob("*.py"), *(ROOT / "rewards").rglob("*.py")]
INSTALLED = [*(ROOT / "musicrl").rglob("*.py"), *(ROOT / "app").rglob("*.py"), *(ROOT / "rewards").rglob("*.py")]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_the_core_the_app_and_the_rewards_never_import_the_tiny_world():
    assert len(CORE) > 30  # the walk found the packages
    bad = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.startswith("musicrl.tiny"))
           for p in CORE}  # fmt: skip
    assert {k: v for k, v in bad.items() if v} == {}


def test_nothing_imports_a_top_level_app_rewards_or_benchmarks_package():
    tops = {"app", "rewards", "benchmarks", "experiments"}
    files = [*INSTALLED, *(ROOT / "tests").glob("*.py")]
    bad = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] in tops) for p in files}
    assert {k: v for k, v in bad.items() if v} == {}


def test_only_the_votes_package_talks_to_a_database():
    drivers = ("sqlalchemy", "sqlite3", "psycopg")
    outside = [p for p in INSTALLED if "votes" not in p.relative_to(ROOT).parts]
    bad = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] in drivers) for p in outside}
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("preset", sorted(str(p.relative_to(config_dir()).with_suffix("")) for p in config_dir().rglob("*.yaml")))
def test_every_shipped_preset_is_a_valid_config_whose_prompts_resolve(preset):
    from musicrl.tiny.prompts import rl_prompts
    from musicrl.train.po_config import DPOConfig
    from musicrl.train.rl_config import RLConfig

    data = load_yaml(preset)
    if data.pop("method", "rl") == "dpo":  # preference optimisation: votes come from the command line
        assert preset.startswith("po/") and DPOConfig.from_dict({**data, "votes": "votes.jsonl"}).steps >= 1
        return
    cfg = RLConfig.from_dict(data)
    prompts, eval_prompts = rl_prompts(cfg)
    assert len(prompts) >= cfg.prompts_per_step and len(eval_prompts) == cfg.eval_prompts_count
    assert not set(eval_prompts) & set(prompts)  # evaluation prompts are never training prompts


def test_shipped_prompt_lists_load_by_name_and_a_missing_one_is_a_one_line_error():
    from musicrl.errors import UserError

    train, evaluation = load_prompts("music-train"), load_prompts("music-eval")
    assert len(train) >= 1000 and len(evaluation) >= 200  # the real-music sets (experiments/make_music_prompts.py)
    assert len(set(train)) == len(train) and len(set(evaluation)) == len(evaluation)  # no duplicates
    assert not {p.lower() for p in train} & {p.lower() for p in evaluation}  # held out
    assert not [p for p in evaluation if p.startswith("#")]  # comment lines are not prompts
    with pytest.raises(UserError, match="music-train") as e:
        load_prompts("no-such-list")
    assert "\n" not in str(e.value)


def _copy_repo(dst: Path) -> Path:
    """The working tree as a source distribution would hold it (no venv, no git, no runs)."""
    skip = shutil.ignore_patterns(".git", ".venv", "runs", "out", "build", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(ROOT, dst, ignore=skip)
    return dst


@pytest.mark.slow
def test_a_regular_install_ships_one_namespace_and_runs_from_anywhere(tmp_path):
    """`pip install .` (not editable) into a fresh venv; then, outside the repository, the CLI generates
    and trains one step of the shipped preset, and only `musicrl.*` is importable."""
    site = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    src = _copy_repo(tmp_path / "src")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                   check=True, capture_output=True)  # fmt: skip
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    new_site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    # the dependencies (torch, transformers, ...) come from this environment, appended after the
    # venv's own site-packages: its editable `musicrl` finder is not loaded (.pth files there are not run)
    Path(new_site, "deps.pth").write_text(site + "\n")
    wheel = next(wheels.glob("musicrl-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}

    def run(*args, check=True):
        return subprocess.run([str(a) for a in args], cwd=work, env=env, capture_output=True, text=True, check=check)

    where = run(py, "-c", "import musicrl, musicrl.app, musicrl.rewards, musicrl.configs; print(musicrl.__file__)").stdout
    assert where.startswith(new_site), where
    for top in ("app", "rewards"):
        r = run(py, "-c", f"import {top}", check=False)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (top, r.stderr)
    sizes = run(py, "-c", "from musicrl.presets import load_prompts as p; print(len(p('music-train')), len(p('music-eval')))")
    assert [int(n) >= m for n, m in zip(sizes.stdout.split(), (1000, 200))] == [True, True], sizes.stdout
    cli = venv / "bin" / "musicrl"
    run(cli, "generate", "fast happy piano melody", "--duration", "1", "--out", work / "gen")
    assert list((work / "gen").glob("*.wav")) and list((work / "gen").glob("*.json"))
    run(cli, "train", "--config", "rl/musicrl-r", "steps=1", f"out_dir={work / 'run'}", "--threads", "1")
    assert (work / "run" / "final" / "model.safetensors").is_file() and (work / "run" / "metrics.csv").is_file()


def _anchors(md: Path) -> set[str]:
    """GitHub's anchor for each heading of a markdown file: lower case, punctuation dropped, spaces to '-'."""
    heads = [line.lstrip("#").strip() for line in md.read_text().splitlines() if re.match(r"#{1,6} ", line)]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_every_relative_link_in_the_docs_reaches_a_file_and_heading_that_exist():
    """Result pages get split and renamed; a link left pointing at the old page or heading is caught here."""
    pages = [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "experiments").glob("*.md"),
             *(ROOT / "musicrl" / "assets").rglob("*.md")]  # fmt: skip
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
