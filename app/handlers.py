"""The voting UI's event functions (what `musicrl.app.layout` wires to its components).

`Handlers` holds the arena; `UiSession` is one browser session's state (a `gr.State`). See
`musicrl.app.server` for the listening gate and the blind-then-reveal rules these implement.
"""

from __future__ import annotations

import html
import logging
import time
from types import MappingProxyType
from typing import Callable

import gradio as gr

from musicrl.app.arena import Arena, Busy, Listening, Pair
from musicrl.app.board import (leaderboard_note, matrix_frame, ratings_figure, ratings_frame, serving_note,
                               win_rate_figure)
from musicrl.app.clip_gc import ClipsFull
from musicrl.app.limits import RateLimited, client_key
from musicrl.app.tokens import SESSION_COOKIE, new_id
from musicrl.errors import UserError
from musicrl.votes.leaderboard import win_rate_over_time
from musicrl.votes.store import CHOICES, StoreUnavailable, model_key

# Each vote choice's button label and how the reveal names it. The buttons "a"/"b" are screen slots
# (left/right clip); the handler maps them to the canonical clip a/b. Ordered as the store's CHOICES,
# so a choice without a label fails at import instead of silently missing a button.
_LABELS = MappingProxyType(
    {"a": ("A is better", "A"), "b": ("B is better", "B"), "tie": ("Tie", "a tie"), "both_bad": ("Both bad", "both bad")}
)
VOTES: tuple[tuple[str, str, str], ...] = tuple((c, *_LABELS[c]) for c in CHOICES)  # (choice, label, reveal word)
N_GENERATE_OUT = 10  # on_generate's outputs before the gate's (layout.GENERATE_OUT)
N_VOTE_OUT = 3  # on_vote's outputs before the gate's and the leaderboard's (layout.VOTE_OUT)
N_GATE_OUT = len(VOTES) + 3  # status, the vote buttons, next pair, timer
N_LB_OUT = 5  # note, ratings, win rates, the ratings' figure, the win rate over time


class UiSession:
    """Per browser session (a gr.State): the pair on screen, what was heard, the vote so far.

    A plain class, not a dataclass: gradio serialises dataclass-valued props into the page config.
    `session` is issued here, on the server, at page load; `Handlers.on_generate` replaces it by
    the signed session cookie's id when the browser sent one (so it outlives a page reload).
    """

    def __init__(self) -> None:
        self.session = new_id()
        self.pair: Pair | None = None
        self.listening = Listening()
        self.vote_id: int | None = None
        self.rated: set = set()  # (slot, rating) already stored for this pair

    def key(self, slot: str) -> str:
        """Screen slot 'A' (left) / 'B' (right) -> canonical clip key 'a' / 'b'."""
        assert self.pair is not None
        return self.pair.left if slot == "A" else ("b" if self.pair.left == "a" else "a")


def refuse(message: str, n_outputs: int, title: str = "Not done") -> tuple:
    """A request the UI turns down: a warning toast (not an error badge on every output), and
    no output changes, so the pair on screen, its players and its state stay as they were."""
    gr.Warning(message, title=title)
    return tuple(gr.skip() for _ in range(n_outputs))


def slow_down(e: RateLimited, n_outputs: int) -> tuple:
    return refuse(f"Slow down: you are going faster than this arena allows. Please wait {e.retry_after_s} s, "
                  "then try again.", n_outputs, title="Slow down")  # fmt: skip


def unexpected(what: str, n_outputs: int) -> tuple:
    """An error nobody foresaw: logged with its traceback for the operator, one plain line for the user."""
    logging.getLogger("musicrl.app").exception("%s failed", what)
    return refuse(f"Something went wrong while {what}; please try again.", n_outputs, title="Sorry")


def echo(prompt: str) -> str:
    """The pair's prompt above its players (HTML-escaped: it is the user's text)."""
    return f'<div class="musicrl-echo"><span>Prompt</span> <q>{html.escape(prompt)}</q></div>'


class Handlers:
    """The UI's event functions over one arena. Each returns the updates of its outputs, in order."""

    def __init__(self, arena: Arena):
        self.arena = arena

    # -- the listening gate ----------------------------------------------------------------------
    def heard_s(self, s: UiSession) -> tuple[dict, dict]:
        """(seconds played, seconds needed) per screen slot of the pair on screen."""
        now = time.monotonic()
        got = {slot: s.listening.seconds(slot, now) for slot in "AB"}
        need = {slot: self.arena.listen_needed_s(s.pair.clip(s.key(slot))) for slot in "AB"}
        return got, need

    def gate_state(self, s: UiSession) -> tuple[str, bool, bool]:
        """(status line, may vote, timer needed) from what has been heard so far."""
        if s.pair is None:
            return "Type a prompt (or pick an example) and press **Generate**.", False, False
        if s.vote_id is not None:  # one vote per pair: the reveal closes it
            return "Vote saved. Press **Next pair** for two new clips of this prompt, or change the prompt.", False, False
        got, need = self.heard_s(s)
        heard = all(got[x] >= need[x] for x in "AB")
        if heard:
            msg = "Both clips heard. **Which one fits the prompt better?**"
        else:
            parts = [f"{x} {min(got[x], need[x]):.1f} / {need[x]:.1f} s{' ✓' if got[x] >= need[x] else ''}" for x in "AB"]
            msg = "Listen to both clips before voting: " + " · ".join(parts)
        return msg, heard, s.listening.playing and not heard

    def gate(self, s: UiSession):
        """Updates for the status line, the vote buttons, the next-pair button (after the vote) and the timer."""
        msg, heard, tick = self.gate_state(s)
        voted = s.pair is not None and s.vote_id is not None
        return msg, *[gr.Button(interactive=heard) for _ in VOTES], gr.Button(visible=voted), gr.Timer(active=tick)

    def on_play(self, slot: str) -> Callable:
        def fn(s: UiSession):
            s.listening.play(slot, time.monotonic())
            return self.gate(s)

        return fn

    def on_pause(self, slot: str) -> Callable:
        def fn(s: UiSession):
            s.listening.pause(slot, time.monotonic())
            return self.gate(s)

        return fn

    # -- generate and vote -----------------------------------------------------------------------
    def on_generate(self, prompt, duration, s: UiSession, request: gr.Request):
        """A new pair: the clips (screen order), ratings and reveal cleared, the prompt echoed, the
        headers unnamed, the serving note; a refused request (bad prompt, too fast, busy) keeps the
        pair on screen and says why in a warning."""
        n_out = N_GENERATE_OUT + N_GATE_OUT
        try:
            self.arena.limit("generate", client_key(request))
            pair = self.arena.generate_pair(prompt, duration)
            paths = [str(self.arena.store.clip_file(pair.clip(k).id)) for k in "ab"]  # never a planted link
        except RateLimited as e:
            return slow_down(e, n_out)
        except (UserError, Busy, ClipsFull, StoreUnavailable) as e:
            return refuse(str(e), n_out)
        except Exception:  # noqa: BLE001 (the page gets one plain line; the log gets the traceback)
            return unexpected("making the pair", n_out)
        cookies = getattr(request, "cookies", None) or {}  # a dict, or gradio's dict-like Obj (no .get)
        cookie = cookies[SESSION_COOKIE] if SESSION_COOKIE in cookies else None
        s.session = self.arena.session_from_cookie(cookie) or s.session
        s.pair, s.listening, s.vote_id, s.rated = pair, Listening(), None, set()
        paths = paths if pair.left == "a" else paths[::-1]  # screen order: left, right
        return (*paths, None, None, "", echo(pair.prompt), *self.headers(s), self.serving_note(), s, *self.gate(s))

    def headers(self, s: UiSession) -> tuple[str, str]:
        """The players' headers: 'A' and 'B' while blind; with each clip's model once the vote is stored."""
        if s.pair is None or s.vote_id is None:
            return "### A", "### B"
        named = []
        for slot in "AB":
            c = s.pair.clip(s.key(slot))
            named.append(f"### {slot} · `{model_key(c.model_id, c.model_version)}`")
        return named[0], named[1]

    def serving_note(self) -> str:
        return serving_note([m["model_id"] for m in self.arena.model_list()])

    def on_vote(self, screen_choice: str) -> Callable:
        """The handler of one vote button; `screen_choice` is one of CHOICES, a/b meaning left/right."""
        if screen_choice not in CHOICES:
            raise UserError(f"unknown vote choice {screen_choice!r}: expected one of {', '.join(CHOICES)}")
        reveal_word = _LABELS[screen_choice][1]

        def fn(s: UiSession, rating_a, rating_b, request: gr.Request = None):
            n_out = N_VOTE_OUT + N_GATE_OUT + N_LB_OUT
            try:
                self.arena.limit("vote", client_key(request))
            except RateLimited as e:
                return slow_down(e, n_out)
            if s.pair is None:
                return refuse("Generate a pair first.", n_out)
            if s.vote_id is not None:  # the models are revealed: a knowing vote would not count
                return refuse("You voted on this pair already; press Next pair for a new one.", n_out)
            got, need = self.heard_s(s)
            if any(got[x] < need[x] for x in "AB"):
                return refuse("Listen to both clips before voting.", n_out)
            try:
                vote_id = self._record(s, screen_choice, got, {"A": rating_a, "B": rating_b})
            except (UserError, StoreUnavailable) as e:
                return refuse(str(e), n_out)
            except Exception:  # noqa: BLE001 (the page gets one plain line; the log gets the traceback)
                return unexpected("saving your vote", n_out)
            reveal = [f"### Revealed — you chose **{reveal_word}** (vote #{vote_id})"]
            for slot in "AB":
                c = s.pair.clip(s.key(slot))
                reveal.append(f"- **{slot}** was `{model_key(c.model_id, c.model_version)}` (seed {c.seed})")
            return "\n".join(reveal), *self.headers(s), *self.gate(s), *self.leaderboard_outputs(figures=False)

        return fn

    def _record(self, s: UiSession, screen_choice: str, got: dict, ratings: dict) -> int:
        """Store the pair's vote (its listening times as the server measured them), then any ratings."""
        choice = s.key(screen_choice.upper()) if screen_choice in ("a", "b") else screen_choice
        slot_of = {s.key(x): x for x in "AB"}
        vote = self.arena.vote(
            s.pair,
            choice,
            s.session,
            listen_ms_a=int(1000 * got[slot_of["a"]]),
            listen_ms_b=int(1000 * got[slot_of["b"]]),
        )
        s.vote_id = vote.id  # committed: only now may the UI say so
        for slot, r in ratings.items():
            if r and (slot, int(r)) not in s.rated:
                self.arena.store.add_rating(s.pair.clip(s.key(slot)).id, int(r), session=s.session, vote_id=vote.id)
                s.rated.add((slot, int(r)))
        return vote.id

    # -- leaderboard -----------------------------------------------------------------------------
    def leaderboard_outputs(self, figures: bool = True):
        """(note, ratings table, win-rate matrix, ratings figure, win rate against the base over time)
        for the Leaderboard tab; a database that cannot serve now is said in the note (so a vote already
        stored still shows its reveal). The base is the first served model (`--model`'s first).
        `figures=False` leaves the figures as they are (gr.skip): a vote answers from the Vote tab, and
        drawing them costs a few tenths of a second on 2 cores; opening the Leaderboard tab draws them afresh."""
        served = self.arena.model_list()
        base = served[0]["model"] if served else None
        skip = (gr.skip(), gr.skip())
        try:
            lb = self.arena.leaderboard()
        except StoreUnavailable as e:
            # the figures stay as they were: an empty one would say "no votes yet"
            return f"The leaderboard is unavailable right now: {e}", ratings_frame(None), matrix_frame(None), *skip
        note = leaderboard_note(lb, [m["model_id"] for m in served], self.arena.config.leaderboard_min_votes)
        if not figures:
            return note, ratings_frame(lb), matrix_frame(lb), *skip
        trend = win_rate_over_time(self.arena.live.counted_votes(), base) if base else []
        drawn = ratings_figure(lb), win_rate_figure(trend, base, len(served))
        return note, ratings_frame(lb), matrix_frame(lb), *drawn

    # -- admin -----------------------------------------------------------------------------------
    def admin(self, action: Callable[[], str]) -> Callable[[str], str]:
        """An admin button's handler: checks the secret, then runs `action` (its Markdown result)."""

        def run(secret):
            try:
                self.arena.check_admin(secret)
                return action()
            except (PermissionError, UserError, StoreUnavailable) as e:
                return refuse(str(e), 1)[0]

        return run

    def models_md(self, models: list[dict]) -> str:
        return "\n".join(
            f"- `{m['model']}` ({m['model_id']}, weights {m['version']}"
            + (f", checkpoint `{m['checkpoint']}`)" if m.get("checkpoint") else ")")
            for m in models
        )

    def model_list(self) -> str:
        return self.models_md(self.arena.model_list())

    def reload_models(self) -> str:
        return self.models_md(self.arena.reload_models())

    def export(self) -> str:
        path, n = self.arena.export("jsonl")
        return f"Exported {n} votes to `{path}`."
