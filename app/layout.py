"""The voting UI's layout: the `gr.Blocks` components and which handler each event calls.

A rules panel over the tabs: Vote (prompt with its live character count, duration, the prompt echoed
over two players headed A and B, named after the vote, optional 1–5 ratings, the status line, one button
per vote choice, Next pair, the reveal), Leaderboard (ratings with +/- intervals, votes and win rates,
the win-rate matrix, and plots of the ratings with their intervals and of the win rate against the base
over time), Admin (only when an admin secret is set). The event functions are
`musicrl.app.handlers.Handlers`; the counter runs in the browser alone (`COUNT_JS`).
"""

from __future__ import annotations

from types import MappingProxyType, SimpleNamespace

import gradio as gr

from musicrl.app.handlers import N_GATE_OUT, N_GENERATE_OUT, N_LB_OUT, N_VOTE_OUT, VOTES, Handlers, UiSession

# The listening events: light and immediate (no queue), without a progress spinner.
QUIET = MappingProxyType({"queue": False, "show_progress": "hidden"})
# Every play and pause must reach the server, even one sent while the last is still on its way (gradio's
# default, "once", drops it: a Play pressed again after the load stopped the clip would not count).
EVERY = MappingProxyType({**QUIET, "trigger_mode": "multiple"})

# The prompt's live character count, computed in the browser on every change (no server round trip).
COUNT_JS = """(text) => { const n = (text || "").length, max = %d;
  return `<span class="${n > max ? 'musicrl-over' : ''}">${n} / ${max} characters${n > max ? ': too long' : ''}</span>`; }"""

# Gradio's player stops itself when a clip has loaded (wavesurfer: decode, then 'ready' -> stop()), which
# undoes a Play pressed while a new pair's clip was still loading: the clip stops after a fraction of a
# second and the listening counter sticks. So, in the browser: from the moment a request that updates a
# player finishes (its status tracker hides) until that player's clip has decoded (its duration is
# written; 'ready' runs in the same task), or 2.5 s if no new clip comes, a person's Play is held, then
# pressed once the load is over. The server thus sees one play, when the clip really starts.
PLAY_JS = """() => {
  const held = {}, clips = "#clip-a, #clip-b", isPlay = (b) => b && b.getAttribute("aria-label") === "Play";
  const release = (id) => {
    const h = held[id];
    if (!h) return;
    clearTimeout(h.timer);
    delete held[id];
    const b = document.querySelector(`#${id} .play-pause-button`);
    if (h.play && isPlay(b)) setTimeout(() => isPlay(b) && b.click(), 0);
  };
  document.addEventListener("click", (e) => {
    const b = e.isTrusted && e.target.closest && e.target.closest(".play-pause-button"), clip = b && b.closest(clips);
    if (clip && held[clip.id] && isPlay(b)) { e.stopPropagation(); e.preventDefault(); held[clip.id].play = true; }
  }, true);
  new MutationObserver((records) => {
    for (const r of records) {
      const el = r.target.nodeType === 1 ? r.target : r.target.parentElement, clip = el && el.closest(clips);
      if (!clip) continue;
      if (el.id === "duration") release(clip.id);
      else if (r.type === "attributes" && el.dataset.testid === "status-tracker" && el.classList.contains("hide")
               && !(r.oldValue || "").split(" ").includes("hide")) {
        clearTimeout(held[clip.id]?.timer);
        held[clip.id] = {play: held[clip.id]?.play || false, timer: setTimeout(() => release(clip.id), 2500)};
      }
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true,
                             attributeFilter: ["class"], attributeOldValue: true});
}"""



def rules(min_listen_s: float) -> str:
    return (
        "1. Type a prompt, or pick an example, and press **Generate two clips**.\n"
        f"2. Listen to both clips, at least {min_listen_s:g} s each: the vote buttons open once you have.\n"
        "3. Vote for the clip that fits the prompt better (or **Tie**, **Both bad**); rating each clip 1–5 is optional.\n"
        "4. The models are named after your vote. Then **Next pair**.\n\n"
        "One vote per pair counts. Votes are stored and used to train models."
    )


def build_blocks(h: Handlers, title: str) -> gr.Blocks:
    """The whole UI over `h.arena`, its events wired; the caller sets up the queue."""
    with gr.Blocks(title=title) as demo:
        sess = gr.State(UiSession)  # a callable: a fresh session object per page load
        timer = gr.Timer(0.5, active=False)
        gr.Markdown(f"# {title}\nTwo clips for your prompt, from two models you are not told. Listen, vote, "
                    "then see who made them.")  # fmt: skip
        with gr.Accordion("Rules", open=True, elem_id="rules"):
            gr.Markdown(rules(h.arena.config.min_listen_s))
        note = gr.Markdown(h.serving_note(), elem_id="serving-note")
        with gr.Tabs():
            with gr.Tab("Vote"):
                vote = _vote_tab(h)
            with gr.Tab("Leaderboard", id="leaderboard") as lb_tab:
                lb = _leaderboard_tab()
            if h.arena.config.admin_secret:  # no tab at all without a secret: nothing to do there
                with gr.Tab("Admin"):
                    _admin_tab(h)
        lb_out = [lb.note, lb.table, lb.matrix, lb.ratings_plot, lb.trend]
        _wire_vote(h, vote, sess, timer, lb_out, note)
        lb.refresh.click(h.leaderboard_outputs, None, lb_out)
        lb_tab.select(h.leaderboard_outputs, None, lb_out)
        demo.load(h.leaderboard_outputs, None, lb_out)
        demo.load(h.serving_note, None, [note])  # the served models may have changed since the build
        demo.load(None, None, None, js=PLAY_JS)
    return demo


def _vote_tab(h: Handlers) -> SimpleNamespace:
    """The Vote tab's components (inside an open gr.Tab)."""
    config = h.arena.config
    with gr.Row(elem_id="prompt-row"):
        with gr.Column(scale=4, min_width=300):  # wider than half a phone: the slider wraps below it
            prompt = gr.Textbox(
                label=f"Prompt (up to {config.max_prompt_chars} characters)",
                placeholder=f"e.g. {config.examples[0]}" if config.examples else "",
                max_lines=3,
                elem_id="prompt",
            )
            count = gr.HTML(f"0 / {config.max_prompt_chars} characters", elem_id="prompt-count", padding=False)
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
    echo = gr.HTML(elem_id="pair-prompt", padding=False)
    audio, rating, head = {}, {}, {}
    with gr.Row():
        for slot in "AB":
            with gr.Column(min_width=300):
                head[slot] = gr.Markdown(f"### {slot}", elem_id=f"head-{slot.lower()}")
                audio[slot] = gr.Audio(label=slot, show_label=False, type="filepath", interactive=False, buttons=[],
                                       elem_id=f"clip-{slot.lower()}")  # the header above names it  # fmt: skip
                # Serve clips in place from the store (allowed_paths), not via a copy in gradio's cache.
                audio[slot].GRADIO_CACHE = str(h.arena.store.clips_dir)
                rating[slot] = gr.Radio(
                    [1, 2, 3, 4, 5], label=f"Quality of {slot}, 1–5 (optional)", elem_id=f"rating-{slot.lower()}"
                )
    status = gr.Markdown(h.gate_state(UiSession())[0], elem_id="status")
    with gr.Row(elem_classes="musicrl-vote"):
        buttons = [gr.Button(label, interactive=False, elem_id=f"vote-{c}") for c, label, _ in VOTES]
    next_pair = gr.Button("Next pair", variant="primary", visible=False, elem_id="next")
    reveal = gr.Markdown(elem_id="reveal")
    return SimpleNamespace(
        prompt=prompt, count=count, duration=duration, generate=generate, echo=echo, head=head, audio=audio,
        rating=rating, status=status, buttons=buttons, next=next_pair, reveal=reveal,
    )  # fmt: skip


def _leaderboard_tab() -> SimpleNamespace:
    note = gr.Markdown(elem_id="leaderboard-note")
    table = gr.Dataframe(label="Ratings", interactive=False, elem_id="leaderboard", wrap=True)
    matrix = gr.Dataframe(label="Win rates: the row model's share of its games against the column model (games)",
                          interactive=False, elem_id="winrate", wrap=True)  # fmt: skip
    # matplotlib figures (gr.Plot), not gr.LinePlot: the intervals need error bars and a filled band
    ratings_plot = gr.Plot(label="Ratings with their 95% intervals", elem_id="ratings-plot", format="png")
    trend = gr.Plot(label="Win rate against the base model over time", elem_id="winrate-plot", format="png")
    refresh = gr.Button("Refresh", elem_id="refresh")
    return SimpleNamespace(note=note, table=table, matrix=matrix, ratings_plot=ratings_plot, trend=trend,
                           refresh=refresh)  # fmt: skip


def _admin_tab(h: Handlers) -> None:
    """Model list, reload and export behind the admin secret (the tab exists only when one is set)."""
    secret = gr.Textbox(label="Admin secret", type="password", elem_id="admin-secret")
    with gr.Row():
        list_btn = gr.Button("Model list")
        reload_btn = gr.Button("Reload models")
        export_btn = gr.Button("Export votes (JSONL)")
    admin_out = gr.Markdown()
    list_btn.click(h.admin(h.model_list), [secret], [admin_out])
    reload_btn.click(h.admin(h.reload_models), [secret], [admin_out])
    export_btn.click(h.admin(h.export), [secret], [admin_out])


def _wire_vote(h: Handlers, ui: SimpleNamespace, sess: gr.State, timer: gr.Timer, lb_out: list, note) -> None:
    """Generate (and Next pair), the players' play/pause/stop (the listening gate), the timer, the vote
    buttons and the prompt's counter."""
    gate_out = [ui.status, *ui.buttons, ui.next, timer]
    gen_in = [ui.prompt, ui.duration, sess]
    # the session is an output too: gradio makes a page's State on its first use without a lock, so a
    # default made by an event racing the first Generate could replace the one Generate filled in
    gen_out = [ui.audio["A"], ui.audio["B"], ui.rating["A"], ui.rating["B"], ui.reveal, ui.echo,
               ui.head["A"], ui.head["B"], note, sess, *gate_out]  # fmt: skip
    assert len(gate_out) == N_GATE_OUT and len(gen_out) == N_GENERATE_OUT + N_GATE_OUT and len(lb_out) == N_LB_OUT
    # with batching on, up to a batch of pages' generations may wait in the arena's batcher at once
    gen_concurrency = h.arena.batcher.max_batch if h.arena.batcher.enabled else 1
    gr.on([ui.generate.click, ui.prompt.submit, ui.next.click], h.on_generate, gen_in, gen_out,
          concurrency_limit=gen_concurrency)  # fmt: skip
    ui.prompt.change(None, [ui.prompt], [ui.count], js=COUNT_JS % h.arena.config.max_prompt_chars, **QUIET)
    for slot in "AB":
        ui.audio[slot].play(h.on_play(slot), [sess], gate_out, **EVERY)
        for ev in (ui.audio[slot].pause, ui.audio[slot].stop):
            ev(h.on_pause(slot), [sess], gate_out, **EVERY)
    timer.tick(h.gate, [sess], gate_out, **QUIET)
    vote_in, vote_out = [sess, ui.rating["A"], ui.rating["B"]], [ui.reveal, ui.head["A"], ui.head["B"], *gate_out, *lb_out]
    assert len(vote_out) == N_VOTE_OUT + N_GATE_OUT + N_LB_OUT
    for (choice, _, _), b in zip(VOTES, ui.buttons):
        b.click(h.on_vote(choice), vote_in, vote_out, concurrency_limit=4)
