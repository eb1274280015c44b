"""What one client may ask of the arena: per-client token buckets on generate and on vote, and the
caps on stored clips nobody voted on and on request bodies (`Limits`, from `musicrl app`'s flags).

A client is its network address as the server sees it (`client_key`): uvicorn's proxy-header
handling (on by default for a proxy on 127.0.0.1, `FORWARDED_ALLOW_IPS` for others) puts the real
address there behind a reverse proxy. Sessions are no key for this: a client that drops its cookie
gets a new session for each pair. A bucket holds up to `burst` requests and refills at
`per_min` a minute; an empty bucket answers `RateLimited` with the seconds until the next token.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from musicrl.errors import UserError


@dataclass(frozen=True)
class Limits:
    """Per-client rates (a minute; 0 = no limit) and bursts; caps (0 = none).

    The defaults fit a person: a pair takes at least two listens, so more than 6 pairs a minute
    for long is a script. A vote is one per pair; its higher rate leaves room for retries.
    """

    generate_per_min: float = 6.0
    generate_burst: int = 10
    vote_per_min: float = 12.0
    vote_burst: int = 20
    max_unvoted_clips: int = 10_000  # clip files no vote names, kept until their pairs expire
    max_request_bytes: int = 64 * 1024  # any request body, Gradio uploads included (the app takes none)

    def __post_init__(self):
        for name in ("generate_per_min", "vote_per_min"):
            x = getattr(self, name)
            if not (isinstance(x, (int, float)) and math.isfinite(x) and x >= 0):
                raise UserError(f"{name.replace('_', ' ')} must be a number >= 0 (0 = no limit), got {x}")
        for name in ("generate_burst", "vote_burst", "max_request_bytes"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise UserError(f"{name.replace('_', ' ')} must be an integer >= 1, got {getattr(self, name)}")
        if not (isinstance(self.max_unvoted_clips, int) and self.max_unvoted_clips >= 0):
            raise UserError(f"max unvoted clips must be an integer >= 0 (0 = no cap), got {self.max_unvoted_clips}")


NO_RATE_LIMITS = Limits(generate_per_min=0, vote_per_min=0)


class RateLimited(Exception):
    """Too many requests from one client (HTTP 429); `retry_after_s`: when the next one is allowed."""

    def __init__(self, action: str, retry_after_s: int):
        super().__init__(f"too many {action} requests from your address; try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class TokenBucket:
    """Per-client token buckets for one action. `now` is passed in (the arena's clock).

    At most `max_clients` buckets are kept (least recently used dropped): a dropped bucket comes
    back full, so the bound gives a client no more than its burst again.
    """

    def __init__(self, action: str, per_min: float, burst: int, max_clients: int = 65536):
        self.action, self.rate, self.burst, self.max_clients = action, per_min / 60.0, burst, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str, now: float) -> None:
        """Spend one token of `client`'s bucket, or raise `RateLimited`."""
        if self.rate <= 0:
            return
        with self._lock:
            tokens, at = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                raise RateLimited(self.action, max(1, math.ceil((1.0 - tokens) / self.rate)))
            self._buckets[client] = (tokens - 1.0, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)


def client_key(request: object) -> str:
    """The client's address of a Starlette/Gradio request (or anything with `.client.host`)."""
    client = getattr(request, "client", None)
    host = getattr(client, "host", None)
    return str(host) if host else "unknown"
