"""The voting UI's layout: the `gr.Blocks` components and which handler each event calls.

Tabs: Vote (prompt, duration, two players with optional 1–5 ratings, the status line, one button per
vote choice, the reveal), Leaderboard, Admin. The event functions are `musicrl.app.handlers.Handlers`.
"""

from __future__ import annotations

from types import MappingProxyType, SimpleNamespace

import gradio as gr

from musicrl.app.handlers import VOTES, Handlers, UiSession

# The listening events: light and immediate (no queue), without a progress spinner.
QUIET = MappingProxyType({"queue": False, "show_progress": "hidden"})


def build_blocks(h: Handlers, title: str) -> gr.Blocks:
    """The whole UI over `h.arena`, its events wired; the caller sets up the queue."""
    with gr.Blocks(title=title) as demo:
        sess = gr.State(UiSession)  # a callable: a fresh session object per page load
        timer = gr.Timer(0.5, active=False)
        gr.Markdown(
            f"# {title}\nTwo clips for your prompt, from models you are not told. Listen to both, "
            "then vote; the models are revealed after your vote."
        )
        with gr.Tabs():
            with gr.Tab("Vote"):
                vote = _vote_tab(h)
            with gr.Tab("Leaderboard", id="leaderboard") as lb_tab:
                lb = _leaderboard_tab()
            with gr.Tab("Admin"):
                _admin_tab(h)
        lb_out = [lb.note, lb.table, lb.matrix]
        _wire_vote(h, vote, sess, timer, lb_out)
        lb.refresh.click(h.leaderboard_outputs, None, lb_out)
        lb_tab.select(h.leaderboard_outputs, None, lb_out)
        demo.load(h.leaderboard_outputs, None, lb_out)
    return demo


def _vote_tab(h: Handlers) -> SimpleNamespace:
    """The Vote tab's components (inside an open gr.Tab)."""
    config = h.arena.config
    with gr.Row():
        prompt = gr.Textbox(
            label=f"Prompt (up to {config.max_prompt_chars} characters)",
            placeholder=f"e.g. {config.examples[0]}" if config.examples else "",
            max_lines=3,
            scale=4,
            elem_id="prompt",
        )
        duration = gr.Slider(
            minimum=0.5,
            maximum=h.arena.max_duration_s,
            value=config.default_duration_s,
            step=0.5,
            label="Duration (s)",
            scale=1,
            elem_id="duration",
        )
    generate = gr.Button("Generate two clips", variant="primary", elem_id="generate")
    if config.examples:
        gr.Examples(examples=[[e] for e in config.examples], inputs=[prompt], label="Example prompts")
    audio, rating = {}, {}
    with gr.Row():
        for slot in "AB":
            with gr.Column():
                audio[slot] = gr.Audio(
                    label=slot, type="filepath", interactive=False, buttons=[], elem_id=f"clip-{slot.lower()}"
                )
                # Serve clips in place from the store (allowed_paths), not via a copy in gradio's cache.
                audio[slot].GRADIO_CACHE = str(h.arena.store.clips_dir)
                rating[slot] = gr.Radio(
                    [1, 2, 3, 4, 5], label=f"Quality of {slot}, 1–5 (optional)", elem_id=f"rating-{slot.lower()}"
                )
    status = gr.Markdown(h.gate_state(UiSession())[0], elem_id="status")
    with gr.Row(elem_classes="musicrl-vote"):
        buttons = [gr.Button(label, interactive=False, elem_id=f"vote-{c}") for c, label, _ in VOTES]
    reveal = gr.Markdown(elem_id="reveal")
    return SimpleNamespace(
        prompt=prompt, duration=duration, generate=generate, audio=audio, rating=rating,
        status=status, buttons=buttons, reveal=reveal,
    )  # fmt: skip


def _leaderboard_tab() -> SimpleNamespace:
    note = gr.Markdown(elem_id="leaderboard-note")
    table = gr.Dataframe(label="Ratings", interactive=False, elem_id="leaderboard")
    matrix = gr.Dataframe(label="Win rates", interactive=False, elem_id="winrate")
    refresh = gr.Button("Refresh", elem_id="refresh")
    return SimpleNamespace(note=note, table=table, matrix=matrix, refresh=refresh)


def _admin_tab(h: Handlers) -> None:
    """Model list, reload and export behind the admin secret; only a notice when none is set."""
    if not h.arena.config.admin_secret:
        gr.Markdown("Admin actions are disabled: start the app with `MUSICRL_ADMIN_SECRET` set.")
        return
    secret = gr.Textbox(label="Admin secret", type="password", elem_id="admin-secret")
    with gr.Row():
        list_btn = gr.Button("Model list")
        reload_btn = gr.Button("Reload models")
        export_btn = gr.Button("Export votes (JSONL)")
    admin_out = gr.Markdown()
    list_btn.click(h.admin(h.model_list), [secret], [admin_out])
    reload_btn.click(h.admin(h.reload_models), [secret], [admin_out])
    export_btn.click(h.admin(h.export), [secret], [admin_out])


def _wire_vote(h: Handlers, ui: SimpleNamespace, sess: gr.State, timer: gr.Timer, lb_out: list) -> None:
    """Generate, the players' play/pause/stop (the listening gate), the timer and the vote buttons."""
    gate_out = [ui.status, *ui.buttons, timer]
    gen_in = [ui.prompt, ui.duration, sess]
    gen_out = [ui.audio["A"], ui.audio["B"], ui.rating["A"], ui.rating["B"], ui.reveal, *gate_out]
    ui.generate.click(h.on_generate, gen_in, gen_out, concurrency_limit=1)
    ui.prompt.submit(h.on_generate, gen_in, gen_out, concurrency_limit=1)
    for slot in "AB":
        ui.audio[slot].play(h.on_play(slot), [sess], gate_out, **QUIET)
        for ev in (ui.audio[slot].pause, ui.audio[slot].stop):
            ev(h.on_pause(slot), [sess], gate_out, **QUIET)
    timer.tick(h.gate, [sess], gate_out, **QUIET)
    vote_in, vote_out = [sess, ui.rating["A"], ui.rating["B"]], [ui.reveal, *gate_out, *lb_out]
    for (choice, _, _), b in zip(VOTES, ui.buttons):
        b.click(h.on_vote(choice), vote_in, vote_out, concurrency_limit=4)
