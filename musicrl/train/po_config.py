"""`DPOConfig`: every setting of an offline preference-optimisation run (DPO, IPO, conservative DPO)
from A/B votes, frozen and validated on construction.

Presets under configs/po/ are YAML dicts of these fields plus `method: dpo` (which tells
`musicrl train` that this is not an RL preset); `musicrl train --config po/dpo key=value` overrides
any of them, and `--votes FILE` / `--db URL` set `votes`.
"""

from __future__ import annotations

from dataclasses import dataclass

from musicrl.errors import UserError
from musicrl.model.sampling import SamplingConfig
from musicrl.train.pairs import TIES
from musicrl.train.rl_config import check_counts, check_tuning, check_types, from_dict

LOSSES = ("sigmoid", "ipo", "conservative")


@dataclass(frozen=True)
class DPOConfig:
    votes: str = ""
    """The votes to learn from: a vote file (`musicrl votes export --format jsonl`, or
    `musicrl simulate-votes`), an hf export directory (its train.jsonl), or a vote-store URL
    (`sqlite:///musicrl-data/votes.db`: its effective votes)."""
    data_dir: str | None = None
    """With a database URL: the store's data dir (its clips/); default: a SQLite file's own directory."""
    model: str = "tiny"
    """Policy to start from: 'tiny', a directory (e.g. a checkpoint) or a hub id. Its codec re-encodes
    the clips stored without codes, so it should be the model that made the voted clips."""
    reference: str | None = None
    """The DPO reference pi_ref; None = the starting model (with LoRA: the same weights, adapters disabled)."""
    out_dir: str = "runs/dpo"
    """Run directory: checkpoints, metrics.csv, eval.csv, TensorBoard events, dpo.png."""
    loss: str = "sigmoid"
    """'sigmoid': DPO, -log sigmoid(beta * h); 'conservative': cDPO, the same with the label flipped with
    probability `label_smoothing`; 'ipo': IPO, (h / tokens - 1 / (2 beta))^2 on per-token log-ratios.
    h = [log pi(chosen) - log ref(chosen)] - [log pi(rejected) - log ref(rejected)], summed over the clip's tokens."""
    beta: float = 0.1
    """How far the policy may move from the reference: larger beta, smaller moves (DPO's KL weight)."""
    label_smoothing: float = 0.1
    """loss=conservative: the assumed share of votes that are flipped (noisy raters), in [0, 0.5)."""
    rpo_alpha: float = 0.0
    """Weight of an NLL term on the chosen clip, -log pi(chosen) per token, added to each decisive
    pair's loss (RPO, Pang et al. 2024; TRL's `rpo_alpha`). DPO alone lowers the chosen clips'
    likelihood along with the rejected ones'; this keeps pulling the voted-for clips up. 0 = off."""
    coarse_codebooks: int = 0
    """> 0: h sums the log-ratios of the tokens of the first `coarse_codebooks` codebooks only (0: all;
    the logged KL always covers all). Two clips' fine codebooks differ mostly in detail that is
    sampling noise, most of a clip's entropy, while much of what a listener votes on (tempo, mode,
    register) is decided in the coarse codes; leaving the fine ones out takes that noise out of the
    implicit reward. As RLConfig.coarse_codebooks (docs/results/dpo.md)."""
    ties: str = "drop"
    """'drop': tie votes are not trained on; 'zero_margin' (IPO only): a tie pulls the two clips'
    implicit rewards together (target h = 0). Both-bad votes are always dropped: they say nothing
    about which clip is better."""
    steps: int = 200
    batch_size: int = 8
    """Preference pairs per update (drawn in a fresh shuffled order each pass over the pairs)."""
    grad_accum: int = 1
    """Micro-batches per update (memory: each holds 2 * batch_size / grad_accum clips' [K, T, V] distributions)."""
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    guidance_scale: float = 3.0
    """Log-probs are those of the distribution the clips were sampled from: this temperature and
    classifier-free guidance (the app's and `musicrl generate`'s default is 3). Top-k/top-p are not
    applied: a voted token outside the policy's current top-k would have log-prob -inf."""
    lora_rank: int = 0
    """0 = full fine-tuning of the decoder; > 0 = LoRA adapters (peft) on its attention and MLP."""
    lora_alpha: float = 16.0
    train_modules: list[str] | None = None
    """Decoder modules to train, by name or name suffix (as RLConfig.train_modules); None = all."""
    mixed_precision: str = "no"
    """'no', 'bf16' or 'fp16' (autocast; CUDA only)."""
    gradient_checkpointing: bool = False
    fsdp: bool = False
    """Under torchrun: shard the decoder's weights, gradients and AdamW state (and the reference copy)
    over the processes with FSDP (torch's `fully_shard`, a decoder layer a unit) instead of holding
    them whole on each: full fine-tuning of a model whose training state does not fit one GPU
    (musicgen-large: docs/scaling-out.md). Needs lora_rank=0: with LoRA the trained state is small and
    the frozen base is the reference, so plain data parallelism holds less. One process: no effect."""
    eval_fraction: float = 0.1
    """Share of the prompts whose pairs are held out to measure implicit-reward accuracy (eval.csv);
    0 = none. A held-out prompt's pairs are never trained on."""
    eval_every: int = 25
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    """The order of the pairs and which prompts are held out."""
    device: str = "auto"

    def __post_init__(self):
        def bad(msg):
            raise UserError(msg)

        check_types(self)
        if not isinstance(self.votes, str) or not self.votes.strip():
            bad("votes is required: a vote file, an hf export directory or a database URL (--votes FILE or --db URL)")
        if self.loss not in LOSSES:
            bad(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.ties not in TIES:
            bad(f"ties must be one of {', '.join(TIES)}, got {self.ties!r}")
        if self.ties == "zero_margin" and self.loss != "ipo":
            bad("ties=zero_margin needs loss=ipo (a logistic loss has no target for a tie)")
        if self.coarse_codebooks < 0:
            bad(f"coarse_codebooks must be >= 0 (0: all codebooks), got {self.coarse_codebooks}")
        if not self.beta > 0:
            bad(f"beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            bad(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if not (self.rpo_alpha >= 0 and self.rpo_alpha < float("inf")):
            bad(f"rpo_alpha must be >= 0, got {self.rpo_alpha}")
        if not 0 <= self.eval_fraction < 1:
            bad(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        check_counts(self, ("steps", "batch_size", "grad_accum", "eval_every", "checkpoint_every", "keep_checkpoints"))
        if self.batch_size % self.grad_accum:
            bad("batch_size must be divisible by grad_accum")
        if not self.lr > 0:
            bad(f"lr must be > 0, got {self.lr}")
        check_tuning(self)
        self.sampling  # noqa: B018  temperature and guidance_scale: SamplingConfig's checks

    @property
    def sampling(self) -> SamplingConfig:
        """The distribution the log-probs are taken under: temperature and guidance, full support."""
        return SamplingConfig(self.temperature, top_k=0, top_p=0.0, guidance_scale=self.guidance_scale)

    @classmethod
    def from_dict(cls, d: dict) -> DPOConfig:
        return from_dict(cls, d)
