"""Load test of the voting app: concurrent simulated voters through its JSON API, and a crash mid-run.

The app runs as a subprocess (`musicrl app --model M --host 127.0.0.1 --port P`, a fresh data dir
and SQLite store). `--voters` threads each play one `musicrl.tiny.simulate` rater: POST /api/generate,
download both WAVs (checked against the SHA-256 the answer gives for each), judge them, POST /api/vote; until
`--votes` votes are confirmed in all. Every request has a timeout and every retry loop a bound.

Two runs:
- `steady`: afterwards every vote the API confirmed is in the store (same ids, same choices), and
  nothing else is;
- `kill-9`: after about half the votes the app is killed with SIGKILL and started again on the
  same store; voters ride it out (retrying refused connections, re-sending a vote whose answer was
  lost with the same signed pair token). Afterwards the store is opened by a new `VoteStore`:
  every confirmed vote is there, and `PRAGMA integrity_check` says ok. A pair token takes one
  vote, so a re-sent vote whose first try was stored gets a 409: that vote is stored but was never
  confirmed to the voter, who counts it as `answer_lost` and votes on a new pair instead.

The app runs without per-client rate limits (`--generate-rate 0 --vote-rate 0`): all voters
come from one address. Each voter keeps the session cookie the app issues (one session per voter), and votes no sooner
than a clip's length after the pair arrived, reporting that as its listening time (the app checks
both against its minimum listen time).

Prints a markdown table (votes/s, pairs/s, generate and vote latency p50/p95, 503s, lost votes,
the app's generation batch sizes); `--out` writes the report as JSON.

`--compare-batching`: instead of the two runs above, steady runs with batched generation off
(`--batch-window-ms 0`, one generation at a time) and on (`--batch-window-ms W --max-batch N`),
interleaved over `--rounds` rounds (off, on; then on, off; ...) so that load from other jobs falls on
both alike; then the ratio of the medians of pairs/s. Batch sizes come from the app's
GET /api/admin/batches ({requests in a batch: batches}) at the end of each run.

    python benchmarks/load_test.py                      # tiny if shipped, else a random tiny MusicGen
    python benchmarks/load_test.py --model DIR --votes 200 --voters 20 --duration 0.5 --out load.json
    python benchmarks/load_test.py --compare-batching --rounds 2 --out batching.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import numpy as np  # noqa: E402

RETRY_STATUS = (502, 503, 504)
ADMIN_SECRET = "load-test"  # the app's admin routes, for its batch sizes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_model(scratch: Path) -> str:
    from musicrl.model.hub import TINY_DIR

    if (TINY_DIR / "musicgen" / "config.json").exists():
        return "tiny"
    from musicrl.tiny.musicgen import save_random

    return str(save_random(scratch / "random-musicgen"))


class AppProcess:
    """`musicrl app` as a subprocess on a loopback port; its output goes to `log`."""

    def __init__(self, model: str, data_dir: Path, port: int, log: Path, extra: tuple[str, ...] = ("--reload-every", "0")):
        self.cmd = [sys.executable, "-m", "musicrl.cli", "app", "--model", model, "--data-dir", str(data_dir),
                    "--host", "127.0.0.1", "--port", str(port), "--queue-size", "64", "--min-votes", "1",
                    "--max-duration", "5", "--threads", "1",
                    # the voters share one address: the per-client rate limits (which have their own
                    # tests) would make this a test of them
                    "--generate-rate", "0", "--vote-rate", "0", *extra]  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                    "GRADIO_ANALYTICS_ENABLED": "False", "MUSICRL_ADMIN_SECRET": ADMIN_SECRET}  # fmt: skip

    def start(self, timeout_s: float = 180.0) -> float:
        """Start and wait until /api/health answers; returns the start-up time in seconds."""
        import httpx

        t0 = time.monotonic()
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the app did not answer within {timeout_s:.0f} s:\n{self.log.read_text()[-3000:]}")

    def batch_sizes(self) -> dict[int, int]:
        """The app's {requests in a batch: batches served} since it started (GET /api/admin/batches)."""
        import httpx

        r = httpx.get(self.url + "/api/admin/batches", headers={"X-Admin-Secret": ADMIN_SECRET}, timeout=10)
        r.raise_for_status()
        return {int(k): v for k, v in r.json()["batch_sizes"].items()}

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)


@dataclass
class Tally:
    """What the voters saw, shared between their threads (under `lock`)."""

    target: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    claimed: int = 0  # votes confirmed or in progress
    confirmed: dict = field(default_factory=dict)  # vote_id -> (session, clip_a, clip_b, choice)
    generate_s: list = field(default_factory=list)
    pairs: int = 0  # pairs served (generate answered 200)
    vote_s: list = field(default_factory=list)
    busy: int = 0  # 503 answers
    conn_errors: int = 0  # refused / reset / timed out requests (retried)
    resent: int = 0  # votes sent again after their answer was lost
    answer_lost: int = 0  # re-sent votes answered 409: the first try was stored, its answer lost
    gave_up: int = 0
    errors: list = field(default_factory=list)

    def claim(self) -> bool:
        with self.lock:
            if self.claimed >= self.target:
                return False
            self.claimed += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.claimed -= 1
            self.gave_up += 1


class GiveUp(Exception):
    pass


def _request(client, tally: Tally, method: str, url: str, deadline: float, **kw):
    """One request, retried on refused connections, timeouts and 502-504 until `deadline`.
    Returns (response, seconds of the successful attempt, attempts)."""
    import httpx

    attempts, pause = 0, 0.05
    while True:
        attempts += 1
        t0 = time.monotonic()
        try:
            r = client.request(method, url, **kw)
            if r.status_code not in RETRY_STATUS:
                return r, time.monotonic() - t0, attempts
            with tally.lock:
                tally.busy += r.status_code == 503
        except httpx.TransportError:
            with tally.lock:
                tally.conn_errors += 1
        if time.monotonic() + pause > deadline:
            raise GiveUp(f"{method} {url}: no answer before the deadline")
        time.sleep(pause)
        pause = min(1.0, pause * 2)


def coin_vote(rng: np.random.Generator) -> str:
    """A vote without listening: what `--judge coin` voters send (no audio analysis on the client)."""
    return str(rng.choice(["a", "b", "tie"]))


def voter(i: int, rater, url: str, tally: Tally, duration_s: float, deadline: float, seed: int) -> None:
    """One voter's loop; `rater` None: coin votes (`coin_vote`) instead of the rater's judgement."""
    import httpx
    import soundfile as sf

    from musicrl.tiny import synth
    from musicrl.model.generator import Clip

    rng = np.random.default_rng([seed, i])
    session = f"voter-{i:02d}"  # the voter's name in reports; the app's session is its cookie
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < deadline and tally.claim():
            try:
                prompt = synth.caption(synth.sample_attributes(rng), rng, "train")
                r, dt, _ = _request(client, tally, "POST", "/api/generate", deadline,
                                    json={"prompt": prompt, "duration_s": duration_s})  # fmt: skip
                if r.status_code != 200:
                    raise GiveUp(f"generate: {r.status_code} {r.text[:200]}")
                with tally.lock:
                    tally.pairs += 1
                served_at, body = time.monotonic(), r.json()
                clips = []
                for c in body["clips"]:
                    w, _, _ = _request(client, tally, "GET", c["url"], deadline)
                    # the id is keyed by the server's secret; the answer's sha256 is what the bytes can be checked by
                    if w.status_code != 200 or hashlib.sha256(w.content).hexdigest() != c["sha256"]:
                        raise GiveUp(f"clip {c['id'][:12]}: {w.status_code}, or its bytes do not match its sha256")
                    if rater is not None:
                        audio, sr = sf.read(io.BytesIO(w.content), dtype="float32")
                        clips.append(Clip(audio, sr))
                choice = rater.vote(body["prompt"], clips[0], clips[1]) if rater is not None else coin_vote(rng)
                time.sleep(max(0.0, served_at + duration_s - time.monotonic()))  # both clips heard (in parallel)
                vote = {"pair": body["pair"], "choice": choice,
                        "listen_ms_a": int(1000 * duration_s), "listen_ms_b": int(1000 * duration_s)}  # fmt: skip
                r, vt, attempts = _request(client, tally, "POST", "/api/vote", deadline, json=vote)
                if r.status_code == 409 and attempts > 1:  # stored by the try whose answer was lost
                    with tally.lock:
                        tally.claimed -= 1
                        tally.answer_lost += 1
                        tally.resent += attempts - 1
                    continue
                if r.status_code != 200:
                    raise GiveUp(f"vote: {r.status_code} {r.text[:200]}")
                with tally.lock:
                    tally.generate_s.append(dt)
                    tally.vote_s.append(vt)
                    tally.resent += attempts - 1
                    tally.confirmed[int(r.json()["vote_id"])] = (session, body["clips"][0]["id"], body["clips"][1]["id"], choice)
            except Exception as e:  # noqa: BLE001 (a voter records any failure and goes on)
                with tally.lock:
                    tally.errors.append(f"{session}: {e}")
                tally.release()


def _pct(xs: list, q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def _batch_summary(sizes: dict[int, int]) -> dict:
    """{size: batches} -> the histogram, batches, mean (requests per batch) and max."""
    n = sum(sizes.values())
    mean = sum(k * v for k, v in sizes.items()) / n if n else float("nan")
    return {"batch_sizes": {str(k): v for k, v in sorted(sizes.items())}, "batches": n,
            "batch_mean": round(mean, 2), "batch_max": max(sizes, default=0)}  # fmt: skip


def run(model: str, work: Path, *, votes: int = 200, voters: int = 20, duration_s: float = 0.5,
        kill_after: int | None = None, seed: int = 0, timeout_s: float = 600.0,
        app_args: tuple[str, ...] = (), judge: str = "rater") -> dict:  # fmt: skip
    """One load-test run in `work` (a new data dir); `kill_after`: SIGKILL the app after that many
    confirmed votes, then start it again; `app_args`: more `musicrl app` flags; `judge`: "rater"
    (the simulated raters hear both clips) or "coin" (votes at random: no audio analysis in this
    process, which shares the CPU with the app). Returns the report (see `TABLE` for the main
    figures; batch sizes are the last app process's)."""
    from musicrl.tiny.simulate import Panel
    from musicrl.votes.store import VoteStore

    data = work / "data"
    data.mkdir(parents=True)
    app = AppProcess(model, data, free_port(), work / "app.log", extra=("--reload-every", "0", *app_args))
    startup_s = app.start()
    panel = Panel.default(voters, seed=seed)
    tally = Tally(votes)
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    raters = panel.raters if judge == "rater" else [None] * voters
    threads = [threading.Thread(target=voter, args=(i, raters[i], app.url, tally, duration_s, deadline, seed),
                                name=f"voter-{i}", daemon=True) for i in range(voters)]  # fmt: skip
    for t in threads:
        t.start()
    restarts, at_kill, restart_s = 0, None, None
    try:
        if kill_after is not None:
            while len(tally.confirmed) < kill_after and any(t.is_alive() for t in threads):
                time.sleep(0.01)
            app.kill9()
            at_kill = len(tally.confirmed)
            restart_s = app.start()
            restarts = 1
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 5)
        wall = time.monotonic() - t0
        batches = _batch_summary(app.batch_sizes())
    finally:
        app.stop()
    store = VoteStore(f"sqlite:///{data / 'votes.db'}", data)  # a new reader, as after a restart
    try:
        stored = {v.id: v for v in store.votes()}
        effective = store.votes(effective=True)
    finally:
        store.close()
    with sqlite3.connect(data / "votes.db") as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    missing = sorted(set(tally.confirmed) - set(stored))
    mismatched = sorted(i for i, (_, a, b, c) in tally.confirmed.items()
                        if i in stored and (stored[i].clip_a, stored[i].clip_b, stored[i].choice) != (a, b, c))  # fmt: skip
    n = len(tally.confirmed)
    return {
        "run": "kill-9" if kill_after is not None else "steady",
        "app_args": list(app_args),
        "judge": judge,
        "model": model,
        "voters": voters,
        "target_votes": votes,
        "confirmed": n,
        "stored_rows": len(stored),
        "stored_effective": len(effective),
        "unconfirmed_rows": len(set(stored) - set(tally.confirmed)),
        "missing": missing,
        "mismatched": mismatched,
        "integrity": integrity,
        "wall_s": round(wall, 2),
        "votes_per_s": round(n / wall, 3) if wall > 0 else None,
        "pairs": tally.pairs,
        "pairs_per_s": round(tally.pairs / wall, 3) if wall > 0 else None,
        **batches,
        "generate_p50_s": round(_pct(tally.generate_s, 50), 3),
        "generate_p95_s": round(_pct(tally.generate_s, 95), 3),
        "vote_p50_s": round(_pct(tally.vote_s, 50), 4),
        "vote_p95_s": round(_pct(tally.vote_s, 95), 4),
        "busy_503": tally.busy,
        "conn_errors": tally.conn_errors,
        "resent_votes": tally.resent,
        "answer_lost": tally.answer_lost,
        "gave_up": tally.gave_up,
        "errors": tally.errors[:10],
        "startup_s": round(startup_s, 2),
        "restarts": restarts,
        "confirmed_at_kill": at_kill,
        "restart_s": None if restart_s is None else round(restart_s, 2),
        "duration_s": duration_s,
        "choices": {c: sum(v[3] == c for v in tally.confirmed.values()) for c in ("a", "b", "tie")},
    }


TABLE = [("run", "run"), ("votes", "confirmed"), ("wall s", "wall_s"), ("votes/s", "votes_per_s"),
         ("pairs/s", "pairs_per_s"), ("batch mean / max", "batch"),
         ("gen p50 s", "generate_p50_s"), ("gen p95 s", "generate_p95_s"), ("vote p50 s", "vote_p50_s"),
         ("vote p95 s", "vote_p95_s"), ("503s", "busy_503"), ("conn err", "conn_errors"), ("re-sent", "resent_votes"),
         ("rows", "stored_rows"), ("lost", "missing"), ("integrity", "integrity"), ("restart s", "restart_s")]  # fmt: skip


def table(reports: list[dict]) -> str:
    def cell(r, k):
        if k == "batch":
            return f"{r['batch_mean']} / {r['batch_max']}"
        v = r[k]
        return str(len(v)) if isinstance(v, list) else ("–" if v is None else str(v))

    lines = ["| " + " | ".join(h for h, _ in TABLE) + " |", "|" + "---|" * len(TABLE)]
    lines += ["| " + " | ".join(cell(r, k) for _, k in TABLE) + " |" for r in reports]
    return "\n".join(lines)


def compare_batching(model: str, work: Path, args: argparse.Namespace) -> int:
    """Steady runs with batching off and on, interleaved (off, on, on, off, ...); prints each run and
    the ratio of the median pairs/s. Returns 0 if no vote was lost."""
    modes = {"off": ("--batch-window-ms", "0"),
             "on": ("--batch-window-ms", f"{args.batch_window_ms:g}", "--max-batch", str(args.max_batch))}  # fmt: skip
    reports = []
    for i in range(args.rounds):
        for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
            r = run(model, work / f"{mode}-{i}", votes=args.votes, voters=args.voters, duration_s=args.duration,
                    app_args=modes[mode], judge=args.judge)  # fmt: skip
            reports.append({**r, "run": f"batching {mode}, round {i + 1}", "batching": mode})
            print(f"{reports[-1]['run']}: {r['pairs_per_s']} pairs/s, generate p50 {r['generate_p50_s']} s, "
                  f"batches {r['batch_sizes']}", flush=True)  # fmt: skip
    print(f"model {model}, {args.voters} voters ({args.judge} votes), {args.votes} votes a run, {args.duration:g} s "
          f"clips, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; work dir {work}")
    print(table(reports))
    med = {m: float(np.median([r["pairs_per_s"] for r in reports if r["batching"] == m])) for m in modes}
    lat = {m: [float(np.median([r[k] for r in reports if r["batching"] == m])) for k in ("generate_p50_s", "generate_p95_s")]
           for m in modes}  # fmt: skip
    print(f"median pairs/s: off {med['off']:.2f}, on {med['on']:.2f} ({med['on'] / med['off']:.2f}x); "
          f"median generate p50 / p95 s: off {lat['off'][0]:.2f} / {lat['off'][1]:.2f}, "
          f"on {lat['on'][0]:.2f} / {lat['on'][1]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=2) + "\n")
    return 0 if all(not r["missing"] and not r["mismatched"] and r["confirmed"] == args.votes for r in reports) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="tiny | DIR (default: tiny if shipped, else a random tiny MusicGen)")
    p.add_argument("--votes", type=int, default=200)
    p.add_argument("--voters", type=int, default=20)
    p.add_argument("--duration", type=float, default=0.5, help="clip length, s (default 0.5)")
    p.add_argument("--kill-at", type=float, default=0.5, help="kill -9 after this fraction of the votes (default 0.5)")
    p.add_argument("--skip-kill", action="store_true", help="only the steady run")
    p.add_argument("--compare-batching", action="store_true",
                   help="steady runs with batched generation off and on, interleaved (no kill -9 run)")
    p.add_argument("--rounds", type=int, default=2, help="--compare-batching: rounds of (off, on) (default 2)")
    p.add_argument("--batch-window-ms", type=float, default=50.0, help="the 'on' runs' window (default 50)")
    p.add_argument("--max-batch", type=int, default=8, help="the 'on' runs' max batch (default 8)")
    p.add_argument("--judge", choices=("rater", "coin"), default="rater",
                   help="rater: simulated raters hear both clips (default); coin: random votes, so that the "
                        "voters' audio analysis does not take CPU from the app on a small machine")  # fmt: skip
    p.add_argument("--work", default=None, help="working dir (default: a temp dir, kept)")
    p.add_argument("--out", default=None, help="write the reports as JSON here")
    args = p.parse_args(argv)
    if args.votes < 1 or args.voters < 1 or not 0 < args.kill_at < 1 or args.rounds < 1:
        p.error("--votes, --voters and --rounds must be >= 1, --kill-at in (0, 1)")
    work = Path(args.work or tempfile.mkdtemp(prefix="musicrl-load-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or default_model(work)
    if args.compare_batching:
        return compare_batching(model, work, args)
    reports = [run(model, work / "steady", votes=args.votes, voters=args.voters, duration_s=args.duration,
                   judge=args.judge)]  # fmt: skip
    if not args.skip_kill:
        reports.append(run(model, work / "kill9", votes=args.votes, voters=args.voters, duration_s=args.duration,
                           kill_after=max(1, round(args.kill_at * args.votes)), judge=args.judge))  # fmt: skip
    print(f"model {model}, {args.voters} voters, {args.votes} votes a run, {args.duration:g} s clips, "
          f"{os.cpu_count()} CPUs; work dir {work}")
    print(table(reports))
    for r in reports:
        extra = f", confirmed at kill {r['confirmed_at_kill']}" if r["confirmed_at_kill"] is not None else ""
        print(f"{r['run']}: {r['stored_rows']} rows stored ({r['stored_effective']} effective, "
              f"{r['unconfirmed_rows']} not confirmed to the client){extra}; app start-up {r['startup_s']} s"
              + (f"; errors: {r['errors']}" if r["errors"] else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=2) + "\n")
    ok = all(not r["missing"] and not r["mismatched"] and r["integrity"] == "ok" and r["confirmed"] == args.votes
             for r in reports)  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
