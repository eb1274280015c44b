"""The spectral codec architecture: a semitone constant-Q frame, a residual VQ, additive resynthesis.

It is the codec of the tiny world (its codebooks are fitted on the synthetic corpus by
`musicrl.tiny.codec`), and it lives in the core because a checkpoint must load without the tiny
world: importing this module registers the model type "musicrl_spectral_codec" with transformers'
Auto classes, so `AutoModel.from_pretrained` and `MusicgenForConditionalGeneration` (its
`audio_encoder`) resolve it.

Why this design and not a tiny EnCodec: the tiny world's music is equal-tempered and harmonic, and
what its users check (and what the LM must learn) is pitch, key and rhythm. A small waveform
autoencoder learns pitch last; a constant-Q magnitude frame with one bin per semitone keeps pitch
exactly by construction, residual codebooks fitted by k-means quantise it, and a bank of sinusoids
at the same semitone frequencies turns frames back into audio. Phase is not coded (each oscillator
has a fixed phase), so it is not a waveform-faithful codec, and noise (hi-hats) comes back as a
cluster of high partials.

The model speaks EnCodec's API (`encode(input_values, bandwidth=...)` -> audio_codes
[1, B, K, T], `decode(audio_codes, audio_scales)` -> audio_values [B, 1, T*hop], `quantizer.
get_num_quantizers_for_bandwidth`, `config.target_bandwidths`, `chunk_length_s=None`), so
`musicrl.model.codec.Codec` wraps it exactly like the real `facebook/encodec_32khz`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.models.encodec.modeling_encodec import EncodecDecoderOutput, EncodecEncoderOutput, EncodecOutput

MODEL_TYPE = "musicrl_spectral_codec"


class SpectralCodecConfig(PreTrainedConfig):
    """Sizes of the spectral codec. Field names shared with `EncodecConfig` mean the same thing."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        sampling_rate: int = 16_000,
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
        # EnCodec's fields that MusicGen and musicrl.model.codec read: one bandwidth giving all K codebooks
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
