"""The votes package: people's A/B votes and 1-5 ratings of generated clips, and what is made of them.

choices      the vote vocabulary (a, b, tie, both_bad), defined once
schema       the database: URL, append-only tables, engine
files        durable clip files: WAV bytes named by what they are and who made them, atomic writes
store        VoteStore: clips, votes, ratings, the session secret, effective votes, stats
rows         what training reads: vote and rating rows from a JSONL file or a store; the vote export
leaderboard  Bradley-Terry ratings of models from votes (pure functions)

Only this package opens the vote database; the reward trainers take the rows `rows` builds.
"""
