"""The Gradio A/B voting app: a prompt, two blind clips, one vote, then the models are revealed.

`build_app(generators, store, ...)` returns the `gr.Blocks` (all state lives in it or in a
per-session `gr.State`; nothing at module level). `create_server(blocks)` puts it on a FastAPI app
beside the JSON API of `app.api` and serves files only from the store's clips directory;
`serve(...)` runs that with uvicorn and `start_server(...)` does so in a background thread.

Listening gate: the two `gr.Audio` players' `play` and `pause`/`stop` events (pause also fires at the
end of a clip) reach the server (queue=False: light, immediate), which adds up each slot's played
time per session; while a clip plays, a 0.5 s `gr.Timer` re-checks. The vote buttons are enabled
once both clips have played `min_listen_s` (or 90% of a shorter clip), and the vote handler checks
the same again, so a re-enabled button in devtools does not get a vote through.

Blindness: screen slot A (left) shows clip a or b at random (`left` in the vote row); the two
models are drawn at random; clip files are named by their content hash; the reveal comes only
after the vote is committed. Clicking another vote button after the reveal records a correction
(a new row that `supersedes` the previous one).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Sequence

import gradio as gr
import pandas as pd

from app.api import api_router, validation_error
from app.arena import DEFAULT_EXAMPLES, Arena, ArenaConfig, Busy, GeneratorLike, Listening, Pair
from musicrl.errors import UserError
from musicrl.votes import SECRET_FILE, VoteStore, model_key

VOTES = (("A", "A is better"), ("B", "B is better"), ("tie", "Tie"), ("both_bad", "Both bad"))
CSS = ".musicrl-vote button { min-height: 3em; font-size: 1.05em; }"


class UiSession:
    """Per browser session (a gr.State): the pair on screen, what was heard, the vote so far.

    A plain class, not a dataclass: gradio serialises dataclass-valued props into the page config.
    """

    def __init__(self) -> None:
        self.pair: Pair | None = None
        self.listening = Listening()
        self.vote_id: int | None = None
        self.rated: set = set()  # (slot, rating) already stored for this pair

    def key(self, slot: str) -> str:
        """Screen slot 'A' (left) / 'B' (right) -> canonical clip key 'a' / 'b'."""
        assert self.pair is not None
        return self.pair.left if slot == "A" else ("b" if self.pair.left == "a" else "a")


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
    examples: Sequence[str] = DEFAULT_EXAMPLES,
    reload: Callable[[], Sequence[GeneratorLike]] | None = None,
    leaderboard_min_votes: int = 5,
    n_boot: int = 200,
    seed: int | None = None,
    title: str = "musicrl arena",
) -> gr.Blocks:
    """The voting UI over `generators` (one or more) and `store`. See the module doc for behaviour.

    `reload` is the hook for serving new checkpoints (admin "Reload models", POST /api/admin/reload).
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
    )
    arena = Arena(generators, store, config, reload)

    def gate_state(s: UiSession) -> tuple[str, bool, bool]:
        """(status line, may vote, timer needed) from what has been heard so far."""
        if s.pair is None:
            return "Type a prompt (or pick an example) and press **Generate**.", False, False
        now = time.monotonic()
        got = {slot: s.listening.seconds(slot, now) for slot in "AB"}
        need = {slot: arena.listen_needed_s(s.pair.clip(s.key(slot))) for slot in "AB"}
        heard = all(got[x] >= need[x] for x in "AB")
        if s.vote_id is not None:
            msg = "Vote saved. Press another button to correct it, or generate a new pair."
        elif heard:
            msg = "Both clips heard. **Which one fits the prompt better?**"
        else:
            parts = [f"{x} {min(got[x], need[x]):.1f} / {need[x]:.1f} s{' ✓' if got[x] >= need[x] else ''}" for x in "AB"]
            msg = "Listen to both clips before voting: " + " · ".join(parts)
        return msg, heard, s.listening.playing and not heard

    def gate(s: UiSession):
        """Updates for the status line, the 4 vote buttons and the timer."""
        msg, heard, tick = gate_state(s)
        return msg, *[gr.Button(interactive=heard) for _ in VOTES], gr.Timer(active=tick)

    def leaderboard_outputs():
        lb = arena.leaderboard()
        cols = ["rank", "model", "rating", "ci_low", "ci_high", "games", "wins", "losses", "ties", "both_bad"]
        table = pd.DataFrame(lb.table(), columns=cols)
        rows = []
        for i, m in enumerate(lb.models):
            row = {"model": m}
            for j, o in enumerate(lb.models):
                wr, n = lb.win_rate[i, j], int(lb.games[i, j])
                row[o] = "–" if i == j or math.isnan(wr) else f"{wr:.0%} ({n})"
            rows.append(row)
        matrix = pd.DataFrame(rows, columns=["model", *lb.models])
        note = (
            f"**{lb.n_votes}** informative votes. Bradley–Terry ratings on the Elo scale (mean 1000), "
            f"95% bootstrap intervals; a tie counts as half a win, 'both bad' is left out. "
            f"Win-rate cell: row model's share against the column model (games)."
        )
        if lb.provisional:
            note += " Not enough votes yet: " + ", ".join(f"{m} ({n})" for m, n in lb.provisional.items()) + "."
        return note, table, matrix

    def on_generate(prompt, duration, s: UiSession):
        try:
            pair = arena.generate_pair(prompt, duration)
        except (UserError, Busy) as e:
            raise gr.Error(str(e), print_exception=False) from None
        s.pair, s.listening, s.vote_id, s.rated = pair, Listening(), None, set()
        paths = [str(pair.clip(s.key(slot)).path) for slot in "AB"]
        return *paths, None, None, "", *gate(s)

    def on_play(slot):
        def fn(s: UiSession):
            s.listening.play(slot, time.monotonic())
            return gate(s)

        return fn

    def on_pause(slot):
        def fn(s: UiSession):
            s.listening.pause(slot, time.monotonic())
            return gate(s)

        return fn

    def on_vote(screen_choice: str):
        def fn(s: UiSession, rating_a, rating_b, request: gr.Request):
            if s.pair is None:
                raise gr.Error("Generate a pair first.", print_exception=False)
            now = time.monotonic()
            got = {slot: s.listening.seconds(slot, now) for slot in "AB"}
            if any(got[x] < arena.listen_needed_s(s.pair.clip(s.key(x))) for x in "AB"):
                raise gr.Error("Listen to both clips before voting.", print_exception=False)
            choice = s.key(screen_choice) if screen_choice in ("A", "B") else screen_choice
            slot_of = {s.key(x): x for x in "AB"}
            session = f"ui:{request.session_hash or (request.client.host if request.client else 'unknown')}"
            try:
                vote = arena.vote(
                    s.pair,
                    choice,
                    session,
                    listen_ms_a=int(1000 * got[slot_of["a"]]),
                    listen_ms_b=int(1000 * got[slot_of["b"]]),
                    supersedes=s.vote_id,
                )
                s.vote_id = vote.id  # committed: only now may the UI say so
                for slot, r in (("A", rating_a), ("B", rating_b)):
                    if r and (slot, int(r)) not in s.rated:
                        arena.store.add_rating(s.pair.clip(s.key(slot)).id, int(r), session=session, vote_id=vote.id)
                        s.rated.add((slot, int(r)))
            except UserError as e:
                raise gr.Error(str(e), print_exception=False) from None
            shown = {"A": "A", "B": "B", "tie": "a tie", "both_bad": "both bad"}[screen_choice]
            reveal = [f"### Revealed — you chose **{shown}** (vote #{vote.id})"]
            for slot in "AB":
                c = s.pair.clip(s.key(slot))
                reveal.append(f"- **{slot}** was `{model_key(c.model_id, c.model_version)}` (seed {c.seed})")
            return "\n".join(reveal), *gate(s), *leaderboard_outputs()

        return fn

    def admin(fn):
        def run(secret):
            try:
                arena.check_admin(secret)
                return fn()
            except PermissionError as e:
                raise gr.Error(str(e), print_exception=False) from None
            except UserError as e:
                raise gr.Error(str(e), print_exception=False) from None

        return run

    def models_md(models):
        return "\n".join(
            f"- `{m['model']}` ({m['model_id']}, weights {m['version']}"
            + (f", checkpoint `{m['checkpoint']}`)" if m.get("checkpoint") else ")")
            for m in models
        )

    def do_export():
        path, n = arena.export("jsonl")
        return f"Exported {n} votes to `{path}`."

    with gr.Blocks(title=title) as demo:
        sess = gr.State(UiSession)  # a callable: a fresh session object per page load
        timer = gr.Timer(0.5, active=False)
        gr.Markdown(
            f"# {title}\nTwo clips for your prompt, from models you are not told. Listen to both, "
            "then vote; the models are revealed after your vote."
        )
        with gr.Tabs():
            with gr.Tab("Vote"):
                with gr.Row():
                    prompt = gr.Textbox(
                        label=f"Prompt (up to {max_prompt_chars} characters)",
                        placeholder=f"e.g. {config.examples[0]}" if config.examples else "",
                        max_lines=3,
                        scale=4,
                        elem_id="prompt",
                    )
                    duration = gr.Slider(
                        minimum=0.5,
                        maximum=arena.max_duration_s,
                        value=config.default_duration_s,
                        step=0.5,
                        label="Duration (s)",
                        scale=1,
                        elem_id="duration",
                    )
                generate = gr.Button("Generate two clips", variant="primary", elem_id="generate")
                gr.Examples(examples=[[e] for e in config.examples], inputs=[prompt], label="Example prompts")
                audio, rating = {}, {}
                with gr.Row():
                    for slot in "AB":
                        with gr.Column():
                            audio[slot] = gr.Audio(
                                label=slot,
                                type="filepath",
                                interactive=False,
                                buttons=[],
                                elem_id=f"clip-{slot.lower()}",
                            )
                            # Serve clips in place from the store (allowed_paths), not via a copy in gradio's cache.
                            audio[slot].GRADIO_CACHE = str(store.clips_dir)
                            rating[slot] = gr.Radio(
                                [1, 2, 3, 4, 5], label=f"Quality of {slot}, 1–5 (optional)", elem_id=f"rating-{slot.lower()}"
                            )
                status = gr.Markdown(gate_state(UiSession())[0], elem_id="status")
                with gr.Row(elem_classes="musicrl-vote"):
                    buttons = [gr.Button(label, interactive=False, elem_id=f"vote-{c.lower()}") for c, label in VOTES]
                reveal = gr.Markdown(elem_id="reveal")
            with gr.Tab("Leaderboard", id="leaderboard") as lb_tab:
                lb_note = gr.Markdown(elem_id="leaderboard-note")
                lb_table = gr.Dataframe(label="Ratings", interactive=False, elem_id="leaderboard")
                lb_matrix = gr.Dataframe(label="Win rates", interactive=False, elem_id="winrate")
                refresh = gr.Button("Refresh", elem_id="refresh")
            with gr.Tab("Admin"):
                if config.admin_secret:
                    secret = gr.Textbox(label="Admin secret", type="password", elem_id="admin-secret")
                    with gr.Row():
                        list_btn = gr.Button("Model list")
                        reload_btn = gr.Button("Reload models")
                        export_btn = gr.Button("Export votes (JSONL)")
                    admin_out = gr.Markdown()
                    list_btn.click(admin(lambda: models_md(arena.model_list())), [secret], [admin_out])
                    reload_btn.click(admin(lambda: models_md(arena.reload_models())), [secret], [admin_out])
                    export_btn.click(admin(do_export), [secret], [admin_out])
                else:
                    gr.Markdown("Admin actions are disabled: start the app with `MUSICRL_ADMIN_SECRET` set.")

        gate_out = [status, *buttons, timer]
        gen_out = [audio["A"], audio["B"], rating["A"], rating["B"], reveal, *gate_out]
        generate.click(on_generate, [prompt, duration, sess], gen_out, concurrency_limit=1)
        prompt.submit(on_generate, [prompt, duration, sess], gen_out, concurrency_limit=1)
        for slot in "AB":
            audio[slot].play(on_play(slot), [sess], gate_out, queue=False, show_progress="hidden")
            for ev in (audio[slot].pause, audio[slot].stop):
                ev(on_pause(slot), [sess], gate_out, queue=False, show_progress="hidden")
        timer.tick(lambda s: gate(s), [sess], gate_out, queue=False, show_progress="hidden")
        lb_out = [lb_note, lb_table, lb_matrix]
        for (choice, _), b in zip(VOTES, buttons):
            b.click(on_vote(choice), [sess, rating["A"], rating["B"]], [reveal, *gate_out, *lb_out], concurrency_limit=4)
        refresh.click(leaderboard_outputs, None, lb_out)
        lb_tab.select(leaderboard_outputs, None, lb_out)
        demo.load(leaderboard_outputs, None, lb_out)
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    demo.musicrl_arena = arena  # for create_server: the API shares this arena
    return demo


def create_server(blocks: gr.Blocks):
    """A FastAPI app: the JSON API under /api and the Gradio UI at /, serving files only from the clips dir."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    from gradio.utils import get_upload_folder, is_in_or_equal

    arena: Arena = blocks.musicrl_arena
    store = arena.store
    app = FastAPI(title="musicrl arena", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(api_router(arena))
    app.add_exception_handler(RequestValidationError, validation_error)
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
        footer_links=["gradio"],
        ssr_mode=False,
        css=CSS,
    )


def serve(blocks: gr.Blocks, host: str = "127.0.0.1", port: int = 7860) -> None:
    import uvicorn

    uvicorn.run(create_server(blocks), host=host, port=port, log_level="warning")


class RunningServer:
    """An app served by uvicorn on a background thread (tests, load tests). `port=0`: a free port."""

    def __init__(self, blocks: gr.Blocks, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(create_server(blocks), host=host, port=port, log_level="warning"))
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


def start_server(blocks: gr.Blocks, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    return RunningServer(blocks, host, port)
