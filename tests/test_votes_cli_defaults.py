"""`musicrl votes stats|export` read the store `musicrl app` writes by default, with no flags."""

import json

import numpy as np

from musicrl.cli import main
from musicrl.votes.store import VoteStore


def _one_vote(data_dir):
    data_dir.mkdir()
    store = VoteStore(f"sqlite:///{data_dir / 'votes.db'}", data_dir)
    clips = [store.add_clip(np.full(800, 0.1 * (i + 1), np.float32), 8000, model_id=f"m{i}", model_version="v",
                            prompt="calm piano", seed=i) for i in range(2)]  # fmt: skip
    store.record_vote(clip_a=clips[0].id, clip_b=clips[1].id, choice="a", session="s", left="a",
                      listen_ms_a=2000, listen_ms_b=2000, pair_id="p1")  # fmt: skip
    store.close()


def test_stats_and_export_default_to_the_apps_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _one_vote(tmp_path / "musicrl-data")  # where `musicrl app` keeps it
    assert main(["votes", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["votes_effective"] == 1
    assert main(["votes", "export", "--out", "votes.jsonl"]) == 0
    (row,) = [json.loads(line) for line in (tmp_path / "votes.jsonl").read_text().splitlines()]
    assert row["choice"] == "a" and row["prompt"] == "calm piano"
    # --db alone: a SQLite store's clips are beside its file
    other = tmp_path / "elsewhere"
    _one_vote(other)
    assert main(["votes", "export", "--db", f"sqlite:///{other / 'votes.db'}", "--out", "other.jsonl"]) == 0
    assert len((tmp_path / "other.jsonl").read_text().splitlines()) == 1


def test_no_store_yet_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["votes", "stats"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "musicrl-data" in err
