"""Data-parallel training across the processes `torchrun` starts: which share of a step is this
process's, and the collectives the trainers need. One process (no torchrun) is `Ranks()`: every
method is then the identity or a no-op, so a single-process run is unchanged bit for bit.

Why plain `torch.distributed` and not the `DistributedDataParallel` wrapper (or accelerate's
`prepare`, which wraps in it): the trainers do not train through the model's `forward`. They
teacher-force through `MusicGenPolicy.distributions`, roll out through the fast engine (which reads
the weights directly), and with `skip_flat_groups` one process may have no row to back-propagate in
a step where another has several; DDP needs every rank to run the same forward/backward passes or it
hangs. So each process accumulates the gradient of its rows, weighted by their share of the *global*
batch, and `sum_grads` all-reduces it once per optimizer step (what DDP's reducer does, with
`no_sync` over the micro-batches): the sum is the one-process gradient, and every rank then takes
the same optimizer step. torchrun launches, rendezvouses and restarts; nothing here launches.

With `fsdp` (full fine-tuning of a model too large to train whole on one GPU), `shard` splits the
decoder (each layer a unit) of the policy and of its frozen reference over the processes with torch's
FSDP2 `fully_shard`: FSDP gathers a unit's weights for its forward and backward and reduce-scatters
its gradients (summed, as here), so each process holds 1/world of the weights, gradients and AdamW
state. Rollouts read the whole decoder: they run inside `gathered`. Checkpoints keep the one-process
layout (whole tensors): `full_state` gathers them for rank 0, `copy_full` gives each process its
shard back on resume, so a checkpoint resumes with or without FSDP, on any number of processes.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from musicrl.errors import UserError


@dataclass(frozen=True)
class Ranks:
    """This process's place among `world` data-parallel processes (torchrun's RANK, WORLD_SIZE)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The process that logs, evaluates and writes checkpoints."""
        return self.rank == 0

    def share(self, n: int, what: str) -> slice:
        """This rank's contiguous share of `n` items in global order (rank r: the r-th n/world)."""
        if n % self.world:
            raise UserError(f"{what}={n} must be divisible by the number of processes ({self.world})")
        size = n // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def part(self, n: int) -> slice:
        """This rank's contiguous part of `n` items when they need not divide evenly (parts differ by
        at most one item)."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def gather_parts(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's `part(n)` rows [len(part), ...] (at least one each: n >= world) -> [n, ...]."""
        if self.world == 1:
            return x
        size = -(-n // self.world)  # padded to the largest part, as all_gather needs
        padded = torch.cat([x, x.new_zeros((size - len(x), *x.shape[1:]))])
        every = self.gather(padded)  # [world * size, ...]
        return torch.cat([every[r * size : r * size + len(range(n)[Ranks(r, self.world).part(n)])] for r in range(self.world)])

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's `x` (the same shape on each), concatenated along dim 0 in rank order."""
        if self.world == 1:
            return x
        import torch.distributed as dist

        if x.dtype == torch.bool:  # (gloo gathers no bool)
            return self.gather(x.to(torch.uint8)).bool()
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of `x` over the ranks (a new tensor)."""
        if self.world == 1:
            return x
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        return x

    def sum_grads(self, params: list[torch.Tensor]) -> None:
        """Replace each parameter's gradient by its sum over the ranks. A gradient that is None on
        every rank stays None (the optimizer skips it, as it would in one process); None on some
        ranks only (no rows there this step) counts as zeros."""
        if self.world == 1:
            return
        import torch.distributed as dist

        params = [p for p in params if not _sharded(p)]  # FSDP has reduce-scattered (summed) those already
        if not params:
            return
        device = params[0].device
        has = self.sum(torch.tensor([float(p.grad is not None) for p in params], device=device))
        for p, any_grad in zip(params, has.tolist()):
            if any_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)  # one call per tensor: simple; the step's cost is the rollouts

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values into every rank's `tensors` (in place): all ranks start from one state."""
        if self.world == 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in tensors:
                if not _sharded(t):  # (a shard is each process's own part of one tensor)
                    dist.broadcast(t.data, src=0)

    def write(self, fn) -> None:
        """`fn()` on rank 0 alone, between two barriers: it writes once every process has finished
        the step (their weights are the same), and no process goes on to read or resume from what it
        writes (a checkpoint) before it is complete."""
        self.barrier()
        if self.main:
            fn()
        self.barrier()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def join(device: torch.device) -> tuple[Ranks, torch.device]:
    """This process's `Ranks` from torchrun's environment, joining the process group once per process
    (gloo on a CPU, NCCL on GPUs), and its device (a GPU run: the GPU of its LOCAL_RANK). Without
    torchrun (no WORLD_SIZE, or 1): `Ranks()` and `device` unchanged."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size()), device


def leave() -> None:
    """End this process's part in the process group (the CLI, once training is over)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- FSDP ----------------------------------------------------------------------------------------


def _sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def shard(ranks: Ranks, *policies) -> bool:
    """Shard each `MusicGenPolicy`'s decoder over the processes (FSDP2: one unit a decoder layer, then
    the rest of the decoder); None entries (LoRA's reference) are skipped. The text encoder and codec
    stay whole (frozen, small next to the decoder). Gradients are summed, not averaged: each process
    already weighs its rows by their share of the global batch. Returns whether anything was sharded
    (nothing in one process)."""
    if ranks.world == 1:
        return False
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for policy in policies:
        if policy is None:
            continue
        decoder = policy.model.decoder
        for layer in decoder.model.decoder.layers:
            fully_shard(layer)
        fully_shard(decoder)
        for unit in decoder.modules():
            if isinstance(unit, FSDPModule):
                unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-scaled sum)
                unit.set_gradient_divide_factor(1.0)
    return True


@contextmanager
def gathered(*policies):
    """Inside the block each policy's sharded decoder is whole on every process (FSDP's all-gather; a
    no-op unsharded): for the rollout engine, which reads the weights directly. Every process must
    enter it together."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for p in policies if p is not None for m in p.model.decoder.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def full_state(obj, ranks: Ranks):
    """`obj` (nested dicts, lists, tuples of tensors) with each FSDP shard replaced by the whole tensor
    on rank 0's CPU (None on the others): what a one-process checkpoint holds. Every process must call
    it, in the same order (one all-gather a tensor, so a GPU holds one whole tensor at a time)."""
    if _sharded(obj):
        whole = obj.full_tensor()
        return whole.cpu() if ranks.main else None
    if isinstance(obj, dict):
        return {k: full_state(v, ranks) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(full_state(v, ranks) for v in obj)
    return obj


def copy_full(targets: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    """Copy whole tensors `values` into `targets`, each a plain tensor or an FSDP shard (it takes its
    own part of the value: every process holds the value, so nothing is sent)."""
    from torch.distributed.tensor import distribute_tensor

    with torch.no_grad():
        for t, v in zip(targets, values):
            v = v.to(t.device, t.dtype)
            if _sharded(t):
                v = distribute_tensor(v, t.device_mesh, t.placements, src_data_rank=None)
            t.copy_(v)


def shard_optimizer_state(state: dict, opt: torch.optim.Optimizer) -> dict:
    """A one-process optimizer state dict (whole tensors) made to fit `opt`, whose parameters may be
    FSDP shards: each per-parameter tensor (AdamW's moments) becomes a shard like its parameter."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in opt.param_groups for p in group["params"]]  # the state dict's ids, in order
    out = {**state, "state": {}}
    for i, st in state["state"].items():
        p = params[i]
        out["state"][i] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                           if _sharded(p) and torch.is_tensor(v) and v.shape == p.shape else v for k, v in st.items()}  # fmt: skip
    return out
