"""Does the tiny LM keep listening to its prompt through a clip, or only at the start?

Two measures per model, both about mode (the attribute every RL route stalls on):
1. How much the prompt's mode moves the LM's next-token log-probs along a clip: per 0.5 s, the
   log-likelihood of the clip under its caption minus under the same caption with the mode flipped
   (no guidance, summed over the codebooks), on corpus clips (teacher forcing) and on the model's own.
   Near 0 after the start means the clip's own past, not the text, predicts its future.
2. Mode adherence of each 2 s third of 6 s clips of fresh prompts, and how often consecutive thirds
   agree (a model that holds its mode agrees with itself; corpus clips, through the codec, ~95%).

    python experiments/text_hold.py --models tiny,runs/oracle4-ema/final    # ~3 min a model on one thread
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from musicrl.logs import quiet_transformers
from musicrl.model.codec import Codec
from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig
from musicrl.tiny import synth
from musicrl.tiny.attributes import estimate_mode
from musicrl.tiny.prompts import flip_attribute, resolve_prompts
from musicrl.train import evaluate as ev

PLAIN = SamplingConfig(top_k=0, guidance_scale=1.0)  # the LM's own distribution


def mode_llr(policy: MusicGenPolicy, prompts: list[str], codes: torch.Tensor) -> torch.Tensor:
    """codes [B, K, T] -> [B, T]: log p(frame | caption) - log p(frame | mode-flipped caption)."""
    flipped = [flip_attribute(p, "mode") for p in prompts]
    with torch.no_grad():
        a = policy.distributions(prompts, codes, PLAIN).gather(-1, codes[..., None])[..., 0]  # [B, K, T]
        b = policy.distributions(flipped, codes, PLAIN).gather(-1, codes[..., None])[..., 0]
    return (a - b).sum(1)


def per_half_second(llr: torch.Tensor, frame_rate: float) -> list[float]:
    step = int(round(frame_rate / 2))
    return [llr[:, i : i + step].sum(1).mean().item() for i in range(0, llr.shape[1], step)]


def _mode_per_third(audio: np.ndarray, sr: int, mode: str) -> list[bool]:
    """audio [S] of 6 s -> whether each 2 s third is heard in `mode`."""
    n = 2 * sr
    return [estimate_mode(audio[i * n : (i + 1) * n], sr) == mode for i in range(3)]


def thirds(policy: MusicGenPolicy, prompts: list[str], seed: int) -> np.ndarray:
    """[P, 3] bool: does each 2 s third of a 6 s clip have the asked mode."""
    s = ev.generate(policy, prompts, 1, 6.0, SamplingConfig(), seed)
    return np.array([_mode_per_third(a[0].float().numpy(), s.sample_rate, synth.parse_prompt(p)["mode"])
                     for p, a in zip(s.prompts, s.audio)])


def corpus_thirds(codec: Codec, n: int) -> np.ndarray:
    """[n, 3] bool: the same for 6 s corpus clips through the codec, against their true mode."""
    out = []
    for e in synth.examples(n, duration_s=6.0, split="heldout"):
        a = codec.decode(codec.encode(torch.from_numpy(e.audio)[None, None]))[0, 0].numpy()
        out.append(_mode_per_third(a, codec.sample_rate, e.attrs.mode))
    return np.array(out)


def _report_thirds(name: str, t: np.ndarray) -> None:
    print(f"{name}: mode adherence per 2 s third of 6 s clips: {' '.join(f'{x:.0%}' for x in t.mean(0))}; "
          f"consecutive thirds agree {np.mean(t[:, 0] == t[:, 1]):.0%} and {np.mean(t[:, 1] == t[:, 2]):.0%} ({len(t)} clips)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny")
    ap.add_argument("--clips", type=int, default=48, help="corpus clips and own clips for the log-likelihood ratio")
    ap.add_argument("--prompts", type=int, default=256, help="fresh prompts drawn; those naming a mode are used for thirds")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_transformers()
    corpus = [e for e in synth.examples(4 * args.clips, split="heldout") if "mode" in synth.parse_prompt(e.caption)][: args.clips]
    codec = Codec.from_pretrained("tiny")
    corpus_codes = codec.encode(torch.from_numpy(np.stack([e.audio for e in corpus]))[:, None])  # [N, K, T]
    _report_thirds("corpus", corpus_thirds(codec, args.prompts // 2))
    prompts = [p for p in resolve_prompts("synth-unseen", args.prompts, args.seed)[: args.prompts] if "mode" in synth.parse_prompt(p)]
    for name in args.models.split(","):
        policy = MusicGenPolicy.from_pretrained(name)
        own = ev.generate(policy, prompts[: args.clips], 1, 4.0, SamplingConfig(), args.seed)  # musicrl eval's sampling
        for what, caps, codes in (("corpus clips", [e.caption for e in corpus], corpus_codes), ("own clips", own.prompts, own.codes)):
            bins = per_half_second(mode_llr(policy, caps, codes), codec.frame_rate)
            print(f"{name}: {what}: mode log-likelihood ratio per 0.5 s (nats): {' '.join(f'{b:.2f}' for b in bins)}")
        _report_thirds(name, thirds(policy, prompts, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
