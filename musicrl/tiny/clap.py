"""The tiny world's CLAP: a transformers `ClapModel` with a tiny config, trained contrastively here.

Same classes as LAION's checkpoints (HTSAT-style Swin audio tower over a log-mel, RoBERTa text
tower, two projection MLPs), so `musicrl.rewards.clap.ClapReward` loads `tiny` and `laion/larger_clap_music`
through one code path; only the config and the files beside it differ:

- tokenizer: RoBERTa's own kind (byte-level BPE, `RobertaTokenizer`, `<s> ... </s>`), its
  vocabulary learned here from train-split synth captions (`tiny_tokenizer`), so nothing is
  downloaded and `AutoTokenizer.from_pretrained(dir)` loads it from `tokenizer.json`. Byte-level:
  any text encodes (an unknown word falls back to known pieces or bytes, no `<unk>`). Why not the
  byte-level `ByT5Tokenizer` (tried first): captions are ~60 bytes but ~18 BPE tokens, so a step
  cost ~2.5x more, and it learned far slower per step (batch 32, lr 1e-3, 300 steps: loss 3.23 vs
  2.70, R@1 among 32 0.05 vs 0.11) - bytes must first be assembled into words, and with no `<s>` in
  front, RoBERTa's first-token pooler starts from an arbitrary letter. The text config's
  `vocab_size` is the tokenizer's length; `max_position_embeddings=130` (positions start at
  pad+1) takes prompts of up to 128 tokens.
- feature extractor: `ClapFeatureExtractor` at 16 kHz (the tiny world's rate), 64 mel bins
  (Slaney, 0-8 kHz), FFT 2048, hop 1024, 4 s inputs (63 frames), `truncation="rand_trunc"` (no
  fusion: the model has `enable_fusion=False`), `padding="repeatpad"`. Saved as a `ClapProcessor`
  (feature extractor + tokenizer, as LAION's), so `AutoProcessor.from_pretrained(dir)` works too.
- audio tower: spec_size 64 over 64 mel bins (freq_ratio 1: the spectrogram, stretched to 64
  frames, is the 64x64 image), patches 4x4, window 4, three stages of width 32/64/128 (the last
  stage's 4x4 grid equals the window, as transformers requires). Why 64 bins and not the 32 of the
  first model: 32 bins over 0-8 kHz are ~90 Hz wide below 1 kHz, too coarse for a minor third
  against a major one (zero-shot mode 0.79; 0.93 with 64 bins, at the same cost per step).

Training, in two stages:

1. the text prior (`musicrl.tiny.text`, `text_pretrain_steps`): text only, no audio. The RoBERTa
   tower learns to name the attributes a caption names, on captions in train-split templates that
   use the words of *both* splits. This is the tiny world's stand-in for the web text a real
   RoBERTa read before LAION paired it with audio: it is how "brisk" comes to mean "fast". The
   tokenizer is learned from the same text. Held-out sentence shapes (templates) stay unseen.
2. contrastive: symmetric InfoNCE over the batch (CLIP/CLAP) on (clip, caption) pairs from
   `musicrl.tiny.synth`, with the text tower frozen (only its projection learns, as in LiT with the sides
   swapped), so words that never meet audio keep the meaning text gave them. Captions are
   train-split only: held-out words and templates are never paired with a sound. Each clip gets a
   fresh train paraphrase every epoch. Captions name only 2-5 attributes, so two clips of a batch
   often both fit one caption ("a slow piano tune"); the targets are therefore spread uniformly over
   every clip of the batch that fits the caption (known from the clips' attributes), instead of the
   diagonal only, which would push true matches apart. With no such duplicates it is the plain
   symmetric CLIP loss (tested). Half of each batch's clips (`codec_prob`) come through the tiny
   codec's round trip with a faint noise floor: the policy's samples are that codec's output, and a
   model that only heard clean renders scores them by artifacts (measured below). Not ClapModel's
   `return_loss`: besides being diagonal-only, it transposes `logits_per_audio`, so both of its
   terms rank audio per text (transformers 5.x).
   Hard negatives (`hard_negatives`): each clip also has to rank its caption above the same caption
   with one attribute flipped (`musicrl.tiny.prompts.flip_attribute`). RL compares clips of one
   prompt, so the reward must hear every attribute the prompt names, not only the one that sets a
   clip apart in a random batch.

Features are computed by `musicrl.rewards.clap.ClapLogMel`, the very function the reward uses at inference.

Run: `nice -n 10 python -m musicrl.tiny.clap` (-> musicrl/assets/tiny/clap, checkpoints in runs/).
The shipped model: the defaults, 800 text steps + 2880 contrastive steps, half of each batch heard
through the tiny codec (`codec_prob`). `evaluate_clap` measures it on held-out clips (held-out seeds),
in groups of 32; docs/tiny.md gives its figures.

Known limits:
- mode is heard least well: among two clips of one prompt, the shipped model prefers the one in the
  asked mode 68% of the time (tempo 72%, drums 72%; docs/results/rl-r-u-ru.md). Use
  `musicrl.tiny.attributes` to measure mode.
- the ceiling is what a perfect model gets choosing at random among clips that fit the caption.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

from musicrl.errors import UserError

SAMPLE_RATE = 16_000
CLIP_S = 4  # the model's input length (seconds), = the synth's default clip
CHECKPOINT = "clap_train_state.pt"
LOG = "clap_train_log.jsonl"


def tiny_tokenizer(n_captions: int = 4000, seed: int = 0, words: str = "all") -> RobertaTokenizer:
    """Byte-level BPE learned from `n_captions` captions in train-split templates with `words`'
    vocabulary (deterministic). "all", the default, is the text prior's corpus (`musicrl.tiny.text`):
    like RoBERTa's, the tokenizer is learned from text, before and apart from any audio.

    Special tokens in RoBERTa's order (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>`=4), which
    are ClapTextConfig's default bos/pad/eos ids. 518 ids: the corpus runs out of merges first.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from musicrl.tiny import synth

    rng = np.random.default_rng([seed, 1234])
    captions = [synth.caption(synth.sample_attributes(rng), rng, "train", words) for _ in range(n_captions)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(captions, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return RobertaTokenizer(vocab=state["vocab"], merges=merges, add_prefix_space=True)


# Each front end's STFT: (FFT window, hop) for its mel bins. 2048 (7.8 Hz per FFT bin) feeds 64 bins,
# and its hop of 1024 gives the 64 frames of 4 s that fill the audio tower's 64x64 image; 32 bins take
# FFT 1024 and hop 512 (128 frames, folded in two).
FRONT_ENDS = {64: (2048, 1024), 32: (1024, 512)}


def tiny_feature_extractor(mel_bins: int = 64) -> ClapFeatureExtractor:
    """16 kHz, Slaney mel bins 0-8 kHz, 4 s, the STFT of FRONT_ENDS; 64 bins -> [1, 63, 64] per clip."""
    fft_size, hop_length = FRONT_ENDS[mel_bins]
    return ClapFeatureExtractor(
        feature_size=mel_bins, sampling_rate=SAMPLE_RATE, hop_length=hop_length, max_length_s=CLIP_S,
        fft_window_size=fft_size, frequency_min=0, frequency_max=SAMPLE_RATE // 2,
        truncation="rand_trunc", padding="repeatpad",
    )


def save_random_clap(path, seed: int = 0, n_captions: int = 4000):
    """A randomly initialised tiny CLAP with its tokenizer and feature extractor, saved like a trained
    one (for tests and plumbing runs; a small `n_captions` builds the tokenizer faster)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(n_captions=n_captions)
    ClapModel(tiny_clap_config(len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    tiny_feature_extractor().save_pretrained(path)
    return path


def tiny_clap_config(vocab_size: int, mel_bins: int = 64) -> ClapConfig:
    """~1.1 M parameters: a 3-layer 128-d RoBERTa, a 3-stage Swin audio tower, a 128-d joint space.

    The audio tower sees a 64x64 image: 64 mel bins x 64 frames as they are, or (the earlier front
    end) 32 bins x 128 frames folded in two (freq_ratio 2)."""
    text = dict(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=384, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    audio = dict(
        num_mel_bins=mel_bins, spec_size=64, window_size=4, patch_size=4, patch_stride=[4, 4],
        patch_embeds_hidden_size=32, depths=[1, 2, 2], num_attention_heads=[2, 4, 8],
        hidden_size=128,  # = patch_embeds_hidden_size * 2 ** (stages - 1), what the projection reads
        enable_fusion=False, num_hidden_layers=3, hidden_dropout_prob=0.0,
    )
    return ClapConfig(text_config=text, audio_config=audio, projection_dim=128)


@dataclass(frozen=True)
class ClapTrainConfig:
    """How the tiny CLAP is trained. The defaults are the shipped recipe."""

    pool_clips: int = 4096
    """Train clips (seeds 0..pool_clips-1, 4 s each), rendered once; every epoch re-captions them."""
    epochs: int = 45
    """Passes over the pool; steps = epochs * (pool_clips // batch_size)."""
    batch_size: int = 64
    """Clips per step, each with one caption: the contrastive negatives."""
    lr: float = 1e-3
    """AdamW peak learning rate (linear warm-up, cosine decay to lr * min_lr_ratio)."""
    warmup_steps: int = 100
    """Steps of linear LR warm-up."""
    min_lr_ratio: float = 0.05
    """The cosine decay ends at lr * min_lr_ratio."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay, on matrices only (not biases, norms, temperatures)."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    gain_db: float = 9.0
    """Random level change in +-gain_db per clip (added to the log-mel): robustness to loudness."""
    codec: str = "tiny"
    """The codec whose round trip (decode(encode(clip))) the model also hears: name or directory
    ("" = clean renders only). The policy's samples are that codec's output, so the reward model must
    hear its domain: a model trained on clean renders alone dropped from R@1 0.62 to 0.48 on
    round-tripped clips, and a -60 dBFS noise floor, inaudible next to the music, changed its ranking
    of a prompt's samples (deviations from the prompt's mean correlated 0.73 with and without it)."""
    codec_prob: float = 0.5
    """Fraction of each batch's clips taken in their codec version (per clip, a pure function of
    (seed, step)); the rest are the clean renders."""
    noise_floor_db: float = -50.0
    """Each codec version also gets white noise at a level drawn once per clip, uniform in
    [noise_floor_db - 30, noise_floor_db] dBFS (RMS): robustness to the floor the codec leaves."""
    max_logit_scale: float = 100.0
    """Clamp of the learned temperatures exp(logit_scale_{a,t}), as in CLIP."""
    eval_every: int = 200
    """Steps between quick retrieval checks (on held-out-seed clips distinct from evaluate_clap's)."""
    eval_clips: int = 256
    """Clips of those checks (R@1 among 32, so at least 32)."""
    checkpoint_every: int = 200
    """Steps between resumable checkpoints."""
    text_pretrain_steps: int = 800
    """Steps of text-only pretraining of the text tower before any audio (`musicrl.tiny.text`):
    it learns to name the attributes a caption names, the tiny world's stand-in for RoBERTa's
    pretraining. 0 skips it."""
    text_words: str = "all"
    """Vocabulary of that pretraining and of the tokenizer: "all" (both splits' words, in
    train-split templates) or "train" (held-out words stay unknown to the model)."""
    freeze_text: bool = True
    """Keep the pretrained text tower frozen in contrastive training (only its projection learns),
    so words never paired with audio keep the meaning text gave them."""
    mel_bins: int = 64
    """Mel bins of the front end, 64 or 32 (the audio tower's image is 64x64 either way; the STFT
    follows, FRONT_ENDS). 64 bins are ~47 Hz wide below 1 kHz; 32 (~90 Hz) are too coarse to tell a
    minor third from a major one: zero-shot mode 0.79 with 32 bins, 0.93 with 64
    (docs/results/rl-r-u-ru.md)."""
    hard_negatives: bool = True
    """Also show each clip its caption with one attribute flipped (`musicrl.tiny.prompts.flip_attribute`)
    as an extra text to tell apart: the audio must then carry every attribute its caption names,
    which is what an RL reward needs to rank two clips of one prompt."""
    seed: int = 0
    """Model init, shuffling, captions and augmentation all derive from it."""
    num_threads: int = 1
    """torch threads (the machines are shared)."""

    def __post_init__(self):
        for name in ("pool_clips", "epochs", "batch_size", "lr", "eval_every", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise UserError(f"ClapTrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.eval_clips < 32:
            raise UserError(f"ClapTrainConfig.eval_clips must be >= 32, got {self.eval_clips}")
        if self.text_words not in ("train", "all"):
            raise UserError(f"ClapTrainConfig.text_words must be 'train' or 'all', got {self.text_words!r}")
        if self.text_pretrain_steps < 0:
            raise UserError(f"ClapTrainConfig.text_pretrain_steps must be >= 0, got {self.text_pretrain_steps}")
        if not 0.0 <= self.codec_prob <= 1.0 or (self.codec_prob > 0 and not self.codec):
            raise UserError(f"ClapTrainConfig.codec_prob must be in [0, 1] (and > 0 needs a codec), got {self.codec_prob}")
        if self.mel_bins not in FRONT_ENDS:
            raise UserError(f"ClapTrainConfig front end: mel_bins must be one of {sorted(FRONT_ENDS)}, got {self.mel_bins}")
        if self.batch_size < 2 or self.pool_clips < self.batch_size:
            raise UserError(f"need 2 <= batch_size <= pool_clips, got {self.batch_size}, {self.pool_clips}")

    @property
    def steps_per_epoch(self) -> int:
        return self.pool_clips // self.batch_size

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


# ---------------------------------------------------------------- data


@torch.no_grad()
def codec_version(audio: torch.Tensor, codec, noise_db: torch.Tensor, seed: int) -> torch.Tensor:
    """audio [b, S] -> the codec's round trip of it plus white noise at `noise_db` [b] dBFS RMS
    (deterministic given `seed`): how the policy's samples reach a reward."""
    out = codec.decode(codec.encode(audio[:, None]))[:, 0, : audio.shape[-1]]  # [b, S]
    noise = torch.randn(audio.shape, generator=torch.Generator().manual_seed(seed))
    return out + noise * (10 ** (noise_db / 20))[:, None]


@torch.no_grad()
def render_mels(seeds: list[int], split: str, log_mel, progress: bool = False, desc: str = "rendering",
                codec=None, noise_floor_db: float = -50.0):
    """Synth clips for `seeds` -> (log-mels [N, 1, T, F], attributes, captions, codec log-mels
    [N, 1, T, F] or None). With a `codec`, each clip's `codec_version` too, its noise level drawn
    from the clip's seed."""
    from musicrl.tiny import synth

    mels, coded, attrs, caps = [], [], [], []
    for i in tqdm(range(0, len(seeds), 64), disable=not progress, desc=desc, dynamic_ncols=True):
        exs = [synth.example(s, CLIP_S, split) for s in seeds[i : i + 64]]
        audio = torch.as_tensor(np.stack([e.audio for e in exs]))  # [b, S]
        mels.append(log_mel(audio))
        if codec is not None:
            level = [np.random.default_rng([s, 3]).uniform(noise_floor_db - 30, noise_floor_db) for s in seeds[i : i + 64]]
            coded.append(log_mel(codec_version(audio, codec, torch.tensor(level, dtype=torch.float32), seeds[i])))
        attrs += [e.attrs for e in exs]
        caps += [e.caption for e in exs]
    return torch.cat(mels), attrs, caps, (torch.cat(coded) if coded else None)


def fit_matrix(captions: list[str], attrs: list) -> torch.Tensor:
    """[T, A] bool: clip a has every attribute caption t names (per `synth.parse_prompt`)."""
    from musicrl.tiny import synth

    named = [synth.parse_prompt(c) for c in captions]
    values = [a.to_dict() for a in attrs]
    return torch.tensor([[all(v[k] == x for k, x in n.items()) for v in values] for n in named])


def match_matrix(captions: list[str], attrs: list) -> torch.Tensor:
    """fit_matrix with the diagonal (each clip's own caption) always True."""
    return fit_matrix(captions, attrs) | torch.eye(len(captions), dtype=torch.bool)


def _batch(step: int, cfg: ClapTrainConfig, attrs: list):
    """Clip indices, fresh train captions, gains and which clips come in their codec version, for
    `step`: a pure function of (seed, step)."""
    from musicrl.tiny import synth

    epoch, pos = divmod(step, cfg.steps_per_epoch)
    perm = np.random.default_rng([cfg.seed, epoch, 0]).permutation(cfg.pool_clips)
    idx = perm[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
    captions = [synth.caption(attrs[i], np.random.default_rng([cfg.seed, epoch, 1, int(i)]), "train")
                for i in idx]
    gain = np.random.default_rng([cfg.seed, step, 2]).uniform(-cfg.gain_db, cfg.gain_db, len(idx))
    coded = np.random.default_rng([cfg.seed, step, 3]).random(len(idx)) < cfg.codec_prob
    return torch.as_tensor(idx), captions, torch.as_tensor(gain, dtype=torch.float32), torch.as_tensor(coded)


# ---------------------------------------------------------------- training


def contrastive_loss(logits_per_text: torch.Tensor, logits_per_audio: torch.Tensor,
                     match: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with every fitting pair a positive (targets uniform over them).

    logits_per_text [T, A], logits_per_audio [A, T], match [T, A] bool with a true diagonal.
    With `match` the identity: CLIP's loss, (CE(text -> audio) + CE(audio -> text)) / 2.
    Texts beyond the A captions (T > A: hard negatives) join every audio's softmax; in the text ->
    audio direction only the texts that fit some clip count.
    """
    t = match.float()
    has = t.sum(1) > 0  # [T]
    text_loss = -(F.log_softmax(logits_per_text[has], -1) * (t[has] / t[has].sum(1, keepdim=True))).sum(-1).mean()
    a = t.t()
    audio_loss = -(F.log_softmax(logits_per_audio, -1) * (a / a.sum(1, keepdim=True))).sum(-1).mean()
    return (text_loss + audio_loss) / 2


def _lr(step: int, cfg: ClapTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _train_step(model, opt, tokenizer, mels, attrs, step: int, cfg: ClapTrainConfig, coded_mels=None) -> dict:
    torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout: a resumed run repeats the same steps
    idx, captions, gain, coded = _batch(step, cfg, attrs)
    feats = mels[idx]  # [B, 1, T, F]
    if coded_mels is not None:
        feats = torch.where(coded[:, None, None, None], coded_mels[idx], feats)
    feats = (feats + gain[:, None, None, None]).clamp_min(-100.0)  # level change in dB
    batch_attrs = [attrs[i] for i in idx]
    match = match_matrix(captions, batch_attrs)  # [B, B]
    if cfg.hard_negatives:  # each caption with one attribute flipped: fits its clip no more
        from musicrl.tiny.prompts import flip_attribute

        flips = [f for f in (flip_attribute(c) for c in captions) if f is not None]
        captions = captions + flips
        match = torch.cat([match, fit_matrix(flips, batch_attrs)])  # [B + F, B]
    tok = tokenizer(captions, padding=True, return_tensors="pt")
    out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], input_features=feats)
    loss = contrastive_loss(out.logits_per_text, out.logits_per_audio, match)
    if not torch.isfinite(loss):
        raise RuntimeError(f"CLAP training diverged at step {step} (loss {loss.item()})")
    for group in opt.param_groups:
        group["lr"] = _lr(step, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    with torch.no_grad():  # CLIP's clamp of the temperature
        for p in (model.logit_scale_a, model.logit_scale_t):
            p.clamp_(max=math.log(cfg.max_logit_scale))
    positives = match[: len(idx)].float().sum(1).mean().item()  # fitting clips per caption, own included
    return {"loss": loss.item(), "scale": model.logit_scale_t.exp().item(), "pos": positives}


def _pooled_text(text_model, tok) -> torch.Tensor:
    """[B, H] what CLAP's text projection reads: RoBERTa's pooled first token."""
    return text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output


def _save_checkpoint(path: Path, model, opt, step: int, cfg: ClapTrainConfig):
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "cfg": asdict(cfg), "model": model.state_dict(), "opt": opt.state_dict()}, tmp)
    tmp.replace(path)  # atomic: an interrupt never leaves a half-written checkpoint


def train_clap(out_dir: str | Path, cfg: ClapTrainConfig = ClapTrainConfig(), progress: bool = True,
               work_dir: str | Path | None = None) -> Path:
    """Train the tiny CLAP and save model, tokenizer and feature extractor into `out_dir`.

    Resumable: a checkpoint goes to `work_dir` (default `out_dir`, where it is deleted once the model
    is saved) every `cfg.checkpoint_every` steps; rerunning with the same config continues from it.
    Every batch, caption, gain and dropout mask is a pure function of (seed, step), so a resumed run
    takes the same steps as an uninterrupted one. Runs on CPU.
    """
    from musicrl.rewards.clap import ClapLogMel

    out_dir = Path(out_dir)
    ckpt_dir = Path(work_dir) if work_dir is not None else out_dir
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / CHECKPOINT
    torch.set_num_threads(cfg.num_threads)
    tokenizer, fe = tiny_tokenizer(words=cfg.text_words), tiny_feature_extractor(cfg.mel_bins)
    torch.manual_seed(cfg.seed)
    model = ClapModel(tiny_clap_config(len(tokenizer), cfg.mel_bins)).train()
    if cfg.text_pretrain_steps and not ckpt.exists():  # (a checkpoint holds the pretrained tower)
        from musicrl.tiny.text import pretrain_text_encoder

        acc = pretrain_text_encoder(model.text_model, tokenizer, cfg.text_pretrain_steps, seed=cfg.seed,
                                    progress=progress, features=_pooled_text, words=cfg.text_words)
        with open(ckpt_dir / LOG, "a") as log:
            log.write(json.dumps({"text_pretrain_slot_accuracy": acc}) + "\n")
        model.train()
    if cfg.freeze_text:
        model.text_model.requires_grad_(False)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.dim() >= 2]
    no_decay = [p for n, p in trainable if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["cfg"] != asdict(cfg):
            raise UserError(f"{ckpt} was written with a different ClapTrainConfig; delete it to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    log_mel = ClapLogMel(fe)
    codec = None
    if cfg.codec_prob > 0:
        from musicrl.model.codec import Codec

        codec = Codec.from_pretrained(cfg.codec)
    mels, attrs, _, coded_mels = render_mels(list(range(cfg.pool_clips)), "train", log_mel, progress,
                                             "rendering pool", codec, cfg.noise_floor_db)
    val_seeds = [synth_heldout(10_000 + i) for i in range(cfg.eval_clips)]  # not evaluate_clap's
    val = render_mels(val_seeds, "heldout", log_mel)[:3]
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress,
               desc="tiny clap", dynamic_ncols=True)
    stats = {}
    for step in bar:
        stats.update(_train_step(model, opt, tokenizer, mels, attrs, step, cfg, coded_mels))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            stats.update(_quick_eval(model, tokenizer, *val, seed=cfg.seed))
        bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()}, refresh=False)
        if step % 50 == 0 or (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            with open(ckpt_dir / LOG, "a") as log:
                log.write(json.dumps({"step": step, **stats}) + "\n")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_checkpoint(ckpt, model, opt, step + 1, cfg)
    bar.close()
    model.eval()
    model.save_pretrained(out_dir)
    # processor_config.json for AutoProcessor; preprocessor_config.json for AutoFeatureExtractor
    # (transformers 5 keeps the extractor inside the processor file, 4.x looks for its own file)
    ClapProcessor(feature_extractor=fe, tokenizer=tokenizer).save_pretrained(out_dir)
    fe.save_pretrained(out_dir)
    if work_dir is None:  # out_dir keeps only the model
        ckpt.unlink(missing_ok=True)
        (ckpt_dir / LOG).unlink(missing_ok=True)
    return out_dir


def synth_heldout(i: int) -> int:
    from musicrl.tiny.synth import HELDOUT_SEED_OFFSET

    return HELDOUT_SEED_OFFSET + i


@torch.no_grad()
def _quick_eval(model, tokenizer, mels, attrs, heldout_caps, seed: int) -> dict:
    """R@1 in groups of 32 on pre-rendered clips, with train-split and held-out captions."""
    from musicrl.tiny import synth

    model.eval()
    audio = F.normalize(model.get_audio_features(input_features=mels).pooler_output, dim=-1)
    rng = np.random.default_rng([seed, 99])
    train_caps = [synth.caption(a, rng, "train") for a in attrs]
    result = {}
    for name, caps in (("r1_train_words", train_caps), ("r1_heldout_words", heldout_caps)):
        tok = tokenizer(caps, padding=True, return_tensors="pt")
        text = F.normalize(model.get_text_features(**tok).pooler_output, dim=-1)
        result[name] = recall_at_1(text, audio)
    model.train()
    return result


def recall_at_1(text: torch.Tensor, audio: torch.Tensor, group: int = 32) -> float:
    """text, audio [N, D] (row i = pair i), in groups of `group`: how often text i ranks audio i first."""
    hits = []
    for g in range(0, len(text) - group + 1, group):
        sim = text[g : g + group] @ audio[g : g + group].t()  # [group, group]
        hits.append(sim.argmax(1) == torch.arange(group))
    return torch.cat(hits).float().mean().item()


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_clap(model_dir: str | Path = "tiny", n: int = 256, group: int = 32, seed: int = 0,
                  codec: str | None = "tiny") -> dict:
    """Text-audio agreement of a CLAP on `n` held-out synth clips (held-out seeds), via `ClapReward`.

    - r1_heldout_words: text->audio R@1 among `group` candidates, captions from the held-out
      templates and synonyms (split="heldout"); r1_train_words: the same with fresh train-split
      captions. fit@1_*: how often the top clip *fits* the caption (it has every attribute the
      caption names), the fairer figure since a caption naming 2-5 attributes often fits several
      candidates; r1_ceiling: the R@1 of a perfect model that picks at random among fitting clips.
    - own_vs_mismatched_*: fraction of (clip, own caption) scoring above (clip, the next clip's
      caption); ambiguous_pairs: fraction where the mismatched caption fits the clip as well.
    - codec_round_trip (with a `codec`): R@1 and own > mismatched (train words) on the same clips
      passed through the codec, the domain of the policy's samples.
    """
    from musicrl.tiny import synth
    from musicrl.rewards.clap import ClapReward

    if n < group:
        raise UserError(f"n ({n}) must be at least the group size ({group})")
    reward = ClapReward.from_pretrained(model_dir)
    clips = list(synth.examples(n, 0, CLIP_S, "heldout"))
    audio = torch.as_tensor(np.stack([c.audio for c in clips]))[:, None]  # [n, 1, S]
    emb_a = torch.cat([reward.embed_audio(audio[i : i + 32], SAMPLE_RATE) for i in range(0, n, 32)])
    rng = np.random.default_rng([seed, 7])
    captions = {"heldout": [c.caption for c in clips],
                "train": [synth.caption(c.attrs, rng, "train") for c in clips]}
    attrs = [c.attrs for c in clips]
    result: dict = {"n": n, "group": group}
    for split, caps in captions.items():
        emb_t = reward.embed_text(caps)
        words = f"{split}_words"
        result[f"r1_{words}"] = recall_at_1(emb_t, emb_a, group)
        fit_hits, ceiling = [], []
        for g in range(0, n - group + 1, group):
            top = (emb_t[g : g + group] @ emb_a[g : g + group].t()).argmax(1)  # [group]
            m = match_matrix(caps[g : g + group], attrs[g : g + group])  # [group, group]
            fit_hits.append(m[torch.arange(group), top])
            ceiling.append(1 / m.sum(1))
        result[f"fit@1_{words}"] = torch.cat(fit_hits).float().mean().item()
        result[f"r1_ceiling_{words}"] = torch.cat(ceiling).mean().item()
        other = torch.roll(emb_t, -1, 0)  # clip i vs the caption of clip i+1
        own = (emb_a * emb_t).sum(-1) > (emb_a * other).sum(-1)
        result[f"own_vs_mismatched_{words}"] = own.float().mean().item()
        ambiguous = fit_matrix(caps[1:] + caps[:1], attrs).diagonal()  # caption i+1 fits clip i
        result[f"ambiguous_pairs_{words}"] = ambiguous.float().mean().item()
    result["zero_shot"] = zero_shot_accuracy(reward, emb_a, attrs)
    if codec:
        from musicrl.model.codec import Codec

        c = Codec.from_pretrained(codec)
        coded = torch.cat([c.decode(c.encode(audio[i : i + 32]))[..., : audio.shape[-1]] for i in range(0, n, 32)])
        emb_c = torch.cat([reward.embed_audio(coded[i : i + 32], SAMPLE_RATE) for i in range(0, n, 32)])
        emb_t = reward.embed_text(captions["train"])
        own = (emb_c * emb_t).sum(-1) > (emb_c * torch.roll(emb_t, -1, 0)).sum(-1)
        result["codec_round_trip"] = {"r1_train_words": recall_at_1(emb_t, emb_c, group),
                                      "own_vs_mismatched_train_words": own.float().mean().item()}
    return result


def zero_shot_accuracy(reward, emb_a: torch.Tensor, attrs: list) -> dict[str, float]:
    """Per attribute: how often the clip's value, said in one word, outscores the attribute's other values.

    The prompt is the first train-split synonym of each value (e.g. "sad" vs "happy" for mode,
    "no drums" / "with kick and hi-hat" / "full drums"). Chance is 1 / (number of values).
    """
    from musicrl.tiny import synth

    result = {}
    for attr in ("tempo", "mode", "register", "instrument", "drums"):
        values = list(synth.SYNONYMS[attr])
        prompts = [synth.SYNONYMS[attr][v]["train"][0] for v in values]
        pred = (emb_a @ reward.embed_text(prompts).t()).argmax(1)  # [n]
        truth = torch.tensor([values.index(a.to_dict()[attr]) for a in attrs])
        result[attr] = (pred == truth).float().mean().item()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicrl.tiny.clap", description="train the tiny CLAP")
    parser.add_argument("--out", default="musicrl/assets/tiny/clap", help="where the model is saved")
    parser.add_argument("--work-dir", default="runs/tiny/clap", help="resumable checkpoints go here")
    for f in fields(ClapTrainConfig):
        kind = {"action": argparse.BooleanOptionalAction} if isinstance(f.default, bool) else {"type": type(f.default)}
        parser.add_argument(f"--{f.name.replace('_', '-')}", default=f.default, **kind)
    parser.add_argument("--eval", type=int, default=256, help="held-out clips to evaluate on (0: skip)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from musicrl.logs import quiet_transformers

    quiet_transformers()
    cfg = ClapTrainConfig(**{f.name: getattr(args, f.name) for f in fields(ClapTrainConfig)})
    t0 = time.time()
    out = train_clap(args.out, cfg, progress=not args.no_progress, work_dir=args.work_dir)
    report = {"train_seconds": round(time.time() - t0, 1), "config": asdict(cfg)}
    if args.eval:
        report["eval"] = evaluate_clap(out, n=args.eval, codec=cfg.codec or None)
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.work_dir) / "report.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
