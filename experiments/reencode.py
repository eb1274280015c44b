"""How often does re-encoding a clip's WAV give back the codes it was decoded from?

Offline DPO needs each voted clip's tokens. The arena and `musicrl generate` now keep them; votes
on clips stored without them fall back to re-encoding the WAV through the model's codec
(`musicrl.train.pairs.reencode`). This measures what that fallback recovers: the model samples
clips, the codec decodes them, each is written as the 16-bit WAV the vote store keeps
(`musicrl.votes.files.wav_bytes`), read back and encoded again; the re-encoded codes are compared
with the sampled ones, token by token and codebook by codebook.

    python experiments/reencode.py [--model tiny --prompts 64 --duration 4 --guidance 3 --top-k 250]
"""

from __future__ import annotations

import argparse
import io
import json

import soundfile as sf
import torch

from musicrl.logs import quiet_transformers
from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig
from musicrl.tiny.prompts import resolve_prompts
from musicrl.train.pairs import reencode
from musicrl.votes.files import wav_bytes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--top-k", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_transformers()
    policy = MusicGenPolicy.from_pretrained(args.model)
    prompts = resolve_prompts("synth-unseen", args.prompts, seed=args.seed)
    sampling = SamplingConfig(top_k=args.top_k, guidance_scale=args.guidance)
    roll = policy.sample(prompts, 1, args.duration, sampling=sampling, seed=args.seed)
    audio = policy.decode(roll.codes)[:, 0].float().cpu().numpy()  # [B, S]
    same, same_float = [], []
    for codes, a in zip(roll.codes.cpu(), audio):
        wav = io.BytesIO(wav_bytes(a, policy.sample_rate))  # what the store keeps
        again = _encode_wav(wav, policy)
        same.append((again == codes).float())  # [K, T]
        again_float = policy.codec.encode(torch.from_numpy(a)[None, None]).cpu()[0]  # no 16-bit rounding
        same_float.append((again_float == codes).float())
    same, same_float = torch.stack(same), torch.stack(same_float)  # [B, K, T]
    report = {
        "model": args.model, "clips": len(prompts), "duration_s": args.duration, "sampling": sampling.to_dict(),
        "tokens_equal": same.mean().item(), "tokens_equal_per_codebook": same.mean((0, 2)).tolist(),
        "clips_equal": (same.amin((1, 2)) == 1).float().mean().item(),
        "frames_all_codebooks_equal": (same.amin(1) == 1).float().mean().item(),
        "float_audio": {"tokens_equal": same_float.mean().item(),
                        "tokens_equal_per_codebook": same_float.mean((0, 2)).tolist(),
                        "clips_equal": (same_float.amin((1, 2)) == 1).float().mean().item()},
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    return 0


def _encode_wav(wav: io.BytesIO, policy: MusicGenPolicy) -> torch.Tensor:
    """The store's WAV bytes -> codes [K, T], through the same function DPO's fallback uses."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "clip.wav"
        path.write_bytes(wav.getvalue())
        assert sf.info(str(path)).subtype == "PCM_16"
        return reencode(path, policy.codec)


if __name__ == "__main__":
    raise SystemExit(main())
