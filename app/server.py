"""The Gradio A/B voting app: a prompt, two blind clips, one vote, then the models are revealed.

`build_app(generators, store, ...)` returns the `gr.Blocks` (all state lives in it or in a
per-session `gr.State`; nothing at module level): components in `musicrl.app.layout`, event
functions in `musicrl.app.handlers`. `create_server(blocks)` puts it on a FastAPI app
beside the JSON API of `musicrl.app.api` and serves files only from the store's clips directory;
`serve(...)` runs that with uvicorn and `start_server(...)` does so in a background thread.

Listening gate: the two `gr.Audio` players' `play` and `pause`/`stop` events (pause also fires at the
end of a clip) reach the server (queue=False: light, immediate), which adds up each slot's played
time per session; while a clip plays, a 0.5 s `gr.Timer` re-checks. The vote buttons are enabled
once both clips have played `min_listen_s` (or 90% of a shorter clip), and the vote handler checks
the same again, so a re-enabled button in devtools does not get a vote through.

Blindness: screen slot A (left) shows clip a or b at random (`left` in the vote row); the two
models are drawn at random; clip files are named by a keyed hash (no guess of a model can be tested against it); the reveal comes only
after the vote is committed, and it closes the pair: the buttons stay off until a new pair (a
knowing vote would not count; see `musicrl.votes.store.effective_votes`).

Sessions: `SessionMiddleware` (`musicrl.app.tokens`) gives every client a signed session cookie;
the UI and the API take the session from it (or from the pair token), never from a request field.

Limits (`musicrl.app.limits`): per-client generate and vote rates (429 with Retry-After in the API,
a "slow down" message in the UI), a cap on clips nobody voted on (`musicrl.app.clip_gc`) and one
on request bodies (`BodyLimit`, which also caps Gradio's uploads; the UI takes none).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Sequence

import gradio as gr

from musicrl.app.api import api_router, validation_error
from musicrl.app.arena import Arena, ArenaConfig, GeneratorLike
from musicrl.app.guards import BodyLimit, HiddenRoutes, http_error, internal_error, store_unavailable
from musicrl.app.handlers import Handlers
from musicrl.app.layout import build_blocks
from musicrl.app.limits import Limits
from musicrl.app.tokens import SessionMiddleware
from musicrl.votes.leaderboard import SESSION_CAP
from musicrl.votes.store import SECRET_FILE, StoreUnavailable, VoteStore

CSS = """
.musicrl-vote button { min-height: 3em; font-size: 1.05em; }
.musicrl-echo { font-size: 1.15em; margin: 0.4em 0; overflow-wrap: anywhere; }
.musicrl-echo span { font-size: 0.75em; text-transform: uppercase; opacity: 0.7; }
#prompt-count { font-size: 0.85em; opacity: 0.75; text-align: right; }
#prompt-count .musicrl-over { color: #b45309; font-weight: 600; }
@media (max-width: 640px) {  /* a phone: the duration goes under the prompt */
  #prompt-row { flex-direction: column; }
  #prompt-row > * { width: 100%; min-width: 0 !important; }
}
"""
# On a phone the page's own margins shrink. Gradio scopes `css` to its content, which sits inside the
# padded page, so this rule goes in the page's head.
HEAD = "<style>@media (max-width: 640px) { .main { padding-left: 6px !important; padding-right: 6px !important; } }</style>"


def build_app(
    generators: Sequence[GeneratorLike],
    store: VoteStore,
    *,
    min_listen_s: float = 2.0,
    max_prompt_chars: int = 300,
    max_duration_s: float = 10.0,
    default_duration_s: float | None = None,
    queue_size: int = 16,
    admin_secret: str | None = None,
    examples: Sequence[str] = (),
    reload: Callable[[], Sequence[GeneratorLike]] | None = None,
    leaderboard_min_votes: int = 5,
    n_boot: int = 200,
    seed: int | None = None,
    title: str = "musicrl arena",
    token_ttl_s: float = 4 * 3600.0,
    limits: Limits = Limits(),
    per_session_cap: int | None = SESSION_CAP,
    batch_window_ms: float = 50.0,
    max_batch: int = 8,
    paired_seeds: bool = False,
) -> gr.Blocks:
    """The voting UI over `generators` (one or more) and `store`. See the module doc for behaviour.

    `examples`: the prompts offered under the prompt box (the caller picks them for the served
    models; none by default). `reload` is the hook for serving new checkpoints (admin "Reload
    models", POST /api/admin/reload). `token_ttl_s`: how long a served pair takes its vote.
    `limits`: per-client rates and the caps (`musicrl.app.limits.Limits`); `per_session_cap`: the
    most votes of one session the leaderboard and the admin export count (None: no cap).
    `batch_window_ms`, `max_batch`: generate requests for one model that arrive within the window
    decode as one batch of at most `max_batch` requests (`musicrl.app.batcher`; 0 ms: one at a time).
    `paired_seeds`: two models' clips of a pair share one seed (`ArenaConfig.paired_seeds`).
    """
    cap = min([max_duration_s] + [float(g.max_duration_s) for g in generators])
    config = ArenaConfig(
        min_listen_s=min_listen_s,
        max_prompt_chars=max_prompt_chars,
        max_duration_s=max_duration_s,
        default_duration_s=min(cap, 5.0 if default_duration_s is None else default_duration_s),
        queue_size=queue_size,
        admin_secret=admin_secret or None,
        examples=tuple(examples),
        leaderboard_min_votes=leaderboard_min_votes,
        n_boot=n_boot,
        seed=seed,
        token_ttl_s=token_ttl_s,
        limits=limits,
        per_session_cap=per_session_cap,
        batch_window_s=batch_window_ms / 1000,
        max_batch=max_batch,
        paired_seeds=paired_seeds,
    )
    arena = Arena(generators, store, config, reload)
    demo = build_blocks(Handlers(arena), title)
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    demo.musicrl_arena = arena  # for create_server: the API shares this arena
    return demo


def create_server(blocks: gr.Blocks, *, expose_api_docs: bool = False, monitoring: bool = False):
    """A FastAPI app: the JSON API under /api and the Gradio UI at /, serving files only from the clips dir.

    `expose_api_docs`: Gradio's API description (/gradio_api/info, /gradio_api/openapi.json, the
    "view API" footer link) and this API's own (/api/openapi.json, /api/docs); `monitoring`:
    Gradio's monitoring dashboard (/monitoring). Both 404 unless asked for (`musicrl.app.guards`).
    """
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from gradio.utils import get_upload_folder, is_in_or_equal

    arena: Arena = blocks.musicrl_arena
    store = arena.store
    docs_url, openapi_url = ("/api/docs", "/api/openapi.json") if expose_api_docs else (None, None)

    @contextlib.asynccontextmanager
    async def lifespan(_app):  # the batcher's worker starts with the first request and ends with the server
        yield
        arena.close()

    app = FastAPI(title="musicrl arena", docs_url=docs_url, redoc_url=None, openapi_url=openapi_url, lifespan=lifespan)
    app.include_router(api_router(arena))
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.add_exception_handler(Exception, internal_error)
    app.add_middleware(SessionMiddleware, signer=arena.session_signer)
    app.add_middleware(HiddenRoutes, expose_api_docs=expose_api_docs, monitoring=monitoring)
    app.add_middleware(BodyLimit, max_bytes=arena.config.limits.max_request_bytes)
    clips = store.clips_dir
    clips.mkdir(parents=True, exist_ok=True)
    blocked = [str(store.data_dir / SECRET_FILE)]
    upload = get_upload_folder()  # gradio's own temp dir: nothing of ours lives there
    if not is_in_or_equal(str(clips), upload):
        blocked.append(upload)
    return gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        allowed_paths=[str(clips)],
        blocked_paths=blocked,
        footer_links=["api", "gradio"] if expose_api_docs else ["gradio"],
        enable_monitoring=monitoring,
        max_file_size=arena.config.limits.max_request_bytes,  # Gradio's own check; BodyLimit is first
        ssr_mode=False,
        css=CSS,
        head=HEAD,
    )


def serve(blocks: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, **options) -> None:
    """Serve with uvicorn; `options` go to `create_server` (expose_api_docs, monitoring)."""
    import uvicorn

    uvicorn.run(create_server(blocks, **options), host=host, port=port, log_level="warning")


class RunningServer:
    """An app served by uvicorn on a background thread (tests, load tests). `port=0`: a free port."""

    def __init__(self, blocks: gr.Blocks, host: str = "127.0.0.1", port: int = 0, **options):
        import uvicorn

        app = create_server(blocks, **options)
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="musicrl-app", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the app did not start on {host}:{port}")
            time.sleep(0.05)
        sock = self._server.servers[0].sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_server(blocks: gr.Blocks, host: str = "127.0.0.1", port: int = 0, **options) -> RunningServer:
    return RunningServer(blocks, host, port, **options)
