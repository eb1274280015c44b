"""The arena: what the voting UI and the HTTP API share (no gradio, no web framework here).

One `Arena` per app: the served generators, the vote store, request limits, a generation lock
(a torch model is not re-entrant, so one generation runs at a time) and an admission bound (at most
`queue_size` generations waiting or running through this object; more get a clear "busy" error).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol, Sequence

from musicrl.errors import UserError
from musicrl.votes.leaderboard import Leaderboard, leaderboard
from musicrl.votes.store import ClipRecord, Vote, VoteStore, model_key, vote_pairs


class GeneratorLike(Protocol):
    """What the arena needs of `musicrl.model.generator.Generator`."""

    model_id: str
    version: str
    max_duration_s: float

    def generate(self, prompt: str, num_samples: int, duration_s: float, seed: int, **settings) -> list: ...


class Busy(Exception):
    """Too many generations queued; the message says so (HTTP 503)."""


@dataclass(frozen=True)
class ArenaConfig:
    min_listen_s: float = 2.0  # each clip must play this long (or 90% of it, if shorter) before a UI vote
    max_prompt_chars: int = 300
    max_duration_s: float = 10.0  # capped further by every served generator's own limit
    default_duration_s: float = 5.0
    queue_size: int = 16  # generations waiting or running (UI queue and API each)
    admin_secret: str | None = None  # None: admin actions disabled
    examples: tuple[str, ...] = ()  # example prompts for the UI, chosen by the caller for the served models
    leaderboard_min_votes: int = 5  # fewer informative games: listed as provisional, not rated
    n_boot: int = 200
    seed: int | None = None  # seeds pair/seed choices (tests); None: OS randomness

    def __post_init__(self):
        if self.min_listen_s < 0:
            raise UserError(f"min listen time must be >= 0 s, got {self.min_listen_s}")
        if self.max_prompt_chars < 1:
            raise UserError(f"max prompt length must be >= 1, got {self.max_prompt_chars}")
        if self.max_duration_s <= 0:
            raise UserError(f"max duration must be > 0 s, got {self.max_duration_s}")
        if self.queue_size < 1:
            raise UserError(f"queue size must be >= 1, got {self.queue_size}")


@dataclass(frozen=True)
class Pair:
    """Two stored clips of one prompt. `left` is which of a/b the UI shows on the left."""

    prompt: str
    a: ClipRecord
    b: ClipRecord
    left: str

    def clip(self, key: str) -> ClipRecord:
        return self.a if key == "a" else self.b


@dataclass
class Listening:
    """Per UI session: how long each screen slot ('A' left, 'B' right) has played, by play/pause events."""

    listened: dict = field(default_factory=lambda: {"A": 0.0, "B": 0.0})
    playing_since: dict = field(default_factory=lambda: {"A": None, "B": None})

    def play(self, slot: str, now: float) -> None:
        if self.playing_since[slot] is None:
            self.playing_since[slot] = now

    def pause(self, slot: str, now: float) -> None:
        t0 = self.playing_since[slot]
        if t0 is not None:
            self.listened[slot] += max(0.0, now - t0)
            self.playing_since[slot] = None

    def seconds(self, slot: str, now: float) -> float:
        t0 = self.playing_since[slot]
        return self.listened[slot] + (max(0.0, now - t0) if t0 is not None else 0.0)

    @property
    def playing(self) -> bool:
        return any(t is not None for t in self.playing_since.values())


class Arena:
    def __init__(
        self,
        generators: Sequence[GeneratorLike],
        store: VoteStore,
        config: ArenaConfig,
        reload: Callable[[], Sequence[GeneratorLike]] | None = None,
    ):
        if not generators:
            raise UserError("the app needs at least one model to serve")
        if store.data_dir is None:
            raise UserError("the app needs a vote store with a data dir (for the clips)")
        self.store = store
        self.config = config
        self._generators = list(generators)
        self._reload = reload
        self._gen_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.queue_size)
        self._rng = random.Random(config.seed) if config.seed is not None else random.SystemRandom()
        self._key = store.derive_key("pair-token")
        self._lb_lock = threading.Lock()
        self._lb: tuple[int, Leaderboard] | None = None

    # -- models ---------------------------------------------------------------------------------
    @property
    def generators(self) -> list[GeneratorLike]:
        return list(self._generators)

    @property
    def max_duration_s(self) -> float:
        return float(min([self.config.max_duration_s] + [float(g.max_duration_s) for g in self._generators]))

    def model_list(self) -> list[dict]:
        return [
            {"model": model_key(g.model_id, g.version), "model_id": g.model_id, "version": g.version,
             "checkpoint": getattr(g, "checkpoint", None)}
            for g in self._generators
        ]  # fmt: skip

    def reload_models(self) -> list[dict]:
        """The hook for serving new checkpoints: calls `reload()` and swaps the served list atomically.

        `musicrl app` passes `musicrl.app.reload.ModelSet.refresh`: it loads what changed (a newer checkpoint
        of a --models-dir, new weights in a --model directory), whose new version hash then rates
        separately on the leaderboard. The loading runs here, outside the generation lock, so
        requests go on being served by the old models meanwhile; only the swap waits for the
        generation in progress. One reload at a time (the poller and the admin button may race).
        """
        if self._reload is None:
            raise UserError("this app was started without a model reload hook")
        with self._reload_lock:
            fresh = list(self._reload())
            if not fresh:
                raise UserError("reload returned no models; keeping the current ones")
            if len(fresh) != len(self._generators) or any(a is not b for a, b in zip(fresh, self._generators)):
                with self._gen_lock:  # never swap under a running generation
                    self._generators = fresh
        return self.model_list()

    # -- requests -------------------------------------------------------------------------------
    def check_request(self, prompt: str | None, duration_s: float | None) -> tuple[str, float]:
        prompt = (prompt or "").strip()
        if not prompt:
            raise UserError("Type a prompt first (or pick an example).")
        if len(prompt) > self.config.max_prompt_chars:
            raise UserError(f"The prompt is {len(prompt)} characters; the limit is {self.config.max_prompt_chars}.")
        d = self.config.default_duration_s if duration_s is None else float(duration_s)
        if not 0.5 <= d <= self.max_duration_s:
            raise UserError(f"Duration must be between 0.5 and {self.max_duration_s:g} seconds, got {d:g}.")
        return prompt, d

    def generate_pair(self, prompt: str | None, duration_s: float | None = None) -> Pair:
        """Two clips for a prompt: two different random models if several are served (random order),
        else two samples of the one model with different seeds; both stored before returning."""
        prompt, duration = self.check_request(prompt, duration_s)
        if not self._slots.acquire(blocking=False):
            raise Busy(f"The server is busy ({self.config.queue_size} generations queued); try again in a minute.")
        try:
            with self._gen_lock:
                gens = self._generators
                seed = self._rng.randrange(2**31 - 2)
                if len(gens) >= 2:
                    ga, gb = self._rng.sample(gens, 2)
                    clips = [(ga, ga.generate(prompt, 1, duration, seed)[0])]
                    clips.append((gb, gb.generate(prompt, 1, duration, self._rng.randrange(2**31 - 2))[0]))
                else:
                    g = gens[0]
                    clips = [(g, c) for c in g.generate(prompt, 2, duration, seed)[:2]]
                records = [self._store_clip(g, c, prompt) for g, c in clips]
                if records[0].id == records[1].id:  # identical audio (a degenerate model): one more try
                    g = clips[1][0]
                    c = g.generate(prompt, 1, duration, seed + 7919)[0]
                    records[1] = self._store_clip(g, c, prompt)
                    if records[0].id == records[1].id:
                        raise UserError("The model produced the same audio twice; nothing to compare.")
        finally:
            self._slots.release()
        return Pair(prompt=prompt, a=records[0], b=records[1], left=self._rng.choice("ab"))

    def _store_clip(self, g: GeneratorLike, clip, prompt: str) -> ClipRecord:
        return self.store.add_clip(
            clip.audio,
            clip.sample_rate,
            model_id=g.model_id,
            model_version=g.version,
            prompt=prompt,
            seed=clip.seed,
            settings=clip.settings,
        )

    def vote(
        self,
        pair: Pair,
        choice: str,
        session: str,
        *,
        listen_ms_a: int | None = None,
        listen_ms_b: int | None = None,
        supersedes: int | None = None,
    ) -> Vote:
        """Record a vote on a pair (a/b canonical); returns after the store's COMMIT."""
        return self.store.record_vote(
            clip_a=pair.a.id,
            clip_b=pair.b.id,
            choice=choice,
            session=session,
            left=pair.left,
            listen_ms_a=listen_ms_a,
            listen_ms_b=listen_ms_b,
            supersedes=supersedes,
        )

    def listen_needed_s(self, clip: ClipRecord) -> float:
        """A clip shorter than min_listen_s needs 90% of its length (play events are not exact)."""
        return min(self.config.min_listen_s, 0.9 * clip.duration_s)

    # -- pair tokens (the HTTP API is stateless: the pair travels signed with the client) --------
    def token(self, pair: Pair) -> str:
        body = json.dumps({"a": pair.a.id, "b": pair.b.id, "l": pair.left, "t": int(time.time())}).encode()
        payload = base64.urlsafe_b64encode(body).decode().rstrip("=")
        sig = hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{payload}.{sig}"

    def pair_from_token(self, token: str) -> Pair:
        try:
            payload, sig = str(token).split(".")
            want = hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()[:32]
            if not hmac.compare_digest(sig, want):
                raise ValueError("bad signature")
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            a, b, left = body["a"], body["b"], body["l"]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError("invalid pair token: use the 'pair' value /api/generate returned") from e
        ca, cb = self.store.clip(a), self.store.clip(b)
        return Pair(prompt=ca.prompt, a=ca, b=cb, left=left)

    # -- leaderboard and admin ------------------------------------------------------------------
    def leaderboard(self) -> Leaderboard:
        """BT ratings over the effective votes; recomputed only when the votes changed."""
        votes = self.store.votes(effective=True)
        with self._lb_lock:
            if self._lb is not None and self._lb[0] == (len(votes), votes[-1].id if votes else 0):
                return self._lb[1]
        lb = leaderboard(
            vote_pairs(votes), min_votes=self.config.leaderboard_min_votes, n_boot=self.config.n_boot, seed=0
        )
        with self._lb_lock:
            self._lb = ((len(votes), votes[-1].id if votes else 0), lb)
        return lb

    def check_admin(self, secret: str | None) -> None:
        if not self.config.admin_secret:
            raise PermissionError("Admin actions are disabled: start the app with MUSICRL_ADMIN_SECRET set.")
        if not secret or not hmac.compare_digest(str(secret).encode(), self.config.admin_secret.encode()):
            raise PermissionError("Wrong admin secret.")

    def export(self, fmt: str = "jsonl", per_session_cap: int | None = None) -> tuple[Path, int]:
        """Export the effective votes under data_dir/exports/; returns (path, rows)."""
        out_dir = self.store.data_dir / "exports"
        out_dir.mkdir(exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = out_dir / (f"votes-{stamp}.jsonl" if fmt == "jsonl" else f"votes-{stamp}")
        n = self.store.export(path, fmt=fmt, per_session_cap=per_session_cap)
        return path, n
