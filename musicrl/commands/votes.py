"""`musicrl votes export|stats`: the vote store from the command line.

    musicrl votes export [--db URL] [--data-dir DIR] --format jsonl|hf --out PATH [--per-session-cap N] [--exclude-flagged]
    musicrl votes stats  [--db URL] [--data-dir DIR] [--min-votes N] [--per-session-cap N] [--json]

Without --db and --data-dir, both read the store `musicrl app` writes by default (./musicrl-data/votes.db);
with --db alone, a SQLite store's data dir is its file's directory.

Exports hold the effective votes: the first, blind vote of each pair (corrections, cast after
the models were revealed, are kept in the store but not counted), duplicate submissions dropped,
optionally at most N votes per session (its first N), optionally without the votes of outlier
sessions (`musicrl.votes.outliers`: a session whose votes disagree with the Bradley-Terry fit of
everyone else's more than chance allows). `stats` rates the models as the app's leaderboard does
(at most --per-session-cap votes a session, default the app's) and lists the flagged sessions.
"""

from __future__ import annotations

import argparse
import json

from musicrl.commands.common import APP_DATA_DIR
from musicrl.errors import UserError
from musicrl.votes.leaderboard import SESSION_CAP

DB_HELP = "sqlite:///PATH/votes.db or postgresql+psycopg://USER@HOST/DB (default: the app's, DATA_DIR/votes.db)"
DATA_DIR_HELP = f"the store's data dir, holding clips/ (default {APP_DATA_DIR}, the app's; with --db, the SQLite file's directory)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="votes_command", metavar="ACTION", required=True)
    e = sub.add_parser("export", help="write the effective votes as JSONL or an HF-style dataset directory")
    e.add_argument("--db", default=None, help=DB_HELP)
    e.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    e.add_argument(
        "--format",
        default="jsonl",
        help="jsonl: one vote a line, absolute clip paths; hf: a directory with train.jsonl, clips/ "
        "and dataset_info.json (datasets.load_dataset('json', data_files=DIR/train.jsonl)) (default jsonl)",
    )
    e.add_argument("--out", required=True, help="output file (jsonl) or new directory (hf)")
    e.add_argument("--per-session-cap", type=int, default=None, help="keep at most N votes per session (its first N)")
    e.add_argument("--exclude-flagged", action="store_true",
                   help="leave out the votes of outlier sessions (those `votes stats` flags)")  # fmt: skip
    s = sub.add_parser("stats", help="counts and the Bradley-Terry leaderboard")
    s.add_argument("--db", default=None, help=DB_HELP)
    s.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    s.add_argument("--min-votes", type=int, default=5, help="games a model needs to be rated (default 5)")
    s.add_argument("--per-session-cap", type=int, default=SESSION_CAP,
                   help=f"votes of one session counted, its first N, as the app's leaderboard (default {SESSION_CAP}; 0 = all)")  # fmt: skip
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    from musicrl.commands.common import store_url
    from musicrl.votes.rows import open_store
    from musicrl.votes.schema import existing_db_url
    from musicrl.votes.store import StoreUnavailable, VoteStore

    data_dir = args.data_dir if args.data_dir or args.db else APP_DATA_DIR
    url = store_url(args.db, data_dir)
    if args.votes_command == "export":  # needs the clips: the data dir given, or the SQLite file's own
        store = open_store(url, data_dir)
    else:
        existing_db_url(url)  # reading: a missing SQLite file is an error, not a new empty store
        store = VoteStore(url, data_dir)
    try:
        if args.votes_command == "export":
            n = store.export(args.out, fmt=args.format, per_session_cap=args.per_session_cap,
                             exclude_flagged=args.exclude_flagged)  # fmt: skip
            print(f"wrote {n} votes to {args.out} ({args.format})")
            return 0
        return _stats(store, args)
    except StoreUnavailable as e:  # locked, full or unreachable: one line, like any other error
        raise UserError(str(e)) from None
    finally:
        store.close()


def _stats(store, args) -> int:
    from dataclasses import asdict

    from musicrl.votes.leaderboard import leaderboard
    from musicrl.votes.outliers import check_sessions
    from musicrl.votes.store import effective_votes, vote_pairs

    if args.min_votes < 1:
        raise UserError(f"--min-votes must be >= 1, got {args.min_votes}")
    if args.per_session_cap < 0:
        raise UserError(f"--per-session-cap must be >= 0 (0 = all), got {args.per_session_cap}")
    raw = store.votes()  # read once: the counts and the leaderboard both come from it
    stats = store.stats(raw)
    counted = effective_votes(raw, args.per_session_cap or None)
    lb = leaderboard(vote_pairs(counted), min_votes=args.min_votes)
    flagged = [c for c in check_sessions(counted) if c.flagged]
    if args.json:
        print(json.dumps({**stats, "votes_counted": len(counted), "per_session_cap": args.per_session_cap or None,
                          "leaderboard": lb.table(), "provisional": lb.provisional,
                          "flagged_sessions": [asdict(c) for c in flagged]}))  # fmt: skip
        return 0
    print(f"clips {stats['clips']} · votes {stats['votes_effective']} effective of {stats['votes_raw']} rows "
          f"({stats['corrections']} corrections, not counted) · sessions {stats['sessions']} · ratings {stats['ratings']}")
    print("choices: " + ", ".join(f"{k} {v}" for k, v in stats["choices"].items()))
    if lb.ratings:
        print(f"{'model':<32} {'rating':>7} {'95% CI':>16} {'games':>6} {'W-L-T':>12}")
        for r in lb.ratings:
            ci = f"[{r.ci_low:.0f}, {r.ci_high:.0f}]"
            print(f"{r.model:<32} {r.rating:>7.0f} {ci:>16} {r.games:>6} {f'{r.wins}-{r.losses}-{r.ties}':>12}")
    for m, n in lb.provisional.items():
        print(f"{m:<32} {'(provisional: ' + str(n) + ' games)':>30}")
    cap = f"at most {args.per_session_cap} a session" if args.per_session_cap else "no cap a session"
    print(f"rated on {len(counted)} counted votes ({cap}); outlier sessions flagged: {len(flagged)}")
    for c in flagged:
        print(f"  session {c.session[:12]}  {c.agreed}/{c.votes} votes for the favourite of the others' fit "
              f"(expected {c.expected:.1f}), p = {c.p_value:.1e}")
    return 0
