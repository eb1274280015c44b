"""The app as a subprocess under 20 concurrent simulated voters (200 votes through the JSON API),
then killed with SIGKILL halfway through a second run: no confirmed vote is lost, the DB is sound.

Driven by `benchmarks/load_test.py` (which also prints the throughput table)."""

import pytest

pytest.importorskip("httpx")
pytest.importorskip("gradio")

from benchmarks import load_test  # noqa: E402


@pytest.fixture(scope="module")
def served_model(request):
    from musicrl.hub import TINY_DIR

    if (TINY_DIR / "musicgen" / "config.json").exists():
        return "tiny"
    return str(request.getfixturevalue("random_musicgen_dir"))


def _check(r: dict, votes: int) -> None:
    assert r["errors"] == [] and r["gave_up"] == 0, r["errors"]
    assert r["confirmed"] == votes  # every voter's vote got through, in the end
    assert r["missing"] == [] and r["mismatched"] == []  # each confirmed vote is stored, as sent
    assert r["integrity"] == "ok"
    assert r["stored_effective"] == votes  # one effective vote per pair, re-sent copies dropped


@pytest.mark.slow
def test_200_votes_from_20_concurrent_voters_all_stored(served_model, tmp_path):
    r = load_test.run(served_model, tmp_path, votes=200, voters=20, duration_s=0.5, timeout_s=300)
    print("\n" + load_test.table([r]))
    _check(r, 200)
    assert r["stored_rows"] == 200 and r["unconfirmed_rows"] == 0 and r["resent_votes"] == 0
    assert r["generate_p50_s"] > 0 and r["votes_per_s"] > 0


@pytest.mark.slow
def test_kill_9_mid_run_loses_no_confirmed_vote(served_model, tmp_path):
    r = load_test.run(served_model, tmp_path, votes=100, voters=20, duration_s=0.5, kill_after=50, timeout_s=300)
    print("\n" + load_test.table([r]))
    assert r["restarts"] == 1 and 50 <= r["confirmed_at_kill"] < 100  # killed mid-run, with voters waiting
    _check(r, 100)
    assert r["stored_rows"] == r["confirmed"] + r["unconfirmed_rows"]  # only lost answers add rows
    assert r["unconfirmed_rows"] <= r["resent_votes"]
