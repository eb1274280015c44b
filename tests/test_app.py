"""The voting app: JSON API, file serving, admin, limits (fast); a real browser session (slow).

Served model: the shipped `tiny` MusicGen if its assets are present, else a random-weight tiny
MusicGen (conftest), through the real `musicrl.model.generator.Generator`.
"""

import hashlib
import json
import os
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import soundfile as sf
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

httpx = pytest.importorskip("httpx")
pytest.importorskip("gradio")

from musicrl.app.arena import Listening  # noqa: E402
from musicrl.app.server import build_app, start_server  # noqa: E402
from musicrl.app.tokens import SESSION_COOKIE  # noqa: E402
from musicrl.model.generator import Generator  # noqa: E402
from musicrl.votes.files import read_codes  # noqa: E402
from musicrl.votes.store import SECRET_FILE, VoteStore, model_key  # noqa: E402
from tests.browser import chromium  # noqa: E402

SECRET = "open-sesame"


@pytest.fixture(scope="module")
def model_dir(request):
    from musicrl.model.hub import TINY_DIR

    if (TINY_DIR / "musicgen" / "config.json").exists():
        return "tiny"
    return str(request.getfixturevalue("random_musicgen_dir"))


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """One model (so pairs are two seeds of it), admin on, a reload hook, a small queue."""
    data = tmp_path_factory.mktemp("app-data")
    store = VoteStore(f"sqlite:///{data}/votes.db", data)
    gen = Generator.from_pretrained(model_dir)
    reloads = []

    def reload():
        reloads.append(1)
        return [Generator.from_pretrained(model_dir)]

    demo = build_app([gen], store, admin_secret=SECRET, reload=reload, max_prompt_chars=50, max_duration_s=3.0,
                     queue_size=2, leaderboard_min_votes=1, n_boot=50, seed=0, min_listen_s=0.2)  # fmt: skip
    with start_server(demo) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            yield client, store, demo.musicrl_arena, gen, reloads


def _generate(client, prompt="a calm piano melody", duration_s=1.0):
    r = client.post("/api/generate", json={"prompt": prompt, "duration_s": duration_s})
    assert r.status_code == 200, r.text
    return r.json()


def test_generate_serves_two_stored_clips_and_vote_reveals_after_commit(served):
    client, store, _, gen, _ = served
    before = len(store.votes())
    g = _generate(client)
    a, b = g["clips"]
    assert (a["slot"], b["slot"]) == ("a", "b") and a["id"] != b["id"]
    clips = [store.clip(c["id"]) for c in (a, b)]
    assert all(c.model_id == gen.model_id and c.model_version == gen.version for c in clips)
    assert clips[0].seed != clips[1].seed and clips[0].duration_s == pytest.approx(1.0, abs=0.05)
    codes = [torch.as_tensor(read_codes(store.clip_codes(c.id))) for c in clips]  # each clip's tokens, beside its WAV
    assert codes[0].shape == (gen.policy.num_codebooks, 50) and not torch.equal(codes[0], codes[1])
    assert clips[0].settings["guidance_scale"] == 3.0  # and how they were sampled
    heard = sf.read(clips[0].path, dtype="float32")[0]
    np.testing.assert_allclose(heard, gen.policy.decode(codes[0][None])[0, 0].clamp(-1, 1).numpy(), atol=1e-3)  # 16-bit PCM
    wav = client.get(a["url"])
    assert wav.status_code == 200 and wav.content[:4] == b"RIFF" and wav.content == clips[0].path.read_bytes()
    # the id is keyed (it hashes who made the clip too); the answer's sha256 is the served bytes'
    assert a["sha256"] == hashlib.sha256(wav.content).hexdigest() != a["id"]
    assert b["sha256"] == hashlib.sha256(client.get(b["url"]).content).hexdigest() != a["sha256"]
    assert "model" not in json.dumps(g)  # blind: nothing in the answer names the model
    r = client.post("/api/vote", json={"pair": g["pair"], "choice": "b", "listen_ms_a": 250, "listen_ms_b": 240})
    assert r.status_code == 200, r.text
    body = r.json()
    stored = store.votes()
    assert len(stored) == before + 1 and stored[-1].id == body["vote_id"]  # committed when the answer came
    assert (stored[-1].choice, stored[-1].clip_b, stored[-1].listen_ms_a, stored[-1].left) == ("b", b["id"], 250, "a")
    assert body["models"]["a"].startswith(gen.model_id) and body["counted"] is True
    fix = client.post("/api/vote", json={"pair": g["pair"], "choice": "tie", "listen_ms_a": 250, "listen_ms_b": 240,
                                         "supersedes": body["vote_id"]})  # fmt: skip
    assert fix.status_code == 200 and store.votes()[-1].supersedes == body["vote_id"] and not fix.json()["counted"]
    assert [v.choice for v in store.votes(effective=True) if v.clip_a == a["id"]] == ["b"]  # the blind vote counts
    lb = client.get("/api/leaderboard").json()
    assert lb["n_votes"] == 0 and lb["models"] == []  # two seeds of one model: no rating information


def test_bad_requests_get_clear_messages(served):
    client, _, arena, _, _ = served
    g = _generate(client)
    cases = [
        ("/api/generate", {"prompt": "x" * 51}, 400, "limit is 50"),
        ("/api/generate", {"prompt": "   "}, 400, "Type a prompt"),
        ("/api/generate", {"prompt": "piano", "duration_s": 60}, 400, "between 0.5 and 3"),
        ("/api/vote", {"pair": g["pair"], "choice": "left", "listen_ms_a": 200, "listen_ms_b": 200}, 400, "unknown choice"),
        ("/api/vote", {"pair": g["pair"], "choice": "a", "session": "me"}, 400, "session is the server's"),
        ("/api/vote", {"pair": g["pair"][:-2] + "00", "choice": "a"}, 400, "invalid pair token"),
        ("/api/vote", {"pair": "garbage", "choice": "a"}, 400, "invalid pair token"),
        ("/api/generate", {"prompt": "piano", "duration": 2}, 400, "duration: Extra inputs are not permitted"),
        ("/api/generate", {"duration_s": 2}, 400, "prompt: Field required"),
    ]
    for path, body, status, msg in cases:
        r = client.post(path, json=body)
        assert r.status_code == status and msg in r.json()["error"], (path, body, r.text)
    held = [arena._slots.acquire(blocking=False) for _ in range(2)]  # the queue is full
    try:
        r = client.post("/api/generate", json={"prompt": "piano"})
        assert r.status_code == 503 and "busy" in r.json()["error"]
    finally:
        for ok in held:
            if ok:
                arena._slots.release()
    assert client.get("/api/clips/" + "0" * 64 + ".wav").status_code == 404
    assert client.get("/api/clips/..%2F..%2Fvotes.db").status_code == 404


def test_files_are_served_only_from_the_clips_dir(served):
    client, store, _, _, _ = served
    g = _generate(client)
    clip = store.clip_path(g["clips"][0]["id"])
    assert client.get(f"/gradio_api/file={quote(str(clip))}").status_code == 200
    for path in (store.data_dir / SECRET_FILE, store.data_dir / "votes.db", Path("/etc/passwd"), Path(__file__)):
        assert path.exists()
        assert client.get(f"/gradio_api/file={quote(str(path))}").status_code == 403, path


def test_admin_actions_need_the_secret(served):
    client, store, _, gen, reloads = served
    assert client.get("/api/admin/models").status_code == 403
    assert client.get("/api/admin/models", headers={"X-Admin-Secret": "guess"}).status_code == 403
    models = client.get("/api/admin/models", headers={"X-Admin-Secret": SECRET}).json()["models"]
    assert models == [{"model": f"{gen.model_id}@{gen.version[:8]}", "model_id": gen.model_id, "version": gen.version,
                       "checkpoint": None}]  # fmt: skip
    assert client.post("/api/admin/reload").status_code == 403 and not reloads
    r = client.post("/api/admin/reload", headers={"X-Admin-Secret": SECRET})
    assert r.status_code == 200 and reloads == [1] and r.json()["models"] == models  # same weights, same version
    r = client.post("/api/admin/export", json={"format": "jsonl"}, headers={"X-Admin-Secret": SECRET})
    assert r.status_code == 200, r.text
    out = Path(r.json()["path"])
    assert out.parent == store.data_dir / "exports" and len(out.read_text().splitlines()) == r.json()["rows"]
    bad = client.post("/api/admin/export", json={"format": "xml"}, headers={"X-Admin-Secret": SECRET})
    assert bad.status_code == 400 and "unknown export format" in bad.json()["error"]


def test_two_models_are_paired_blind_and_at_random(model_dir, tmp_path):
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    g1, g2 = Generator.from_pretrained(model_dir), Generator.from_pretrained(model_dir)
    g2.model_id = "other"
    arena = build_app([g1, g2], store, seed=3, n_boot=10).musicrl_arena
    pairs = [arena.generate_pair("fast drums", 0.5) for _ in range(5)]
    assert all({p.a.model_id, p.b.model_id} == {g1.model_id, "other"} for p in pairs)
    assert len({p.a.model_id for p in pairs}) == 2 and len({p.left for p in pairs}) == 2  # order and side vary


def test_paired_seeds_draw_both_models_clips_of_a_pair_with_one_seed(model_dir, tmp_path):
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    g1, g2 = Generator.from_pretrained(model_dir), Generator.from_pretrained(model_dir)
    with torch.no_grad():  # a fine-tune of g1: the same seed must still give other audio
        w = next(g2.policy.model.decoder.parameters())
        w.add_(0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
    g2.model_id = "fine-tune"
    for paired in (True, False):
        arena = build_app([g1, g2], store, seed=3, n_boot=10, paired_seeds=paired).musicrl_arena
        try:
            pairs = [arena.generate_pair("fast drums", 0.5) for _ in range(3)]
        finally:
            arena.close()
        assert all((p.a.seed == p.b.seed) == paired for p in pairs)
        assert all({p.a.model_id, p.b.model_id} == {g1.model_id, "fine-tune"} for p in pairs)


def test_listening_adds_up_play_time():
    lis = Listening()
    lis.play("A", 10.0)
    lis.play("A", 10.5)  # a second play event while playing changes nothing
    assert lis.seconds("A", 11.0) == pytest.approx(1.0) and lis.playing
    lis.pause("A", 11.5)
    lis.pause("A", 12.0)  # pause and stop both fire at the end: counted once
    lis.play("A", 20.0)
    lis.pause("A", 20.25)
    assert lis.seconds("A", 99.0) == pytest.approx(1.75) and lis.seconds("B", 99.0) == 0.0 and not lis.playing


@pytest.mark.slow
def test_browser_generate_listen_vote_reveal_leaderboard(model_dir, tmp_path):
    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    g1, g2 = Generator.from_pretrained(model_dir), Generator.from_pretrained(model_dir)
    g2.model_id = "tiny-rival"
    demo = build_app([g1, g2], store, min_listen_s=1.0, default_duration_s=1.5, leaderboard_min_votes=1, n_boot=50, seed=1)
    timings = {}
    with start_server(demo) as srv, chromium() as (sync_api, browser):
        page = browser.new_page(viewport={"width": 1200, "height": 1300})
        expect = sync_api.expect
        t0 = time.monotonic()
        page.goto(srv.url)
        page.get_by_role("tab", name="Leaderboard").click()
        expect(page.locator("#leaderboard-note")).to_contain_text("0 votes between two different models")
        page.get_by_role("tab", name="Vote").click()
        page.locator("#prompt textarea").fill("a calm piano melody")
        page.locator("#generate").click()
        page.wait_for_selector("#clip-b .play-pause-button", timeout=30_000)
        timings["generate_s"] = time.monotonic() - t0
        expect(page.locator("#status")).to_contain_text("Listen to both clips")
        for b in ("a", "b", "tie", "both_bad"):
            expect(page.locator(f"#vote-{b}")).to_be_disabled()
        page.locator("#clip-a .play-pause-button").click()
        expect(page.locator("#status")).to_contain_text("A 1.0 / 1.0 s ✓", timeout=10_000)
        expect(page.locator("#vote-a")).to_be_disabled()  # B not heard yet
        page.locator("#clip-b .play-pause-button").click()
        expect(page.locator("#vote-a")).to_be_enabled(timeout=10_000)
        timings["listened_s"] = time.monotonic() - t0
        page.locator('#rating-a label:has-text("4")').click()
        page.locator("#vote-a").click()
        expect(page.locator("#reveal")).to_contain_text("you chose A", timeout=10_000)
        reveal = page.locator("#reveal").inner_text()
        expect(page.locator("#vote-b")).to_be_disabled()  # the reveal closes the pair
        cookie = next(c["value"] for c in page.context.cookies() if c["name"] == SESSION_COOKIE)
        assert "tiny-rival@" in reveal and f"{g1.model_id}@" in reveal
        page.get_by_role("tab", name="Leaderboard").click()
        expect(page.locator("#leaderboard-note")).to_contain_text("1 vote between two different models")
        expect(page.locator("#leaderboard")).to_contain_text("tiny-rival@")
        timings["voted_s"] = time.monotonic() - t0
        page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
        page.get_by_role("tab", name="Vote").click()
        page.screenshot(path=str(tmp_path / "vote.png"), full_page=True)
    (v,) = store.votes()
    left_clip = store.clip(v.clip_a if v.left == "a" else v.clip_b)
    assert v.choice == v.left  # "A is better" = the clip shown on the left
    assert v.session == store.hash_session(demo.musicrl_arena.session_from_cookie(cookie))  # the server's cookie
    assert f"A was {model_key(left_clip.model_id, left_clip.model_version)} (seed {left_clip.seed})" in reveal
    assert v.listen_ms_a >= 900 and v.listen_ms_b >= 900
    (rating,) = store.ratings()
    assert rating["rating"] == 4 and rating["clip_id"] == left_clip.id and rating["vote_id"] == v.id
    print(f"browser timings: {timings}; screenshots in {tmp_path}")


def test_the_prompt_box_suits_the_served_world(tmp_path, heldout_words):
    """The tiny LM knows only its training words: its examples are in them, at its training length;
    other models get the general examples; a file of examples overrides both; bad ones are one line."""
    from musicrl.tiny import synth
    from musicrl.cli import build_parser
    from musicrl.commands.app import examples_and_duration, read_examples
    from musicrl.errors import UserError
    from musicrl.train.checkpoints import INFO, step_dir

    DEFAULT_EXAMPLES, TINY_EXAMPLES = read_examples("examples"), read_examples("tiny-examples")

    def parse(*extra):
        return build_parser().parse_args(["app", *extra])

    assert examples_and_duration(parse(), ["tiny"]) == (TINY_EXAMPLES, 4.0)  # `musicrl app`: tiny
    assert examples_and_duration(parse(), ["facebook/musicgen-small"]) == (DEFAULT_EXAMPLES, 5.0)
    for start, expected in (("tiny", TINY_EXAMPLES), ("facebook/musicgen-small", DEFAULT_EXAMPLES)):
        run = tmp_path / f"run-{start.replace('/', '-')}"  # a `musicrl train` out_dir, served by --models-dir
        ckpt = step_dir(run, 10)  # a complete checkpoint, as the trainer writes it, recording its reference
        ckpt.mkdir(parents=True)
        (ckpt / "config.json").write_text("{}")
        (ckpt / "model.safetensors").write_bytes(b"")
        (ckpt / INFO).write_text(json.dumps({"step": 10, "reference": start}))
        assert examples_and_duration(parse("--models-dir", str(run)), [])[0] == expected
    for prompt in TINY_EXAMPLES:
        assert len(synth.parse_prompt(prompt)) >= 2, prompt
        assert not [w for w in heldout_words if w in prompt], prompt
    assert len(DEFAULT_EXAMPLES) >= 3 and len(TINY_EXAMPLES) >= 3 and set(DEFAULT_EXAMPLES).isdisjoint(TINY_EXAMPLES)
    assert examples_and_duration(parse("--examples", "tiny-examples"), ["facebook/musicgen-small"]) == (
        TINY_EXAMPLES, 5.0)  # a packaged list by name
    (tmp_path / "ex.txt").write_text("first prompt\n\n  second prompt \n")
    assert examples_and_duration(parse("--examples", str(tmp_path / "ex.txt"), "--duration", "3"), ["tiny"]) == (
        ("first prompt", "second prompt"), 3.0)
    (tmp_path / "empty.txt").write_text("\n")
    for extra, message in [(("--examples", str(tmp_path / "nope.txt")), "no such examples file"),
                           (("--examples", str(tmp_path / "empty.txt")), "has no prompts"),
                           (("--duration", "12"), "--duration must be in")]:
        with pytest.raises(UserError, match=message):
            examples_and_duration(parse(*extra), [])


def test_the_ui_votes_in_the_stores_vocabulary_and_never_imports_the_tiny_world():
    """One button per `CHOICES` entry, in its order; app/*.py imports nothing of `musicrl.tiny`."""
    import ast

    import musicrl.app
    from musicrl.app.handlers import VOTES
    from musicrl.votes.store import CHOICES

    assert tuple(c for c, *_ in VOTES) == CHOICES
    for path in sorted(Path(musicrl.app.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
            assert not [n for n in names if n == "musicrl.tiny" or n.startswith("musicrl.tiny.")], path


def test_a_fresh_arena_serves_the_tiny_base_and_its_musicrl_r_fine_tune(tmp_path):
    """`musicrl app` with no model flags: `tiny` and the shipped `tiny-r`, so its pairs rate something."""
    from musicrl.cli import build_parser
    from musicrl.commands.app import prepare

    demo, store, poller = prepare(build_parser().parse_args(["app", "--data-dir", str(tmp_path), "--reload-every", "0"]))
    arena = demo.musicrl_arena
    assert [g.model_id for g in arena.generators] == ["tiny", "tiny-r"] and poller is None
    assert arena.generators[0].version != arena.generators[1].version
    pair = arena.generate_pair("slow calm piano", 1.0)
    assert {pair.a.model_id, pair.b.model_id} == {"tiny", "tiny-r"}


def test_best_of_serves_each_model_beside_its_reranked_pick_and_reloads_keep_them(tmp_path, random_musicgen_dir):
    """`musicrl app --best-of 3`: the model and MODEL+best-of-3 meet blind; the latter's clip is the
    highest-CLAP of its 3 candidates, and a reload that loads nothing new swaps nothing."""
    from musicrl.cli import build_parser
    from musicrl.commands.app import prepare
    from musicrl.commands.common import load_rewards
    from musicrl.errors import UserError

    m = str(random_musicgen_dir)
    args = build_parser().parse_args(["app", "--model", m, "--best-of", "3", "--rerank", "clap=tiny",
                                      "--data-dir", str(tmp_path), "--reload-every", "0"])  # fmt: skip
    demo, store, _ = prepare(args)
    arena = demo.musicrl_arena
    before = arena.generators
    assert [g.model_id for g in before] == [m, f"{m}+best-of-3"] and before[1].generator is before[0]
    pair = arena.generate_pair("slow dark piano", 0.5)
    best = pair.a if pair.a.model_id.endswith("+best-of-3") else pair.b
    assert {pair.a.model_id, pair.b.model_id} == {m, f"{m}+best-of-3"}
    cands = best.settings["candidate_seeds"]
    assert best.settings["best_of"] == 3 and best.settings["rerank"] == "clap=tiny" and len(cands) == 3
    clips = Generator.from_pretrained(m).generate("slow dark piano", 3, 0.5, seed=cands[0])
    with torch.no_grad():
        scores = load_rewards("clap=tiny", "--rerank", "cpu")["clap"](
            torch.from_numpy(np.stack([c.audio for c in clips]))[:, None], clips[0].sample_rate, ["slow dark piano"] * 3)
    assert best.seed == cands[int(scores.argmax())]
    assert best.settings["scores"]["clap"] == pytest.approx(float(scores.max()), abs=1e-4)
    arena.reload_models()
    assert all(a is b for a, b in zip(arena.generators, before))
    with pytest.raises(UserError, match="--best-of must be >= 1"):
        prepare(build_parser().parse_args(["app", "--model", m, "--best-of", "0", "--data-dir", str(tmp_path)]))


def test_one_model_served_says_votes_are_kept_and_how_to_add_a_second(served):
    from musicrl.app.handlers import Handlers

    h = Handlers(served[2])
    note, table, _, ratings_fig, trend_fig = h.leaderboard_outputs()
    assert "No ratings yet" in ratings_fig.axes[0].texts[0].get_text()
    assert "Only one model is served" in trend_fig.axes[0].texts[0].get_text()
    for text in (h.serving_note(), note):
        assert "Only one model is served" in text and "votes are kept" in text
        assert "the leaderboard needs two models" in text and "--model tiny --model tiny-r" in text
    assert list(table.columns) == ["Rank", "Model", "Rating", "95% interval", "Votes", "Win rate", "Won / lost / tied"]


def test_the_leaderboard_tab_plots_ratings_and_the_win_rate_against_the_base(model_dir, tmp_path, monkeypatch):
    """The Leaderboard tab's figures: with no votes, notes instead of plots; with votes, each rated
    model's interval (best at the top) and the win rate of the other model against the first served
    one, vote by vote; a vote's own answer, or a store that cannot answer, leaves them as they are."""
    from matplotlib.figure import Figure

    from musicrl.app.handlers import Handlers
    from musicrl.votes.store import StoreUnavailable

    store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
    g1, g2 = Generator.from_pretrained(model_dir), Generator.from_pretrained(model_dir)
    g2.model_id = "other"
    arena = build_app([g1, g2], store, leaderboard_min_votes=1, n_boot=50, seed=0).musicrl_arena
    h = Handlers(arena)
    *_, ratings_fig, trend_fig = h.leaderboard_outputs()
    assert "No ratings yet" in ratings_fig.axes[0].texts[0].get_text()
    assert "No votes against the base model" in trend_fig.axes[0].texts[0].get_text()
    clip = {g.model_id: store.add_clip(np.zeros(1600, np.float32) + k, 16000, model_id=g.model_id, model_version=g.version,
                                       prompt="p", seed=k).id for k, g in enumerate((g1, g2))}  # fmt: skip
    for i, choice in enumerate(["a", "a", "tie", "b"]):  # 'other' is clip a: won, won, tied, lost
        store.record_vote(clip_a=clip["other"], clip_b=clip[g1.model_id], choice=choice, session=f"s{i}")
    note, table, _, ratings_fig, trend_fig = h.leaderboard_outputs()
    assert isinstance(ratings_fig, Figure) and isinstance(trend_fig, Figure) and "**4** votes" in note
    ax = ratings_fig.axes[0]
    top = max(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())))[1]
    assert top == table["Model"][0] == f"other@{g2.version[:8]}"  # sorted by rating, as the table
    ax = trend_fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [1, 1, 2.5 / 3, 2.5 / 4])
    assert ax.get_legend().get_texts()[0].get_text() == f"other@{g2.version[:8]} (4 votes)"
    assert g1.model_id in ax.get_ylabel()
    assert not any(isinstance(x, Figure) for x in h.leaderboard_outputs(figures=False))

    def down():
        raise StoreUnavailable("the vote database is busy")

    monkeypatch.setattr(arena, "leaderboard", down)
    out = h.leaderboard_outputs()
    assert "unavailable right now" in out[0] and not any(isinstance(x, Figure) for x in out)
    store.close()
