"""Data-parallel training across processes (torchrun / accelerate launch), and a no-op in one process.

Every process builds the same batches (they are a pure function of seed and epoch) and trains its own slice
of each global batch. Before the backward pass the trained-token count is summed across processes so each
loss is normalised by the *global* count; after it the gradients of the trainable parameters are summed
(the all-reduce DDP performs). Every process then takes the same optimizer step, so the result equals a
single-process run at the same global batch. We all-reduce by hand rather than wrap the model in
``DistributedDataParallel`` because the loss runs the decoder and the LM head separately (see ``loss``),
which DDP's forward hooks would not see. Process 0 alone writes files and emits events.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, items: list) -> list:
        """This process's slice of a global batch (or of the validation set)."""
        return items[self.rank :: self.size]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of small numbers across processes."""
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def sum_gradients(self, parameters) -> None:
        if not self.active:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if grads:  # one flat buffer: one collective instead of hundreds of small ones
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def broadcast(self, value):
        """Process 0's ``value`` everywhere (e.g. a run id or a random seed)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True everywhere when any process says True (e.g. a cancellation seen by process 0)."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def current_world() -> World:
    """The process group set up by the launcher, joined on first use; ``World()`` when run alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return World(rank=dist.get_rank(), size=dist.get_world_size())
