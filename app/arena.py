"""The arena: what the voting UI and the HTTP API share (no gradio, no web framework here).

One `Arena` per app: the served generators, the vote store, request limits, a generation lock
(a torch model is not re-entrant, so one generation runs at a time), a `Batcher`
(`musicrl.app.batcher`: requests for one model that arrive within `batch_window_s` of each other
decode as one batch, at most `max_batch` requests; started by the first request, stopped by
`close()`) and an admission bound (at most `queue_size` generations waiting or running through this
object; more get a clear "busy" error). Voting takes neither the generation lock nor a batch slot.
Per-client token buckets (`musicrl.app.limits`) bound how often one address may generate and vote
(`Arena.limit`, called by the UI and the API), and `musicrl.app.clip_gc` caps the clips nobody
voted on. The leaderboard is `musicrl.votes.live.LiveVotes`: it reads only new votes, counts at
most `per_session_cap` votes per session, and is rated again only after a new vote.

Every vote, from the UI or the API, passes `Arena.vote`: the pair must be younger than
`token_ttl_s`, and each clip must have played at least `listen_needed_s` (an integer of ms, no
longer than the time since the pair was served); the store then admits one vote per served pair.
"""

from __future__ import annotations

import hmac
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol, Sequence

from musicrl.app.batcher import Batcher, Busy
from musicrl.app.clip_gc import ClipJanitor
from musicrl.app.limits import Limits, TokenBucket
from musicrl.app.tokens import Signer, Ticket, decode_ticket, encode_ticket, new_id, session_from_cookie
from musicrl.errors import UserError
from musicrl.votes.files import wav_bytes
from musicrl.votes.leaderboard import SESSION_CAP, Leaderboard
from musicrl.votes.live import LiveVotes
from musicrl.votes.store import MAX_LISTEN_MS, ClipRecord, Vote, VoteStore, clean_text, model_key

CLOCK_SLACK_S = 0.25  # clock differences between replicas, when a vote is checked against its pair's age


class GeneratorLike(Protocol):
    """What the arena needs of `musicrl.model.generator.Generator`."""

    model_id: str
    version: str
    max_duration_s: float

    def generate(self, prompt: str, num_samples: int, duration_s: float, seed: int, **settings) -> list: ...


class Expired(UserError):
    """The pair was served longer ago than the token lifetime (HTTP 410)."""


@dataclass(frozen=True)
class ArenaConfig:
    min_listen_s: float = 2.0  # each clip must play this long (or 90% of it, if shorter) before any vote
    max_prompt_chars: int = 300
    max_duration_s: float = 10.0  # capped further by every served generator's own limit
    default_duration_s: float = 5.0
    queue_size: int = 16  # generations waiting or running (UI queue and API each)
    admin_secret: str | None = None  # None: admin actions disabled
    examples: tuple[str, ...] = ()  # example prompts for the UI, chosen by the caller for the served models
    leaderboard_min_votes: int = 5  # fewer informative games: listed as provisional, not rated
    n_boot: int = 200
    seed: int | None = None  # seeds pair/seed choices (tests); None: OS randomness
    token_ttl_s: float = 4 * 3600.0  # a served pair (and its API token) takes a vote this long
    limits: Limits = Limits()
    per_session_cap: int | None = SESSION_CAP  # counted votes per session on the leaderboard and exports
    batch_window_s: float = 0.05  # how long a generation waits for others to join its batch; 0: no batching
    max_batch: int = 8  # generate requests (each 1-2 clips) decoded together at most
    # Two models' clips of a pair drawn with one seed (common random numbers): a fine-tune and its base
    # then play two versions of one piece, and the vote weighs what the training changed rather than
    # two samples' luck. Each clip is still a fair sample of its model. docs/results/closed-loop.md.
    paired_seeds: bool = False

    def __post_init__(self):
        if self.min_listen_s < 0:
            raise UserError(f"min listen time must be >= 0 s, got {self.min_listen_s}")
        if self.max_prompt_chars < 1:
            raise UserError(f"max prompt length must be >= 1, got {self.max_prompt_chars}")
        if self.max_duration_s <= 0:
            raise UserError(f"max duration must be > 0 s, got {self.max_duration_s}")
        if self.queue_size < 1:
            raise UserError(f"queue size must be >= 1, got {self.queue_size}")
        if not 0 < self.token_ttl_s <= MAX_LISTEN_MS / 1000:
            raise UserError(f"token lifetime must be in (0, {MAX_LISTEN_MS // 1000}] s (a week), got {self.token_ttl_s}")
        if not 0 <= self.batch_window_s <= 10:
            raise UserError(f"batch window must be in [0, 10000] ms, got {1000 * self.batch_window_s:g}")
        if not (isinstance(self.max_batch, int) and self.max_batch >= 1):
            raise UserError(f"max batch must be an integer >= 1, got {self.max_batch}")
        if self.per_session_cap is not None and not (isinstance(self.per_session_cap, int) and self.per_session_cap >= 1):
            raise UserError(f"per-session cap must be an integer >= 1 (or none), got {self.per_session_cap}")


@dataclass(frozen=True)
class Pair:
    """Two stored clips of one prompt, as served once. `left` is which of a/b the UI shows on the left."""

    prompt: str
    a: ClipRecord
    b: ClipRecord
    left: str
    id: str  # the served pair's random id: its first vote is the one that counts
    issued_at: float  # Unix seconds when it was served

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
        self._draw_lock = threading.Lock()  # the random draws of models and seeds (requests run concurrently)
        self.batcher = Batcher(config.batch_window_s, config.max_batch, self._gen_lock)
        self._slots = threading.BoundedSemaphore(config.queue_size)
        self._rng = random.Random(config.seed) if config.seed is not None else random.SystemRandom()
        self._pair_signer = Signer(store.derive_key("pair-token"))
        self.session_signer = Signer(store.derive_key("session-cookie"))
        self._clock = time.time  # wall clock: pair ages are compared across replicas
        self.live = LiveVotes(store, config.per_session_cap, min_votes=config.leaderboard_min_votes,
                              n_boot=config.n_boot, seed=0)  # fmt: skip
        self.janitor = ClipJanitor(store.clips_dir, self.live, config.token_ttl_s, config.limits.max_unvoted_clips)
        lim = config.limits
        self._buckets = {"generate": TokenBucket("generate", lim.generate_per_min, lim.generate_burst),
                         "vote": TokenBucket("vote", lim.vote_per_min, lim.vote_burst)}  # fmt: skip

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
    def limit(self, action: str, client: str) -> None:
        """One `action` ("generate" or "vote") request of `client` (its address): `RateLimited`
        (`musicrl.app.limits`) when its bucket is empty."""
        self._buckets[action].take(client, self._clock())

    def check_request(self, prompt: str | None, duration_s: float | None) -> tuple[str, float]:
        prompt = clean_text(prompt or "", "prompt").strip()
        if not prompt:
            raise UserError("Type a prompt first (or pick an example).")
        if len(prompt) > self.config.max_prompt_chars:
            raise UserError(f"The prompt is {len(prompt)} characters; the limit is {self.config.max_prompt_chars}.")
        try:
            d = self.config.default_duration_s if duration_s is None else float(duration_s)
        except (TypeError, ValueError, OverflowError):  # e.g. an integer too large for a float
            raise UserError(f"Duration must be a number of seconds, got {str(duration_s)[:40]}") from None
        if not 0.5 <= d <= self.max_duration_s:
            raise UserError(f"Duration must be between 0.5 and {self.max_duration_s:g} seconds, got {d:g}.")
        return prompt, d

    def generate_pair(self, prompt: str | None, duration_s: float | None = None) -> Pair:
        """Two clips for a prompt: two different random models if several are served (random order),
        else two samples of the one model with different seeds; both stored before returning. Two
        models share one seed with `paired_seeds`, else each draws its own.
        The clips come from the batcher: this request may share a batch with others for the same model."""
        prompt, duration = self.check_request(prompt, duration_s)
        self.janitor.admit(self._clock())  # ClipsFull: too many clips nobody voted on
        if not self._slots.acquire(blocking=False):
            raise Busy(f"The server is busy ({self.config.queue_size} generations queued); try again in a minute.")
        try:
            with self._draw_lock:
                gens = self._generators
                seed = self._rng.randrange(2**31 - 2)
                if len(gens) >= 2:
                    other = seed if self.config.paired_seeds else self._rng.randrange(2**31 - 2)
                    jobs = [(g, 1, s) for g, s in zip(self._rng.sample(gens, 2), (seed, other))]
                else:
                    jobs = [(gens[0], 2, seed)]
            clips = self._draw(jobs, prompt, duration)[:2]
            if _same_audio(clips[0][1], clips[1][1]):
                clips = self._draw_again(clips, prompt, duration, seed, paired=len(jobs) == 2 and self.config.paired_seeds)
            records = [self._store_clip(g, c, prompt) for g, c in clips]
        finally:
            self._slots.release()
        self.janitor.served([r.id for r in records], self._clock())
        with self._draw_lock:
            left = self._rng.choice("ab")
        return Pair(prompt=prompt, a=records[0], b=records[1], left=left, id=new_id(), issued_at=self._clock())

    def _draw(self, jobs: list, prompt: str, duration: float) -> list:
        """[(generator, n, seed)] -> [(generator, clip)], in the jobs' order. Every request is queued
        before any is awaited, so each can join its model's batch."""
        futures = [(g, self.batcher.submit(g, prompt, n, duration, s)) for g, n, s in jobs]
        return [(g, c) for g, f in futures for c in f.result()]

    def _draw_again(self, clips: list, prompt: str, duration: float, seed: int, paired: bool) -> list:
        """[(generator, clip)] x 2 of which a listener could not tell the clips apart -> two it can. Two
        models that agree on a paired seed (a model and its best-of pick, say) both draw again on one new
        seed, so the pair stays paired; else, or if they agree again, the second clip draws on its own
        (a degenerate model, or two copies of one). A tie by construction carries no vote, so leaving
        such seeds out does not tilt the comparison."""
        if paired:
            clips = self._draw([(g, 1, seed + 7919) for g, _ in clips], prompt, duration)
            if not _same_audio(clips[0][1], clips[1][1]):
                return clips
        clips = [clips[0], *self._draw([(clips[1][0], 1, seed + 2 * 7919)], prompt, duration)]
        if _same_audio(clips[0][1], clips[1][1]):
            raise UserError("The model produced the same audio twice; nothing to compare.")
        return clips

    def close(self) -> None:
        """Stop the batcher: the batch in progress finishes, waiting requests get `Busy`."""
        self.batcher.stop()

    def _store_clip(self, g: GeneratorLike, clip, prompt: str) -> ClipRecord:
        return self.store.add_clip(
            clip.audio,
            clip.sample_rate,
            model_id=g.model_id,
            model_version=g.version,
            prompt=prompt,
            seed=clip.seed,
            settings=clip.settings,
            codes=clip.codes,  # the tokens behind the audio, for preference optimisation from the votes (DPO)
        )

    def vote(
        self,
        pair: Pair,
        choice: str,
        session: str,
        *,
        listen_ms_a: int | None,
        listen_ms_b: int | None,
        supersedes: int | None = None,
    ) -> Vote:
        """Record a vote on a pair (a/b canonical); returns after the store's COMMIT.

        Refused (one line): an expired pair (`Expired`), a listening time that is missing, not an
        integer, under the minimum or longer than the pair has existed (`UserError`), a second vote
        on the pair (`musicrl.votes.store.AlreadyVoted`).
        """
        age_s = self._clock() - pair.issued_at
        if age_s > self.config.token_ttl_s:
            raise Expired(f"this pair was served {age_s / 60:.0f} min ago and has expired "
                          f"(pairs take votes for {self.config.token_ttl_s / 60:g} min); generate a new pair")  # fmt: skip
        for key, ms in (("a", listen_ms_a), ("b", listen_ms_b)):
            self._check_listening(pair, key, ms, age_s)
        return self.store.record_vote(
            clip_a=pair.a.id,
            clip_b=pair.b.id,
            choice=choice,
            session=session,
            left=pair.left,
            listen_ms_a=listen_ms_a,
            listen_ms_b=listen_ms_b,
            supersedes=supersedes,
            pair_id=pair.id,
        )

    def _check_listening(self, pair: Pair, key: str, ms: object, age_s: float) -> None:
        """listen_ms of clip `key`: an integer, at least the minimum, at most the pair's age."""
        if ms is None:
            raise UserError(f"listen_ms_{key} is required: how long clip {key} was played, in ms")
        if isinstance(ms, bool) or not isinstance(ms, int):
            raise UserError(f"listen_ms_{key} must be an integer number of ms, got {str(ms)[:40]}")
        need_ms = int(1000 * self.listen_needed_s(pair.clip(key)))
        if ms < need_ms:
            raise UserError(f"Listen to clip {key} for at least {need_ms / 1000:g} s before voting "
                            f"(listen_ms_{key} is {ms}).")  # fmt: skip
        if ms > 1000 * (max(age_s, 0.0) + CLOCK_SLACK_S):
            raise UserError(f"listen_ms_{key}={ms} is longer than the {max(age_s, 0.0):.1f} s since the pair was served")

    def listen_needed_s(self, clip: ClipRecord) -> float:
        """A clip shorter than min_listen_s needs 90% of its length (play events are not exact)."""
        return min(self.config.min_listen_s, 0.9 * clip.duration_s)

    # -- sessions and pair tokens (the HTTP API is stateless: the pair travels signed with the client)
    def session_from_cookie(self, value: object) -> str | None:
        """The session id in a signed session cookie of this app (or a replica sharing its secret)."""
        return session_from_cookie(self.session_signer, value)

    def token(self, pair: Pair, session: str) -> str:
        """The pair token handed to an API client: the served pair and its session, signed."""
        ticket = Ticket(pair.id, pair.a.id, pair.b.id, pair.left, pair.issued_at, session)
        return encode_ticket(self._pair_signer, ticket)

    def pair_from_token(self, token: object) -> tuple[Pair, str]:
        """(the served pair, the session it was served to) from a pair token; one-line errors."""
        t = decode_ticket(self._pair_signer, token)
        ca, cb = self.store.clip(t.a), self.store.clip(t.b)
        return Pair(prompt=ca.prompt, a=ca, b=cb, left=t.left, id=t.pair_id, issued_at=t.issued_at), t.session

    # -- leaderboard and admin ------------------------------------------------------------------
    def leaderboard(self) -> Leaderboard:
        """BT ratings over the counted votes (at most `per_session_cap` a session); reads only the
        votes added since the last call, and rates again only when there are any."""
        return self.live.leaderboard()

    def check_admin(self, secret: str | None) -> None:
        if not self.config.admin_secret:
            raise PermissionError("Admin actions are disabled: start the app with MUSICRL_ADMIN_SECRET set.")
        if not secret or not hmac.compare_digest(str(secret).encode(), self.config.admin_secret.encode()):
            raise PermissionError("Wrong admin secret.")

    def export(
        self, fmt: str = "jsonl", per_session_cap: int | None = None, exclude_flagged: bool = False
    ) -> tuple[Path, int]:
        """Export the effective votes under data_dir/exports/, at most `per_session_cap` a session
        (default: the leaderboard's); `exclude_flagged`: without outlier sessions. Returns (path, rows)."""
        out_dir = self.store.data_dir / "exports"
        out_dir.mkdir(exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = out_dir / (f"votes-{stamp}.jsonl" if fmt == "jsonl" else f"votes-{stamp}")
        cap = self.config.per_session_cap if per_session_cap is None else per_session_cap
        n = self.store.export(path, fmt=fmt, per_session_cap=cap, exclude_flagged=exclude_flagged)
        return path, n


def _same_audio(a, b) -> bool:
    """Two clips a listener cannot tell apart: the same 16-bit WAV (what the store keeps and serves)."""
    return a.sample_rate == b.sample_rate and wav_bytes(a.audio, a.sample_rate) == wav_bytes(b.audio, b.sample_rate)
