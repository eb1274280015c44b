"""A small JSON API beside the UI, on the same FastAPI app, for programmatic voters (load tests, bots).

    POST /api/generate      {"prompt": str, "duration_s"?: float}
                            -> {"pair": token, "prompt", "duration_s", "clips": [{"slot": "a"|"b", "id", "url", "sha256"}]}
    POST /api/vote          {"pair": token, "choice": "a"|"b"|"tie"|"both_bad", "listen_ms_a": int,
                             "listen_ms_b": int, "supersedes"?: int}
                            -> {"vote_id", "choice", "counted", "models": {"a": name, "b": name}}  (after COMMIT)
    GET  /api/clips/{id}.wav  the clip's WAV (nothing else is served)
    GET  /api/leaderboard   ratings with CIs, win-rate matrix, counts
    GET  /api/health
    admin, header X-Admin-Secret: GET /api/admin/models, GET /api/admin/batches (the batcher's
                            window, max batch and {requests in a batch: batches served}), POST /api/admin/reload,
                            POST /api/admin/export {"format"?: "jsonl"|"hf", "per_session_cap"?: int,
                                                    "exclude_flagged"?: bool}

The pair token is signed by the server, so a client cannot vote on a pair it was not served or
claim which models made it; nothing before the stored vote names a model. Clips are listed a then
b, and the API records `left` = "a". Sessions are the server's: the session cookie
(`musicrl.app.tokens`), or a new session when the client sends none, is bound into the pair token
at generate, and a vote's session is the token's. A `session` field in a vote is refused.
A clip's id is opaque (keyed by the server's secret, `musicrl.votes.files.clip_id`); a client checks
the bytes it got from `url` against `sha256`, the SHA-256 of the WAV, which names no model.
A pair token takes one vote: a second is a 409, unless it is a correction (`supersedes`: the
pair's vote id), which is stored but not counted ("counted": false), since the models were
revealed with the vote. Listening times are required, integers, at least the minimum listen time.
Errors: {"error": one line} with 400 (bad input, e.g. a lone surrogate in the prompt or an integer
out of range), 403 (admin), 404 (no such clip), 409 (the pair has its vote), 410 (the pair
expired), 413 (a request body over the cap), 429 with Retry-After (this client's generate or vote
rate is spent, `musicrl.app.limits`), 503 with Retry-After (too many generations queued; too many
clips nobody voted on; the vote database locked, full or unreachable), 500 (anything else: the
details go to the server's log only).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict

from musicrl.app.arena import Arena, Busy, Expired
from musicrl.app.clip_gc import ClipsFull
from musicrl.app.guards import error_response
from musicrl.app.limits import RateLimited, client_key
from musicrl.app.tokens import SCOPE_KEY, new_id
from musicrl.errors import UserError
from musicrl.votes.store import AlreadyVoted, ClipRecord, model_key


class _Body(BaseModel):
    # a misspelt field is an error, not silently ignored; strict: true, "900" or 900.0 is no integer
    model_config = ConfigDict(extra="forbid", strict=True)


class GenerateBody(_Body):
    prompt: str
    duration_s: float | None = None


class VoteBody(_Body):
    pair: str
    choice: str
    session: Any = None  # refused with its own message: sessions are the server's
    listen_ms_a: int | None = None
    listen_ms_b: int | None = None
    supersedes: int | None = None


class ExportBody(_Body):
    format: str = "jsonl"
    per_session_cap: int | None = None
    exclude_flagged: bool = False


def _error(status: int, message: str, retry_after_s: int | None = None) -> JSONResponse:
    return error_response(status, message, retry_after_s)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A malformed body gets the API's own error shape: 400 and one line naming the field."""
    e = exc.errors()[0]
    field = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
    return _error(400, f"bad request: {field}: {e.get('msg', 'invalid')}")


def leaderboard_json(arena: Arena) -> dict:
    lb = arena.leaderboard()
    return {
        "ratings": lb.table(),
        "models": lb.models,
        "win_rate": [[None if math.isnan(x) else round(float(x), 4) for x in row] for row in lb.win_rate],
        "games": lb.games.tolist(),
        "provisional": lb.provisional,
        "n_votes": lb.n_votes,
    }


def api_router(arena: Arena) -> APIRouter:
    """The routes under /api, all over one arena."""
    router = APIRouter(prefix="/api")
    _voting_routes(router, arena)
    _info_routes(router, arena)
    _admin_routes(router, arena)

    @router.api_route("/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def not_found(rest: str):  # last: anything else under /api is this API's 404, not the UI's
        return _error(404, f"not found: no such API route /api/{rest[:80]}")

    return router


def _clip_json(slot: str, clip: ClipRecord) -> dict:
    """A served clip: its opaque id, where to get it, and the SHA-256 of those bytes to check them by."""
    return {"slot": slot, "id": clip.id, "url": f"/api/clips/{clip.id}.wav", "sha256": clip.sha256}


def _voting_routes(router: APIRouter, arena: Arena) -> None:
    """POST /generate, POST /vote."""

    @router.post("/generate")
    def generate(body: GenerateBody, request: Request):  # sync: FastAPI runs it in its thread pool
        try:
            arena.limit("generate", client_key(request))
            pair = dataclasses.replace(arena.generate_pair(body.prompt, body.duration_s), left="a")
        except RateLimited as e:
            return _error(429, str(e), retry_after_s=e.retry_after_s)
        except Busy as e:
            return _error(503, str(e), retry_after_s=30)
        except ClipsFull as e:
            return _error(503, str(e), retry_after_s=e.retry_after_s)
        except UserError as e:
            return _error(400, str(e))
        return {
            "pair": arena.token(pair, request.scope.get(SCOPE_KEY) or new_id()),
            "prompt": pair.prompt,
            "duration_s": pair.a.duration_s,
            "clips": [_clip_json(k, pair.clip(k)) for k in "ab"],
        }

    @router.post("/vote")
    def vote(body: VoteBody, request: Request):
        try:
            arena.limit("vote", client_key(request))
        except RateLimited as e:
            return _error(429, str(e), retry_after_s=e.retry_after_s)
        if body.session is not None:
            return _error(400, "the session is the server's (a cookie, bound into the pair token); "
                               "drop the 'session' field")  # fmt: skip
        try:
            pair, session = arena.pair_from_token(body.pair)
            v = arena.vote(pair, body.choice, session, listen_ms_a=body.listen_ms_a, listen_ms_b=body.listen_ms_b,
                           supersedes=body.supersedes)  # fmt: skip
        except AlreadyVoted as e:
            return _error(409, str(e))
        except Expired as e:
            return _error(410, str(e))
        except UserError as e:
            return _error(400, str(e))
        return {  # the vote is committed: only now are the models named
            "vote_id": v.id,
            "choice": v.choice,
            "counted": v.supersedes is None,
            "models": {"a": model_key(v.model_a, v.model_a_version), "b": model_key(v.model_b, v.model_b_version)},
        }


def _info_routes(router: APIRouter, arena: Arena) -> None:
    """GET /clips/{id}.wav, /leaderboard, /health."""

    @router.get("/clips/{name}")
    def clip(name: str):
        clip_id = name[:-4] if name.endswith(".wav") else name
        try:  # 64 hex digits, a regular file inside the clips dir: never a symlink or a path outside
            path = arena.store.clip_file(clip_id)
        except UserError as e:
            return _error(404, str(e))
        return FileResponse(path, media_type="audio/wav", filename=f"{clip_id}.wav")

    @router.get("/leaderboard")
    def get_leaderboard():
        return leaderboard_json(arena)

    @router.get("/health")
    def health():
        return {"ok": True, "models": len(arena.generators)}


def _admin_routes(router: APIRouter, arena: Arena) -> None:
    """/admin/models, /admin/batches, /admin/reload, /admin/export: each needs the X-Admin-Secret header."""

    def admin(secret: str | None):
        try:
            arena.check_admin(secret)
        except PermissionError as e:
            return _error(403, str(e))
        return None

    @router.get("/admin/models")
    def models(x_admin_secret: str | None = Header(default=None)):
        return admin(x_admin_secret) or {"models": arena.model_list()}

    @router.get("/admin/batches")
    def batches(x_admin_secret: str | None = Header(default=None)):
        b = arena.batcher
        sizes = {str(k): v for k, v in b.batch_sizes().items()}
        return admin(x_admin_secret) or {"batch_window_ms": 1000 * b.window_s, "max_batch": b.max_batch, "batch_sizes": sizes}

    @router.post("/admin/reload")
    def reload(x_admin_secret: str | None = Header(default=None)):
        if (denied := admin(x_admin_secret)) is not None:
            return denied
        try:
            return {"models": arena.reload_models()}
        except UserError as e:
            return _error(400, str(e))

    @router.post("/admin/export")
    def export(body: ExportBody | None = None, x_admin_secret: str | None = Header(default=None)):
        if (denied := admin(x_admin_secret)) is not None:
            return denied
        body = body or ExportBody()
        try:
            path, n = arena.export(body.format, body.per_session_cap, body.exclude_flagged)
        except UserError as e:
            return _error(400, str(e))
        return {"path": str(path), "rows": n}
