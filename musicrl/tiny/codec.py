"""The tiny world's neural codec: a transformers `EncodecModel` with a tiny config, trained here.

Why EnCodec from transformers rather than a codec of our own: MusicGen's `audio_encoder` *is* an
`EncodecModel`. With a tiny config, the tiny MusicGen loads, encodes, decodes and saves through
exactly the code paths of `facebook/musicgen-*`; only the config differs.

Why reconstruction losses only (waveform L1, multi-resolution STFT, multi-scale log-mel): EnCodec's
adversarial loss (an MS-STFT discriminator) buys perceptual sharpness for several times the compute
per step. On shared CPU cores the budget is better spent on steps: the tiny world needs codes that
keep what its captions talk about (tempo, register, mode), not high fidelity.

Why our own RVQ training: transformers' EnCodec is inference-only (codebooks are plain buffers, no
EMA update, no initialisation). We implement the SoundStream/EnCodec recipe around it: per residual
layer the nearest code, a straight-through estimator to the encoder, a commitment loss, codebooks as
EMA k-means (EMA of cluster sizes and code sums, Laplace smoothing) started by k-means on encoder
outputs, and dead codes re-seeded from the batch. Everything is written into the model's own buffers
(`quantizer.layers[i].codebook.embed`, `embed_avg`, `cluster_size`, `inited`), so `save_pretrained`
writes a standard EnCodec checkpoint.

Config: 16 kHz mono, hop 320 (ratios 8*5*4*2), i.e. 50 frames/s like `encodec_32khz`; 4 codebooks
of 256 codes: `target_bandwidths=[1.6]` kbps = 4 codebooks x 8 bits x 50 Hz, so
`config.num_quantizers == 4` and MusicGen's default `bandwidth=None` (the first target bandwidth)
uses all four. 256 rather than 1024 codes: a short CPU run sees ~10^6 frames, too few to keep 1024
codes per layer alive and meaningful (most die or become near-duplicates), and a 4x smaller
vocabulary makes the tiny LM's embeddings and softmax cheaper to train.

Run: `nice -n 10 python -m musicrl.tiny.codec --out musicrl/assets/tiny/codec`.
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
from torch import nn
from tqdm.auto import tqdm
from transformers import EncodecConfig, EncodecFeatureExtractor, EncodecModel
from transformers.models.encodec.modeling_encodec import EncodecConv1d, EncodecConvTranspose1d

from musicrl.errors import UserError

SAMPLE_RATE = 16_000
CHECKPOINT = "codec_train_state.pt"


def tiny_codec_config() -> EncodecConfig:
    """16 kHz mono EnCodec, 50 Hz frames, 4 codebooks x 256 codes, ~0.6 M parameters."""
    return EncodecConfig(
        sampling_rate=SAMPLE_RATE,
        audio_channels=1,
        target_bandwidths=[1.6],  # 4 codebooks * log2(256) bits * 50 Hz = 1.6 kbps
        codebook_size=256,
        upsampling_ratios=[8, 5, 4, 2],  # hop 320 -> 50 Hz
        num_filters=8,
        hidden_size=64,
        num_lstm_layers=1,
        use_causal_conv=False,  # like encodec_32khz (MusicGen's codec); better reconstruction per FLOP
        normalize=False,
        chunk_length_s=None,
        overlap=None,
    )


@dataclass(frozen=True)
class CodecTrainConfig:
    """How the tiny codec is trained. The defaults are the shipped recipe."""

    steps: int = 3000  # optimizer steps
    batch_size: int = 8  # clips per step
    clip_s: float = 1.0  # seconds per training clip (a random crop of a rendered synth clip)
    lr: float = 2e-3  # Adam peak learning rate
    warmup_steps: int = 100  # linear LR warm-up
    min_lr_ratio: float = 0.05  # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm
    w_l1: float = 1.0  # weight of the waveform L1 loss
    w_stft: float = 1.0  # weight of the multi-resolution STFT loss (spectral convergence + log mag)
    w_mel: float = 1.0  # weight of the multi-scale log-mel L1 loss
    w_commit: float = 0.25  # weight of the RVQ commitment loss
    quantize_after: int = 200  # steps trained as a plain autoencoder before k-means init of the RVQ
    kmeans_clips: int = 64  # clips whose encoder frames initialise the codebooks
    kmeans_iters: int = 20  # Lloyd iterations of that k-means
    ema_decay: float = 0.99  # EMA decay of codebook statistics
    dead_code_fraction: float = 0.4  # a code whose EMA usage < this * uniform share is re-seeded
    gain_db: float = 6.0  # random gain in +-gain_db on each clip (robustness to level)
    render_s: float = 2.0  # seconds rendered per synth clip; the training clip is a random crop of it
    checkpoint_every: int = 250  # steps between resumable checkpoints
    seed: int = 0  # model init, data and code re-seeding all derive from it
    num_threads: int = 1  # torch threads (the machines are shared)

    def __post_init__(self):
        positive = ("steps", "batch_size", "clip_s", "lr", "render_s", "checkpoint_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"CodecTrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.clip_s > self.render_s:
            raise UserError(f"clip_s ({self.clip_s}) must not exceed render_s ({self.render_s})")
        if not 0.0 < self.ema_decay < 1.0:
            raise UserError(f"ema_decay must be in (0, 1), got {self.ema_decay}")


# ---------------------------------------------------------------- data


def _batch(step: int, n: int, cfg: CodecTrainConfig, salt: int = 0) -> torch.Tensor:
    """`n` fresh synth train clips, randomly cropped and gained: a pure function of (seed, step) -> [n, 1, S]."""
    from musicrl import synth

    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 7 + salt)
    seeds = torch.randint(synth.HELDOUT_SEED_OFFSET, (n,), generator=g).tolist()
    length = int(round(cfg.clip_s * SAMPLE_RATE))
    render_len = int(round(cfg.render_s * SAMPLE_RATE))
    offsets = torch.randint(render_len - length + 1, (n,), generator=g).tolist()
    gain_db = (torch.rand(n, generator=g) * 2 - 1) * cfg.gain_db
    clips = [synth.example(s, cfg.render_s, "train").audio[o : o + length] for s, o in zip(seeds, offsets)]
    clips = torch.as_tensor(np.stack(clips), dtype=torch.float32)  # [n, S]
    return (clips * 10 ** (gain_db[:, None] / 20))[:, None]


# ---------------------------------------------------------------- losses


def _mel_filterbank(n_fft: int, n_mels: int, sr: int) -> torch.Tensor:
    """HTK-style triangular mel filters [n_mels, n_fft // 2 + 1]."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = np.linspace(0, sr / 2, n_fft // 2 + 1)
    lo, mid, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (bins[None] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - bins[None]) / np.maximum(hi - mid, 1e-9)
    return torch.tensor(np.clip(np.minimum(up, down), 0, None), dtype=torch.float32)


class ReconLoss(nn.Module):
    """Waveform L1, multi-resolution STFT and multi-scale log-mel distances between y and x [B, 1, S]."""

    def __init__(self, sr: int = SAMPLE_RATE, ffts=(2048, 1024, 512, 256, 128), mel_ffts=(2048, 1024, 512),
                 floor: float = 1e-4):
        super().__init__()
        self.ffts, self.mel_ffts, self.floor = tuple(ffts), tuple(mel_ffts), floor
        for n in set(self.ffts) | set(self.mel_ffts):
            self.register_buffer(f"win{n}", torch.hann_window(n), persistent=False)
        for n in self.mel_ffts:
            self.register_buffer(f"mel{n}", _mel_filterbank(n, 64, sr), persistent=False)

    def _mag(self, x: torch.Tensor, n: int) -> torch.Tensor:
        spec = torch.stft(x, n, hop_length=n // 4, window=getattr(self, f"win{n}"), return_complex=True)
        return spec.abs()  # [B, F, frames]

    def stft(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loss = y.new_zeros(())
        for n in self.ffts:
            my, mx = self._mag(y[:, 0], n), self._mag(x[:, 0], n)
            sc = torch.linalg.norm(mx - my) / torch.linalg.norm(mx).clamp_min(1e-7)
            fl = self.floor * n  # ~60 dB below a full-scale partial: the synth's silent bins don't dominate
            lm = ((my + fl).log() - (mx + fl).log()).abs().mean()
            loss = loss + sc + lm
        return loss / len(self.ffts)

    def mel(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loss = y.new_zeros(())
        for n in self.mel_ffts:
            fb = getattr(self, f"mel{n}")
            my = (fb @ self._mag(y[:, 0], n) + self.floor * n).log()
            mx = (fb @ self._mag(x[:, 0], n) + self.floor * n).log()
            loss = loss + (my - mx).abs().mean()
        return loss / len(self.mel_ffts)


# ---------------------------------------------------------------- data-dependent init


@torch.no_grad()
def data_dependent_init(model: EncodecModel, x: torch.Tensor) -> None:
    """Weight-norm data-dependent init (Salimans & Kingma 2016) of the convolutions, on audio x [B, 1, S].

    With the default init each strided conv halves the signal's variation over time, so the
    encoder's frames barely depend on the input (std ~2e-3 around a constant) and any optimizer
    step moves them further than they spread: the codebooks cannot follow and collapse to one code.
    Rescaling every conv, in forward order, to zero-mean unit-variance outputs fixes the scale.
    The decoder's last conv (the waveform) keeps its init.
    """
    convs = [m.conv for m in model.modules() if isinstance(m, (EncodecConv1d, EncodecConvTranspose1d))]
    convs.remove(model.decoder.layers[-1].conv)

    def hook(conv, _inputs, out):  # out [B, C_out, T]
        mean, std = out.mean(dim=(0, 2)), out.std(dim=(0, 2)).clamp_min(1e-5)
        g = conv.parametrizations.weight.original0
        if isinstance(conv, nn.ConvTranspose1d):  # its weight-norm gain is per input channel
            std = std.mean().expand_as(std)
            g.div_(std[0])
        else:
            g.div_(std.view(-1, 1, 1))
        conv.bias.sub_(mean).div_(std)
        return (out - mean[None, :, None]) / std[None, :, None]

    handles = [c.register_forward_hook(hook) for c in convs]
    try:
        model.decoder(model.encoder(x))
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def normalize_latent(model: EncodecModel, z: torch.Tensor) -> None:
    """Make the encoder's frames zero-mean unit-variance per channel, the model's function unchanged.

    z [B, D, T] are frames of the current encoder. The encoder's last conv absorbs (z - mean) / std
    and the decoder's first conv the inverse (scaled input weights, shifted bias; reflect padding of
    a constant stays constant, so this is exact). Done before k-means: codebooks then live on a
    fixed scale that optimizer steps cannot outrun.
    """
    mean, std = z.mean(dim=(0, 2)), z.std(dim=(0, 2)).clamp_min(1e-5)  # [D]
    enc, dec = model.encoder.layers[-1].conv, model.decoder.layers[0].conv
    enc.weight = enc.weight / std[:, None, None]  # assignment goes through weight norm's right_inverse
    enc.bias.sub_(mean).div_(std)
    w = dec.weight  # [C_out, D, k]
    dec.bias.add_((w * mean[None, :, None]).sum(dim=(1, 2)))
    dec.weight = w * std[None, :, None]


# ---------------------------------------------------------------- residual VQ (training side)


def _nearest(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """x [N, D], embed [C, D] -> index of the nearest code [N] (same rule as EncodecEuclideanCodebook)."""
    dist = x.pow(2).sum(1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(1)[None]
    return dist.argmin(dim=1)


@torch.no_grad()
def _kmeans(x: torch.Tensor, k: int, iters: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on x [N, D] -> (centroids [k, D], counts [k]); empty clusters keep their seed."""
    centroids = x[torch.randperm(x.shape[0], generator=g)[:k].to(x.device)].clone()
    if centroids.shape[0] < k:  # fewer points than codes: repeat with jitter
        extra = x[torch.randint(x.shape[0], (k - centroids.shape[0],), generator=g).to(x.device)]
        centroids = torch.cat([centroids, extra + 1e-3 * torch.randn(extra.shape, generator=g).to(x.device)])
    for _ in range(iters):
        idx = _nearest(x, centroids)
        counts = torch.bincount(idx, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, idx, x)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
    return centroids, torch.bincount(_nearest(x, centroids), minlength=k).float()


@torch.no_grad()
def kmeans_init(model: EncodecModel, z: torch.Tensor, iters: int, frames_per_step: int, g: torch.Generator):
    """Initialise every RVQ layer by k-means on the residuals of encoder frames z [B, D, T]."""
    residual = z.transpose(1, 2).reshape(-1, z.shape[1])  # [N, D]
    for layer in model.quantizer.layers:
        cb = layer.codebook
        embed, counts = _kmeans(residual, cb.embed.shape[0], iters, g)
        counts = counts * (frames_per_step / residual.shape[0])  # EMA stats live on a per-step scale
        cb.embed.copy_(embed)
        cb.cluster_size.copy_(counts)
        cb.embed_avg.copy_(embed * counts[:, None])
        cb.inited.fill_(1.0)
        residual = residual - embed[_nearest(residual, embed)]


@torch.no_grad()
def _ema_update(cb: nn.Module, x: torch.Tensor, idx: torch.Tensor, cfg: CodecTrainConfig, g: torch.Generator):
    """EMA k-means step on one codebook's buffers, then re-seed dead codes from x [N, D]."""
    k, d = cb.embed.shape[0], cfg.ema_decay
    counts = torch.bincount(idx, minlength=k).float()
    sums = torch.zeros_like(cb.embed).index_add_(0, idx, x)
    cb.cluster_size.mul_(d).add_(counts, alpha=1 - d)
    cb.embed_avg.mul_(d).add_(sums, alpha=1 - d)
    n = cb.cluster_size.sum()
    smoothed = (cb.cluster_size + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing: no division by 0
    cb.embed.copy_(cb.embed_avg / smoothed[:, None])
    threshold = cfg.dead_code_fraction * x.shape[0] / k
    dead = cb.cluster_size < threshold
    if dead.any():
        fresh = x[torch.randint(x.shape[0], (int(dead.sum()),), generator=g).to(x.device)]
        cb.embed[dead] = fresh
        cb.cluster_size[dead] = 2 * threshold  # a grace period of ~log(2)/(1-d) steps
        cb.embed_avg[dead] = fresh * 2 * threshold


def quantize(model: EncodecModel, z: torch.Tensor, cfg: CodecTrainConfig | None, g: torch.Generator | None):
    """RVQ of encoder frames z [B, D, T] with a straight-through gradient.

    Returns (zq [B, D, T], commitment loss, codes [K, B, T]). With `cfg` given (training), the
    codebooks take one EMA k-means step on this batch.
    """
    B, D, T = z.shape
    x = z.transpose(1, 2).reshape(-1, D)  # [N, D]
    residual, total, commit, codes = x, torch.zeros_like(x), z.new_zeros(()), []
    for layer in model.quantizer.layers:
        cb = layer.codebook
        idx = _nearest(residual.detach(), cb.embed)
        q = cb.embed[idx]  # a buffer: no gradient, the encoder is pulled toward it by `commit`
        commit = commit + F.mse_loss(residual, q)
        if cfg is not None:
            _ema_update(cb, residual.detach(), idx, cfg, g)
        residual = residual - q
        total = total + q
        codes.append(idx.view(B, T))
    zq = x + (total - x).detach()  # straight-through: forward quantized, backward identity
    return zq.view(B, T, D).transpose(1, 2), commit, torch.stack(codes)


def perplexity(codes: torch.Tensor, k: int) -> torch.Tensor:
    """codes [K, ...] -> per-codebook perplexity [K] (k = uniform use of all codes)."""
    p = torch.stack([torch.bincount(c.flatten(), minlength=k).float() for c in codes])
    p = p / p.sum(1, keepdim=True)
    return torch.exp(-(p * p.clamp_min(1e-12).log()).sum(1))


# ---------------------------------------------------------------- training


def _lr(step: int, cfg: CodecTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _train_step(model, opt, loss_fn, step, cfg) -> dict[str, float]:
    """One optimizer step; RVQ starts (k-means init) at `cfg.quantize_after`."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 7 + 3)
    device = next(model.parameters()).device
    x = _batch(step, cfg.batch_size, cfg).to(device)  # [B, 1, S]
    quantized = step >= cfg.quantize_after
    if quantized and not bool(model.quantizer.layers[0].codebook.inited):  # first quantized step
        with torch.no_grad():
            x_init = _batch(step, cfg.kmeans_clips, cfg, salt=1).to(device)
            normalize_latent(model, model.encoder(x_init))
            z_init = model.encoder(x_init)  # [n, D, T]
        frames_per_step = cfg.batch_size * z_init.shape[2] * x.shape[-1] // x_init.shape[-1]
        kmeans_init(model, z_init, cfg.kmeans_iters, frames_per_step, g)
    z = model.encoder(x)  # [B, D, T]
    stats = {}
    if quantized:
        stats["zstd"] = z.detach().std(dim=(0, 2)).mean().item()  # spread of the frames, for diagnosis
        z, commit, codes = quantize(model, z, cfg, g)
        ppl = perplexity(codes, model.config.codebook_size)
        stats.update(ppl=ppl.mean().item(), ppl0=ppl[0].item())
    else:
        commit = z.new_zeros(())
    y = model.decoder(z)[..., : x.shape[-1]]  # [B, 1, S]
    l1, stft, mel = (y - x).abs().mean(), loss_fn.stft(y, x), loss_fn.mel(y, x)
    loss = cfg.w_l1 * l1 + cfg.w_stft * stft + cfg.w_mel * mel + cfg.w_commit * commit
    if not torch.isfinite(loss):
        raise RuntimeError(f"codec training diverged at step {step} (loss {loss.item()})")
    for group in opt.param_groups:
        group["lr"] = _lr(step, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return {"loss": loss.item(), "l1": l1.item(), "stft": stft.item(), "mel": mel.item(),
            "commit": commit.item(), **stats}


def _save_checkpoint(path: Path, model, opt, step: int, cfg: CodecTrainConfig):
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "cfg": asdict(cfg), "model": model.state_dict(), "opt": opt.state_dict()}, tmp)
    tmp.replace(path)  # atomic: an interrupt never leaves a half-written checkpoint


def train_codec(out_dir: str | Path, cfg: CodecTrainConfig = CodecTrainConfig(), progress: bool = True,
                work_dir: str | Path | None = None, device: str | torch.device = "cpu") -> Path:
    """Train the tiny codec and `save_pretrained` it (with its feature extractor) into `out_dir`.

    Resumable: a checkpoint goes to `work_dir` (default `out_dir`, where it is deleted once the model
    is saved) every `cfg.checkpoint_every` steps; rerunning with the same config continues from it
    and ends with the same weights as an uninterrupted run.
    """
    out_dir = Path(out_dir)
    ckpt_dir = Path(work_dir) if work_dir is not None else out_dir
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / CHECKPOINT
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    model = EncodecModel(tiny_codec_config()).train().to(device)
    for layer in model.quantizer.layers:
        layer.codebook.inited.fill_(0.0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.8, 0.99))
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        if state["cfg"] != asdict(cfg):
            raise UserError(f"{ckpt} was written with a different CodecTrainConfig; delete it to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    else:
        data_dependent_init(model, _batch(0, cfg.kmeans_clips, cfg, salt=2).to(device))
    loss_fn = ReconLoss().to(device)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress,
               desc="tiny codec", dynamic_ncols=True)
    for step in bar:
        stats = _train_step(model, opt, loss_fn, step, cfg)
        bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()}, refresh=False)
        if step % 50 == 0 or step + 1 == cfg.steps:
            with open(ckpt_dir / "codec_train_log.jsonl", "a") as log:
                log.write(json.dumps({"step": step, **stats}) + "\n")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_checkpoint(ckpt, model, opt, step + 1, cfg)
    bar.close()
    model.eval().cpu()
    model.save_pretrained(out_dir)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE).save_pretrained(out_dir)
    if work_dir is None:  # out_dir keeps only the model
        ckpt.unlink(missing_ok=True)
        (ckpt_dir / "codec_train_log.jsonl").unlink(missing_ok=True)
    return out_dir


# ---------------------------------------------------------------- evaluation


def si_snr(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SNR in dB of estimate y against reference x, both [B, S] -> [B]."""
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    target = (y * x).sum(-1, keepdim=True) / x.pow(2).sum(-1, keepdim=True).clamp_min(1e-8) * x
    noise = y - target
    return 10 * torch.log10(target.pow(2).sum(-1).clamp_min(1e-8) / noise.pow(2).sum(-1).clamp_min(1e-8))


@torch.no_grad()
def evaluate_codec(model_dir: str | Path, n: int = 100, duration_s: float = 4.0, batch_size: int = 10) -> dict:
    """Reconstruction quality of a codec on `n` held-out synth clips.

    Returns si_snr_db and mel_l1 (means over clips), per codebook: perplexity, usage (fraction of codes
    seen) and re-encode agreement (codes of decode(encode(x)) == codes of x), and, once
    `musicrl.attributes` exists, agree_{tempo,register,mode}: the fraction of clips whose attribute
    estimated on the decoded audio matches the one estimated on the original.
    """
    from musicrl import synth
    from musicrl.codec import Codec

    try:
        from musicrl import attributes
    except ImportError:
        attributes = None
    codec = Codec.from_pretrained(model_dir)
    loss_fn = ReconLoss(sr=codec.sample_rate, mel_ffts=(1024,))
    snr, mel, codes_all, reenc, agree = [], [], [], [], {"tempo": [], "register": [], "mode": []}
    clips = list(synth.examples(n, 0, duration_s, "heldout"))
    for i in range(0, n, batch_size):
        x = torch.as_tensor(np.stack([c.audio for c in clips[i : i + batch_size]]))[:, None]  # [b, 1, S]
        codes = codec.encode(x)  # [b, K, T]
        y = codec.decode(codes)[..., : x.shape[-1]]  # [b, 1, S]
        snr.append(si_snr(y[:, 0], x[:, 0]))
        mel += [loss_fn.mel(y[j : j + 1], x[j : j + 1]).item() for j in range(x.shape[0])]
        codes_all.append(codes)
        reenc.append((codec.encode(y) == codes).float().mean(dim=(0, 2)))  # [K]
        if attributes is not None:
            for xa, ya in zip(x[:, 0].numpy(), y[:, 0].numpy()):
                a, b = attributes.estimate_all(xa, codec.sample_rate), attributes.estimate_all(ya, codec.sample_rate)
                agree["tempo"].append(attributes.tempo_word(a["bpm"]) == attributes.tempo_word(b["bpm"]))
                agree["register"].append(a["register"] == b["register"])
                agree["mode"].append(a["mode"] == b["mode"])
    codes = torch.cat(codes_all).transpose(0, 1)  # [K, N, T]
    result = {
        "n": n,
        "si_snr_db": torch.cat(snr).mean().item(),
        "mel_l1": float(np.mean(mel)),
        "perplexity": perplexity(codes, codec.codebook_size).tolist(),
        "usage": [len(torch.unique(c)) / codec.codebook_size for c in codes],
        "reencode_agreement": torch.stack(reenc).mean(0).tolist(),
    }
    if attributes is not None:
        result.update({f"agree_{k}": float(np.mean(v)) for k, v in agree.items()})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicrl.tiny.codec", description="train the tiny codec")
    parser.add_argument("--out", default="musicrl/assets/tiny/codec", help="where the model is saved")
    parser.add_argument("--work-dir", default="runs/tiny/codec", help="resumable checkpoints go here")
    for f in fields(CodecTrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--eval", type=int, default=100, help="held-out clips to evaluate on (0: skip)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = CodecTrainConfig(**{f.name: getattr(args, f.name) for f in fields(CodecTrainConfig)})
    t0 = time.time()
    out = train_codec(args.out, cfg, progress=not args.no_progress, work_dir=args.work_dir)
    report = {"train_seconds": round(time.time() - t0, 1), "config": asdict(cfg)}
    if args.eval:
        report["eval"] = evaluate_codec(out, n=args.eval)
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.work_dir) / "report.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
