"""torchrun / DistributedDataParallel set-up, and a resumable sharded batch order.

One process per device. ``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
:func:`setup` reads them, joins the process group (NCCL on GPU, gloo on CPU) and picks the
device. A plain ``python``/``distill`` run is a world of one and never touches
``torch.distributed``. Rank 0 alone logs and saves (:attr:`DistContext.is_main`).

:class:`ShardedBatches` is the data order of both stages: epoch ``e`` is
``DistributedSampler(shuffle=True, seed, drop_last=True)`` with ``set_epoch(e)``, cut into
batches, and it can start at any global step, so a resumed run reads exactly the batches an
uninterrupted one would have read.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from distill.errors import ConfigError, DataError

__all__ = [
    "DistContext",
    "setup",
    "cleanup",
    "wrap_ddp",
    "barrier",
    "all_true",
    "from_main",
    "all_gather_objects",
    "ShardedBatches",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise ConfigError(f"environment variable {name}={raw!r} must be an integer") from err


def setup(device: str | torch.device | None = None) -> DistContext:
    """Read torchrun's environment, join the process group, choose the device.

    ``device``: None picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.
    """
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    world = _env_int("WORLD_SIZE", 1)
    if device is None:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(minutes=30),
            device_id=device if device.type == "cuda" else None,
        )
    return DistContext(rank=rank, local_rank=local_rank, world_size=world, device=device)


def cleanup(ctx: DistContext) -> None:
    """Leave the process group (if this process joined one)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel around ``module`` in a world of more than one, else ``module``."""
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def average_gradients(module: nn.Module) -> None:
    """Average the gradients of a module DDP does not wrap (the discriminator of stage two)
    over the ranks of the process group, when there is one."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    for g in grads:
        dist.all_reduce(g)
        g.div_(dist.get_world_size())


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_true(flag: bool, ctx: DistContext) -> bool:
    """True only if ``flag`` is true on every rank (every rank gets the same answer)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def from_main(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. "validation improved": only rank 0 knows)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)


def all_gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


class ShardedBatches:
    """This rank's batches of dataset indices from global step ``start`` on, epoch by epoch.

    Every epoch is a fresh ``DistributedSampler`` permutation (``seed`` + epoch) sharded over
    the ranks, cut into ``len(shard) // batch_size`` whole batches. ``set_epoch(e)`` is also
    called on the dataset when it has one (SegmentDataset's crops and noise then depend only on
    ``(seed, epoch, index)``, never on worker count or on where a run was resumed).
    """

    def __init__(self, dataset, batch_size: int, ctx: DistContext, seed: int, start: int = 0):
        self.dataset = dataset
        self.batch_size = batch_size
        self.ctx = ctx
        self.seed = seed
        self.start = start
        self.sampler = DistributedSampler(
            dataset,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch == 0:
            raise DataError(
                f"the training split has {len(dataset)} items, fewer than batch_size="
                f"{batch_size} x {ctx.world_size} process(es); lower batch_size or prepare "
                "more audio"
            )

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` for this rank."""
        self.sampler.set_epoch(epoch)
        indices = list(self.sampler)
        b = self.batch_size
        return [indices[i * b : (i + 1) * b] for i in range(self.per_epoch)]

    def epochs(self):
        """Yield ``(epoch, batches)`` from ``start`` on: the first epoch may be partial."""
        epoch, skip = divmod(self.start, self.per_epoch)
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            yield epoch, self.epoch_batches(epoch)[skip:]
            epoch, skip = epoch + 1, 0
