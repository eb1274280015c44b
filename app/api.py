"""A small JSON API beside the UI, on the same FastAPI app, for programmatic voters (load tests, bots).

    POST /api/generate      {"prompt": str, "duration_s"?: float}
                            -> {"pair": token, "prompt", "duration_s", "clips": [{"slot": "a"|"b", "id", "url"}]}
    POST /api/vote          {"pair": token, "choice": "a"|"b"|"tie"|"both_bad", "session"?: str,
                             "listen_ms_a"?: int, "listen_ms_b"?: int, "supersedes"?: int}
                            -> {"vote_id", "choice", "models": {"a": name, "b": name}}  (after COMMIT)
    GET  /api/clips/{id}.wav  the clip's WAV (ids are content hashes; nothing else is served)
    GET  /api/leaderboard   ratings with CIs, win-rate matrix, counts
    GET  /api/health
    admin, header X-Admin-Secret: GET /api/admin/models, POST /api/admin/reload,
                            POST /api/admin/export {"format"?: "jsonl"|"hf", "per_session_cap"?: int}

The pair token is signed by the server, so a client cannot vote on a pair it was not served or
claim which models made it. Clips are listed a then b, and the API records `left` = "a". The
session defaults to the client address. Errors: {"error": one line} with 400 (bad input), 403
(admin), 404 (no such clip), 503 (too many generations queued).
"""

from __future__ import annotations

import dataclasses
import math

from fastapi import APIRouter, Header, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict

from musicrl.app.arena import Arena, Busy
from musicrl.errors import UserError
from musicrl.votes.store import model_key


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class GenerateBody(_Body):
    prompt: str
    duration_s: float | None = None


class VoteBody(_Body):
    pair: str
    choice: str
    session: str | None = None
    listen_ms_a: int | None = None
    listen_ms_b: int | None = None
    supersedes: int | None = None


class ExportBody(_Body):
    format: str = "jsonl"
    per_session_cap: int | None = None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


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
    return router


def _voting_routes(router: APIRouter, arena: Arena) -> None:
    """POST /generate, POST /vote."""

    @router.post("/generate")
    def generate(body: GenerateBody):  # sync: FastAPI runs it in its thread pool
        try:
            pair = dataclasses.replace(arena.generate_pair(body.prompt, body.duration_s), left="a")
        except Busy as e:
            return _error(503, str(e))
        except UserError as e:
            return _error(400, str(e))
        return {
            "pair": arena.token(pair),
            "prompt": pair.prompt,
            "duration_s": pair.a.duration_s,
            "clips": [{"slot": k, "id": pair.clip(k).id, "url": f"/api/clips/{pair.clip(k).id}.wav"} for k in "ab"],
        }

    @router.post("/vote")
    def vote(body: VoteBody, request: Request):
        session = body.session or f"api:{request.client.host if request.client else 'unknown'}"
        try:
            pair = arena.pair_from_token(body.pair)
            v = arena.vote(
                pair,
                body.choice,
                session,
                listen_ms_a=body.listen_ms_a,
                listen_ms_b=body.listen_ms_b,
                supersedes=body.supersedes,
            )
        except UserError as e:
            return _error(400, str(e))
        return {
            "vote_id": v.id,
            "choice": v.choice,
            "models": {"a": model_key(v.model_a, v.model_a_version), "b": model_key(v.model_b, v.model_b_version)},
        }


def _info_routes(router: APIRouter, arena: Arena) -> None:
    """GET /clips/{id}.wav, /leaderboard, /health."""

    @router.get("/clips/{name}")
    def clip(name: str):
        clip_id = name[:-4] if name.endswith(".wav") else name
        try:
            path = arena.store.clip_path(clip_id)  # validates: 64 hex digits, so never a path outside
        except UserError as e:
            return _error(404, str(e))
        if not path.is_file():
            return _error(404, f"no clip {clip_id}")
        return FileResponse(path, media_type="audio/wav", filename=f"{clip_id}.wav")

    @router.get("/leaderboard")
    def get_leaderboard():
        return leaderboard_json(arena)

    @router.get("/health")
    def health():
        return {"ok": True, "models": len(arena.generators)}


def _admin_routes(router: APIRouter, arena: Arena) -> None:
    """/admin/models, /admin/reload, /admin/export: each needs the X-Admin-Secret header."""

    def admin(secret: str | None):
        try:
            arena.check_admin(secret)
        except PermissionError as e:
            return _error(403, str(e))
        return None

    @router.get("/admin/models")
    def models(x_admin_secret: str | None = Header(default=None)):
        return admin(x_admin_secret) or {"models": arena.model_list()}

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
            path, n = arena.export(body.format, body.per_session_cap)
        except UserError as e:
            return _error(400, str(e))
        return {"path": str(path), "rows": n}
