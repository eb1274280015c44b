"""Batched generation for the arena: concurrent requests for one model decode as one batch.

Why: a decoding step of a small model costs about the same for 1 row as for 16 (the time goes to
per-op dispatch, not arithmetic), so requests that arrive together are cheaper decoded together
than one after another under a lock.

`Batcher(window_s, max_batch, lock)`: `submit(generator, prompt, num_samples, duration_s, seed)`
returns a `Pending` whose `result()` is that request's clips. One worker thread (started on the
first submit, stopped by `stop()`) takes the oldest waiting request, waits up to `window_s` after
its arrival for more with the same key (the same generator object, duration and settings: only
those can share a decoding loop) until `max_batch` requests are waiting, and samples their tokens
as one `generator.sample_batch` call under `lock` (the arena's: a model swap waits for a running
batch). Other keys wait their turn, oldest first. Each caller then decodes its own request's
tokens to audio (`generator.decode_sampled`) in its own thread, so the codec of one batch runs
beside the sampling of the next (on a CPU, torch ops release the GIL: two cores, two threads).
Each request's clips equal its own `generate` call bit for bit
(`musicrl.model.generator.Generator.sample_batch`). A generator without `sample_batch` (a
`GeneratorLike` of tests) gets one `generate` call per request, in the worker.

A batch that raises is run again one request at a time, so an error reaches only the caller whose
request causes it. `window_s == 0` or `max_batch == 1` turns batching off: `submit` calls
`generate` in the caller's thread under `lock`, one request at a time, as the arena did before
batching. Nothing here is module-level state: the arena owns its batcher.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from musicrl.errors import UserError


class Busy(Exception):
    """Too many generations queued, or the server is stopping; the message says so (HTTP 503)."""


@dataclass
class _Request:
    generator: Any
    prompt: str
    num_samples: int
    duration_s: float
    seed: int
    settings: tuple  # sorted (name, value) pairs of sampling settings
    arrived: float  # time.monotonic() at submit
    future: Future = field(default_factory=Future)  # the worker's output: tokens (`Sampled`) or clips

    @property
    def key(self) -> tuple:
        """Requests that may share one decoding loop: same model object, clip length and settings."""
        return (id(self.generator), self.duration_s, self.settings)


class Batcher:
    def __init__(self, window_s: float, max_batch: int, lock: threading.Lock | None = None):
        if not 0 <= window_s <= 10:
            raise UserError(f"batch window must be in [0, 10] s, got {window_s}")
        if max_batch < 1:
            raise UserError(f"max batch must be >= 1, got {max_batch}")
        self.window_s = float(window_s)
        self.max_batch = int(max_batch)
        self._lock = lock or threading.Lock()  # held while a model generates
        self._cond = threading.Condition()  # guards everything below
        self._pending: list[_Request] = []  # arrival order
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._sizes: Counter = Counter()  # requests per batch run -> how many batches

    @property
    def enabled(self) -> bool:
        return self.window_s > 0 and self.max_batch > 1

    @property
    def running(self) -> bool:
        """Whether the worker thread is up (it starts with the first request, ends with `stop`)."""
        with self._cond:
            return self._thread is not None and self._thread.is_alive()

    def submit(self, generator, prompt: str, num_samples: int, duration_s: float, seed: int, **settings) -> Pending:
        """`generator.generate(prompt, num_samples, duration_s, seed, **settings)`'s clips, to come."""
        req = _Request(generator, prompt, num_samples, float(duration_s), seed, tuple(sorted(settings.items())),
                       time.monotonic())  # fmt: skip
        if not self.enabled:  # batching off: here and now, one at a time (the arena before batching)
            try:
                with self._lock:
                    clips = generator.generate(prompt, num_samples, req.duration_s, seed, **settings)
            except Exception as e:  # noqa: BLE001 (raised by result(), as when batched)
                req.future.set_exception(e)
            else:
                req.future.set_result(clips)
                self._count(1)
            return Pending(req.future, _clips)
        with self._cond:
            if self._stopping:
                raise Busy("The server is stopping; try again in a minute.")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="musicrl-batcher", daemon=True)
                self._thread.start()
            self._pending.append(req)
            self._cond.notify_all()
        return Pending(req.future, generator.decode_sampled if _batches(generator) else _clips)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the batch in progress, refuse what still waits (`Busy`), end the worker. A later
        `submit` starts a new one (an app served again)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        with self._cond:
            left, self._pending = self._pending, []
            self._thread, self._stopping = None, False
        for req in left:
            req.future.set_exception(Busy("The server stopped before this request ran; try again."))

    def batch_sizes(self) -> dict[int, int]:
        """{requests in a batch: batches served}, since start (what the load test reports; a batch that
        failed and was retried one by one counts as those single requests)."""
        with self._cond:
            return dict(sorted(self._sizes.items()))

    # -- the worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[_Request] | None:
        """Wait for the oldest request's window (or a full batch); take its key's requests. None: stop."""
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            key, deadline = self._pending[0].key, self._pending[0].arrived + self.window_s
            while not self._stopping:
                waiting = sum(r.key == key for r in self._pending)
                left = deadline - time.monotonic()
                if waiting >= self.max_batch or left <= 0:
                    break
                self._cond.wait(left)
            if self._stopping:
                return None
            batch = [r for r in self._pending if r.key == key][: self.max_batch]
            taken = {id(r) for r in batch}
            self._pending = [r for r in self._pending if id(r) not in taken]
            return batch

    def _run(self, batch: list[_Request]) -> None:
        """Sample `batch` (one key) and settle each future; a failed batch is retried request by request."""
        try:
            with self._lock:
                results = _generate(batch)
        except BaseException as e:  # noqa: BLE001 (whatever it is, it belongs to a caller, not the worker)
            if len(batch) > 1:
                for req in batch:
                    self._run([req])
                return
            batch[0].future.set_exception(e)
            return
        self._count(len(batch))
        for req, out in zip(batch, results):
            req.future.set_result(out)

    def _count(self, size: int) -> None:
        with self._cond:
            self._sizes[size] += 1


class Pending:
    """A submitted request. `result(timeout)` waits for its batch, then decodes its clips in the
    caller's thread; an error of this request (and only this one) is raised here."""

    def __init__(self, future: Future, finish: Callable[[Any], list]):
        self._future, self._finish = future, finish

    def done(self) -> bool:
        """Whether its batch has run (its clips may still need decoding)."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> list:
        return self._finish(self._future.result(timeout))


def _batches(generator) -> bool:
    """Whether `generator` samples batches (`Generator.sample_batch` and `decode_sampled`)."""
    return hasattr(generator, "sample_batch") and hasattr(generator, "decode_sampled")


def _clips(clips: list) -> list:
    return clips


def _generate(batch: list[_Request]) -> list:
    """Each request's tokens (`sample_batch`, one call), or its clips (`generate`, one call each)."""
    first = batch[0]
    settings = dict(first.settings)
    if _batches(first.generator):
        specs = [(r.prompt, r.num_samples, r.seed) for r in batch]
        return first.generator.sample_batch(specs, first.duration_s, **settings)
    return [r.generator.generate(r.prompt, r.num_samples, r.duration_s, r.seed, **settings) for r in batch]
