"""The voting UI's event functions (what `musicrl.app.layout` wires to its components).

`Handlers` holds the arena; `UiSession` is one browser session's state (a `gr.State`). See
`musicrl.app.server` for the listening gate and the blind-then-reveal rules these implement.
"""

from __future__ import annotations

import math
import time
from types import MappingProxyType
from typing import Callable

import gradio as gr
import pandas as pd

from musicrl.app.arena import Arena, Busy, Listening, Pair
from musicrl.app.clip_gc import ClipsFull
from musicrl.app.limits import RateLimited, client_key
from musicrl.app.tokens import SESSION_COOKIE, new_id
from musicrl.errors import UserError
from musicrl.votes.store import CHOICES, StoreUnavailable, model_key

# Each vote choice's button label and how the reveal names it. The buttons "a"/"b" are screen slots
# (left/right clip); the handler maps them to the canonical clip a/b. Ordered as the store's CHOICES,
# so a choice without a label fails at import instead of silently missing a button.
_LABELS = MappingProxyType(
    {"a": ("A is better", "A"), "b": ("B is better", "B"), "tie": ("Tie", "a tie"), "both_bad": ("Both bad", "both bad")}
)
VOTES: tuple[tuple[str, str, str], ...] = tuple((c, *_LABELS[c]) for c in CHOICES)  # (choice, label, reveal word)
LB_COLUMNS = ("rank", "model", "rating", "ci_low", "ci_high", "games", "wins", "losses", "ties", "both_bad")


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


def _ui_error(e: Exception) -> gr.Error:
    return gr.Error(str(e), print_exception=False)


def _slow_down(e: RateLimited) -> gr.Error:
    return gr.Error(f"You are going faster than this arena allows. Please wait {e.retry_after_s} s, then try again.",
                    title="Slow down", print_exception=False)  # fmt: skip


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
            return "Vote saved. Generate a new pair to vote again.", False, False
        got, need = self.heard_s(s)
        heard = all(got[x] >= need[x] for x in "AB")
        if heard:
            msg = "Both clips heard. **Which one fits the prompt better?**"
        else:
            parts = [f"{x} {min(got[x], need[x]):.1f} / {need[x]:.1f} s{' ✓' if got[x] >= need[x] else ''}" for x in "AB"]
            msg = "Listen to both clips before voting: " + " · ".join(parts)
        return msg, heard, s.listening.playing and not heard

    def gate(self, s: UiSession):
        """Updates for the status line, the vote buttons and the timer."""
        msg, heard, tick = self.gate_state(s)
        return msg, *[gr.Button(interactive=heard) for _ in VOTES], gr.Timer(active=tick)

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
        try:
            self.arena.limit("generate", client_key(request))
            pair = self.arena.generate_pair(prompt, duration)
            paths = [str(self.arena.store.clip_file(pair.clip(k).id)) for k in "ab"]  # never a planted link
        except RateLimited as e:
            raise _slow_down(e) from None
        except (UserError, Busy, ClipsFull, StoreUnavailable) as e:
            raise _ui_error(e) from None
        cookies = getattr(request, "cookies", None) or {}  # a dict, or gradio's dict-like Obj (no .get)
        cookie = cookies[SESSION_COOKIE] if SESSION_COOKIE in cookies else None
        s.session = self.arena.session_from_cookie(cookie) or s.session
        s.pair, s.listening, s.vote_id, s.rated = pair, Listening(), None, set()
        paths = paths if pair.left == "a" else paths[::-1]  # screen order: left, right
        return *paths, None, None, "", *self.gate(s)

    def on_vote(self, screen_choice: str) -> Callable:
        """The handler of one vote button; `screen_choice` is one of CHOICES, a/b meaning left/right."""
        if screen_choice not in CHOICES:
            raise UserError(f"unknown vote choice {screen_choice!r}: expected one of {', '.join(CHOICES)}")
        reveal_word = _LABELS[screen_choice][1]

        def fn(s: UiSession, rating_a, rating_b, request: gr.Request = None):
            try:
                self.arena.limit("vote", client_key(request))
            except RateLimited as e:
                raise _slow_down(e) from None
            if s.pair is None:
                raise gr.Error("Generate a pair first.", print_exception=False)
            if s.vote_id is not None:  # the models are revealed: a knowing vote would not count
                raise gr.Error("You voted on this pair already; generate a new pair.", print_exception=False)
            got, need = self.heard_s(s)
            if any(got[x] < need[x] for x in "AB"):
                raise gr.Error("Listen to both clips before voting.", print_exception=False)
            try:
                vote_id = self._record(s, screen_choice, got, {"A": rating_a, "B": rating_b})
            except (UserError, StoreUnavailable) as e:
                raise _ui_error(e) from None
            reveal = [f"### Revealed — you chose **{reveal_word}** (vote #{vote_id})"]
            for slot in "AB":
                c = s.pair.clip(s.key(slot))
                reveal.append(f"- **{slot}** was `{model_key(c.model_id, c.model_version)}` (seed {c.seed})")
            return "\n".join(reveal), *self.gate(s), *self.leaderboard_outputs()

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
    def leaderboard_outputs(self):
        """(note, ratings table, win-rate matrix) for the Leaderboard tab; a database that cannot
        serve now is said in the note (so a vote already stored still shows its reveal)."""
        try:
            lb = self.arena.leaderboard()
        except StoreUnavailable as e:
            empty = pd.DataFrame(columns=list(LB_COLUMNS))
            return f"The leaderboard is unavailable right now: {e}", empty, pd.DataFrame(columns=["model"])
        table = pd.DataFrame(lb.table(), columns=list(LB_COLUMNS))
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

    # -- admin -----------------------------------------------------------------------------------
    def admin(self, action: Callable[[], str]) -> Callable[[str], str]:
        """An admin button's handler: checks the secret, then runs `action` (its Markdown result)."""

        def run(secret):
            try:
                self.arena.check_admin(secret)
                return action()
            except (PermissionError, UserError, StoreUnavailable) as e:
                raise _ui_error(e) from None

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
