"""Pretraining the tiny MusicGen LM on (caption, codes) from the synthetic corpus.

Teacher forcing over the delay pattern, cross-entropy per codebook on real (non-pad) positions,
captions re-drawn from the templates every time a clip is seen (so paraphrases are learnt), and
caption dropout to the null condition (zero text states, the one the policy uses for
classifier-free guidance) so that guidance works. Resumable: a checkpoint holds model, optimizer,
step and RNG state, written atomically.

    python -m musicrl.tiny.lm --codec musicrl/assets/tiny/codec --out runs/tiny/musicgen
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from musicrl.model import delay as dp
from musicrl.tiny import synth


@dataclass(frozen=True)
class LMTrainConfig:
    num_clips: int = 8000
    """Training clips (train-split seeds 0..num_clips-1), encoded once and cached."""
    clip_s: float = 4.0
    """Length of each corpus clip in seconds."""
    crop_frames: int = 200
    """Frames per training example (a random crop; 200 = whole 4 s clips, so every position up to
    4 s is trained: a shorter crop is faster per step but leaves the later positions untrained)."""
    steps: int = 4500
    """Optimizer steps on whole clips."""
    batch_size: int = 16
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup: int = 100
    weight_decay: float = 0.01
    cond_dropout: float = 0.2
    """Probability of replacing a caption by the null condition (needed for guidance)."""
    text_pretrain_steps: int = 800
    """Steps of `musicrl.tiny.text` pretraining of the text encoder before the LM (0: none)."""
    text_words: str = "train"
    """Vocabulary of that pretraining: "train", or "all" (both splits' words, the tiny world's
    language prior, as the tiny CLAP uses). Not "all" by default: 800 steps taught this byte-level
    T5 only 82% of slots with the larger vocabulary (68% on held-out words and templates), against
    94% with train words, so the LM would condition on weaker text states. (caption, codes) pairs
    always use train-split captions."""
    freeze_text: bool = True
    """Keep the text encoder frozen while the LM trains (as MusicGen keeps its T5)."""
    prefix_frames: int = 25
    """The first frames of a clip, whose codes only the caption can predict (0.5 s at 50 Hz) ..."""
    prefix_weight: float = 4.0
    """... weigh this much more in the loss: the rest of a clip follows from its start."""
    prefix_steps: int = 0
    """Then this many steps on clip starts alone (the first prefix_frames, lr/2). Off: on a fully
    trained LM they raise the held-out loss of whole clips and cost tempo adherence (docs/tiny.md)."""
    hidden_size: int = 192
    """Decoder width (4 layers of 192: ~2.8 M parameters, ~0.58 s a step on 2 quiet CPU cores)."""
    num_layers: int = 4
    heads: int = 6
    seed: int = 0
    checkpoint_every: int = 250
    """Steps between checkpoints; the held-out loss is measured and logged at each."""
    val_clips: int = 64
    """Held-out-split clips whose teacher-forced loss (train captions, no dropout) goes to `log.csv`
    in the work dir at every checkpoint: the curve that says whether more steps would help."""

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.num_clips < self.batch_size:
            raise ValueError("steps >= 1, batch_size >= 1 and num_clips >= batch_size are required")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError("cond_dropout must be in [0, 1)")
        if self.text_pretrain_steps < 0 or self.prefix_frames < 0 or self.prefix_weight <= 0 or self.prefix_steps < 0:
            raise ValueError("text_pretrain_steps, prefix_frames, prefix_steps >= 0 and prefix_weight > 0 are required")
        if self.text_words not in ("train", "all"):
            raise ValueError(f"text_words must be 'train' or 'all', got {self.text_words!r}")
        if self.prefix_steps and not self.prefix_frames:
            raise ValueError("prefix_steps needs prefix_frames >= 1")
        if min(self.hidden_size, self.num_layers, self.heads) < 1 or self.hidden_size % self.heads:
            raise ValueError(f"hidden_size, num_layers, heads >= 1 with heads dividing hidden_size are required, "
                             f"got {self.hidden_size}, {self.num_layers}, {self.heads}")


def _encode(codec, examples, n: int, desc: str, progress: bool) -> tuple[torch.Tensor, list[dict]]:
    """codes [n, K, T] int16 and the attribute dicts of `n` corpus examples, encoded 32 at a time."""
    from tqdm.auto import tqdm

    codes, attrs, batch = [], [], []
    for i, ex in enumerate(tqdm(examples, total=n, desc=desc, disable=not progress)):
        batch.append(torch.from_numpy(ex.audio))
        attrs.append(ex.attrs.to_dict())
        if len(batch) == 32 or i == n - 1:
            codes.append(codec.encode(torch.stack(batch)[:, None]).to(torch.int16))  # [b, 1, S] -> [b, K, T]
            batch = []
    return torch.cat(codes), attrs


def encode_corpus(codec, cfg: LMTrainConfig, cache: Path, progress: bool = True) -> dict:
    """Render and encode the clips once: training codes [N, K, T] int16 plus each clip's attributes,
    and the same for `val_clips` held-out-split clips ("val_codes", "val_attrs").

    The cache is keyed by the codec's weights and the corpus settings: a different codec re-encodes."""
    from musicrl.model.generator import weights_version

    key = {"codec": weights_version(codec.model), "num_clips": cfg.num_clips, "clip_s": cfg.clip_s,
           "val_clips": cfg.val_clips}
    if cache.exists():
        data = torch.load(cache, weights_only=False)
        if data.get("key") == key:
            return data

    codes, attrs = _encode(codec, synth.examples(cfg.num_clips, duration_s=cfg.clip_s), cfg.num_clips,
                           "encode corpus", progress)
    data = {"codes": codes, "attrs": attrs, "key": key}
    if cfg.val_clips:
        held = synth.examples(cfg.val_clips, duration_s=cfg.clip_s, split="heldout")
        data["val_codes"], data["val_attrs"] = _encode(codec, held, cfg.val_clips, "encode held-out", progress)
    tmp = cache.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, cache)
    return data


def _lr(step: int, cfg: LMTrainConfig) -> float:
    if step >= cfg.steps:  # the clip-start phase
        return 0.5 * cfg.lr
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def lm_loss(policy, prompts: list[str], codes: torch.Tensor, drop: torch.Tensor, prefix_frames: int = 0,
            prefix_weight: float = 1.0) -> torch.Tensor:
    """Weighted mean cross-entropy over real positions. codes [B, K, T]; drop [B] bool -> null
    condition; positions of the first `prefix_frames` decoding steps weigh `prefix_weight`."""
    states, mask = policy.encode_text(prompts)
    keep = (~drop).to(states.dtype)[:, None, None]
    states, mask = states * keep, torch.where(drop[:, None], torch.ones_like(mask), mask)
    logits = policy.teacher_forced_logits(codes, states, mask)  # [B, K, T+K-1, V]
    _, targets = dp.decoder_inputs(codes, policy.pad_id, policy.bos_id)  # [B, K, T+K-1]
    valid = dp.valid_mask(codes.shape[1], codes.shape[2], device=codes.device)  # [K, T+K-1]
    ce = torch.nn.functional.cross_entropy(
        logits.flatten(0, 2).float(), targets.clamp(max=policy.vocab_size - 1).flatten(), reduction="none"
    ).view(targets.shape)
    weight = valid.float()
    weight[:, :prefix_frames] *= prefix_weight
    return (ce * weight).sum() / (weight.sum() * codes.shape[0])


@torch.no_grad()
def held_out_loss(policy, data: dict, batch_size: int = 16) -> float:
    """Mean teacher-forced loss over the cached held-out clips, each with a fixed train-split caption
    (the LM knows train words only; the clips and their sounds are new). Eval mode: no dropout."""
    modes = [(m, m.training) for m in policy.model.modules()]  # (the frozen parts stay in eval mode)
    policy.model.eval()
    rng = np.random.default_rng(0)
    codes = data["val_codes"].long()  # [N, K, T]
    prompts = [synth.caption(synth.Attributes.from_dict(a), rng) for a in data["val_attrs"]]
    total = 0.0
    for i in range(0, len(codes), batch_size):
        b = codes[i : i + batch_size]
        total += lm_loss(policy, prompts[i : i + batch_size], b, torch.zeros(len(b), dtype=torch.bool)).item() * len(b)
    for m, training in modes:
        m.training = training
    return total / len(codes)


def _resume(ckpt: Path, model, opt, rng: np.random.Generator, cfg: LMTrainConfig, codec_key) -> int:
    """Restore the model, optimizer and both RNGs from the work checkpoint; returns its step."""
    state = torch.load(ckpt, weights_only=False)
    if state["config"] != asdict(cfg) or state.get("codec") != codec_key:
        raise ValueError(f"{ckpt} was written with another config or codec; remove it to start over")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
    return state["step"]


def _save_state(ckpt: Path, model, opt, rng: np.random.Generator, cfg: LMTrainConfig, codec_key, step: int) -> None:
    """Everything `_resume` needs, written atomically (a temporary file renamed over the old one)."""
    state = {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "config": asdict(cfg),
        "codec": codec_key, "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
    }  # fmt: skip
    torch.save(state, ckpt.with_suffix(".tmp"))
    os.replace(ckpt.with_suffix(".tmp"), ckpt)


def train_lm(codec_dir: str | Path, out_dir: str | Path, cfg: LMTrainConfig = LMTrainConfig(), progress: bool = True,
             work_dir: str | Path | None = None, stop_after: int | None = None) -> Path | None:
    """Train and save the tiny MusicGen into `out_dir`; `stop_after` steps simulates an interruption
    (returns None, leaving only the checkpoint)."""
    from tqdm.auto import tqdm

    from musicrl.model.codec import Codec
    from musicrl.model.policy import MusicGenPolicy
    from musicrl.tiny.musicgen import build

    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir is not None else out_dir.parent / "work" / "lm"
    work.mkdir(parents=True, exist_ok=True)
    codec = Codec.from_pretrained(codec_dir)
    data = encode_corpus(codec, cfg, work / "codes.pt", progress)
    codes_all = data["codes"].long()  # [N, K, T]
    attrs_all = [synth.Attributes.from_dict(a) for a in data["attrs"]]

    torch.manual_seed(cfg.seed)
    model, tokenizer = build(codec.model, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, heads=cfg.heads)
    policy = MusicGenPolicy(model, tokenizer, name="tiny")
    model.audio_encoder.requires_grad_(False)
    ckpt = work / "checkpoint.pt"
    if cfg.text_pretrain_steps and not ckpt.exists():  # (a checkpoint holds the pretrained encoder)
        from musicrl.tiny.text import pretrain_text_encoder

        acc = pretrain_text_encoder(model.text_encoder, tokenizer, cfg.text_pretrain_steps, seed=cfg.seed,
                                    progress=progress, words=cfg.text_words)
        print(f"text encoder: attribute slots of fresh captions recovered: {acc['train_words']:.1%} "
              f"(train words), {acc['heldout']:.1%} (held-out words and templates)")
    if cfg.freeze_text:
        model.text_encoder.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    rng = np.random.default_rng(cfg.seed)
    step = _resume(ckpt, model, opt, rng, cfg, data["key"]["codec"]) if ckpt.exists() else 0

    model.train()
    model.audio_encoder.eval()
    if cfg.freeze_text:
        model.text_encoder.eval()  # frozen: no dropout either
    total = cfg.steps + cfg.prefix_steps
    log = work / "log.csv"
    if step == 0:
        log.write_text("step,phase,lr,train_loss,held_out_loss\n")
    recent: list[float] = []  # training losses since the last checkpoint
    bar = tqdm(total=total, initial=step, desc="tiny LM", disable=not progress)
    T = codes_all.shape[-1]
    end = total if stop_after is None else min(total, step + stop_after)
    while step < end:
        idx = rng.integers(0, len(codes_all), cfg.batch_size)
        crop = cfg.crop_frames if step < cfg.steps else cfg.prefix_frames
        start = rng.integers(0, T - crop + 1, cfg.batch_size) if T > crop and step < cfg.steps else np.zeros(cfg.batch_size, int)
        codes = torch.stack([codes_all[i, :, s : s + crop] for i, s in zip(idx, start)])  # [B, K, T']
        prompts = [synth.caption(attrs_all[i], rng) for i in idx]
        drop = torch.from_numpy(rng.random(cfg.batch_size) < cfg.cond_dropout)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        loss = lm_loss(policy, prompts, codes, drop, cfg.prefix_frames, cfg.prefix_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        recent.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % cfg.checkpoint_every == 0 or step == total:
            held = held_out_loss(policy, data) if cfg.val_clips else float("nan")
            _save_state(ckpt, model, opt, rng, cfg, data["key"]["codec"], step)
            with log.open("a") as f:  # after the checkpoint: a resumed run never logs a step twice
                phase = "clips" if step <= cfg.steps else "starts"
                f.write(f"{step},{phase},{_lr(step - 1, cfg):.3g},{np.mean(recent):.4f},{held:.4f}\n")
            if progress:
                bar.write(f"step {step}: held-out loss {held:.4f} (train {np.mean(recent):.4f})")
            recent = []
    bar.close()
    if step < total:
        return None
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if cfg.val_clips:  # the learning curve travels with the model (its model card's evidence)
        (out_dir / "training_log.csv").write_text(log.read_text())
        plot_curve(log, out_dir / "training_curve.png")
    return out_dir


def plot_curve(log_csv: Path, png: Path) -> Path:
    """Training and held-out loss against step from a `log.csv`; the clip-start phase shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r.split(",") for r in Path(log_csv).read_text().splitlines()[1:]]
    step = [int(r[0]) for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(step, [float(r[3]) for r in rows], label="training (dropout on)")
    ax.plot(step, [float(r[4]) for r in rows], "o-", ms=3, label="held-out clips")
    starts = [s for s, r in zip(step, rows) if r[1] == "starts"]
    if starts:
        ax.axvspan(min(starts) - 0.5 * (step[1] - step[0] if len(step) > 1 else 1), max(starts), color="0.9",
                   label="clip-start phase")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy per token (nats)")
    ax.set_title("tiny MusicGen LM", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


@torch.no_grad()
def evaluate_lm(model_dir: str | Path, n: int = 48, guidance: float = 3.0, seed: int = 0, duration_s: float = 4.0) -> dict:
    """Generate from held-out captions naming tempo, register and mode; estimate them from the audio.

    Returns per-attribute accuracy (chance: tempo 1/3, register 1/2, mode 1/2).
    """
    from musicrl.tiny import attributes
    from musicrl.model.policy import MusicGenPolicy
    from musicrl.model.sampling import SamplingConfig

    policy = MusicGenPolicy.from_pretrained(str(model_dir))
    rng = np.random.default_rng(seed)
    hits = {"tempo": 0, "register": 0, "mode": 0}
    for i in range(n):
        a = synth.sample_attributes(rng)
        prompt = f"a {a.tempo} {a.instrument} piece in {a.mode}, {a.register} register"
        r = policy.sample([prompt], 1, duration_s, sampling=SamplingConfig(guidance_scale=guidance), seed=seed + i)
        audio = policy.decode(r.codes)[0, 0].numpy()
        est = attributes.estimate_all(audio, policy.sample_rate)
        hits["tempo"] += est["tempo"] == a.tempo  # estimate_all gives the word (and "bpm")
        hits["register"] += est["register"] == a.register
        hits["mode"] += est["mode"] == a.mode
    return {k: v / n for k, v in hits.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="pretrain the tiny MusicGen LM")
    ap.add_argument("--codec", default="musicrl/assets/tiny/codec")
    ap.add_argument("--out", default="runs/tiny/musicgen")
    ap.add_argument("--steps", type=int, default=LMTrainConfig.steps)
    ap.add_argument("--num-clips", type=int, default=LMTrainConfig.num_clips)
    ap.add_argument("--hidden-size", type=int, default=LMTrainConfig.hidden_size, help="decoder width")
    ap.add_argument("--layers", type=int, default=LMTrainConfig.num_layers, help="decoder layers")
    ap.add_argument("--heads", type=int, default=LMTrainConfig.heads, help="attention heads (divide the width)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval", action="store_true", help="only evaluate --out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not a.eval:
        try:
            cfg = LMTrainConfig(steps=a.steps, num_clips=a.num_clips, hidden_size=a.hidden_size, num_layers=a.layers,
                                heads=a.heads)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        train_lm(a.codec, a.out, cfg)
    for g in (1.0, 3.0):
        print(f"guidance {g}:", evaluate_lm(a.out, guidance=g))
