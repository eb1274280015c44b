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
"""

from __future__ import annotations

import os
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
