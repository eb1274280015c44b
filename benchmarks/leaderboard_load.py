"""The arena's leaderboard on a large vote store: /api/leaderboard and a UI vote, timed.

Seeds a vote store with `--votes` votes (default 100,000) in one transaction: `--models` models,
`--sessions` sessions, clip rows without WAV files (the leaderboard reads only vote rows). Then
serves the app over it, in process, with two fake generators (noise clips, no model runs), and
times, each `--repeats` times:

- `cold`: the first GET /api/leaderboard after start (everything read once);
- `warm`: GET /api/leaderboard again, no vote in between;
- `after vote`: GET /api/leaderboard right after a new vote through the API;
- `ui vote`: the UI's vote handler (the stored vote, the reveal and the refreshed leaderboard table;
  the plots are left to the tab), called as Gradio calls it, on a pair generated beforehand;
- `ui leaderboard tab`: opening the Leaderboard tab: its table, and its two plots drawn and encoded
  as PNG (the seeded votes are 10 s apart, so the win rate over time spans 11.6 days at 100k).

Prints a markdown table of median and max milliseconds; `--out` writes them as JSON.

    python benchmarks/leaderboard_load.py                      # SQLite, 100k votes
    python benchmarks/leaderboard_load.py --votes 100000 --db postgresql+psycopg://USER@HOST/DB
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402

from tests.test_votes_security import FakeGenerator  # noqa: E402  (noise clips: no model runs)


def seed_store(store, n_votes: int, n_models: int, n_sessions: int, seed: int = 0) -> None:
    """`n_votes` votes among `n_models` models (model k wins more the lower its k) in one transaction,
    on clip rows of their own (no WAV files). Writes the tables directly: the store's own path
    commits each vote durably, which would take hours at this size."""
    from musicrl.votes.schema import clips_table, votes_table

    rng = np.random.default_rng(seed)
    now = datetime.now(timezone.utc)
    n_clips = 50 * n_models
    clip_ids = [hashlib.sha256(f"bench-clip-{i}".encode()).hexdigest() for i in range(n_clips)]
    model_of = [i % n_models for i in range(n_clips)]
    clips = [dict(id=c, created_at=now, model_id=f"model-{model_of[i]}", model_version=f"{model_of[i]}" * 16,
                  prompt="bench", seed=i, settings={}, duration_s=1.0, sample_rate=8000)
             for i, c in enumerate(clip_ids)]  # fmt: skip
    sessions = [hashlib.sha256(f"bench-session-{i}".encode()).hexdigest()[:32] for i in range(n_sessions)]
    strength = -0.3 * np.arange(n_models)
    votes = []
    for k in range(n_votes):
        a, b = rng.choice(n_clips, 2, replace=False)
        ma, mb = model_of[a], model_of[b]
        p = 1 / (1 + np.exp(-(strength[ma] - strength[mb])))
        u = rng.random()
        choice = "tie" if u > 0.9 else ("a" if u < 0.9 * p else "b")
        votes.append(dict(created_at=now - timedelta(seconds=10 * (n_votes - k)), prompt="bench",  # 10 s apart
                          clip_a=clip_ids[a], clip_b=clip_ids[b], model_a=f"model-{ma}", model_a_version=f"{ma}" * 16,
                          model_b=f"model-{mb}", model_b_version=f"{mb}" * 16, left="a", choice=choice, listen_ms_a=2000,
                          listen_ms_b=2000, session=sessions[int(rng.integers(n_sessions))], supersedes=None,
                          pair_id=f"{k:032x}"))  # fmt: skip
    with store._db(write=True) as conn:
        conn.execute(clips_table.insert(), clips)
        for i in range(0, len(votes), 5000):
            conn.execute(votes_table.insert(), votes[i : i + 5000])
    if conn.dialect.name == "postgresql":  # what autovacuum does within a minute of a bulk load
        with store._db(write=True) as conn:
            conn.exec_driver_sql("ANALYZE votes, clips")


def _ms(f) -> float:
    t0 = time.perf_counter()
    f()
    return 1000 * (time.perf_counter() - t0)


def leaderboard_tab(h) -> None:
    """What opening the Leaderboard tab costs the server: its outputs, and the two figures encoded as
    PNG, as gradio does before sending them."""
    from gradio.processing_utils import encode_plot_to_base64

    for figure in h.leaderboard_outputs()[3:]:
        encode_plot_to_base64(figure, "png")


def run(db: str, work: Path, *, votes: int, models: int, sessions: int, repeats: int) -> dict:
    import httpx

    from musicrl.app.handlers import Handlers, UiSession
    from musicrl.app.limits import NO_RATE_LIMITS
    from musicrl.app.server import build_app, start_server
    from musicrl.votes.store import VoteStore

    store = VoteStore(db, work)
    t0 = time.perf_counter()
    seed_store(store, votes, models, sessions)
    seeded_s = time.perf_counter() - t0
    gens = [FakeGenerator("model-0", "0" * 16), FakeGenerator("model-1", "1" * 16)]
    demo = build_app(gens, store, min_listen_s=0.2, leaderboard_min_votes=5, seed=0, limits=NO_RATE_LIMITS)
    arena = demo.musicrl_arena
    h = Handlers(arena)
    out: dict = {"cold": [], "warm": [], "after vote": [], "ui vote": [], "ui leaderboard tab": []}
    with start_server(demo) as srv, httpx.Client(base_url=srv.url, timeout=600) as client:
        out["cold"].append(_ms(lambda: client.get("/api/leaderboard").raise_for_status()))
        for i in range(repeats):
            out["warm"].append(_ms(lambda: client.get("/api/leaderboard").raise_for_status()))
            pair = arena.generate_pair(f"bench prompt {i}", 0.5)
            pair = dataclasses.replace(pair, issued_at=pair.issued_at - 5)
            body = {"pair": arena.token(pair, f"api-voter-{i}"), "choice": "a", "listen_ms_a": 500, "listen_ms_b": 500}
            client.post("/api/vote", json=body).raise_for_status()
            out["after vote"].append(_ms(lambda: client.get("/api/leaderboard").raise_for_status()))
            s = UiSession()
            s.pair = dataclasses.replace(arena.generate_pair(f"bench ui prompt {i}", 0.5), left="a")
            s.pair = dataclasses.replace(s.pair, issued_at=s.pair.issued_at - 5)
            s.listening.listened = {"A": 1.0, "B": 1.0}
            out["ui vote"].append(_ms(lambda: h.on_vote("b")(s, None, None)))
            out["ui leaderboard tab"].append(_ms(lambda: leaderboard_tab(h)))
    n_after = len(store.votes())
    store.close()
    return {
        "db": store.url.split(":")[0],
        "votes_seeded": votes,
        "votes_after": n_after,
        "models": models,
        "sessions": sessions,
        "seed_s": round(seeded_s, 2),
        "ms": {k: {"median": round(statistics.median(v), 1), "max": round(max(v), 1), "n": len(v)} for k, v in out.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--votes", type=int, default=100_000)
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--sessions", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--db", default=None, help="an empty database URL (default: a new SQLite file in the work dir)")
    p.add_argument("--work", default=None, help="data dir (default: a new temp dir)")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="musicrl-lb-"))
    work.mkdir(parents=True, exist_ok=True)
    db = args.db or f"sqlite:///{work / 'votes.db'}"
    r = run(db, work, votes=args.votes, models=args.models, sessions=args.sessions, repeats=args.repeats)
    print(f"{r['votes_seeded']} votes seeded ({r['seed_s']} s), {r['models']} models, {r['sessions']} sessions, "
          f"{r['db']}, {os.cpu_count()} CPUs")  # fmt: skip
    print("| what | median ms | max ms | n |\n|---|---|---|---|")
    for k, v in r["ms"].items():
        print(f"| {k} | {v['median']} | {v['max']} | {v['n']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
