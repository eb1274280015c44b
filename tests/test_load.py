"""The app as a subprocess under 20 concurrent simulated voters (200 votes through the JSON API), then
again, killed with SIGKILL halfway: no confirmed vote is lost, the DB is sound.

Runs `benchmarks/load_test.py` as its users do, from the command line, and reads its JSON report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("gradio")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "load_test.py"


@pytest.fixture(scope="module")
def served_model(request):
    from musicrl.model.hub import TINY_DIR

    if (TINY_DIR / "musicgen" / "config.json").exists():
        return "tiny"
    return str(request.getfixturevalue("random_musicgen_dir"))


def _check(r: dict, votes: int) -> None:
    assert r["errors"] == [] and r["gave_up"] == 0, r["errors"]
    assert r["confirmed"] == votes  # every voter's vote got through, in the end
    assert r["missing"] == [] and r["mismatched"] == []  # each confirmed vote is stored, as sent
    assert r["integrity"] == "ok"
    # a pair takes one vote: a re-sent vote whose first try was stored got a 409 (answer_lost), no copy
    assert r["stored_effective"] == r["stored_rows"] == votes + r["answer_lost"]


@pytest.mark.slow
def test_200_votes_from_20_voters_all_stored_and_none_lost_to_kill_9(served_model, tmp_path):
    out = tmp_path / "load.json"
    cmd = [sys.executable, str(SCRIPT), "--model", served_model, "--votes", "200", "--voters", "20",
           "--duration", "0.5", "--kill-at", "0.5", "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    print(done.stdout[-3000:], done.stderr[-3000:])
    steady, killed = json.loads(out.read_text())
    _check(steady, 200)
    assert steady["stored_rows"] == 200 and steady["unconfirmed_rows"] == 0 and steady["resent_votes"] == 0
    assert steady["generate_p50_s"] > 0 and steady["votes_per_s"] > 0
    assert killed["restarts"] == 1 and 100 <= killed["confirmed_at_kill"] < 200  # killed mid-run, voters waiting
    _check(killed, 200)
    assert killed["unconfirmed_rows"] == killed["answer_lost"] <= killed["resent_votes"]  # only lost answers add rows
    assert done.returncode == 0
