"""`musicrl bootstrap tiny`: stage checks (the stages themselves are tested in their own modules)."""

import subprocess
import sys

import pytest

from musicrl.errors import UserError
from musicrl.tiny.bootstrap import bootstrap


def test_unknown_stage_and_missing_prerequisites_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown stage"):
        bootstrap(tmp_path, stages=("codec", "vocoder"), progress=False)
    with pytest.raises(UserError, match="needs the codec first"):
        bootstrap(tmp_path, stages=("lm",), progress=False)
    with pytest.raises(UserError, match="clap stage needs the codec first"):
        bootstrap(tmp_path, stages=("clap",), progress=False)
    with pytest.raises(UserError, match="needs the clap first"):
        bootstrap(tmp_path, stages=("quality",), progress=False)
    assert not (tmp_path / "musicgen").exists() and not (tmp_path / "clap").exists()  # nothing half-built


def test_finished_stages_are_skipped(tmp_path, capsys):
    (tmp_path / "codec").mkdir()
    (tmp_path / "codec" / "config.json").write_text("{}")
    assert bootstrap(tmp_path, stages=("codec",), progress=False) == {}  # no stage ran
    assert "codec: done already" in capsys.readouterr().out


def test_cli_gives_a_one_line_error():
    r = subprocess.run([sys.executable, "-m", "musicrl.cli", "bootstrap", "tiny", "--out", "/tmp/x", "--stages", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "unknown stage" in r.stderr
