"""What the RL trainer and the preference-optimisation (DPO/IPO) trainer share, written once.

- `eval_mode`: the mode both trainers run in (no dropout; gradient checkpointing still on).
- `prepare_policy`: only the decoder LM trains (the text encoder and its projection are frozen, as
  MusicGen); LoRA adapters (peft) or a chosen set of decoder modules; the KL reference: a frozen copy
  of the starting policy, another checkpoint, or, with LoRA, the same network with its adapters
  disabled (no second copy).
- `teacher_forced`: the policy's log-probs of given codes under the sampling distribution
  (temperature, top-k/p and guidance exactly as sampled: `MusicGenPolicy.distributions`), and
  `reference_distributions`, the same for the reference, without gradients.
- `autocast` (mixed precision, CUDA only) and `MetricsLog` (metrics.csv, eval.csv, TensorBoard).

Both trainers read these fields of their configs: model, reference, lora_rank, lora_alpha,
train_modules, gradient_checkpointing, mixed_precision, seed (LoRA's initial adapters).
"""

from __future__ import annotations

import copy
import csv
import math
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from musicrl.errors import UserError
from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]  # every attention and MLP projection


def prepare_policy(policy: MusicGenPolicy, cfg, device, reference: MusicGenPolicy | None = None) -> MusicGenPolicy | None:
    """Make `policy` trainable as `cfg` says (in place); returns its frozen reference, or None with
    LoRA (the reference is then the policy with its adapters disabled: `reference_distributions`)."""
    policy.model.text_encoder.requires_grad_(False)  # only the LM is trained (as MusicGen)
    if getattr(policy.model, "enc_to_dec_proj", None) is not None:  # text -> decoder width: frozen with the text
        policy.model.enc_to_dec_proj.requires_grad_(False)
    if cfg.gradient_checkpointing:  # (non-reentrant: LoRA leaves the layers' inputs without gradients)
        decoder, kwargs = policy.model.decoder, {"use_reentrant": False}
        if hasattr(decoder, "activation_checkpointing_enable"):  # transformers >= 5.x's name for it
            decoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            decoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        for layer in checkpointed_layers(policy):  # see `eval_mode`
            for rate in ("dropout", "activation_dropout", "layerdrop"):
                if hasattr(layer, rate):
                    setattr(layer, rate, 0.0)
    if cfg.lora_rank:
        add_lora(policy, cfg)
        return None
    if cfg.train_modules:  # freeze the rest of the decoder
        chosen = {id(p) for m in chosen_modules(policy, cfg.train_modules).values() for p in m.parameters()}
        for p in policy.model.decoder.parameters():
            p.requires_grad_(id(p) in chosen)
    reference = reference or (
        MusicGenPolicy.from_pretrained(cfg.reference, device=device) if cfg.reference else copy.deepcopy(policy)
    )
    return reference.requires_grad_(False)


def checkpointed_layers(policy: MusicGenPolicy) -> list[nn.Module]:
    """The modules whose `training` flag decides whether activations are recomputed in the backward
    pass: the decoder layers where transformers has GradientCheckpointingLayer (they checkpoint
    themselves), else the decoder, whose own loop checkpoints its layers (transformers 4.x)."""
    flagged = [m for m in policy.model.decoder.modules() if getattr(m, "gradient_checkpointing", False) is True]
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        return flagged
    return [m for m in flagged if isinstance(m, GradientCheckpointingLayer)] or flagged


def eval_mode(policy: MusicGenPolicy) -> None:
    """The trainers' mode: no dropout anywhere, so the distributions trained on are those sampled from.
    transformers checkpoints a layer only while its `training` flag is set, so the layers that
    checkpoint get that flag back (their children stay in eval mode); `prepare_policy` zeroed those
    layers' own residual and activation dropout, so the flag changes nothing else."""
    policy.eval()
    for layer in checkpointed_layers(policy):
        layer.training = True


def chosen_modules(policy: MusicGenPolicy, wanted: list[str]) -> dict[str, nn.Module]:
    """The decoder modules named by `wanted` (exact name or '.'-suffix, as peft matches), by name."""
    found = {n: m for n, m in policy.model.decoder.named_modules() if any(n == w or n.endswith("." + w) for w in wanted)}
    if not found:
        raise UserError(f"train_modules {wanted} name no module of the decoder (e.g. 'encoder_attn', 'self_attn', 'fc1')")
    return found


def add_lora(policy: MusicGenPolicy, cfg) -> None:
    from peft import LoraConfig, get_peft_model

    targets = LORA_TARGETS
    if cfg.train_modules:  # peft adapts Linear layers: those inside the chosen modules
        chosen = chosen_modules(policy, cfg.train_modules)
        targets = sorted({f"{n}.{sn}".rstrip(".") for n, m in chosen.items() for sn, sub in m.named_modules() if isinstance(sub, nn.Linear)})
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets, lora_dropout=0.0)
    cuda = [policy.device] if policy.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the adapters' random init: a function of cfg.seed, not of what ran before
        torch.manual_seed(cfg.seed)
        policy.model.decoder = get_peft_model(policy.model.decoder, lcfg)


def autocast(mixed_precision: str, device: torch.device):
    if mixed_precision == "no" or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)


def teacher_forced(policy: MusicGenPolicy, prompts: list[str], codes: torch.Tensor, sampling: SamplingConfig):
    """(distributions [B, K, T, V] float32, log-probs of `codes` [B, K, T]): differentiable, under the
    sampling distribution (guidance included), so they equal the sampling-time log-probs."""
    dist = policy.distributions(prompts, codes, sampling).float()
    return dist, dist.gather(-1, codes.to(dist.device)[..., None])[..., 0]


def reference_distributions(policy: MusicGenPolicy, reference: MusicGenPolicy | None, prompts: list[str],
                            codes: torch.Tensor, sampling: SamplingConfig, mixed_precision: str = "no") -> torch.Tensor:
    """The reference's distributions [B, K, T, V] at the same positions; `reference` None: the
    policy with its LoRA adapters disabled."""
    with torch.no_grad(), autocast(mixed_precision, policy.device):
        if reference is not None:
            return reference.distributions(prompts, codes, sampling)
        with policy.model.decoder.disable_adapter():
            return policy.distributions(prompts, codes, sampling)


class MetricsLog:
    """One CSV row per call (`metrics.csv`, `eval.csv`, ... in the run directory) and the same
    scalars as TensorBoard events under `tb/` when tensorboard is installed."""

    def __init__(self, out_dir: Path):
        self.out = Path(out_dir)
        self._tb = None

    def __call__(self, metrics: dict, name: str) -> None:
        path = self.out / name
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(metrics))
            if new:
                w.writeheader()
            w.writerow(metrics)
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:
                self._tb = False
        if self._tb:
            for key, v in metrics.items():
                if key != "step" and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(key, v, metrics["step"])

    def close(self) -> None:
        if self._tb:
            self._tb.close()
