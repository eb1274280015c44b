"""What the server signs and takes back: pair tokens (the API's served pairs) and session cookies.

Both are `base64url(JSON).hmac` with HMAC-SHA256 under a key derived from the store secret
(`VoteStore.derive_key`, one key per purpose, so neither passes for the other). Replicas that share
the secret (`MUSICRL_SALT`) accept each other's tokens and cookies.

- A pair token carries the served pair's id, its two clips, which one the UI put left, when it was
  served (Unix seconds, ms precision) and the session it was served to. A vote names its pair by
  the token alone, and its session comes from the token, never from the request body.
- The session cookie (`SESSION_COOKIE`) carries a random session id issued by
  `SessionMiddleware` to any client that arrives without a valid one. The UI and the API read the
  session from it; a client that drops cookies gets a new session for each pair it asks for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from musicrl.errors import UserError

SESSION_COOKIE = "musicrl_session"
SESSION_MAX_AGE_S = 30 * 24 * 3600  # a browser keeps its session (and the per-session cap) a month
SCOPE_KEY = "musicrl.session"  # where SessionMiddleware leaves the request's session id


def new_id() -> str:
    """A fresh random id (sessions, served pairs): 32 hex digits."""
    return secrets.token_hex(16)


class Signer:
    """Signs a small JSON object into a URL- and cookie-safe string, and checks one back."""

    def __init__(self, key: bytes):
        self._key = key

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()[:32]

    def sign(self, body: dict) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: object) -> dict:
        """The signed object; ValueError if `token` is not one this key signed."""
        if not isinstance(token, str) or token.count(".") != 1 or len(token) > 4096:
            raise ValueError("malformed")
        payload, sig = token.split(".")
        if not hmac.compare_digest(sig.encode(), self._mac(payload).encode()):
            raise ValueError("bad signature")
        body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        if not isinstance(body, dict):
            raise ValueError("not an object")
        return body


@dataclass(frozen=True)
class Ticket:
    """What a pair token says: the served pair, and to which session, when."""

    pair_id: str
    a: str  # clip ids
    b: str
    left: str
    issued_at: float  # Unix seconds
    session: str


def encode_ticket(signer: Signer, t: Ticket) -> str:
    return signer.sign({"p": t.pair_id, "a": t.a, "b": t.b, "l": t.left, "t": round(t.issued_at, 3), "s": t.session})


def decode_ticket(signer: Signer, token: object) -> Ticket:
    """The ticket in a pair token; a one-line UserError for anything this server did not sign."""
    try:
        body = signer.verify(token)
        t = Ticket(body["p"], body["a"], body["b"], body["l"], body["t"], body["s"])
        if not all(isinstance(x, str) for x in (t.pair_id, t.a, t.b, t.left, t.session)):
            raise TypeError("field types")
        if isinstance(t.issued_at, bool) or not isinstance(t.issued_at, (int, float)):
            raise TypeError("issue time")
    except (ValueError, KeyError, TypeError) as e:
        raise UserError("invalid pair token: use the 'pair' value /api/generate returned") from e
    return t


def session_cookie_value(signer: Signer, session: str) -> str:
    return signer.sign({"s": session})


def session_from_cookie(signer: Signer, value: object) -> str | None:
    """The session id in a cookie value this server signed, else None."""
    try:
        session = signer.verify(value).get("s")
    except ValueError:
        return None
    return session if isinstance(session, str) and 0 < len(session) <= 64 else None


class SessionMiddleware:
    """ASGI middleware: every HTTP request gets a server-issued session id in `scope[SCOPE_KEY]`.

    From a valid signed cookie when the client sent one; otherwise a new id, which the response
    sets as the cookie (HttpOnly, SameSite=Lax). Pure ASGI, so streamed responses pass untouched.
    """

    def __init__(self, app, signer: Signer, max_age_s: int = SESSION_MAX_AGE_S):
        self.app, self.signer, self.max_age_s = app, signer, max_age_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import cookie_parser

        cookie_header = b"; ".join(v for k, v in scope.get("headers", ()) if k == b"cookie").decode("latin-1")
        session = session_from_cookie(self.signer, cookie_parser(cookie_header).get(SESSION_COOKIE))
        if session is not None:
            scope[SCOPE_KEY] = session
            return await self.app(scope, receive, send)
        scope[SCOPE_KEY] = session = new_id()
        cookie = (f"{SESSION_COOKIE}={session_cookie_value(self.signer, session)}; Path=/; "
                  f"Max-Age={self.max_age_s}; HttpOnly; SameSite=Lax")  # fmt: skip

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"set-cookie", cookie.encode())]}
            await send(message)

        return await self.app(scope, receive, send_with_cookie)
