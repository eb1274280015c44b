"""Fits the tiny world's codec: k-means codebooks of the spectral codec on the synthetic corpus.

The architecture is `musicrl.model.spectral_codec` (core: a checkpoint loads without the tiny world).
A small waveform autoencoder learns pitch last: our 600-step EnCodec run on the 2-core CPU kept tempo
in 80% of clips and the mode in 47% (chance); the spectral codec keeps pitch by construction.

Fit: `python -m musicrl.tiny.codec --out musicrl/assets/tiny/codec` (about a minute on a CPU);
`--eval DIR` measures it on held-out clips.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import EncodecFeatureExtractor

from musicrl.errors import UserError
from musicrl.model.spectral_codec import SpectralCodecConfig, SpectralCodecModel, nearest
from musicrl.tiny.synth import SAMPLE_RATE

# ------------------------------------------------------------------------------------------ fit


@dataclass(frozen=True)
class CodecFitConfig:
    """How the tiny codec's codebooks are fitted. The defaults are the shipped recipe."""

    num_clips: int = 800  # training clips of the synth corpus (seeds 0..num_clips-1, train split)
    clip_s: float = 4.0  # seconds per clip: 200 frames each
    max_frames: int = 200_000  # frames fed to k-means (a random subset when there are more)
    kmeans_iters: int = 30  # Lloyd iterations per stage
    batch_clips: int = 50  # clips analysed at a time
    seed: int = 0

    def __post_init__(self):
        for name in ("num_clips", "max_frames", "kmeans_iters", "batch_clips"):
            if getattr(self, name) < 1:
                raise UserError(f"codec fit: {name} must be >= 1, got {getattr(self, name)}")
        if not self.clip_s > 0:
            raise UserError(f"codec fit: clip_s must be > 0, got {self.clip_s}")


def _sq_dist(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared distances [N, k] between x [N, D] and centres [k, D]."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ centres.T + centres.pow(2).sum(1)[None]).clamp_min(0)


def kmeans(x: torch.Tensor, k: int, iters: int, g: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means of x [N, D] -> centres [k, D], seeded by k-means++ (each new seed drawn with
    probability ~ squared distance to the nearest seed so far: rare spectra get codes of their own);
    an empty cluster is re-seeded on a random point."""
    if len(x) < k:
        raise UserError(f"codec fit: {len(x)} frames cannot fill a codebook of {k}; use more clips")
    centres = x[torch.randint(len(x), (1,), generator=g)]
    d2 = _sq_dist(x, centres)[:, 0]  # [N] squared distance to the nearest seed so far
    for _ in range(k - 1):
        pick = torch.multinomial(d2 + 1e-12, 1, generator=g)
        centres = torch.cat([centres, x[pick]])
        d2 = torch.minimum(d2, _sq_dist(x, x[pick])[:, 0])
    for _ in range(iters):
        idx = nearest(x, centres)  # [N]
        sums = torch.zeros_like(centres).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k).float()[:, None]
        fresh = x[torch.randint(len(x), (k,), generator=g)]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), fresh)
    return centres


def fit(model: SpectralCodecModel, cfg: CodecFitConfig = CodecFitConfig(), progress: bool = True) -> dict:
    """Fit `model`'s mean and residual codebooks on synth clips; returns per-stage relative error."""
    from tqdm.auto import tqdm

    from musicrl.tiny import synth

    frames = []
    clips = synth.examples(cfg.num_clips, 0, cfg.clip_s, "train")
    bar = tqdm(total=cfg.num_clips, desc="codec: analyse clips", disable=not progress, dynamic_ncols=True)
    for start in range(0, cfg.num_clips, cfg.batch_clips):
        batch = [next(clips).audio for _ in range(min(cfg.batch_clips, cfg.num_clips - start))]
        with torch.no_grad():
            f = model.features(model.spectrum(torch.as_tensor(np.stack(batch))[:, None]))  # [b, F, T]
        frames.append(f.transpose(1, 2).reshape(-1, f.shape[1]))
        bar.update(len(batch))
    bar.close()
    x = torch.cat(frames)  # [N, F]
    g = torch.Generator().manual_seed(cfg.seed)
    if len(x) > cfg.max_frames:
        x = x[torch.randperm(len(x), generator=g)[: cfg.max_frames]]
    mean = x.mean(0)
    residual = x - mean
    total = residual.pow(2).sum()
    books, errors = [], []
    for _ in tqdm(range(model.config.num_quantizers), desc="codec: k-means per stage", disable=not progress,
                  dynamic_ncols=True):
        centres = kmeans(residual, model.config.codebook_size, cfg.kmeans_iters, g)
        idx = nearest(residual, centres)
        residual = residual - centres[idx]
        books.append(centres)
        errors.append((residual.pow(2).sum() / total).item())
    with torch.no_grad():
        model.quantizer.mean.copy_(mean)
        model.quantizer.codebooks.copy_(torch.stack(books))
    return {"frames": len(x), "relative_error_per_stage": errors}


def train_codec(out_dir: str | Path, cfg: CodecFitConfig = CodecFitConfig(), progress: bool = True) -> Path:
    """Fit the tiny codec and `save_pretrained` it (with EnCodec's feature extractor) into `out_dir`.

    Fitting takes a minute or two on a CPU, so there is no checkpoint to resume from."""
    out = Path(out_dir)
    model = SpectralCodecModel(SpectralCodecConfig(sampling_rate=SAMPLE_RATE)).eval()
    stats = fit(model, cfg, progress)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=model.config.sampling_rate).save_pretrained(out)
    (out / "fit.json").write_text(json.dumps({"config": asdict(cfg), **stats}, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------- evaluate


def perplexity(codes: torch.Tensor, k: int) -> torch.Tensor:
    """Per-codebook perplexity of codes [K, ...] (k = codebook size): exp(entropy of code use)."""
    flat = codes.reshape(codes.shape[0], -1)
    p = torch.stack([torch.bincount(c, minlength=k).float() for c in flat])
    p = p / p.sum(1, keepdim=True)
    return torch.exp(-(p * p.clamp_min(1e-12).log()).sum(1))


def evaluate_codec(model_dir: str | Path, n: int = 100, duration_s: float = 4.0, batch_size: int = 10) -> dict:
    """How well a codec keeps music, on `n` held-out synth clips (works for any `Codec`).

    agree_{tempo,register,mode}: the fraction of clips whose attribute estimated on the decoded audio
    matches the one estimated on the original (`musicrl.tiny.attributes`); spectral_l1: mean |difference|
    of the two clips' semitone log-magnitudes (natural log, floor -60 dB); per codebook: perplexity,
    usage and re-encode agreement (codes of decode(encode(x)) == codes of x).
    """
    from musicrl.tiny import attributes, synth
    from musicrl.model.codec import Codec

    codec = Codec.from_pretrained(model_dir)
    probe = SpectralCodecModel(SpectralCodecConfig(sampling_rate=codec.sample_rate))  # fixed analysis only
    clips = list(synth.examples(n, 0, duration_s, "heldout"))
    codes_all, reenc, l1, agree = [], [], [], {"tempo": [], "register": [], "mode": []}
    for i in range(0, n, batch_size):
        x = torch.as_tensor(np.stack([c.audio for c in clips[i : i + batch_size]]))[:, None]  # [b, 1, S]
        codes = codec.encode(x)  # [b, K, T]
        y = codec.decode(codes)[..., : x.shape[-1]]  # [b, 1, S]
        l1 += (probe.features(probe.spectrum(y)) - probe.features(probe.spectrum(x))).abs().mean((1, 2)).tolist()
        codes_all.append(codes)
        reenc.append((codec.encode(y) == codes).float().mean(dim=(0, 2)))  # [K]
        for xa, ya in zip(x[:, 0].numpy(), y[:, 0].numpy()):
            a, b = attributes.estimate_all(xa, codec.sample_rate), attributes.estimate_all(ya, codec.sample_rate)
            for key in agree:
                agree[key].append(a[key] == b[key])
    codes = torch.cat(codes_all).transpose(0, 1)  # [K, N, T]
    return {
        "n": n,
        "spectral_l1": float(np.mean(l1)),
        "perplexity": perplexity(codes, codec.codebook_size).tolist(),
        "usage": [len(torch.unique(c)) / codec.codebook_size for c in codes],
        "reencode_agreement": torch.stack(reenc).mean(0).tolist(),
        **{f"agree_{k}": float(np.mean(v)) for k, v in agree.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicrl.tiny.codec", description="fit or evaluate the tiny codec")
    parser.add_argument("--out", default="musicrl/assets/tiny/codec", help="where the fitted codec is saved")
    parser.add_argument("--num-clips", type=int, default=CodecFitConfig.num_clips)
    parser.add_argument("--eval", metavar="DIR", help="evaluate the codec in DIR (or 'tiny') instead of fitting")
    parser.add_argument("-n", type=int, default=100, help="held-out clips for --eval")
    args = parser.parse_args(argv)
    try:
        if args.eval:
            print(json.dumps(evaluate_codec(args.eval, n=args.n), indent=2))
            return 0
        t0 = time.time()
        out = train_codec(args.out, CodecFitConfig(num_clips=args.num_clips))
        print(f"saved {out} in {time.time() - t0:.0f} s")
    except UserError as e:
        parser.exit(2, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
