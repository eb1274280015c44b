"""What the UI shows of the leaderboard and of the served models, as text and tables (no gradio here).

`ratings_frame` and `matrix_frame` format a `musicrl.votes.leaderboard.Leaderboard` for people
(human column names, a rating with its +/- interval, votes, win rate); `leaderboard_note` says what the
figures are and why a model is missing from them; `serving_note` says, when only one model is served,
that votes are still kept and how to get a leaderboard.
"""

from __future__ import annotations

import math

import pandas as pd

from musicrl.votes.leaderboard import Leaderboard

RATING_HEADERS = ("Rank", "Model", "Rating", "95% interval", "Votes", "Win rate", "Won / lost / tied")


def ratings_frame(lb: Leaderboard | None) -> pd.DataFrame:
    """One row per rated model, best first: its rating, the interval as +/- from it, its games."""
    rows = []
    for i, r in enumerate(lb.ratings if lb is not None else []):
        win = (r.wins + r.ties / 2) / r.games if r.games else float("nan")
        rows.append([i + 1, r.model, f"{r.rating:.0f}", f"+{r.ci_high - r.rating:.0f} / −{r.rating - r.ci_low:.0f}",
                     r.games, "–" if math.isnan(win) else f"{win:.0%}", f"{r.wins} / {r.losses} / {r.ties}"])  # fmt: skip
    return pd.DataFrame(rows, columns=list(RATING_HEADERS))


def matrix_frame(lb: Leaderboard | None) -> pd.DataFrame:
    """Row model's share of its games against the column model (games in brackets)."""
    models = lb.models if lb is not None else []
    rows = []
    for i, m in enumerate(models):
        row = {"Model": m}
        for j, o in enumerate(models):
            wr, n = lb.win_rate[i, j], int(lb.games[i, j])
            row[o] = "–" if i == j or math.isnan(wr) else f"{wr:.0%} ({n})"
        rows.append(row)
    return pd.DataFrame(rows, columns=["Model", *models])


def serving_note(models: list[str]) -> str:
    """Markdown for an arena that serves one model ('' for two or more)."""
    if len(models) >= 2:
        return ""
    return (
        f"**Only one model is served (`{models[0]}`)**, so each pair is two samples of it. Your votes are kept "
        "and can train a model (`musicrl train --config po/dpo`), but the leaderboard needs two models. "
        "To add one, restart with a second model: `musicrl app --model tiny --model tiny-r` "
        "(or `--model DIR`, or `--models-dir RUN` for a training run)."
    )


def leaderboard_note(lb: Leaderboard, served: list[str], min_votes: int) -> str:
    """What the table shows, and why a served model is not in it yet."""
    note = (
        f"**{lb.n_votes}** vote{'' if lb.n_votes == 1 else 's'} between two different models. Ratings are Bradley–Terry on the Elo scale "
        "(mean 1000) with 95% bootstrap intervals; a tie counts as half a win, 'both bad' is left out; "
        "a pair of two samples of one model rates nothing."
    )
    if lb.provisional:
        waiting = ", ".join(f"`{m}` ({n})" for m, n in lb.provisional.items())
        note += f" Not rated until they have {min_votes} votes against another model: {waiting}."
    single = serving_note(served)
    return note + ("\n\n" + single if single else "")
