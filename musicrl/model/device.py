"""Which torch device a run uses: 'auto' is CUDA when there is one, else the CPU."""

from __future__ import annotations

from musicrl.errors import UserError


def resolve_device(spec="auto"):
    """'auto' -> cuda if available else cpu; 'cpu', 'cuda', 'cuda:1', ... as given (checked).
    torch is imported here, not at module level, so the CLI's --help stays instant."""
    import torch

    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise UserError(f"unknown device {spec!r} (cpu, cuda, cuda:1, ... or auto)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {spec!r} asked for, but this torch sees no CUDA device")
    return device
