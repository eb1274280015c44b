"""Combining rewards: a weighted sum with running normalisation, and a sequential schedule.

MusicRL-R optimises CLAP (text adherence; the paper's MuLan score) + quality together; MusicRL-U the
user-preference model; MusicRL-RU first R, then U. Rewards live on different scales (a cosine in
[-1, 1], a MOS in [1, 5], a Bradley-Terry logit), so each component is standardised by its own
running mean and standard deviation (Welford) before weighting: the weights then say how much each
component matters, whatever its units. Statistics update only in training mode; `eval()` freezes
them, and the combination is then a pure function of (audio, sample rate, prompts). They belong in
an RL checkpoint (`state_dict` / `load_state_dict`), or a resumed run would normalise differently.

Calling a combination returns (total [B], components): the raw, unnormalised score of each
component by name, for logging.

Configured from a dict (the RL trainer parses it from YAML):

    kind: weighted                    # the default
    normalize: true                   # the default
    components:
      clap:    {weight: 1.0, model: tiny}                     # type defaults to the name
      quality: {weight: 1.0, model: tiny}
      user:    {type: preference, weight: 1.0, model: runs/pref}

    kind: sequential
    stages:
      - {steps: 1000, reward: {components: {clap: {}, quality: {}}}}
      - {reward: {components: {user: {type: preference, model: runs/pref}}}}   # the last: no steps
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from musicrl.errors import UserError

TYPES = ("clap", "quality", "preference", "adherence")
Reward = Callable[[torch.Tensor, int, list], torch.Tensor]

class RunningNorm:
    """Running mean and (population) standard deviation of a stream of scalars: Welford/Chan updates."""

    def __init__(self, eps: float = 1e-6):
        self.count, self.mean, self.m2, self.eps = 0, 0.0, 0.0, eps

    def update(self, x: torch.Tensor) -> None:
        """Fold in a batch [B] (Chan et al.'s parallel form of Welford's update: exact, stable)."""
        x = x.detach().double().flatten().cpu()
        n = x.numel()
        if n == 0:
            return
        b_mean = x.mean().item()
        b_m2 = ((x - b_mean) ** 2).sum().item()
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        self.m2 += b_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / self.count) ** 0.5 if self.count > 1 else 1.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std; unchanged until something was seen; std floored at eps."""
        if self.count == 0:
            return x
        return (x - self.mean) / max(self.std, self.eps)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


class WeightedReward:
    """total = sum_i w_i * norm_i(r_i(audio, sr, prompts)); also returns each raw r_i."""

    def __init__(self, rewards: dict[str, Reward], weights: dict[str, float], normalize: bool = True):
        if not rewards:
            raise UserError("a weighted reward needs at least one component")
        if set(weights) != set(rewards):
            raise UserError(f"weights {sorted(weights)} do not match components {sorted(rewards)}")
        self.rewards, self.weights, self.normalize = dict(rewards), dict(weights), normalize
        self.norms = {name: RunningNorm() for name in rewards}
        self.training = True

    def train(self, mode: bool = True) -> "WeightedReward":
        self.training = mode
        return self

    def eval(self) -> "WeightedReward":
        return self.train(False)

    def __call__(self, audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> tuple[torch.Tensor, dict]:
        components = self.score(audio, sample_rate, prompts)
        return self.combine(components), components

    def score(self, audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Each component's raw reward [B]: pure functions of the audio, so a batch may be scored in
        shares (data-parallel ranks) and the shares joined before `combine`."""
        return {name: r(audio, sample_rate, prompts).float() for name, r in self.rewards.items()}

    def combine(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        """The total [B] of the whole batch's raw components; in training mode this folds them into
        the running normalisation first (so it must see the whole batch at once)."""
        total = None
        for name, raw in components.items():
            if self.normalize and self.training:
                self.norms[name].update(raw)
            value = self.norms[name](raw) if self.normalize else raw
            term = self.weights[name] * value
            total = term if total is None else total + term.to(total.device)
        return total

    def state_dict(self) -> dict:
        return {"norms": {k: n.state_dict() for k, n in self.norms.items()}}

    def load_state_dict(self, state: dict) -> None:
        for k, s in state["norms"].items():
            if k not in self.norms:
                raise UserError(f"checkpoint has normalisation for an unknown reward component {k!r}")
            self.norms[k].load_state_dict(s)


class SequentialReward:
    """Stage i for its `steps` optimisation steps, then the next; the last stage runs forever.

    The trainer says where it is with `set_step(step)` (so a resumed run lands in the right stage).
    """

    def __init__(self, stages: list[tuple[WeightedReward, int | None]]):
        if not stages:
            raise UserError("a sequential reward needs at least one stage")
        for i, (_, steps) in enumerate(stages[:-1]):
            if steps is None or steps < 1:
                raise UserError(f"stage {i} needs steps >= 1 (only the last stage may run without a limit)")
        self.stages = [s for s, _ in stages]
        self.bounds = []  # the first step of each later stage
        total = 0
        for _, steps in stages[:-1]:
            total += int(steps)
            self.bounds.append(total)
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = int(step)

    def stage_index(self, step: int | None = None) -> int:
        step = self.step if step is None else step
        return sum(step >= b for b in self.bounds)

    @property
    def active(self) -> WeightedReward:
        return self.stages[self.stage_index()]

    def train(self, mode: bool = True) -> "SequentialReward":
        for s in self.stages:
            s.train(mode)
        return self

    def eval(self) -> "SequentialReward":
        return self.train(False)

    def __call__(self, audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> tuple[torch.Tensor, dict]:
        return self.active(audio, sample_rate, prompts)

    def score(self, audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.active.score(audio, sample_rate, prompts)

    def combine(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.active.combine(components)

    def state_dict(self) -> dict:
        return {"step": self.step, "stages": [s.state_dict() for s in self.stages]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["stages"]) != len(self.stages):
            raise UserError(f"checkpoint has {len(state['stages'])} reward stages, the config {len(self.stages)}")
        self.step = int(state["step"])
        for s, st in zip(self.stages, state["stages"]):
            s.load_state_dict(st)


# ------------------------------------------------------------------------------------ configs


@dataclass(frozen=True)
class ComponentConfig:
    type: str
    """'clap' (cosine text adherence), 'quality' (MOS), 'preference' (Bradley-Terry score) or
    'adherence' (the tiny world's oracle: how many attributes the prompt names the audio has; no model,
    built by the command from `musicrl.tiny.adherence` and handed in as a ready reward)."""
    model: str = "tiny"
    """'tiny', a local directory or (clap only) a hub id; a preference model is always a directory."""
    weight: float = 1.0
    """Weight in the sum (after normalisation when `normalize`)."""
    points: dict | None = None
    """'adherence' only: attribute -> points a clip earns for having it, e.g. {tempo: 2, mode: 1}
    (a list names attributes worth one point each). None: one point for each attribute the oracle
    hears. An attribute left out is not rewarded, and RL then trades it for the others."""


@dataclass(frozen=True)
class WeightedConfig:
    components: dict
    """name -> ComponentConfig."""
    normalize: bool = True
    """Standardise each component by its running mean/std before weighting."""


@dataclass(frozen=True)
class SequentialConfig:
    stages: tuple
    """(steps or None for the last, WeightedConfig) per stage."""


def _keys(d, allowed: tuple, where: str) -> dict:
    if not isinstance(d, dict):
        raise UserError(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(map(str, unknown))} in {where}; expected {', '.join(allowed)}")
    return d


def _points(p, ctype: str, where: str) -> dict | None:
    """An adherence component's points as {attribute: float} (which attributes exist is the oracle's
    to check: the core does not know the tiny world)."""
    if p is None:
        return None
    if ctype != "adherence":
        raise UserError(f"{where}: only a component of type 'adherence' has points")
    if isinstance(p, list):
        p = dict.fromkeys(p, 1.0)
    if not isinstance(p, dict) or not p or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p.values()):
        raise UserError(f"{where} must be a non-empty mapping of attribute -> number (or a list of attributes), got {p!r}")
    return {str(k): float(v) for k, v in p.items()}


def parse_config(d: dict, where: str = "reward") -> WeightedConfig | SequentialConfig:
    """Validate a reward config dict into frozen dataclasses (one-line UserError otherwise)."""
    kind = d.get("kind", "weighted") if isinstance(d, dict) else None
    if kind == "sequential":
        _keys(d, ("kind", "stages"), where)
        stages = d.get("stages")
        if not isinstance(stages, list) or not stages:
            raise UserError(f"{where}.stages must be a non-empty list")
        out = []
        for i, s in enumerate(stages):
            _keys(s, ("steps", "reward"), f"{where}.stages[{i}]")
            steps = s.get("steps")
            if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
                raise UserError(f"{where}.stages[{i}].steps must be a positive integer, got {steps!r}")
            if steps is None and i < len(stages) - 1:
                raise UserError(f"{where}.stages[{i}] needs steps (only the last stage may run without a limit)")
            inner = parse_config(s.get("reward"), f"{where}.stages[{i}].reward")
            if not isinstance(inner, WeightedConfig):
                raise UserError(f"{where}.stages[{i}].reward must be a weighted reward")
            out.append((steps, inner))
        return SequentialConfig(tuple(out))
    if kind != "weighted":
        raise UserError(f"{where}.kind must be 'weighted' or 'sequential', got {kind!r}")
    _keys(d, ("kind", "components", "normalize"), where)
    comps = d.get("components")
    if not isinstance(comps, dict) or not comps:
        raise UserError(f"{where}.components must be a non-empty mapping of name -> component")
    parsed = {}
    for name, c in comps.items():
        c = _keys(c if c is not None else {}, ("type", "model", "weight", "points"), f"{where}.components.{name}")
        ctype = c.get("type", name)
        if ctype not in TYPES:
            raise UserError(f"{where}.components.{name}: type must be one of {', '.join(TYPES)}, got {ctype!r}")
        w = c.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise UserError(f"{where}.components.{name}.weight must be a number, got {w!r}")
        points = _points(c.get("points"), ctype, f"{where}.components.{name}.points")
        parsed[str(name)] = ComponentConfig(ctype, str(c.get("model", "tiny")), float(w), points)
    norm = d.get("normalize", True)
    if not isinstance(norm, bool):
        raise UserError(f"{where}.normalize must be true or false, got {norm!r}")
    return WeightedConfig(parsed, norm)


def build_reward(config: dict | WeightedConfig | SequentialConfig, device: str | torch.device = "cpu",
                 rewards: dict[str, Reward] | None = None) -> WeightedReward | SequentialReward:
    """The combination a config describes. `rewards` (name -> reward) supplies components already
    built (tests, a caller's own); the others are loaded, sharing one CLAP backbone among all the
    components that use the same one."""
    cfg = config if isinstance(config, (WeightedConfig, SequentialConfig)) else parse_config(config)
    given = dict(rewards or {})
    claps: dict[str, object] = {}

    def clap_for(name: str):
        from musicrl.model import hub
        from musicrl.rewards import backbone as bb

        key = hub.resolve(name, "clap")
        if Path(key).is_dir():
            key = str(Path(key).resolve())  # 'tiny', ../clap and an absolute path can name one directory
        if key not in claps:
            claps[key] = bb.load_backbone(name, device)
        return claps[key]

    def load(name: str, c: ComponentConfig) -> Reward:
        if name in given:
            return given[name]
        from musicrl.model import hub
        from musicrl.rewards import backbone as bb

        if c.type == "adherence":
            raise UserError(f"reward component {name!r} of type 'adherence' is the tiny world's oracle: pass it ready "
                            "built (`musicrl train` does)")  # fmt: skip
        if c.type == "clap":
            return clap_for(c.model)
        if c.model not in hub.SHIPPED and not Path(c.model).expanduser().is_dir():  # a preset's path, not trained yet
            raise UserError(f"reward component {name!r}: no {c.type} model at {c.model} (no such directory); train one "
                            f"with `musicrl train-reward {c.type} ... --out DIR` and pass reward.components.{name}.model=DIR")  # fmt: skip
        if c.type == "quality":
            from musicrl.rewards.quality import QualityReward

            path = hub.resolve(c.model, "quality")
            return QualityReward.from_pretrained(path, device, clap=clap_for(bb.backbone_of(path, "quality")))
        from musicrl.rewards.preference import PreferenceReward

        return PreferenceReward.from_pretrained(c.model, device, clap=clap_for(bb.backbone_of(c.model, "preference")))

    def weighted(w: WeightedConfig) -> WeightedReward:
        return WeightedReward({n: load(n, c) for n, c in w.components.items()},
                              {n: c.weight for n, c in w.components.items()}, w.normalize)

    if isinstance(cfg, SequentialConfig):
        return SequentialReward([(weighted(w), steps) for steps, w in cfg.stages])
    return weighted(cfg)
