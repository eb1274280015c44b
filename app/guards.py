"""What the HTTP server hides, and how it fails: always one line of JSON, never a traceback, SQL or path.

- `HiddenRoutes`: Gradio's own API description (`/gradio_api/info`, `/gradio_api/openapi.json`,
  which the "view API" page reads) and its monitoring dashboard (`/monitoring...`) answer 404
  unless the app was started with them asked for (`musicrl app --expose-api-docs`, `--monitoring`).
  The UI does not need them: the page carries the API description it uses.
- `BodyLimit`: a request body over the cap is a 413 before anything reads it (by its
  Content-Length, or counted as it streams in); it caps Gradio's uploads too, which the UI never
  needs.
- `store_unavailable`: a vote database that cannot serve now (locked, full, connection lost) is a
  503 with `Retry-After`; `internal_error`: anything unforeseen is a 500 whose details go to the
  server's log only.
"""

from __future__ import annotations

import logging
import re

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from musicrl.votes.store import StoreUnavailable

API_DOCS_PATHS = ("/gradio_api/info", "/gradio_api/info/", "/gradio_api/openapi.json")
MONITORING_PREFIX = "/monitoring"


def error_response(status: int, message: str, retry_after_s: int | None = None) -> JSONResponse:
    """The API's one error shape: {"error": one line}, with Retry-After when retrying may help."""
    headers = {"Retry-After": str(int(retry_after_s))} if retry_after_s is not None else None
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


class HiddenRoutes:
    """ASGI middleware: 404 for Gradio's API description and monitoring routes unless exposed."""

    def __init__(self, app, expose_api_docs: bool = False, monitoring: bool = False):
        self.app, self.expose_api_docs, self.monitoring = app, expose_api_docs, monitoring

    def hidden(self, path: str) -> bool:
        path = re.sub("/+", "/", path)
        if not self.expose_api_docs and path in API_DOCS_PATHS:
            return True
        return not self.monitoring and (path == MONITORING_PREFIX or path.startswith(MONITORING_PREFIX + "/"))

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope.get("path", "")
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            if self.hidden(path):
                return await error_response(404, "not found")(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, declared or streamed.

    A body that turns out too large as it streams in (chunked, or longer than declared) is cut
    off: the app reads a disconnect, and whatever it answers is replaced by the 413.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(413, f"the request body is over the limit of {self.max_bytes} bytes")
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large(scope, receive, send)
        seen, over, started = 0, False, False

        async def counted_receive():
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                over = True
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if over:  # the app's answer to a cut-off body: replaced by the 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await too_large(scope, receive, send)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors on this app's routes (405, ...) in the API's shape."""
    return error_response(exc.status_code, str(exc.detail))


async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
    return error_response(503, str(exc), exc.retry_after_s)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    logging.getLogger("musicrl.app").error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error; the server's log has the details")
