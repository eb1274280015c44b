"""The leaderboard of a vote store, kept current by reading only the votes added since the last look.

Re-reading and de-duplicating every vote on each page load takes seconds at 100k votes. `LiveVotes`
keeps what the leaderboard needs in memory instead: the effective-vote filter's state
(`musicrl.votes.store.EffectiveVotes`, with the per-session cap) and the tally of the counted votes
(`musicrl.votes.leaderboard.VoteTally`) and, for the win rate over time, each counted vote's time,
models and choice (tens of bytes a vote), plus the ids of clips that have any vote (the app's clip
garbage collector never removes those). `refresh()` reads the rows with an id above the last one
read, and the rated `Leaderboard` is cached until a refresh finds a new row.

Rows are taken in id order, as `effective_votes` takes them, so the state always equals a full
recomputation over the rows read. A row can commit after a row with a larger id (PostgreSQL hands
out ids before commit): then the store holds more rows than were read, which `refresh` notices by
counting, and it reads everything again. Rows are never deleted (the tables are append-only), so an
equal count means nothing was missed. Counting every row costs milliseconds per 100k rows, so a
refresh counts only the rows above the last id read `SETTLE_S` ago or earlier: a vote's transaction
lasts milliseconds (a lock wait at most the lock timeout), so a row below that id that was not read
by then will not appear. Every `FULL_CHECK_S` a refresh counts them all anyway.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from musicrl.votes.leaderboard import Leaderboard, VoteTally, rate
from musicrl.votes.store import EffectiveVotes, Vote, model_key

SETTLE_S = 60.0  # a row read this long ago: every row with a smaller id has committed (or never will)
FULL_CHECK_S = 600.0


class LiveVotes:
    """The counted votes of `store` as a tally, and their leaderboard, cached by the rows read.

    `per_session_cap`: at most that many counted votes per session (None: no cap); `rate_options`
    go to `musicrl.votes.leaderboard.rate` (min_votes, n_boot, seed, ...).
    """

    def __init__(self, store, per_session_cap: int | None = None, clock=time.monotonic, **rate_options):
        self._store, self._cap, self._clock, self._rate_options = store, per_session_cap, clock, rate_options
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._admit = EffectiveVotes(self._cap).admit
        self._tally = VoteTally()
        self._counted: list[tuple[float, str, str, str]] = []  # (time, model a, model b, choice) of the counted votes
        self._names: dict[str, str] = {}  # one string per model key: 100k counted votes share a few names
        self._voted_clips: set[str] = set()
        self._rows = 0  # rows read
        self._last_id = 0
        self._recent: deque[tuple[float, int]] = deque()  # (read at, id) of rows read within SETTLE_S
        self._settled_id = 0  # the largest id read SETTLE_S ago or earlier
        self._full_check_at = self._clock() + FULL_CHECK_S
        self._rated: Leaderboard | None = None

    def _take(self, votes: list[Vote]) -> None:
        now = self._clock()
        for v in votes:
            self._rows += 1
            self._last_id = max(self._last_id, v.id)
            self._recent.append((now, v.id))
            self._voted_clips.update((v.clip_a, v.clip_b))
            if self._admit(v):
                a = self._name(model_key(v.model_a, v.model_a_version))
                b = self._name(model_key(v.model_b, v.model_b_version))
                self._tally.add(a, b, v.choice)
                self._counted.append((v.created_at.timestamp(), a, b, v.choice))
                self._rated = None

    def _name(self, key: str) -> str:
        return self._names.setdefault(key, key)

    def _complete(self, every_row: bool) -> bool:
        """Whether every committed row has been read: counting all rows, or those above the settled id."""
        now = self._clock()
        while self._recent and self._recent[0][0] <= now - SETTLE_S:
            self._settled_id = self._recent.popleft()[1]
        if every_row or not self._settled_id:
            return self._store.count_votes() == self._rows
        return self._store.count_votes(after_id=self._settled_id) == len(self._recent)

    def refresh(self) -> None:
        """Read the rows added since the last refresh (all of them when one committed out of order)."""
        with self._lock:
            every_row = self._clock() >= self._full_check_at
            for attempt in range(3):
                self._take(self._store.votes(after_id=self._last_id))
                if self._complete(every_row):
                    break
                if attempt == 1:  # still short after a second read: a row committed below the last id read
                    self._reset()
            if every_row:
                self._full_check_at = self._clock() + FULL_CHECK_S

    def leaderboard(self) -> Leaderboard:
        """The leaderboard of the counted votes, refreshed first; rated again only after new votes."""
        self.refresh()
        with self._lock:
            if self._rated is None:
                self._rated = rate(self._tally, **self._rate_options)
            return self._rated

    def counted_votes(self) -> list[tuple[float, str, str, str]]:
        """(time in seconds, model a, model b, choice) of each counted vote in the order read, as of the
        last refresh: what `musicrl.votes.leaderboard.win_rate_over_time` takes."""
        with self._lock:
            return list(self._counted)

    def tally(self) -> VoteTally:
        """A copy of the counted votes' tally, as of the last refresh."""
        with self._lock:
            return self._tally.copy()

    def voted(self, clip_ids) -> set[str]:
        """Which of `clip_ids` have a vote (counted or not), as of the last refresh."""
        with self._lock:
            return {c for c in clip_ids if c in self._voted_clips}
