"""Pretraining the tiny world's text encoders (the MusicGen's T5, the CLAP's RoBERTa) before audio.

MusicGen conditions on a frozen, pretrained T5: the words already mean something before the LM is
trained. Our byte-level T5 starts from nothing, and learning word meanings through the LM alone is
slow: once the first frames of a clip are out, its codes predict the rest, so the caption only
matters for a few percent of the LM's loss (a first LM trained that way, 2,500 steps, ignored its
prompts: attributes heard at chance). So before the LM, the encoder learns what captions say:
from its mean-pooled states, linear heads predict each attribute a caption names (tempo, mode,
register, instrument, drums; "not named" is a class of its own). The LM then trains with the
encoder frozen, as MusicGen does.

`words="all"` pretrains on captions using the words of both splits (in train-split templates only):
the tiny world's stand-in for what a real text tower (T5, RoBERTa) learned from web text before it
ever met audio. The words' meanings then come from text alone, and which sounds go with them from
train-split (audio, caption) pairs alone; held-out sentence shapes are never seen. The tiny CLAP is
pretrained this way (`musicrl.tiny.clap`); `words="train"` keeps held-out words unseen.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from musicrl.tiny import synth

ATTRS = {
    "tempo": tuple(synth.TEMPO_WORDS),
    "mode": synth.MODES,
    "register": synth.REGISTERS,
    "instrument": synth.INSTRUMENTS,
    "drums": synth.DRUMS,
}


def labels(captions: list[str]) -> torch.Tensor:
    """[B, A] class per attribute: the named value's index, or len(values) when not named."""
    out = []
    for text in captions:
        named = synth.parse_prompt(text)
        out.append([values.index(named[a]) if a in named else len(values) for a, values in ATTRS.items()])
    return torch.tensor(out)


def mean_pooled(encoder: nn.Module, tok) -> torch.Tensor:
    """[B, D] mean of the encoder's last states over real tokens (what the T5 probe reads)."""
    states = encoder(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
    m = tok.attention_mask[..., None].to(states.dtype)
    return (states * m).sum(1) / m.sum(1)


def pretrain_text_encoder(encoder: nn.Module, tokenizer, steps: int, batch_size: int = 64, lr: float = 2e-3,
                          seed: int = 0, progress: bool = True, features=mean_pooled, words: str = "train",
                          ) -> dict[str, float]:
    """Train `encoder` in place to name each caption's attributes from `features(encoder, tok)` [B, D].

    Captions are train-split templates in `words`' vocabulary ("train" or "all"). Returns the
    accuracy over all attribute slots on 512 fresh captions of held-out seeds: "train_words"
    (train templates and words) and "heldout" (held-out templates and words).
    """
    from tqdm.auto import tqdm

    cfg = encoder.config
    dim = getattr(cfg, "d_model", None) or cfg.hidden_size  # T5 | RoBERTa
    heads = nn.ModuleList(nn.Linear(dim, len(v) + 1) for v in ATTRS.values())
    params = [p for p in encoder.parameters() if p.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rng = np.random.default_rng([seed, 7])

    def logits(captions: list[str]) -> list[torch.Tensor]:
        pooled = features(encoder, tokenizer(captions, padding=True, return_tensors="pt"))  # [B, D]
        return [h(pooled) for h in heads]

    def captions(n: int, r: np.random.Generator, split: str = "train", vocab: str = words) -> list[str]:
        return [synth.caption(synth.sample_attributes(r), r, split, vocab) for _ in range(n)]

    encoder.train()
    for step in tqdm(range(steps), desc="text encoder", disable=not progress, dynamic_ncols=True):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))
        batch = captions(batch_size, rng)
        y = labels(batch)  # [B, A]
        loss = sum(nn.functional.cross_entropy(lg, y[:, a]) for a, lg in enumerate(logits(batch)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    encoder.eval()
    result = {}
    with torch.no_grad():
        for name, split in (("train_words", "train"), ("heldout", "heldout")):
            test = captions(512, np.random.default_rng(synth.HELDOUT_SEED_OFFSET + seed), split, split)
            pred = torch.stack([lg.argmax(-1) for lg in logits(test)], dim=1)  # [512, A]
            result[name] = (pred == labels(test)).float().mean().item()
    return result
