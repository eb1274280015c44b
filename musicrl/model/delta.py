"""A fine-tuned model shipped as its difference from a base: only the tensors that changed, in fp16.

A delta directory holds `delta.json` (the base model's name, the dtype) and `delta.safetensors`
(tuned - base for each changed tensor). `MusicGenPolicy.from_pretrained` loads the base, then adds
the delta; everything else (config, tokenizer, codec) is the base's. Storing the difference rather
than the weights keeps a full fine-tune small (a RL step moves weights by ~1e-3, which fp16 holds to
~1e-6) and leaves the unchanged tensors (text encoder, codec) out entirely.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from musicrl.errors import UserError

MANIFEST = "delta.json"
TENSORS = "delta.safetensors"


def base_of(path: str | Path) -> str | None:
    """The base model a delta directory applies to; None if `path` is not a delta directory."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return None
    try:
        base = json.loads(manifest.read_text())["base"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read the weight delta's {manifest}: {type(e).__name__}: {e}") from None
    if not isinstance(base, str) or not base:
        raise UserError(f"{manifest} names no base model")
    return base


def write_delta(base: torch.nn.Module, tuned: torch.nn.Module, out_dir: str | Path, base_name: str,
                info: dict | None = None) -> dict:
    """Write `tuned - base` for every tensor that differs (fp16) to `out_dir`; returns the manifest."""
    from safetensors.torch import save_file

    b, t = base.state_dict(), tuned.state_dict()
    if b.keys() != t.keys():
        raise UserError("the tuned model's tensors are not the base model's: not a fine-tune of it")
    diff = {k: (t[k].float() - b[k].float()).to(torch.float16).contiguous()
            for k in sorted(t) if not torch.equal(t[k], b[k])}  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(diff, str(out / TENSORS))
    manifest = {"base": base_name, "dtype": "float16", "tensors": len(diff),
                "parameters": sum(v.numel() for v in diff.values()), **(info or {})}  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@torch.no_grad()
def apply_delta(model: torch.nn.Module, path: str | Path) -> None:
    """Add a delta directory's differences to `model`'s weights in place; one-line errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        diff = load_file(str(Path(path) / TENSORS))
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot read the weight delta {Path(path) / TENSORS}: {str(e).splitlines()[0]}") from None
    params = model.state_dict()
    for name, d in diff.items():
        if name not in params or params[name].shape != d.shape:
            raise UserError(f"the weight delta in {path} does not fit its base model (tensor {name})")
        p = params[name]
        p.copy_((p.float() + d.to(p.device).float()).to(p.dtype))
