"""Simulated raters: hidden tastes over clip attributes, noisy A/B votes, and their noise ceiling.

The tiny world has no people, so the preference model and the RL loop are checked against raters
whose taste is known. A `Rater` scores a clip by a hidden utility:

    u(clip, prompt) = sum over attributes of taste[attr][clip's value]  (+0 for values not listed)
                    + taste["adherence"] * (fraction of the attributes the prompt names that the clip has)

The clip's attributes are its synth ground truth when known (a `synth.Example`: simulated votes
on the corpus), else measured from audio with `musicrl.tiny.attributes`: tempo, register, mode, and whether there
are drums (heard as 'drums', kit unknown: worth the mean of the taste's 'kick-hat' and 'full', and it
matches a prompt that asks for either kit). Instrument has no estimator, so its term counts 0 and
the prompt's adherence is taken over the heard attributes only. The prompt's attributes come from
`synth.parse_prompt`.

A vote is a logistic (Bradley-Terry) choice with temperature `noise`: P(a) = sigmoid((u_a - u_b) /
noise); |u_a - u_b| <= `tie_margin` is a tie. The noise ceiling of a set of pairs is the accuracy
(ties excluded) that a perfect model of the taste expects: the mean of max(p, 1 - p). A `Panel` draws
the voter of each pair at random among its raters; a model that does not know the voter can at best
predict the panel's mean probability, so its ceiling is computed from that.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from musicrl.tiny import synth
from musicrl.tiny.adherence import matches
from musicrl.tiny.attributes import DRUMS_PRESENT
from musicrl.errors import UserError
from musicrl.model.generator import Clip

TASTE_ATTRS = ("instrument", "tempo", "mode", "register", "drums")
ADHERENCE = "adherence"
_VALUES = {"instrument": synth.INSTRUMENTS, "tempo": tuple(synth.TEMPO_WORDS), "mode": synth.MODES,
           "register": synth.REGISTERS, "drums": synth.DRUMS}
_MEASURABLE = ("tempo", "register", "mode", "drums")  # what musicrl.tiny.attributes estimates from audio

# The population's shared taste (`Panel.default` spreads individual raters around it): people want
# what they asked for most of all, then lean to fuller drums, major keys and some timbres.
POPULATION_TASTE: dict = {
    ADHERENCE: 1.5,
    "drums": {"full": 0.5, "kick-hat": 0.25, "none": 0.0},
    "mode": {"major": 0.3, "minor": 0.0},
    "instrument": {"piano": 0.4, "pluck": 0.3, "organ": 0.0, "saw bass": 0.0, "square lead": -0.2, "bell": -0.4},
    "tempo": {"medium": 0.2, "fast": 0.1, "slow": 0.0},
    "register": {"low": 0.0, "high": 0.1},
}


def as_clip(x) -> tuple[Clip, synth.Attributes | None]:
    """A `Clip` (`musicrl.model.generator`: audio and its rate), a `synth.Example` (audio at the synth
    rate and its true attributes) or bare audio at the synth rate. Returns the clip and the true
    attributes when known (else None)."""
    if isinstance(x, Clip):
        return x, None
    if isinstance(x, synth.Example):
        return Clip(x.audio, synth.SAMPLE_RATE), x.attrs
    return Clip(np.asarray(x, dtype=np.float32), synth.SAMPLE_RATE), None


def perceive(clip) -> dict[str, str]:
    """The attribute values a rater hears: the truth when known, else estimates (tempo, register, mode)."""
    clip, attrs = as_clip(clip)
    if attrs is not None:
        d = attrs.to_dict()
        return {k: d[k] for k in TASTE_ATTRS}
    from musicrl.tiny.attributes import estimate_all

    est = estimate_all(clip.audio, clip.sample_rate)
    return {k: est[k] for k in _MEASURABLE}


def adherence(prompt: str, heard: dict[str, str]) -> float:
    """Fraction of the attributes `prompt` names (and that were heard) that the clip has; 0 if none."""
    named = {k: v for k, v in synth.parse_prompt(prompt).items() if k in heard}
    return sum(matches(k, heard[k], v) for k, v in named.items()) / len(named) if named else 0.0


def _weight(taste: dict, attr: str, heard: str) -> float:
    """A taste's weight for a heard value; drums heard without their kit get the mean over the kits."""
    w = taste[attr]
    if attr == "drums" and heard == DRUMS_PRESENT:
        return (w.get("kick-hat", 0.0) + w.get("full", 0.0)) / 2
    return w.get(heard, 0.0)


def _check_taste(taste: dict) -> dict:
    if not isinstance(taste, dict):
        raise UserError(f"a taste is a dict of attribute -> {{value: weight}}, got {type(taste).__name__}")
    out: dict = {}
    for attr, w in taste.items():
        if attr == ADHERENCE:
            if not isinstance(w, (int, float)) or not np.isfinite(w):
                raise UserError(f"taste['adherence'] must be a finite number, got {w!r}")
            out[attr] = float(w)
        elif attr in _VALUES:
            if not isinstance(w, dict):
                raise UserError(f"taste[{attr!r}] must be a dict of value -> weight, got {w!r}")
            bad = set(w) - set(_VALUES[attr])
            if bad:
                raise UserError(f"taste[{attr!r}] has unknown value(s) {sorted(bad)}; expected {_VALUES[attr]}")
            out[attr] = {k: float(v) for k, v in w.items()}
        else:
            raise UserError(f"unknown taste attribute {attr!r}; expected {ADHERENCE} or one of {TASTE_ATTRS}")
    return out


def _sigmoid(x: float) -> float:
    return float(0.5 * (1.0 + np.tanh(0.5 * x)))  # overflow-free


class Rater:
    """One simulated person: a hidden taste, a choice temperature `noise`, and its own random stream."""

    def __init__(self, taste: dict, noise: float = 0.5, seed: int = 0, tie_margin: float = 1e-6, name: str = ""):
        if not (np.isfinite(noise) and noise >= 0):
            raise UserError(f"noise must be >= 0, got {noise}")
        if not tie_margin >= 0:
            raise UserError(f"tie_margin must be >= 0, got {tie_margin}")
        self.taste = _check_taste(taste)
        self.noise = float(noise)
        self.tie_margin = float(tie_margin)
        self.name = name or f"rater{seed}"
        self._rng = np.random.default_rng(seed)

    def value(self, heard: dict[str, str], prompt: str) -> float:
        """Utility of a clip heard as `heard` (attribute -> value) for `prompt`."""
        u = sum(_weight(self.taste, a, heard[a]) for a in self.taste if a != ADHERENCE and a in heard)
        return float(u + self.taste.get(ADHERENCE, 0.0) * adherence(prompt, heard))

    def utility(self, audio, sr: int, prompt: str, attrs: synth.Attributes | None = None) -> float:
        """Utility of a clip (audio [S] at `sr`, its true attributes if known) for `prompt`."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        clip = synth.Example(audio, prompt, attrs, 0) if attrs is not None else Clip(audio, sr)
        return self.value(perceive(clip), prompt)

    def prob_a(self, prompt: str, heard_a: dict, heard_b: dict) -> float | None:
        """P(this rater picks a), or None for a tie (|u_a - u_b| <= tie_margin)."""
        d = self.value(heard_a, prompt) - self.value(heard_b, prompt)
        if abs(d) <= self.tie_margin:
            return None
        return float(d > 0) if self.noise == 0 else _sigmoid(d / self.noise)

    def vote(self, prompt: str, clip_a, clip_b) -> str:
        """'a', 'b' or 'tie' (clips as `Clip`, `synth.Example` or synth-rate audio)."""
        return self._draw(self.prob_a(prompt, perceive(clip_a), perceive(clip_b)))

    def _draw(self, p: float | None) -> str:
        if p is None:
            return "tie"
        return "a" if self._rng.random() < p else "b"

    def noise_ceiling(self, pairs) -> float:
        """Expected accuracy (ties excluded) of a perfect model of this taste on (prompt, a, b) pairs."""
        return Panel([self]).noise_ceiling(pairs)


class Panel:
    """Several raters; each vote is cast by one of them drawn uniformly at random."""

    def __init__(self, raters: list[Rater], seed: int = 0):
        raters = list(raters)
        if not raters or not all(isinstance(r, Rater) for r in raters):
            raise UserError("a panel needs at least one Rater")
        self.raters = raters
        self._rng = np.random.default_rng([seed, 1])

    @classmethod
    def default(cls, n: int = 5, noise: float = 0.35, seed: int = 0, spread: float = 0.25) -> "Panel":
        """`n` raters whose tastes are POPULATION_TASTE plus their own N(0, spread) per weight."""
        if n < 1:
            raise UserError(f"a panel needs at least one rater, got {n}")
        raters = []
        for i in range(n):
            rng = np.random.default_rng([seed, 2, i])
            taste = {a: (w + spread * rng.standard_normal() if a == ADHERENCE
                         else {v: x + spread * rng.standard_normal() for v, x in w.items()})
                     for a, w in POPULATION_TASTE.items()}
            raters.append(Rater(taste, noise, seed=int(rng.integers(2**31)), name=f"rater{i}"))
        return cls(raters, seed)

    def prob_a(self, prompt: str, heard_a: dict, heard_b: dict) -> tuple[float | None, float]:
        """(P(a) given the vote is not a tie, P(not a tie)) with the voter drawn at random."""
        ps = [p for p in (r.prob_a(prompt, heard_a, heard_b) for r in self.raters) if p is not None]
        return (float(np.mean(ps)) if ps else None), len(ps) / len(self.raters)

    def ballot(self, prompt: str, clip_a, clip_b, heard: tuple[dict, dict] | None = None) -> tuple[int, str]:
        """(index of the rater who voted, their vote)."""
        ha, hb = heard or (perceive(clip_a), perceive(clip_b))
        i = int(self._rng.integers(len(self.raters)))
        r = self.raters[i]
        return i, r._draw(r.prob_a(prompt, ha, hb))

    def vote(self, prompt: str, clip_a, clip_b) -> str:
        return self.ballot(prompt, clip_a, clip_b)[1]

    def noise_ceiling(self, pairs) -> float:
        """Expected accuracy, over the non-tie votes on (prompt, a, b) pairs, of the best predictor
        that knows every taste but not who votes: mean of max(q, 1-q) weighted by P(not a tie)."""
        num = den = 0.0
        for prompt, a, b in pairs:
            q, w = self.prob_a(prompt, perceive(a), perceive(b))
            if q is not None:
                num += w * max(q, 1 - q)
                den += w
        if den == 0:
            raise UserError("noise ceiling of no pairs (or only ties)")
        return num / den


def _as_panel(raters) -> Panel:
    if isinstance(raters, Panel):
        return raters
    if isinstance(raters, Rater):
        return Panel([raters])
    return Panel(list(raters))


def simulate_votes(n: int, raters, seed: int, out_dir: str | Path, *, duration_s: float = 4.0,
                   clips_per_prompt: int = 4, keep_prob: float = 0.6, progress: bool = False,
                   generate=None) -> Path:
    """Render synth clips and `n` simulated votes on them; returns `out_dir/votes.jsonl`.

    For each prompt (the train-split caption of random attributes) `clips_per_prompt` clips are
    rendered, each keeping every attribute the prompt names with probability `keep_prob` (else it is
    drawn afresh), so clips differ both in how well they follow the prompt and in taste. With
    `generate(prompt, n, seed) -> list[Clip]` (a model's samples, attributes unknown) the clips are
    the model's instead, and raters hear them through `musicrl.tiny.attributes`, as MusicRL's raters
    judged the model's own outputs (their codes beside the WAVs, `codes_a`/`codes_b`). Every pair
    of a prompt's clips is voted on (a/b order random) until there are `n` votes. Rows: prompt,
    clip_a, clip_b (WAV paths relative to out_dir), choice, rater (voter index) and p_a (the panel's
    P(a) given no tie: what a perfect taste model predicts; null when every rater would tie).
    `out_dir/simulation.json` holds the tastes, the choice counts and the noise ceiling.
    """
    from tqdm.auto import tqdm

    from musicrl.audio import write_wav
    from musicrl.votes.files import CODES_SUFFIX, codes_bytes, write_atomic

    if n < 1:
        raise UserError(f"the number of votes must be >= 1, got {n}")
    if clips_per_prompt < 2:
        raise UserError(f"clips_per_prompt must be >= 2, got {clips_per_prompt}")
    panel = _as_panel(raters)
    out = Path(out_dir)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 3])
    rows, num, den = [], 0.0, 0.0
    bar = tqdm(total=n, desc="simulating votes", disable=not progress, dynamic_ncols=True)
    for g in itertools.count():
        if len(rows) >= n:
            break
        base = synth.sample_attributes(rng)
        prompt = synth.caption(base, rng, "train")
        named = synth.parse_prompt(prompt)
        if generate is not None:
            clips = generate(prompt, clips_per_prompt, int(rng.integers(2**31)))
        else:
            clips = []
            for _ in range(clips_per_prompt):
                keep = {k: v for k, v in named.items() if rng.random() < keep_prob}
                attrs = synth.sample_attributes(rng, **keep)
                audio = synth.render(attrs, duration_s, synth.SAMPLE_RATE, seed=int(rng.integers(2**31)))
                clips.append(synth.Example(audio, prompt, attrs, 0))
        paths = [f"clips/p{g:05d}_{j}.wav" for j in range(clips_per_prompt)]
        tokens = [{} for _ in clips]  # a model's clips: their codes file and sampling settings
        for rel, c, t in zip(paths, clips, tokens):
            clip, _ = as_clip(c)
            write_wav(out / rel, clip.audio, clip.sample_rate)
            if clip.codes is not None:
                t["codes"] = rel.removesuffix(".wav") + CODES_SUFFIX
                write_atomic(out / t["codes"], codes_bytes(clip.codes))
                t["settings"] = clip.settings or None
        heard = [perceive(c) for c in clips]
        pairs = list(itertools.combinations(range(clips_per_prompt), 2))
        for k in rng.permutation(len(pairs)):
            if len(rows) >= n:
                break
            i, j = pairs[k] if rng.random() < 0.5 else pairs[k][::-1]
            who, choice = panel.ballot(prompt, clips[i], clips[j], (heard[i], heard[j]))
            q, w = panel.prob_a(prompt, heard[i], heard[j])
            if q is not None:
                num, den = num + w * max(q, 1 - q), den + w
            rows.append({"prompt": prompt, "clip_a": paths[i], "clip_b": paths[j], "choice": choice,
                         "rater": who, "p_a": q, **{f"{k}_{side}": v for side, x in zip("ab", (i, j))
                                                   for k, v in tokens[x].items()}})  # fmt: skip
            bar.update(1)
    bar.close()
    path = out / "votes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = {c: sum(r["choice"] == c for r in rows) for c in ("a", "b", "tie")}
    summary = {"votes": len(rows), "prompts": len({r["prompt"] for r in rows}), "seed": seed,
               "duration_s": duration_s, "clips_per_prompt": clips_per_prompt,
               "clips_from": "synth" if generate is None else "model",
               "keep_prob": keep_prob if generate is None else None,
               "choices": counts, "noise_ceiling": num / den if den else None,
               "raters": [{"name": r.name, "noise": r.noise, "tie_margin": r.tie_margin, "taste": r.taste}
                          for r in panel.raters]}
    (out / "simulation.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path


def raters_judge(panel: Panel):
    """The simulated raters' own judgement as a reward-shaped judge (audio [B,1,S], sample rate,
    prompts) -> [B]: mean utility over the panel's raters, each clip heard once."""
    import torch

    def score(audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> torch.Tensor:
        out = []
        for a, p in zip(audio, prompts):
            heard = perceive(Clip(a[0].cpu().numpy(), sample_rate))  # estimate the attributes once per clip
            out.append(np.mean([r.value(heard, p) for r in panel.raters]))
        return torch.tensor(out, dtype=torch.float32)

    return score


def expected_share(panel: Panel, pairs, resamples: int = 2000) -> dict:
    """What `panel` expects on single pairs (prompt, heard_a, heard_b), the voter drawn at random:
    b's share of the decisive votes, sum_i w_i (1 - q_i) / sum_i w_i (q_i = P(a | no tie), w_i = P(no
    tie)), with a 95% bootstrap interval over the pairs, and P(no tie). It has no ballot noise: only
    the clips' own spread, so it needs far fewer pairs than realised votes to show the same edge."""
    qw = np.array([(q, w) for q, w in (panel.prob_a(p, ha, hb) for p, ha, hb in pairs) if q is not None]).reshape(-1, 2)
    n = len(pairs)
    if not len(qw):
        return {"share": None, "ci95": [None, None], "p_decisive": 0.0 if n else None}
    win, w = (1 - qw[:, 0]) * qw[:, 1], qw[:, 1]
    idx = np.random.default_rng(0).integers(len(w), size=(resamples, len(w)))  # fixed: a report is reproducible
    boot = win[idx].sum(1) / w[idx].sum(1)
    return {"share": round(float(win.sum() / w.sum()), 4), "ci95": [round(float(x), 4) for x in np.quantile(boot, [0.025, 0.975])],
            "p_decisive": round(float(w.sum() / n), 4)}  # fmt: skip


def panel_expectation(votes_jsonl: Path, base: str, voters: int) -> dict:
    """What the panel expects on the round-2 pairs (base vs another model): P(the other clip wins | no
    tie) with its 95% interval over the pairs, P(no tie), and the population's mean utility of each side's clips."""
    from musicrl.audio import read_wav

    panel, population = Panel.default(voters, seed=0), Rater(POPULATION_TASTE)
    rows = [json.loads(line) for line in votes_jsonl.read_text().splitlines()]
    rows = [r for r in rows if r["model_a"] != r["model_b"] and base in (r["model_a"], r["model_b"])]
    pairs, u = [], {"base": [], "retrained": []}
    for r in rows:
        heard = {k: perceive(Clip(*read_wav(r[k]))) for k in ("clip_a", "clip_b")}
        new, old = ("clip_a", "clip_b") if r["model_a"] != base else ("clip_b", "clip_a")
        pairs.append((r["prompt"], heard[old], heard[new]))  # b is the retrained side
        u["retrained"].append(population.value(heard[new], r["prompt"]))
        u["base"].append(population.value(heard[old], r["prompt"]))
    e = expected_share(panel, pairs)
    return {"pairs": len(rows), "p_retrained_wins_decisive": e["share"], "ci95": e["ci95"], "p_decisive": e["p_decisive"],
            "population_utility": {k: round(float(np.mean(v)), 4) for k, v in u.items() if v}}  # fmt: skip


def panel_single_pairs(panel: Panel, a, b) -> dict:
    """One ballot from the panel on each single pair of clips (row i of `a` against row i of `b`,
    `musicrl.train.evaluate.Samples` of the same prompts and seeds), as the arena collects them:
    b's share of the decisive votes, with its 95% Wilson interval; and `expected`, the share the
    panel expects on the same pairs without the ballots' noise (`expected_share`)."""
    from musicrl.train.evaluate import wilson

    counts, heard = {"a": 0, "b": 0, "tie": 0}, []
    for p, xa, xb in zip(a.prompts, a.audio, b.audio):
        ha, hb = (perceive(Clip(x[0].float().cpu().numpy(), s.sample_rate)) for x, s in ((xa, a), (xb, b)))
        heard.append((p, ha, hb))
        counts[panel.ballot(p, None, None, heard=(ha, hb))[1]] += 1
    decisive = counts["a"] + counts["b"]
    lo, hi = wilson(counts["b"], decisive)
    return {**counts, "pairs": len(a.prompts), "decisive_win": counts["b"] / decisive if decisive else float("nan"),
            "ci95": [lo, hi], "expected": expected_share(panel, heard)}  # fmt: skip
