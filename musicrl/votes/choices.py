"""The A/B vote vocabulary, written once: the store's schema, the leaderboard, the vote files and the
preference trainer all read it from here.

A vote compares clip a with clip b (the canonical pair, whatever the screen showed):
  a, b      that clip is better
  tie       both equally good: half a win each
  both_bad  neither is acceptable: says nothing about which is better
"""

from __future__ import annotations

CHOICES = ("a", "b", "tie", "both_bad")
SIDES = ("a", "b")  # which clip of the pair was shown on the left
# what a choice says about clip a, as a share of a win; both_bad is absent (it says nothing)
SCORE_A = {"a": 1.0, "b": 0.0, "tie": 0.5}


def sql_in(column: str, values: tuple[str, ...]) -> str:
    """A SQL CHECK expression `column IN ('v1', ...)` for a constraint built from one of the tuples above."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"
