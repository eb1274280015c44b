"""Serving the newest checkpoint of a models dir: discovery, reloading what changed, the swap
between requests (generation in flight finishes on the old model, votes across the swap are kept),
and the whole thing through `musicrl app --models-dir` with a checkpoint written while it runs."""

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from musicrl.app.reload import ModelSet, Poller  # noqa: E402
from musicrl.train.checkpoints import newest_checkpoint  # noqa: E402
from musicrl.errors import UserError  # noqa: E402
from musicrl.model.generator import Clip  # noqa: E402
from musicrl.votes.store import VoteStore, model_key  # noqa: E402

SECRET = "reload-secret"


def _ckpt(path: Path, weights: str = "model.safetensors", config: bool = True) -> Path:
    path.mkdir(parents=True)
    if config:
        (path / "config.json").write_text("{}")
    if weights:
        (path / weights).write_bytes(b"w")
    return path


def test_newest_checkpoint_prefers_final_then_the_highest_complete_step(tmp_path):
    run = tmp_path / "run"
    assert newest_checkpoint(run) is None  # no such dir
    run.mkdir()
    assert newest_checkpoint(run) is None  # nothing trained yet
    (run / "checkpoints").mkdir()
    _ckpt(run / "checkpoints" / "step-9")
    assert newest_checkpoint(run) == run / "checkpoints" / "step-9"
    _ckpt(run / "checkpoints" / "step-000010")  # numeric order, whatever the padding
    _ckpt(run / "checkpoints" / ".step-000050.tmp")  # a save in progress
    _ckpt(run / "checkpoints" / "step-000040", weights="")  # weights not written yet
    _ckpt(run / "checkpoints" / "step-000041", config=False)
    _ckpt(run / "checkpoints" / "step-000060.old")
    (run / "checkpoints" / "step-000070").write_text("a file, not a checkpoint")
    assert newest_checkpoint(run) == run / "checkpoints" / "step-000010"
    _ckpt(run / "checkpoints" / "step-000020", weights="model.safetensors.index.json")  # a sharded save
    assert newest_checkpoint(run) == run / "checkpoints" / "step-000020"
    _ckpt(run / ".final.tmp")
    _ckpt(run / "final", weights="")  # incomplete final: fall back to the steps
    assert newest_checkpoint(run) == run / "checkpoints" / "step-000020"
    (run / "final" / "model.safetensors").write_bytes(b"w")
    assert newest_checkpoint(run) == run / "final"
    shutil.rmtree(run / "checkpoints")
    assert newest_checkpoint(run) == run / "final"


class FakeGen:
    max_duration_s = 10.0

    def __init__(self, model_id: str, version: str, gate: threading.Event | None = None):
        self.model_id, self.version = model_id, version
        self.gate, self.started = gate, threading.Event()

    def generate(self, prompt, num_samples, duration_s, seed, **settings):
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        salt = sum(self.version.encode())
        return [Clip(0.1 * np.random.default_rng([seed + i, salt]).standard_normal(int(16000 * duration_s)).astype(np.float32),
                     16000, seed + i) for i in range(num_samples)]  # fmt: skip


def test_model_set_loads_only_what_changed_and_keeps_a_model_when_a_load_fails(tmp_path):
    run, fixed = tmp_path / "run", _ckpt(tmp_path / "fixed")
    run.mkdir()
    loads, fail = [], set()

    def load(target, model_id):
        loads.append(target)
        if target in fail:
            raise OSError(f"{target} vanished\nmore detail")
        return FakeGen(model_id, f"v{len(loads)}")

    logs = []
    ms = ModelSet([str(fixed)], [str(run)], load, log=logs.append)
    assert [g.model_id for g in ms.refresh(strict=True)] == [str(fixed)]  # the run joins later
    assert loads == [str(fixed)] and any("no complete checkpoint yet" in m for m in logs)
    assert ms.refresh() and loads == [str(fixed)]  # nothing changed: nothing loaded
    step1 = _ckpt(run / "checkpoints" / "step-000001")
    gens = ms.refresh()
    assert [(g.model_id, g.checkpoint) for g in gens] == [(str(fixed), str(fixed)), (str(run), str(step1))]
    fail.add(str(run / "checkpoints" / "step-000002"))
    _ckpt(run / "checkpoints" / "step-000002")
    kept = ms.refresh()  # the load fails: step 1 stays served, and the next refresh tries again
    assert kept[1] is gens[1] and any("reload failed" in m and "more detail" not in m for m in logs)
    fail.clear()
    assert ms.refresh()[1].checkpoint == str(run / "checkpoints" / "step-000002")
    (fixed / "model.safetensors").unlink()  # new weights written into the --model directory
    (fixed / "model.safetensors").write_bytes(b"new weights")
    n = len(loads)
    assert ms.refresh()[0] is not gens[0] and loads[n:] == [str(fixed)]
    with pytest.raises(UserError, match="nothing to serve yet"):
        ModelSet([], [str(_empty(tmp_path))], load).refresh(strict=True)
    with pytest.raises(UserError, match="not a directory"):
        ModelSet([], [str(tmp_path / "missing")], load)
    with pytest.raises(UserError, match="given once"):
        ModelSet([], [str(run), str(run) + "/"], load)


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty-run"
    d.mkdir()
    return d


def test_swap_waits_for_the_generation_in_flight_and_loads_off_the_request_path(tmp_path):
    from musicrl.app.arena import Arena, ArenaConfig

    gate = threading.Event()
    old, new = FakeGen("run", "old0000000", gate), FakeGen("run", "new0000000")
    loading, proceed = threading.Event(), threading.Event()

    def reload():
        loading.set()
        assert proceed.wait(10)
        return [new]

    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    arena = Arena([old], store, ArenaConfig(seed=0, min_listen_s=0.0), reload)
    out = {}
    gen = threading.Thread(target=lambda: out.setdefault("pair", arena.generate_pair("slow piano", 0.5)))
    gen.start()
    assert old.started.wait(10)  # a generation is running on the old model
    swap = threading.Thread(target=arena.reload_models)
    swap.start()
    assert loading.wait(10)  # the new model is loading; requests are not held up by it
    proceed.set()
    time.sleep(0.3)
    assert swap.is_alive() and arena.generators == [old]  # loaded, but the swap waits for the generation
    gate.set()
    gen.join(10)
    swap.join(10)
    assert arena.generators == [new]
    before = out["pair"]
    assert {before.a.model_version, before.b.model_version} == {old.version}  # finished on the old model
    after = arena.generate_pair("slow piano", 0.5)
    assert {after.a.model_version, after.b.model_version} == {new.version}
    # a vote on a pair from before the swap is kept, for the old version
    v = arena.vote(before, "a", "voter", listen_ms_a=0, listen_ms_b=0)
    assert store.votes()[-1].id == v.id and (v.model_a_version, v.model_b_version) == (old.version, old.version)


def _write_checkpoint(src: Path, dst: Path, seed: int) -> str:
    """A copy of the model in `src` with perturbed decoder weights, written like the trainer does
    (a temp dir, then renamed). Returns the weights version the app will report."""
    import torch
    from transformers import MusicgenForConditionalGeneration

    from musicrl.model.generator import weights_version

    tmp = dst.parent / f".{dst.name}.tmp"
    shutil.copytree(src, tmp)
    model = MusicgenForConditionalGeneration.from_pretrained(tmp)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.save_pretrained(tmp)
    os.replace(tmp, dst)
    return weights_version(model.decoder)


def _wait(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (v := cond()):
            return v
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_app_serves_the_newest_checkpoint_and_keeps_votes_across_the_swap(random_musicgen_dir, tmp_path, monkeypatch):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("gradio")
    from musicrl.app.server import start_server
    from musicrl.cli import build_parser
    from musicrl.commands.app import prepare

    run = tmp_path / "musicrl-u"
    (run / "checkpoints").mkdir(parents=True)
    v1 = _write_checkpoint(random_musicgen_dir, run / "checkpoints" / "step-000001", seed=1)
    monkeypatch.setenv("MUSICRL_ADMIN_SECRET", SECRET)
    base = str(random_musicgen_dir)
    args = build_parser().parse_args(["app", "--model", base, "--models-dir", str(run), "--reload-every", "0.1",
                                      "--data-dir", str(tmp_path / "data"), "--min-votes", "1",
                                      "--min-listen", "0.2"])  # fmt: skip
    heard = {"listen_ms_a": 200, "listen_ms_b": 200}  # each clip played the minimum (0.2 s)
    demo, store, poller = prepare(args)
    admin = {"X-Admin-Secret": SECRET}
    with start_server(demo) as srv, httpx.Client(base_url=srv.url, timeout=60) as client, poller:

        def served():
            return {m["model_id"]: m for m in client.get("/api/admin/models", headers=admin).json()["models"]}

        assert served()[str(run)]["version"] == v1 and served()[str(run)]["checkpoint"].endswith("step-000001")

        def pair():
            r = client.post("/api/generate", json={"prompt": "fast drums, high register", "duration_s": 0.5})
            assert r.status_code == 200, r.text
            body = r.json()
            return body, {store.clip(c["id"]).model_id: store.clip(c["id"]).model_version for c in body["clips"]}

        before, models = pair()
        assert models == {base: served()[base]["version"], str(run): v1}
        _ckpt(run / "checkpoints" / ".step-000003.tmp")  # never served: a save in progress
        v2 = _write_checkpoint(random_musicgen_dir, run / "checkpoints" / "step-000002", seed=2)
        assert v2 != v1
        now = _wait(lambda: (m := served()[str(run)])["version"] == v2 and m)
        assert now["checkpoint"].endswith("step-000002")
        r = client.post("/api/vote", json={"pair": before["pair"], "choice": "a", **heard})
        assert r.status_code == 200, r.text  # the pair from before the swap: its vote counts for v1
        assert model_key(str(run), v1) in r.json()["models"].values()
        after, models = pair()
        assert models[str(run)] == v2
        r = client.post("/api/vote", json={"pair": after["pair"], "choice": "b", **heard})
        assert r.status_code == 200 and model_key(str(run), v2) in r.json()["models"].values()
        lb = client.get("/api/leaderboard").json()
        assert {model_key(str(run), v1), model_key(str(run), v2)} <= set(lb["models"]) and lb["n_votes"] == 2
    assert len(store.votes()) == 2


def test_models_dir_must_exist_and_have_something_to_serve(tmp_path, capsys):
    from musicrl.cli import main

    cases = [(["--models-dir", str(tmp_path / "nope")], "is not a directory"),
             (["--models-dir", str(_empty(tmp_path))], "no complete checkpoint in"),
             (["--reload-every", "-1"], "--reload-every must be >= 0")]  # fmt: skip
    for argv, msg in cases:
        assert main(["app", *argv, "--data-dir", str(tmp_path / "d")]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, err
    with pytest.raises(UserError, match="> 0 s"):
        Poller(lambda: None, 0)
