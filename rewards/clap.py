"""CLAP text adherence: the cosine similarity of a clip's and its prompt's CLAP embeddings.

MusicRL's MuLan-score reward, with an open model: transformers' `ClapModel` (LAION's
`laion/larger_clap_music`, or the project's own `tiny` one). The whole path stays on the model's
device and in torch: resampling to the CLAP rate, then the log-mel of `ClapFeatureExtractor`
re-done with `torch.stft` (the extractor is numpy, one Python loop per frame; `tests/
test_clap_reward.py` checks the two agree), then the model.

A clip longer than `window_s` is cut into windows of `window_s` (the last one end-aligned, so every
window is full), each is embedded and the L2-normalised window embeddings are averaged (the paper
scores 10 s windows of longer clips this way). A shorter clip, or window, is repeat-padded to the
model's input length exactly as `ClapFeatureExtractor(padding="repeatpad")` does.

Purity (a reward must be a function of (audio, sample rate, prompt) only): the feature extractor's
random parts are avoided, not reproduced: no window is longer than the model's input, so
`rand_trunc` never crops, and on a fusion model every window goes in as "not longer" (the four
identical mel copies the extractor makes for short clips), instead of the extractor's trick of
marking one random clip of the batch as longer. Each prompt is encoded alone (no padding), so a
text embedding does not depend on the other prompts, and the bounded LRU cache of text embeddings
returns exactly what a recomputation would.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

from musicrl.audio import resample
from musicrl.errors import UserError

DEFAULT_CLAP = "laion/larger_clap_music"


class ClapLogMel(torch.nn.Module):
    """`ClapFeatureExtractor`'s log-mel in torch: audio [N, M] at the CLAP rate -> [N, C, T, F].

    Same STFT (periodic Hann, centred, reflect padding), power 2, the extractor's own mel filter
    bank (HTK for `truncation="fusion"`, Slaney otherwise), 10*log10(max(mel, 1e-10)); C = 4
    identical copies on the fusion path, 1 otherwise.
    """

    def __init__(self, feature_extractor):
        super().__init__()
        fe = feature_extractor
        self.fusion = fe.truncation == "fusion"
        filters = fe.mel_filters if self.fusion else fe.mel_filters_slaney  # [n_fft//2+1, F]
        self.register_buffer("filters", torch.tensor(filters, dtype=torch.float32), persistent=False)
        self.register_buffer(
            "window", torch.hann_window(fe.fft_window_size, periodic=True), persistent=False
        )
        self.n_fft = fe.fft_window_size
        self.hop = fe.hop_length

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            audio.float(), self.n_fft, self.hop, window=self.window, center=True,
            pad_mode="reflect", return_complex=True,
        ).abs() ** 2  # [N, n_fft//2+1, T]
        mel = torch.clamp(spec.transpose(1, 2) @ self.filters, min=1e-10)  # [N, T, F]
        log_mel = 10.0 * torch.log10(mel)
        return log_mel[:, None].expand(-1, 4 if self.fusion else 1, -1, -1)  # [N, C, T, F]


def repeat_pad(audio: torch.Tensor, length: int) -> torch.Tensor:
    """[N, L] -> [N, length] as `ClapFeatureExtractor(padding="repeatpad")`: tile, then zero-pad."""
    n = audio.shape[-1]
    if n >= length:
        return audio[..., :length]
    audio = audio.repeat(1, length // n)
    return F.pad(audio, (0, length - audio.shape[-1]))


def window_starts(n_samples: int, window: int) -> list[int]:
    """Starts of the windows covering [0, n_samples): back to back, the last one end-aligned."""
    if n_samples <= window:
        return [0]
    n = -(-n_samples // window)  # ceil
    return [i * window for i in range(n - 1)] + [n_samples - window]


class ClapReward:
    """`reward(audio [B, 1, S], sample_rate, prompts) -> [B]`: cosine(text embedding, audio embedding).

    window_s: window length for long clips (default and maximum: the model's input length, 10 s for
    LAION's checkpoints as in the paper, 4 s for tiny). cache_size: text embeddings kept (LRU).
    max_windows: windows embedded per forward pass (memory bound; results do not depend on it).
    The model is put in eval mode and frozen; everything runs on its device, without gradients.
    """

    def __init__(self, model, tokenizer, feature_extractor, *, window_s: float | None = None,
                 cache_size: int = 4096, max_windows: int = 64):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.input_samples = int(feature_extractor.nb_max_samples)  # the model's input length
        max_s = self.input_samples / self.sample_rate
        window_s = max_s if window_s is None else float(window_s)
        if not 0 < window_s <= max_s:
            raise UserError(f"window_s must be in (0, {max_s:g}] (this CLAP's input length), got {window_s}")
        self.window = round(window_s * self.sample_rate)
        self.log_mel = ClapLogMel(feature_extractor).to(self.device)
        text_cfg = model.config.text_config
        # RoBERTa positions start at pad_token_id + 1
        self.max_text_tokens = text_cfg.max_position_embeddings - (text_cfg.pad_token_id or 0) - 1
        self.cache_size = cache_size
        self.max_windows = max(1, int(max_windows))
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = DEFAULT_CLAP, device: str | torch.device = "cpu",
                        **kwargs) -> "ClapReward":
        """A hub id, a local directory, or 'tiny' (the shipped `musicrl/assets/tiny/clap`)."""
        from transformers import AutoFeatureExtractor, AutoTokenizer, ClapModel

        from musicrl.model import hub

        model = hub.load(ClapModel.from_pretrained, name_or_dir, "clap")
        hub.check_tokenizer(hub.resolve(name_or_dir, "clap"))
        tokenizer = hub.load(AutoTokenizer.from_pretrained, name_or_dir, "clap")
        feature_extractor = hub.load(AutoFeatureExtractor.from_pretrained, name_or_dir, "clap")
        return cls(model.to(device), tokenizer, feature_extractor, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        """D of `embed_audio` / `embed_text` (the joint space: 512 for LAION's, 128 for tiny)."""
        return int(self.model.config.projection_dim)

    @torch.no_grad()  # not inference_mode: callers train heads on these embeddings
    def embed_audio(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """audio [B, 1, S] (or [B, S]) at `sample_rate` -> unit-norm embeddings [B, D]."""
        if audio.dim() == 3:
            if audio.shape[1] != 1:
                raise UserError(f"CLAP scores mono audio [B, 1, S]; got {audio.shape[1]} channels")
            audio = audio[:, 0]
        if audio.dim() != 2 or audio.shape[-1] == 0:
            raise UserError(f"audio must be [B, 1, S] with S > 0, got shape {tuple(audio.shape)}")
        audio = audio.to(self.device, torch.float32)
        if sample_rate != self.sample_rate:
            audio = resample(audio, sample_rate, self.sample_rate)  # [B, S']
        B, S = audio.shape
        starts = window_starts(S, self.window)
        windows = torch.stack([audio[:, s : s + self.window] for s in starts], 1)  # [B, W, L]
        windows = repeat_pad(windows.flatten(0, 1), self.input_samples)  # [B*W, M]
        emb = torch.cat([self._embed_windows(w) for w in windows.split(self.max_windows)])
        emb = emb.view(B, len(starts), -1)  # [B, W, D]
        return F.normalize(F.normalize(emb, dim=-1).mean(1), dim=-1)  # [B, D]

    def _embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """[N, M] samples at the CLAP rate -> [N, D] projections (not normalised)."""
        feats = self.log_mel(windows)  # [N, C, T, F]
        is_longer = torch.zeros(windows.shape[0], 1, dtype=torch.bool, device=self.device)  # no fusion
        return _pooled(self.model.get_audio_features(input_features=feats, is_longer=is_longer))

    @torch.no_grad()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> unit-norm embeddings [B, D]; each prompt encoded alone, cached (LRU)."""
        out = []
        for prompt in prompts:
            emb = self._text_cache.get(prompt)
            if emb is None:
                tok = self.tokenizer(prompt, return_tensors="pt", truncation=True,
                                     max_length=self.max_text_tokens)
                tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
                emb = F.normalize(_pooled(self.model.get_text_features(**tok))[0], dim=-1)  # [D]
                self._text_cache[prompt] = emb
                if len(self._text_cache) > self.cache_size:
                    self._text_cache.popitem(last=False)
            else:
                self._text_cache.move_to_end(prompt)
            out.append(emb)
        return torch.stack(out)

    def __call__(self, audio: torch.Tensor, sample_rate: int, prompts: list[str]) -> torch.Tensor:
        """audio [B, 1, S], prompts (B) -> cosine similarity [B] in [-1, 1], on the model's device."""
        if len(prompts) != audio.shape[0]:
            raise UserError(f"{audio.shape[0]} clips but {len(prompts)} prompts")
        return (self.embed_audio(audio, sample_rate) * self.embed_text(list(prompts))).sum(-1)


def _pooled(out) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with `.pooler_output` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
