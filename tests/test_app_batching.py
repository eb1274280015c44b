"""Batched generation in the app (`musicrl.app.batcher`): batched clips equal lone requests bit for bit,
the window and max-batch rules, error isolation, shutdown, and votes that never wait on a generation.

The batching rules are checked with fake generators whose calls are held on events, so what lands in
which batch follows from the order of calls, never from timing.
"""

import os
import threading

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

httpx = pytest.importorskip("httpx")
pytest.importorskip("gradio")

from musicrl.app.batcher import Batcher, Busy  # noqa: E402
from musicrl.app.server import build_app, start_server  # noqa: E402
from musicrl.errors import UserError  # noqa: E402
from musicrl.model.generator import Clip, Generator  # noqa: E402
from musicrl.votes.store import VoteStore  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
WAIT_S = 60  # a bound on waits for another thread, so a broken batcher fails instead of hanging


class FakeGenerator:
    """Records each call's requests [(prompt, n, seed)] and threads; `hold` set: calls wait for `release`.
    A prompt containing 'boom' fails: a lone request with a one-line UserError, a batch with a RuntimeError.
    Its "tokens" are the clips themselves: `decode_sampled` only notes the thread it runs in."""

    max_duration_s = 10.0
    sample_rate = 8000

    def __init__(self, model_id="fake", version="v1"):
        self.model_id, self.version = model_id, version
        self.calls: list[list[tuple]] = []
        self.threads: list[int] = []  # where each call ran
        self.decoded_in: list[int] = []
        self.hold, self.entered, self.release = threading.Event(), threading.Event(), threading.Event()

    def _wait(self):
        if self.hold.is_set():
            self.entered.set()
            assert self.release.wait(WAIT_S)

    def _clips(self, prompt, n, duration_s, seed):
        return [Clip((np.random.default_rng([seed + i, len(prompt)]).standard_normal(int(self.sample_rate * duration_s))
                      * 0.1).astype(np.float32), self.sample_rate, seed + i, {"duration_s": duration_s})
                for i in range(n)]  # fmt: skip

    def generate(self, prompt, num_samples, duration_s, seed, **settings):
        self.calls.append([(prompt, num_samples, seed)])
        self.threads.append(threading.get_ident())
        self._wait()
        if "boom" in prompt:
            raise UserError(f"cannot make {prompt!r}")
        return self._clips(prompt, num_samples, duration_s, seed)

    def sample_batch(self, requests, duration_s, **settings):
        self.calls.append(list(requests))
        self.threads.append(threading.get_ident())
        self._wait()
        if any("boom" in p for p, _, _ in requests):
            if len(requests) == 1:
                raise UserError(f"cannot make {requests[0][0]!r}")
            raise RuntimeError("one bad row spoils the whole batch")
        return [self._clips(p, n, duration_s, s) for p, n, s in requests]

    def decode_sampled(self, clips):
        self.decoded_in.append(threading.get_ident())
        return clips


@pytest.fixture
def batcher():
    """For tests that queue requests behind a held one: what lands in a batch is then fixed by the
    queue's order whatever the window, so a short one keeps them fast."""
    b = Batcher(window_s=0.05, max_batch=3)
    yield b
    b.stop()


def _busy(b: Batcher, gen: FakeGenerator):
    """Occupy the worker with a held request of `gen`; returns its future once the call has begun."""
    gen.hold.set()
    f = b.submit(gen, "blocker", 1, 1.0, 0)
    assert gen.entered.wait(WAIT_S)
    return f


# -- bit-identity on the real model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def real_generator(request):
    from musicrl.model.hub import TINY_DIR

    name = "tiny" if (TINY_DIR / "musicgen" / "config.json").exists() else str(request.getfixturevalue("random_musicgen_dir"))
    return Generator.from_pretrained(name)


def test_batched_clips_equal_single_requests_bit_for_bit(real_generator):
    g = real_generator
    b = Batcher(window_s=10.0, max_batch=4)  # a full batch runs at once; the long window only makes sure it is full
    requests = [("fast bright chiptune lead", 2, 11), ("calm piano", 1, 5), ("slow dark low bass with drums, minor", 2, 7),
                ("calm piano", 1, 6)]  # fmt: skip
    try:
        futures = [b.submit(g, p, n, 0.5, s) for p, n, s in requests]
        batched = [f.result(WAIT_S) for f in futures]
    finally:
        b.stop()
    assert b.batch_sizes() == {4: 1}  # one batch of all four
    for (prompt, n, seed), clips in zip(requests, batched):
        alone = g.generate(prompt, n, 0.5, seed)
        assert [c.seed for c in clips] == [c.seed for c in alone] == [seed + i for i in range(n)]
        for c, a in zip(clips, alone):
            assert np.array_equal(c.codes, a.codes) and np.array_equal(c.audio, a.audio) and c.settings == a.settings
    assert not np.array_equal(batched[1][0].audio, batched[3][0].audio)  # same prompt, other seed: other clip


def test_explicit_row_seeds_must_match_the_rows(real_generator):
    with pytest.raises(UserError, match="3 seeds for 2 rows"):
        real_generator.sampler.sample(["a", "b"], 1, 0.5, seeds=[1, 2, 3])


# -- the window and max-batch rules ------------------------------------------------------------------
def test_requests_join_the_oldest_requests_batch_in_order_up_to_max_batch(batcher):
    gen, other = FakeGenerator(), FakeGenerator("other")
    blocker = _busy(batcher, other)
    # queued while the worker is busy, so all are waiting when it is free again
    futures = [batcher.submit(gen, f"p{i}", 1, 1.0, i) for i in range(2)]
    futures.append(batcher.submit(gen, "longer", 1, 2.0, 9))  # another duration: a batch of its own
    futures += [batcher.submit(gen, f"p{i}", 2, 1.0, i) for i in range(2, 5)]
    other.release.set()
    blocker.result(WAIT_S)
    clips = [f.result(WAIT_S) for f in futures]
    assert gen.calls == [[("p0", 1, 0), ("p1", 1, 1), ("p2", 2, 2)], [("longer", 1, 9)], [("p3", 2, 3), ("p4", 2, 4)]]
    assert [len(c) for c in clips] == [1, 1, 1, 2, 2, 2] and [c.seed for c in clips[3]] == [2, 3]
    assert batcher.batch_sizes() == {1: 2, 2: 1, 3: 1}


def test_a_request_waits_in_its_window_for_others_to_join():
    b = Batcher(window_s=10.0, max_batch=3)
    gen = FakeGenerator()
    try:
        first = b.submit(gen, "p0", 1, 1.0, 0)  # the 10 s window is open: it waits for company
        rest = [b.submit(gen, f"p{i}", 1, 1.0, i) for i in (1, 2)]  # the third fills the batch: it runs now
        assert [len(f.result(WAIT_S)) for f in [first, *rest]] == [1, 1, 1]
    finally:
        b.stop()
    assert gen.calls == [[("p0", 1, 0), ("p1", 1, 1), ("p2", 1, 2)]]
    me = threading.get_ident()  # sampled by the worker, decoded by each caller (beside the next batch)
    assert gen.threads != [me] and gen.decoded_in == [me] * 3


def test_window_zero_generates_in_the_callers_thread_one_at_a_time():
    b = Batcher(window_s=0.0, max_batch=8)
    gen = FakeGenerator()
    f = b.submit(gen, "p", 2, 1.0, 3)
    assert f.done() and len(f.result()) == 2 and not b.running  # no worker: done before submit returned
    assert gen.threads == [threading.get_ident()] and gen.calls == [[("p", 2, 3)]]
    assert not Batcher(window_s=0.05, max_batch=1).enabled


def test_bad_batch_settings_are_one_line_errors():
    for window, size in ((-0.1, 4), (11.0, 4), (0.05, 0)):
        with pytest.raises(UserError):
            Batcher(window, size)


# -- errors and shutdown ---------------------------------------------------------------------------
def test_a_failing_request_does_not_poison_its_batch(batcher):
    gen, other = FakeGenerator(), FakeGenerator("other")
    blocker = _busy(batcher, other)
    futures = [batcher.submit(gen, p, 1, 1.0, i) for i, p in enumerate(["fine", "boom", "also fine"])]
    other.release.set()
    blocker.result(WAIT_S)
    assert len(futures[0].result(WAIT_S)) == 1 and len(futures[2].result(WAIT_S)) == 1
    with pytest.raises(UserError, match="cannot make 'boom'"):
        futures[1].result(WAIT_S)
    assert gen.calls[0] == [("fine", 1, 0), ("boom", 1, 1), ("also fine", 1, 2)]  # the batch, then one by one
    assert gen.calls[1:] == [[("fine", 1, 0)], [("boom", 1, 1)], [("also fine", 1, 2)]]


def test_stop_finishes_the_running_batch_and_refuses_the_waiting_ones():
    b = Batcher(window_s=10.0, max_batch=2)
    gen, other = FakeGenerator(), FakeGenerator("other")
    gen.hold.set()
    running = [b.submit(gen, f"p{i}", 1, 1.0, i) for i in range(2)]  # a full batch: runs, and is held
    assert gen.entered.wait(WAIT_S)
    waiting = b.submit(other, "late", 1, 1.0, 5)
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    gen.release.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive() and not b.running
    assert all(len(f.result(WAIT_S)) == 1 for f in running)
    with pytest.raises(Busy):
        waiting.result(WAIT_S)
    assert other.calls == []
    again = [b.submit(other, f"again{i}", 1, 1.0, i) for i in range(2)]  # a full batch, for a new worker
    assert [len(f.result(WAIT_S)) for f in again] == [1, 1] and b.running
    b.stop()


# -- through the app -----------------------------------------------------------------------------------
@pytest.fixture
def app_with(tmp_path):
    """Serve fake generators with the given options: yields (client, arena)."""
    stores = []

    def make(gens, **options):
        store = VoteStore(f"sqlite:///{tmp_path}/votes.db", tmp_path)
        stores.append(store)
        demo = build_app(gens, store, min_listen_s=0.0, n_boot=20, seed=0, admin_secret="s", **options)
        return demo.musicrl_arena, start_server(demo)

    yield make
    for s in stores:
        s.close()


def test_a_vote_completes_while_a_generation_is_in_flight(app_with):
    gen = FakeGenerator()
    arena, srv = app_with([gen], batch_window_ms=50.0)
    with srv, httpx.Client(base_url=srv.url, timeout=WAIT_S) as client:
        pair = client.post("/api/generate", json={"prompt": "first", "duration_s": 1.0}).json()["pair"]
        gen.hold.set()
        held = {}
        t = threading.Thread(target=lambda: held.update(r=client.post("/api/generate", json={"prompt": "held"})))
        t.start()
        assert gen.entered.wait(WAIT_S)  # the generation is running, holding the arena's generation lock
        vote = client.post("/api/vote", json={"pair": pair, "choice": "a", "listen_ms_a": 0, "listen_ms_b": 0})
        assert vote.status_code == 200 and vote.json()["counted"], vote.text
        assert t.is_alive() and "r" not in held  # the vote did not wait for it
        gen.release.set()
        t.join(WAIT_S)
        assert held["r"].status_code == 200
    assert not arena.batcher.running  # the server's shutdown stopped the batcher


def test_concurrent_api_requests_batch_and_a_bad_one_gets_its_own_one_line_error(app_with):
    gen = FakeGenerator()
    arena, srv = app_with([gen], batch_window_ms=2000.0, max_batch=3)
    out = {}

    def post(prompt):
        out[prompt] = client.post("/api/generate", json={"prompt": prompt, "duration_s": 1.0})

    with srv, httpx.Client(base_url=srv.url, timeout=WAIT_S) as client:
        threads = [threading.Thread(target=post, args=(p,)) for p in ("one", "boom", "two")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
        assert out["one"].status_code == out["two"].status_code == 200
        assert out["boom"].status_code == 400 and out["boom"].json() == {"error": "cannot make 'boom'"}
        stats = client.get("/api/admin/batches", headers={"X-Admin-Secret": "s"}).json()
        assert stats["batch_window_ms"] == 2000.0 and stats["max_batch"] == 3
        assert sum(int(k) * v for k, v in stats["batch_sizes"].items()) == 2  # the two good requests, served
        assert client.get("/api/admin/batches").status_code == 403


def test_two_models_each_batch_their_own_requests(app_with):
    a, b = FakeGenerator("a"), FakeGenerator("b")
    arena, srv = app_with([a, b], batch_window_ms=10000.0, max_batch=2)
    out = []
    with srv, httpx.Client(base_url=srv.url, timeout=WAIT_S) as client:
        threads = [threading.Thread(target=lambda: out.append(client.post("/api/generate", json={"prompt": "p"})))
                   for _ in range(2)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
    assert [r.status_code for r in out] == [200, 200]
    # each pair asks each model for one clip: two requests per model, one full batch each
    assert [len(c) for c in a.calls] == [2] and [len(c) for c in b.calls] == [2]


def test_the_batch_options_are_app_flags(capsys):
    import socket

    from musicrl.cli import build_parser, main

    args = build_parser().parse_args(["app"])
    assert (args.batch_window_ms, args.max_batch) == (50.0, 8)
    with socket.socket() as sock:  # a port nobody listens on, so the flags are what is refused
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    for flag, bad in (("--batch-window-ms", "-1"), ("--max-batch", "0")):
        assert main(["app", "--port", port, flag, bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "must be" in err[0], err
