"""The policy: a MusicGen LM over codec tokens that samples and scores its own samples exactly.

`MusicGenPolicy` wraps transformers' `MusicgenForConditionalGeneration` (T5 text encoder, frozen
EnCodec, decoder LM over K codebooks with the delay pattern). It exposes two operations that
share one definition of the sampling distribution (`musicrl.model.sampling.process_logits`):

- `sample`: autoregressive decoding with a KV cache, returning codes [B, K, T] and the
  log-prob of every sampled token under the distribution it was drawn from;
- `log_probs` / `distributions`: the same quantities by teacher forcing, differentiable.

Classifier-free guidance is one batched pass over [conditional; unconditional] rows. The
unconditional condition is zero text states (what transformers' generate and audiocraft use);
attending to zero keys/values gives a zero cross-attention output either way.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
import functools
from pathlib import Path

import torch
from torch import nn

from musicrl.model import delay as dp
from musicrl.model import hub
from musicrl.model.codec import Codec  # also registers the spectral codec's model type with transformers
from musicrl.errors import UserError
from musicrl.model.sampling import SamplingConfig, process_logits, sample_tokens


@functools.cache
def _cache_kwarg() -> str:
    """The decoder's name for its KV cache: transformers 5 renamed `past_key_values` to `cache` (the
    old name warns, and goes in 5.40); 4.x knows only `past_key_values`."""
    from transformers import MusicgenForCausalLM

    return "cache" if "cache" in inspect.signature(MusicgenForCausalLM.forward).parameters else "past_key_values"


@dataclass
class Rollout:
    codes: torch.Tensor  # [B, K, T] long
    log_probs: torch.Tensor  # [B, K, T] float32: log-prob of each token under the sampling distribution
    prompts: list[str]  # [B] the prompt of each row
    seeds: torch.Tensor  # [B] int64: row i reproduces alone with seed=seeds[i], num_samples=1
    sampling: SamplingConfig


class MusicGenPolicy(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, name: str = ""):
        super().__init__()
        self.model = model  # MusicgenForConditionalGeneration
        self.tokenizer = tokenizer
        self.name = name
        dec = model.config.decoder
        self.num_codebooks: int = dec.num_codebooks
        self.vocab_size: int = dec.vocab_size
        self.pad_id: int = dec.pad_token_id
        self.bos_id: int = model.generation_config.decoder_start_token_id or dec.bos_token_id
        if dec.audio_channels != 1:
            raise UserError("stereo MusicGen checkpoints are not supported yet (audio_channels=2)")
        # the architectural limit: sinusoidal positions exist for max_position_embeddings steps
        self.max_frames: int = dec.max_position_embeddings - self.num_codebooks
        self._codec = None

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name: str = "tiny", device: str | torch.device = "cpu", dtype=None) -> "MusicGenPolicy":
        """Load by 'tiny' (or 'tiny-r'), a local directory in transformers format, a weight-delta
        directory (`musicrl.model.delta`: its base, plus the delta), or a hub id."""
        from transformers import AutoTokenizer, MusicgenForConditionalGeneration

        from musicrl.model import delta

        # weights may be stored in half precision (the tiny world ships fp16 to stay small): compute in fp32
        # unless asked otherwise
        kwargs = {"dtype": dtype if dtype is not None else torch.float32}
        path = hub.resolve(name, "musicgen")
        base = delta.base_of(path) if Path(path).is_dir() else None
        model = hub.load(MusicgenForConditionalGeneration.from_pretrained, base or name, "musicgen", **kwargs)
        hub.check_tokenizer(hub.resolve(base or name, "musicgen"))
        tokenizer = hub.load(AutoTokenizer.from_pretrained, base or name, "musicgen")
        if base is not None:
            delta.apply_delta(model, path)
        model.to(device).eval()
        model.audio_encoder.requires_grad_(False)  # the codec is frozen, always
        return cls(model, tokenizer, name=str(name))

    @property
    def device(self) -> torch.device:
        return next(self.model.decoder.parameters()).device

    @property
    def codec(self) -> Codec:
        if self._codec is None:
            self._codec = Codec.from_encodec(self.model.audio_encoder)
        return self._codec

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def max_duration_s(self) -> float:
        return self.max_frames / self.frame_rate

    def frames_for(self, duration_s: float) -> int:
        if not duration_s > 0:
            raise UserError(f"duration must be > 0 seconds, got {duration_s}")
        if duration_s > self.max_duration_s + 1e-6:
            raise UserError(f"duration {duration_s:g} s is beyond this model's maximum of {self.max_duration_s:.1f} s")
        return max(1, round(duration_s * self.frame_rate))

    def rollout_rows(self, prompts: list[str], num_samples: int, duration_s: float | None,
                     num_frames: int | None, seed: int) -> tuple[list[str], torch.Tensor, int]:
        """Checks a sampling request and lays it out: (rows [p0]*n + [p1]*n + ..., seeds [B] with
        row i seeded `seed + i`, frames T). Shared by `sample` and the fast engine (same contract)."""
        if not prompts:
            raise UserError("no prompts given")
        if num_samples < 1:
            raise UserError(f"num_samples must be >= 1, got {num_samples}")
        T = num_frames if num_frames is not None else self.frames_for(duration_s if duration_s is not None else 5.0)
        if T > self.max_frames:
            raise UserError(f"{T} frames is beyond this model's maximum of {self.max_frames}")
        rows = [p for p in prompts for _ in range(num_samples)]
        return rows, torch.arange(len(rows), dtype=torch.long) + seed, T

    # ---- conditioning ----------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts [B] -> (states [B, L, D_dec], mask [B, L]); padded states are zero."""
        tok = self.tokenizer(list(prompts), padding=True, return_tensors="pt").to(self.device)
        enc = self.model.text_encoder
        train_text = torch.is_grad_enabled() and any(p.requires_grad for p in enc.parameters())
        with torch.set_grad_enabled(train_text):
            states = enc(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
        if hasattr(self.model, "enc_to_dec_proj"):
            states = self.model.enc_to_dec_proj(states)
        mask = tok.attention_mask
        return states * mask[..., None].to(states.dtype), mask

    def _conditioning(self, prompts: list[str], guided: bool) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask = self.encode_text(prompts)
        if guided:  # rows [cond; uncond]
            states = torch.cat([states, torch.zeros_like(states)])
            mask = torch.cat([mask, torch.ones_like(mask)])
        return states, mask

    def _decode_step(self, tokens: torch.Tensor, states, mask, cache=None):
        """tokens [N, K, L] -> (raw logits [N, K, L, V], cache)."""
        N, K, L = tokens.shape
        out = self.model.decoder(
            input_ids=tokens.reshape(N * K, L),
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
            use_cache=True,
            **{_cache_kwarg(): cache},
        )
        return out.logits.reshape(N, K, L, -1), getattr(out, _cache_kwarg())

    # ---- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        num_samples: int = 1,
        duration_s: float | None = None,
        *,
        num_frames: int | None = None,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int = 0,
        progress: bool = False,
    ) -> Rollout:
        """Sample `num_samples` clips per prompt: rows are prompts repeated in order [p0]*n + [p1]*n + ...

        Row i uses seed `seed + i`; its tokens depend on that seed alone.
        """
        rows, seeds, T = self.rollout_rows(prompts, num_samples, duration_s, num_frames, seed)
        B, K, V = len(rows), self.num_codebooks, self.vocab_size
        dev = self.device
        states, mask = self._conditioning(rows, sampling.guided)
        valid = dp.valid_mask(K, T, device=dev)  # [K, T+K-1]
        steps = T + K - 1
        tokens = torch.full((B, K, steps), self.pad_id, dtype=torch.long, device=dev)
        logps = torch.zeros((B, K, steps), dtype=torch.float32, device=dev)
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        current = torch.full((B, K, 1), self.bos_id, dtype=torch.long, device=dev)
        iterator = range(steps)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="sampling", unit="step", leave=False)
        for j in iterator:
            inp = torch.cat([current, current]) if sampling.guided else current
            logits, cache = self._decode_step(inp, states, mask, cache)  # [N, K, 1, V]
            logits = logits[:, :, 0]
            cond, uncond = (logits[:B], logits[B:]) if sampling.guided else (logits, None)
            logp = process_logits(cond, uncond, sampling)  # [B, K, V]
            new = sample_tokens(logp, seeds.to(dev), j)  # [B, K]
            v = valid[:, j]  # [K]
            new = torch.where(v, new, self.pad_id)
            lp = logp.gather(-1, new.clamp(max=V - 1)[..., None])[..., 0]
            logps[:, :, j] = torch.where(v, lp, 0.0)
            tokens[:, :, j] = new
            current = new[..., None]
        return Rollout(dp.undelay(tokens), dp.undelay(logps), rows, seeds, sampling)

    # ---- teacher forcing ---------------------------------------------------------------------
    def distributions(self, prompts: list[str], codes: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
        """Log-probs of the sampling distribution at every frame: codes [B, K, T] -> [B, K, T, V].

        Differentiable (when grad is enabled); no cache, one forward over the whole sequence.
        """
        B = codes.shape[0]
        if len(prompts) != B:
            raise ValueError(f"{len(prompts)} prompts for {B} code sequences")
        states, mask = self._conditioning(list(prompts), sampling.guided)
        if sampling.guided:
            codes = torch.cat([codes, codes])
        logits = self.teacher_forced_logits(codes, states, mask)  # [N, K, T+K-1, V]
        cond, uncond = (logits[:B], logits[B:]) if sampling.guided else (logits, None)
        return dp.undelay(process_logits(cond, uncond, sampling))  # [B, K, T, V]

    def teacher_forced_logits(self, codes: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Raw decoder logits over the delayed sequence: codes [N, K, T] -> [N, K, T+K-1, V].

        Position j predicts delayed token j (see `musicrl.model.delay.decoder_inputs`).
        """
        inputs, _ = dp.decoder_inputs(codes.to(self.device), self.pad_id, self.bos_id)  # [N, K, T+K-1]
        N, K, L = inputs.shape
        out = self.model.decoder(
            input_ids=inputs.reshape(N * K, L), encoder_hidden_states=states, encoder_attention_mask=mask, use_cache=False
        )
        return out.logits.reshape(N, K, L, -1)

    def log_probs(self, prompts: list[str], codes: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
        """Per-token log-probs by teacher forcing, under the same distribution as `sample`: [B, K, T]."""
        logp = self.distributions(prompts, codes, sampling)
        return logp.gather(-1, codes.to(logp.device)[..., None])[..., 0]

    # ---- audio -------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> audio [B, 1, S] at `sample_rate` (the frozen codec; never backpropagated)."""
        return self.codec.decode(codes.to(self.device))
