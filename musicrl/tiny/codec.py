"""The tiny codec: a semitone constant-Q frame, residual VQ learned by k-means, additive resynthesis.

Why this design and not a tiny EnCodec: the tiny world's music is equal-tempered and harmonic, and
what its users check (and what the LM must learn) is pitch, key and rhythm. A small waveform
autoencoder learns pitch last: our 600-step EnCodec run on the 2-core CPU kept tempo in 80% of
clips and the mode in 47% (chance). A constant-Q magnitude frame with one bin per semitone keeps
pitch exactly by construction, 4 x 256 residual codebooks fitted by k-means quantise it (seconds
on a CPU), and a bank of sinusoids at the same semitone frequencies turns frames back into audio.
Only the codebooks are learned; the analysis kernels and the oscillators follow from the config.
It is a fixed, honest codec: phase is not coded (each oscillator has a fixed phase), so it is not
a waveform-faithful codec, and noise (hi-hats) comes back as a cluster of high partials.

The model speaks EnCodec's API (`encode(input_values, bandwidth=...)` -> audio_codes
[1, B, K, T], `decode(audio_codes, audio_scales)` -> audio_values [B, 1, T*hop], `quantizer.
get_num_quantizers_for_bandwidth`, `config.target_bandwidths`, `chunk_length_s=None`) and is
registered with transformers' Auto classes, so `MusicgenForConditionalGeneration` holds it as its
`audio_encoder` (its own `generate` returns audio) and `musicrl.codec.Codec` wraps it exactly like
the real `facebook/encodec_32khz`.

Fit: `python -m musicrl.tiny.codec --out musicrl/assets/tiny/codec` (about a minute on a CPU);
`--eval DIR` measures it on held-out clips.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, EncodecFeatureExtractor, PreTrainedConfig, PreTrainedModel
from transformers.models.encodec.modeling_encodec import EncodecDecoderOutput, EncodecEncoderOutput, EncodecOutput

from musicrl.errors import UserError
from musicrl.synth import SAMPLE_RATE

MODEL_TYPE = "musicrl_spectral_codec"


class SpectralCodecConfig(PreTrainedConfig):
    """Sizes of the spectral codec. Field names shared with `EncodecConfig` mean the same thing."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        sampling_rate: int = SAMPLE_RATE,
        hop_length: int = 320,  # 50 frames/s, MusicGen's frame rate
        audio_channels: int = 1,
        midi_low: int = 31,  # lowest semitone bin (G1, 49 Hz): below the corpus's lowest bass note
        midi_high: int = 119,  # highest (B8, 7.9 kHz): just under Nyquist at 16 kHz
        q: float = 34.0,  # cycles per analysis window: neighbouring semitones fall on the window's nulls
        max_window: int = 4096,  # cap (samples) for the low bins, so a bass note is not smeared over a beat
        floor: float = 1e-3,  # amplitude floor of the log features (-60 dB below full scale)
        num_quantizers: int = 4,
        codebook_size: int = 256,
        phase_seed: int = 0,  # seeds each oscillator's fixed phase
        max_peak: float = 0.9,  # decode scales a clip down to this peak (the corpus's own level), never up
        **kwargs,
    ):
        self.sampling_rate = sampling_rate
        self.hop_length = hop_length
        self.audio_channels = audio_channels
        self.midi_low, self.midi_high = midi_low, midi_high
        self.q, self.max_window, self.floor = q, max_window, floor
        self.num_quantizers, self.codebook_size = num_quantizers, codebook_size
        self.phase_seed = phase_seed
        self.max_peak = max_peak
        # EnCodec's fields that MusicGen and musicrl.codec read: one bandwidth giving all K codebooks
        self.chunk_length_s = None
        self.normalize = False
        self.target_bandwidths = [num_quantizers * math.log2(codebook_size) * self.frame_rate / 1000]
        super().__init__(**kwargs)

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sampling_rate / self.hop_length)

    @property
    def num_bins(self) -> int:
        return self.midi_high - self.midi_low + 1


def nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index [N] of the nearest of centres [k, D] to each row of x [N, D] (squared distance without
    the |x|^2 term, which is the same for every centre)."""
    return (centres.pow(2).sum(1)[None] - 2 * x @ centres.T).argmin(1)


class SpectralRVQ(nn.Module):
    """Residual VQ of normalised log-magnitude frames; codebooks [K, N, F] are fitted by k-means."""

    def __init__(self, config: SpectralCodecConfig):
        super().__init__()
        self.num_quantizers = config.num_quantizers
        # parameters (never trained by gradient) rather than buffers: transformers reads a model's dtype
        # and device from its parameters
        self.mean = nn.Parameter(torch.zeros(config.num_bins), requires_grad=False)  # [F]
        self.codebooks = nn.Parameter(
            torch.zeros(config.num_quantizers, config.codebook_size, config.num_bins), requires_grad=False
        )  # [K, N, F]

    def get_num_quantizers_for_bandwidth(self, bandwidth: float | None = None) -> int:
        return self.num_quantizers

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Features [B, F, T] -> codes [K, B, T]: greedy nearest code per stage, on the residual."""
        B, Fb, T = x.shape
        residual = (x.transpose(1, 2).reshape(-1, Fb) - self.mean).float()  # [B*T, F]
        codes = []
        for cb in self.codebooks:  # [N, F]
            idx = nearest(residual, cb)  # [B*T]
            residual = residual - cb[idx]
            codes.append(idx.view(B, T))
        return torch.stack(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [K, B, T] -> features [B, F, T]."""
        x = sum(cb[c] for cb, c in zip(self.codebooks, codes))  # [B, T, F]
        return (x + self.mean).transpose(1, 2)


class SpectralCodecModel(PreTrainedModel):
    config_class = SpectralCodecConfig
    base_model_prefix = "spectral_codec"
    main_input_name = "input_values"

    def __init__(self, config: SpectralCodecConfig):
        super().__init__(config)
        self.quantizer = SpectralRVQ(config)
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.post_init()

    def _init_weights(self, module):  # codebooks come from k-means (fit), kernels from the config
        pass

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(analysis kernel [2F, 1, L], bin frequencies [F] float64, oscillator phases [F] float64).

        Pure functions of the config, built on first use per device (not buffers: transformers builds
        models on the meta device, and there is nothing in them to save)."""
        if device not in self._tables:
            c, sr = self.config, self.config.sampling_rate
            midi = torch.arange(c.midi_low, c.midi_high + 1, dtype=torch.float64, device="cpu")
            freqs = 440.0 * 2.0 ** ((midi - 69) / 12)  # [F]
            lengths = torch.clamp(torch.round(c.q * sr / freqs), max=c.max_window).long().tolist()
            width = max(lengths) | 1  # odd: frame t is centred exactly on sample t * hop
            kernel = torch.zeros(2 * len(freqs), 1, width, device="cpu")  # [2F, 1, L]: (cos, sin) per bin
            for i, (f, n) in enumerate(zip(freqs.tolist(), lengths)):
                t = torch.arange(n, dtype=torch.float64, device="cpu") - (n - 1) / 2
                w = torch.hann_window(n, periodic=False, dtype=torch.float64, device="cpu")
                w = 2 * w / w.sum()  # so a sinusoid of amplitude A at f gives magnitude A
                off = (width - n) // 2
                kernel[2 * i, 0, off : off + n] = (w * torch.cos(2 * math.pi * f * t / sr)).float()
                kernel[2 * i + 1, 0, off : off + n] = (w * torch.sin(2 * math.pi * f * t / sr)).float()
            g = torch.Generator().manual_seed(c.phase_seed)
            phases = 2 * math.pi * torch.rand(len(freqs), generator=g, dtype=torch.float64, device="cpu")
            self._tables[device] = (kernel.to(device), freqs.to(device), phases.to(device))
        return self._tables[device]

    # ------------------------------------------------------------------ analysis and resynthesis

    def spectrum(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, 1, S] -> semitone magnitudes [B, F, T], T = ceil(S / hop)."""
        kernel = self.tables(audio.device)[0]
        hop, width = self.config.hop_length, kernel.shape[-1]
        S = audio.shape[-1]
        T = -(-S // hop)
        x = F.pad(audio.float(), (width // 2, width // 2 + T * hop - S))
        y = F.conv1d(x, kernel, stride=hop)[..., :T]  # [B, 2F, T]
        return y.unflatten(1, (-1, 2)).pow(2).sum(2).sqrt()  # [B, F, T]

    def features(self, mag: torch.Tensor) -> torch.Tensor:
        return torch.log(mag + self.config.floor)

    def magnitudes(self, features: torch.Tensor) -> torch.Tensor:
        return (features.exp() - self.config.floor).clamp_min(0)

    def synthesize(self, mag: torch.Tensor, chunk_frames: int = 50) -> torch.Tensor:
        """Semitone magnitudes [B, F, T] -> audio [B, 1, T * hop]: one oscillator per bin, its
        amplitude interpolated linearly between frame centres (sample t * hop).

        Within frame interval t the output is A_t @ (osc * (1 - w)) + A_{t+1} @ (osc * w), with
        A_t [B, F] the amplitudes, osc [F, hop] the oscillators and w [hop] the interpolation
        weights: one batched matmul per chunk of `chunk_frames` intervals instead of B x F x hop
        elementwise products (20x faster on a CPU); memory is bounded by the chunk."""
        _, freqs, phases = self.tables(mag.device)
        hop, sr = self.config.hop_length, self.config.sampling_rate
        B, Fb, T = mag.shape
        amp = torch.cat([mag, mag[..., -1:]], dim=-1).float().permute(2, 0, 1)  # [T+1, B, F]: hold the last frame
        w = torch.arange(hop, device=mag.device, dtype=torch.float32) / hop  # [hop]
        out = []
        for t0 in range(0, T, chunk_frames):
            m = min(chunk_frames, T - t0)
            s = torch.arange(t0 * hop, (t0 + m) * hop, device=mag.device, dtype=torch.float64)  # [m * hop]
            cycles = torch.remainder(freqs[:, None] * s[None] / sr, 1.0)  # [F, m * hop], exact in float64
            osc = torch.sin(2 * math.pi * cycles + phases[:, None]).float().view(Fb, m, hop).transpose(0, 1)  # [m, F, hop]
            y = amp[t0 : t0 + m] @ (osc * (1 - w)) + amp[t0 + 1 : t0 + m + 1] @ (osc * w)  # [m, B, hop]
            out.append(y.permute(1, 0, 2).reshape(B, m * hop))
        return torch.cat(out, dim=-1)[:, None]

    # ---------------------------------------------------------------------------- EnCodec's API

    def encode(self, input_values, padding_mask=None, bandwidth=None, return_dict=None):
        """input_values [B, 1, S] -> audio_codes [1, B, K, T] (EnCodec's layout, one chunk)."""
        if input_values.dim() != 3 or input_values.shape[1] != self.config.audio_channels:
            raise ValueError(f"expected input_values [B, {self.config.audio_channels}, S], got {tuple(input_values.shape)}")
        codes = self.quantizer.encode(self.features(self.spectrum(input_values)))  # [K, B, T]
        codes = codes.transpose(0, 1)[None]  # [1, B, K, T]
        if return_dict is False:
            return codes, [None]
        return EncodecEncoderOutput(audio_codes=codes, audio_scales=[None])

    def decode(self, audio_codes, audio_scales=None, padding_mask=None, return_dict=None, last_frame_pad_length=0):
        """audio_codes [1, B, K, T] -> audio_values [B, 1, T * hop]."""
        if audio_codes.dim() != 4 or audio_codes.shape[0] != 1:
            raise ValueError(f"expected audio_codes [1, B, K, T], got {tuple(audio_codes.shape)}")
        mag = self.magnitudes(self.quantizer.decode(audio_codes[0].transpose(0, 1)))  # [B, F, T]
        audio = self.synthesize(mag)
        # oscillators with unrelated phases peak higher than the synth's phase-locked partials (up to
        # ~3x): scale each clip down to the corpus's peak level rather than let a WAV writer clip it
        peak = audio.abs().amax(dim=(1, 2), keepdim=True)
        audio = audio * (self.config.max_peak / peak.clamp_min(self.config.max_peak))
        if padding_mask is not None and padding_mask.shape[-1] < audio.shape[-1]:
            audio = audio[..., : padding_mask.shape[-1]]
        if return_dict is False:
            return (audio,)
        return EncodecDecoderOutput(audio_values=audio)

    def forward(self, input_values, padding_mask=None, bandwidth=None, audio_codes=None, audio_scales=None,
                return_dict=None, **kwargs):
        if audio_codes is None:
            audio_codes = self.encode(input_values, padding_mask, bandwidth).audio_codes
        audio_values = self.decode(audio_codes, audio_scales, padding_mask).audio_values
        return EncodecOutput(audio_codes=audio_codes, audio_values=audio_values)


# the standard transformers mechanism for a model type of one's own: AutoConfig / AutoModel (and so
# MusicgenConfig's audio_encoder sub-config) resolve "musicrl_spectral_codec" once this module is imported
AutoConfig.register(MODEL_TYPE, SpectralCodecConfig, exist_ok=True)
AutoModel.register(SpectralCodecConfig, SpectralCodecModel, exist_ok=True)


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

    from musicrl import synth

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
    model = SpectralCodecModel(SpectralCodecConfig()).eval()
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
    matches the one estimated on the original (`musicrl.attributes`); spectral_l1: mean |difference|
    of the two clips' semitone log-magnitudes (natural log, floor -60 dB); per codebook: perplexity,
    usage and re-encode agreement (codes of decode(encode(x)) == codes of x).
    """
    from musicrl import attributes, synth
    from musicrl.codec import Codec

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
