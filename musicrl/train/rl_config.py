"""`RLConfig`: every setting of an RL run (MusicRL-R, -U, -RU), frozen and validated on construction.

Presets under configs/rl/ are YAML dicts of these fields; `musicrl train --config rl/musicrl-r key=value`
overrides any of them (dotted keys reach into `reward`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from musicrl.errors import UserError
from musicrl.model.sampling import SamplingConfig


@dataclass(frozen=True)
class RLConfig:
    reward: dict = field(default_factory=dict)
    """Reward combination (see `musicrl.rewards.combine`): weighted components or sequential stages."""
    model: str = "tiny"
    """Policy to start from: 'tiny', a directory (e.g. a MusicRL-R checkpoint) or a hub id."""
    reference: str | None = None
    """KL reference; None = the starting model (with LoRA: the same weights, adapters disabled)."""
    prompts: str = "synth"
    """Training prompts, resolved by the command that builds the trainer: a text file (one prompt a
    line), a shipped list under configs/prompts/, or a tiny-world set ('synth': the training
    captions of the synthetic corpus; see `musicrl.tiny.prompts`)."""
    eval_prompts: str = "synth-unseen"
    """Prompts of the trainer's periodic evaluation, resolved likewise ('synth-unseen': captions of
    held-out clips in training words, none a training prompt; 'synth-heldout': held-out words)."""
    out_dir: str = "runs/rl"
    """Run directory: checkpoints, metrics.csv, TensorBoard events, audio samples."""
    steps: int = 100
    prompts_per_step: int = 4
    samples_per_prompt: int = 4
    """k samples per prompt (RLOO needs k >= 2)."""
    duration_s: float = 4.0
    temperature: float = 1.0
    top_k: int = 0
    """0 = full distribution; the exact KL needs the full support, so top-k/top-p need kl_estimator=sampled."""
    top_p: float = 0.0
    guidance_scale: float = 1.0
    objective: str = "reward"
    """What the rollouts train: 'reward': maximise the reward (policy gradient with `baseline`, MusicRL's);
    'online_dpo': two samples per prompt, the one the reward scores higher is chosen (the Bradley-Terry
    model's likelier label: P(a > b) = sigmoid(r(a) - r(b))), DPO's loss with `beta` against the
    reference (`kl_coef`, `baseline` and `normalize_advantages` unused); 'nash_md': Nash-MD (Munos et
    al. 2023): each policy sample meets one from the geometric mixture pi^(1-mixture_coef) *
    ref^mixture_coef, and the policy gradient raises P(policy's > mixture's) - 1/2, plus `kl_coef` * KL
    (`baseline` and `normalize_advantages` unused). docs/dpo.md says when to use which."""
    beta: float = 0.1
    """objective=online_dpo: DPO's beta (larger: smaller moves from the reference)."""
    mixture_coef: float = 0.5
    """objective=nash_md: the reference's share of the mixture the rival sample comes from (0: the
    policy itself, self-play; 1: the reference)."""
    kl_coef: float = 0.05
    """Weight of KL(pi || ref) (the paper's beta): how far the policy may drift from the reference."""
    kl_estimator: str = "exact"
    """'exact': full-codebook KL per step in the loss; 'sampled': sum of log pi - log ref in the reward."""
    baseline: str = "rloo"
    """'rloo' (leave-one-out mean of the other samples), 'value' (learned, on the prompt) or 'none'."""
    normalize_advantages: str = "batch"
    """'batch': divide advantages by their standard deviation over the batch; 'prompt': by their
    standard deviation over each prompt's k samples (GRPO's), so every prompt weighs the same
    whatever its reward spread; 'none'."""
    skip_flat_groups: bool = False
    """objective=reward: leave out of the update the prompts whose k samples all got the same reward
    (DAPO's dynamic sampling, without resampling). Their advantages are zero, so they only add the KL
    term and, through the batch mean, shrink the others' policy gradient; skipping them also skips their
    share of the update's compute. With a 0/1-point reward most groups of an easy prompt are flat."""
    coarse_codebooks: int = 0
    """objective=reward: > 0: the policy gradient uses only the tokens of the first `coarse_codebooks`
    codebooks (0: all of them; the KL term always covers all). A sequence-level reward gives every
    token the same advantage, and the fine codebooks' tokens, most of a clip's entropy, add gradient
    noise nearly orthogonal to the first codebook's. Leaving them out spends less KL for what the
    coarse codes decide (tempo, mode, register: what a CLAP hears); a reward that hears detail, such
    as a drum kit's noise bursts, needs them. The left-out tokens still count in the policy gradient's
    mean, so the KL term also weighs K / coarse_codebooks times more against it, and part of the KL
    saved may be that weight alone: leaving a clip's later frames out the same way saved KL only as a
    larger `kl_coef` does (docs/results/rl-oracle.md)."""
    ppo_epochs: int = 1
    """Optimisation passes over each batch; > 1 uses the PPO clipped ratio."""
    clip_eps: float = 0.2
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_accum: int = 1
    """Micro-batches per update (memory: the update holds [B/grad_accum, K, T, V] distributions)."""
    max_grad_norm: float = 1.0
    ema_decay: float = 0.0
    """> 0: keep an exponential moving average of the trained weights (ema <- d*ema + (1-d)*w after
    every update; 0.98 averages over ~50 steps) and write it, not the last weights, as each checkpoint's
    model and use it for the evaluations; rollouts still sample the live weights. Averaging cancels
    much of the random drift a noisy policy gradient makes, while keeping its consistent direction."""
    lora_rank: int = 0
    """0 = full fine-tuning of the decoder; > 0 = LoRA adapters (peft) on its attention and MLP."""
    lora_alpha: float = 16.0
    train_modules: list[str] | None = None
    """Decoder modules to train, by name or name suffix (peft's matching: 'encoder_attn' is every
    layer's cross-attention). None = all of the decoder (with LoRA: adapters on every attention and
    MLP projection). Training cross-attention alone ('encoder_attn') drifts far less, and learns less."""
    mixed_precision: str = "no"
    """'no', 'bf16' or 'fp16' (autocast; CUDA only)."""
    gradient_checkpointing: bool = False
    fsdp: bool = False
    """Under torchrun: shard the decoder's weights, gradients and AdamW state (and the reference copy)
    over the processes with FSDP (torch's `fully_shard`, a decoder layer a unit) instead of holding
    them whole on each: full fine-tuning of a model whose training state does not fit one GPU
    (musicgen-large: docs/scaling-out.md). Needs lora_rank=0: with LoRA the trained state is small and
    the frozen base is the reference, so plain data parallelism holds less. One process: no effect."""
    eval_every: int = 25
    eval_prompts_count: int = 8
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_audio: int = 2
    """Clips written as WAV at each evaluation."""
    engine: str = "fast"
    """Rollout decoder: 'fast' (musicrl.model.engine: static KV cache, CUDA graphs; same tokens) or 'reference'."""
    seed: int = 0
    """Rollout noise, prompt order and the trainer's evaluation prompts; not the training captions."""
    device: str = "auto"
    votes_hash: str | None = None
    """Hash of the vote set the reward model was trained on (recorded in checkpoints); None = read it
    from the preference model's directory when there is one."""

    def __post_init__(self):
        def bad(msg):
            raise UserError(msg)

        check_types(self)
        if not self.reward:
            bad("reward is required (e.g. reward: {components: {clap: {}, quality: {}}})")
        if self.kl_coef < 0:
            bad(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.kl_estimator not in ("exact", "sampled"):
            bad(f"kl_estimator must be 'exact' or 'sampled', got {self.kl_estimator!r}")
        if self.kl_estimator == "exact" and (self.top_k or self.top_p):
            bad("the exact KL needs the full distribution: set top_k=0 and top_p=0, or kl_estimator=sampled")
        if self.normalize_advantages not in ("batch", "prompt", "none"):
            bad(f"normalize_advantages must be 'batch', 'prompt' or 'none', got {self.normalize_advantages!r}")
        if self.baseline not in ("rloo", "value", "none"):
            bad(f"baseline must be 'rloo', 'value' or 'none', got {self.baseline!r}")
        if self.objective not in ("reward", "online_dpo", "nash_md"):
            bad(f"objective must be 'reward', 'online_dpo' or 'nash_md', got {self.objective!r}")
        if self.objective == "reward" and self.baseline == "rloo" and self.samples_per_prompt < 2:
            bad("the RLOO baseline needs samples_per_prompt >= 2")
        if self.coarse_codebooks < 0:
            bad(f"coarse_codebooks must be >= 0 (0: all codebooks), got {self.coarse_codebooks}")
        if self.coarse_codebooks and self.objective != "reward":
            bad("coarse_codebooks needs objective=reward (the other objectives score whole clips)")
        if self.skip_flat_groups and self.fsdp:
            bad("skip_flat_groups does not work with fsdp (FSDP needs every process to run the same passes)")
        if self.skip_flat_groups and self.objective != "reward":
            bad("skip_flat_groups needs objective=reward (a group's advantages are what it compares)")
        if self.objective == "online_dpo" and (self.samples_per_prompt != 2 or self.kl_estimator != "exact"):
            bad("objective=online_dpo needs samples_per_prompt=2 (a pair per prompt) and kl_estimator=exact")
        if self.objective == "online_dpo" and self.prompts_per_step % self.grad_accum:
            bad("objective=online_dpo: prompts_per_step must be divisible by grad_accum (a pair stays in one micro-batch)")
        if self.objective == "nash_md" and self.engine != "fast":
            bad("objective=nash_md samples the mixture with the fast engine: set engine=fast")
        if not self.beta > 0 or not 0 <= self.mixture_coef <= 1:
            bad(f"beta must be > 0 and mixture_coef in [0, 1], got {self.beta} and {self.mixture_coef}")
        if self.engine not in ("fast", "reference"):
            bad(f"engine must be 'fast' or 'reference', got {self.engine!r}")
        check_counts(self, ("steps", "prompts_per_step", "samples_per_prompt", "ppo_epochs", "grad_accum",
                            "eval_every", "checkpoint_every", "keep_checkpoints"))  # fmt: skip
        if (self.prompts_per_step * self.samples_per_prompt) % self.grad_accum:
            bad("prompts_per_step * samples_per_prompt must be divisible by grad_accum")
        if not self.lr > 0 or not self.duration_s > 0:
            bad("lr and duration_s must be > 0")
        if not 0 <= self.ema_decay < 1:
            bad(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        check_tuning(self)
        from musicrl.rewards.combine import parse_config

        parse_config(self.reward)  # validates now, one line on error

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_k, self.top_p, self.guidance_scale)

    @classmethod
    def from_dict(cls, d: dict) -> "RLConfig":
        return from_dict(cls, d)


def check_types(cfg) -> None:
    """A config dataclass's numbers, whole numbers and booleans are what they say: YAML and key=value
    overrides can hand over any type (`gradient_checkpointing=maybe`, `steps=1.5`); one line if not."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.type in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"{f.name} must be a number, got {value!r}")
        if f.type == "int" and not isinstance(value, int):
            raise UserError(f"{f.name} must be a whole number, got {value!r}")
        if f.type == "bool" and not isinstance(value, bool):
            raise UserError(f"{f.name} must be true or false, got {value!r}")


def check_counts(cfg, names: tuple[str, ...]) -> None:
    """Each of these fields of a config is a count of at least 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def check_tuning(cfg) -> None:
    """The fields every trainer shares (`musicrl.train.tuning`): mixed_precision, lora_rank, train_modules, fsdp."""
    if cfg.mixed_precision not in ("no", "bf16", "fp16"):
        raise UserError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {cfg.mixed_precision!r}")
    if cfg.lora_rank < 0:
        raise UserError(f"lora_rank must be >= 0, got {cfg.lora_rank}")
    if cfg.fsdp and cfg.lora_rank:
        raise UserError("fsdp is for full fine-tuning: with LoRA set fsdp=false (each process then holds the frozen base once)")
    if cfg.train_modules is not None and (
        not isinstance(cfg.train_modules, list) or not cfg.train_modules
        or not all(isinstance(m, str) and m for m in cfg.train_modules)
    ):  # fmt: skip
        raise UserError(f"train_modules must be a non-empty list of module names, got {cfg.train_modules!r}")


def from_dict(cls, d: dict):
    """`cls(**d)` for a config dataclass, with a one-line error naming any key it does not have."""
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise UserError(f"unknown config key(s): {', '.join(unknown)}")
    return cls(**d)
