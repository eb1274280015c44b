"""What the UI shows of the leaderboard and of the served models, as text, tables and figures (no gradio here).

`ratings_frame` and `matrix_frame` format a `musicrl.votes.leaderboard.Leaderboard` for people
(human column names, a rating with its +/- interval, votes, win rate); `ratings_figure` draws the
ratings with their intervals, `win_rate_figure` each model's win rate against the base model over
time (`musicrl.votes.leaderboard.win_rate_over_time`); `leaderboard_note` says what the figures are
and why a model is missing from them; `serving_note` says, when only one model is served, that votes
are still kept and how to get a leaderboard.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from musicrl.votes.leaderboard import Leaderboard, WinRateSeries

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


MAX_LINES = 8  # models drawn against the base: the most-voted ones (hot reload adds a version per checkpoint)
MAX_POINTS = 400  # points drawn per line: a figure of 100k votes draws as fast as one of 400


def _empty(fig: Figure, message: str) -> Figure:
    """A figure that says why there is nothing to draw (no votes yet, one model served)."""
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, color="0.35", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def ratings_figure(lb: Leaderboard | None) -> Figure:
    """Each rated model's rating as a point with its 95% interval as a bar, best at the top; the
    dashed line is the mean rating (1000)."""
    ratings = lb.ratings if lb is not None else []
    fig = Figure(figsize=(7, 1.6 + 0.45 * max(len(ratings), 1)), layout="constrained")
    if not ratings:
        return _empty(fig, "No ratings yet: a model is rated once it has votes against another model "
                           "(the note above says how many).")  # fmt: skip
    ax = fig.add_subplot()
    y = np.arange(len(ratings))[::-1]  # best first, at the top
    point = np.array([r.rating for r in ratings])
    spread = np.array([[r.rating - r.ci_low for r in ratings], [r.ci_high - r.rating for r in ratings]])
    ax.errorbar(point, y, xerr=np.maximum(spread, 0), fmt="o", color="C0", ecolor="C0", capsize=4)
    ax.axvline(1000, color="0.6", linestyle="--", linewidth=1)
    ax.set_yticks(y, [r.model for r in ratings])
    ax.set_ylim(-0.7, len(ratings) - 0.3)
    ax.set_xlabel("Rating (Elo scale, mean 1000) with its 95% bootstrap interval")
    ax.grid(axis="x", alpha=0.3)
    return fig


def win_rate_figure(series: list[WinRateSeries], base: str | None, n_served: int = 2) -> Figure:
    """Each model's share of its votes against `base` (a tie half), cumulative over the votes' times,
    with its 95% Wilson band; the dashed line is an even match. `n_served`: models served now."""
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    if base is None:
        return _empty(fig, "No base model: nothing is served.")
    if not series and n_served < 2:
        return _empty(fig, f"Only one model is served ({base}): a win rate against it needs a second model.")
    if not series:
        return _empty(fig, f"No votes against the base model ({base}) yet: its win rates over time appear here.")
    ax = fig.add_subplot()
    shown = sorted(series, key=lambda s: -len(s.games))[:MAX_LINES]
    for i, s in enumerate(shown):
        idx = np.unique(np.linspace(0, len(s.games) - 1, MAX_POINTS).round().astype(int))
        when = [datetime.fromtimestamp(t, timezone.utc) for t in s.times[idx]]
        n = len(s.games)
        ax.plot(when, s.win_rate[idx], color=f"C{i}", marker="o" if len(idx) < 30 else None, markersize=3,
                label=f"{s.model} ({n} vote{'' if n == 1 else 's'})")  # fmt: skip
        ax.fill_between(when, s.ci_low[idx], s.ci_high[idx], color=f"C{i}", alpha=0.15, linewidth=0)
        # the current figure's interval as a bar too: a band of one vote has no width to fill
        ax.errorbar(when[-1], s.win_rate[-1], yerr=[[s.win_rate[-1] - s.ci_low[-1]], [s.ci_high[-1] - s.win_rate[-1]]],
                    color=f"C{i}", capsize=4)  # fmt: skip
    ax.axhline(0.5, color="0.6", linestyle="--", linewidth=1)
    ax.set_ylim(-0.03, 1.03)  # a share of 0 or 1 stays in sight
    # matplotlib widens a range of one instant to years; a minute each side at least
    first, last = min(s.times[0] for s in shown), max(s.times[-1] for s in shown)
    pad = max(0.03 * (last - first), 60.0)
    ax.set_xlim(*(datetime.fromtimestamp(t, timezone.utc) for t in (first - pad, last + pad)))
    ax.xaxis.set_major_locator(locator := AutoDateLocator())
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_ylabel(f"Win rate against {base}")
    ax.set_xlabel("Vote time (UTC); cumulative, with its 95% interval")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig
