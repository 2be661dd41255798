"""Multi-process training helpers: process group, rank-sharded batches, cross-rank BatchNorm.

``affordance-train`` runs data-parallel when started by ``torchrun`` (``WORLD_SIZE`` > 1)::

    # one machine, 4 GPUs (global batch 32 = 8 per process)
    torchrun --standalone --nproc_per_node=4 -m training.train --data-root DATA \
        --split Seen --method selectivecl --model paper --out runs/selcl --batch-size 32

    # two machines, 8 GPUs each (run on both, with the first machine's address)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \
        --rdzv_endpoint=HOST0:29500 -m training.train ... --batch-size 64

    # CPU smoke test (gloo)
    torchrun --standalone --nproc_per_node=2 -m training.train ... --device cpu

``train.batch_size`` is the global batch; each process takes ``batch_size / world_size``
items. Process ``r`` reads items ``r, r + W, r + 2W, ...`` of exactly the global batches a
single process would read with the same seed, and BatchNorm statistics are computed over
the global batch, so a W-process run follows the single-process loss curve up to float
reduction order (for augmentation-free data and deterministic methods).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Sampler

__all__ = [
    "CrossRankBatchNorm2d",
    "DistContext",
    "ShardedBatchSampler",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "convert_batchnorm",
    "current",
    "init_distributed",
    "rank_zero_first",
    "shutdown_distributed",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        world_size: number of processes (1 without torchrun).
        rank: global rank in [0, world_size).
        local_rank: rank on this machine (selects the CUDA device).
        backend: ``nccl``, ``gloo`` or None when not distributed.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Joins the process group when launched by torchrun with ``WORLD_SIZE`` > 1.

    Args:
        device: the device the user asked for (``choose_device``); CUDA selects the NCCL
            backend and the process's ``cuda:LOCAL_RANK``, anything else gloo on the CPU.

    Returns:
        The context and the device this process trains on (``device`` unchanged when not
        distributed).

    Raises:
        RuntimeError: if torchrun's rendezvous variables are missing or there are fewer
            visible GPUs than processes on this machine.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext(), device
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} is not set; launch "
            f"with torchrun --nproc_per_node=N -m training.train ..."
        )
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                f"CUDA device(s) visible; lower --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(minutes=30),
            **({"device_id": device} if backend == "nccl" else {}),
        )
    return DistContext(world, rank, local_rank, backend), device


def shutdown_distributed(ctx: DistContext, wait: bool = True) -> None:
    """Leaves the process group (no-op when not distributed).

    Args:
        ctx: the context from :func:`init_distributed`.
        wait: first wait for every process (False after an error, which must not hang).
    """
    if ctx.enabled and dist.is_initialized():
        try:
            if wait:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def current() -> DistContext:
    """The context of an already initialised process group (single-process when none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(
        dist.get_world_size(), dist.get_rank(), _env_int("LOCAL_RANK", 0), dist.get_backend()
    )


def barrier() -> None:
    """``dist.barrier()`` when a process group is active."""
    if current().enabled:
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Runs the block on rank 0 first, then on the other ranks (e.g. building a shared cache)."""
    ctx = current()
    if ctx.enabled and not ctx.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if ctx.enabled and ctx.is_main:
            dist.barrier()


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum of a tensor over the ranks (the tensor itself when not distributed)."""
    if not current().enabled:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(values: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Mean over the ranks of every scalar in ``values``; every rank must pass the same keys.

    Args:
        values: name -> scalar tensor (any device).
        device: where the collective runs (the process's CUDA device with NCCL, else CPU).

    Returns:
        name -> scalar float tensor on the CPU.
    """
    ctx = current()
    if not ctx.enabled or not values:
        return {k: v.detach().float().cpu() for k, v in values.items()}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()).to(device) for k in keys])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked = (stacked / ctx.world_size).cpu()
    return dict(zip(keys, stacked.unbind(0), strict=True))


class ShardedBatchSampler(Sampler[list[int]]):
    """Takes every ``world_size``-th index of each global batch, starting at ``rank``.

    Args:
        batch_sampler: yields the global batches (e.g. a ``BatchSampler`` over a shuffled
            ``RandomSampler``); every rank must build it with the same seed.
        world_size: number of processes; must divide every global batch size.
        rank: this process's rank.
    """

    def __init__(self, batch_sampler: Sampler[list[int]], world_size: int, rank: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.batch_sampler = batch_sampler
        self.world_size = world_size
        self.rank = rank

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            if len(batch) % self.world_size:
                raise RuntimeError(
                    f"a global batch of {len(batch)} items does not split over "
                    f"{self.world_size} processes"
                )
            yield list(batch)[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batches of all ranks (any backend).

    ``nn.SyncBatchNorm`` only runs on GPUs; this layer all-reduces the per-channel count, sum
    and sum of squares (in float64) with the differentiable ``torch.distributed.nn``
    all-reduce, so it also works with gloo on the CPU. In eval mode, or without a process
    group, it is an ordinary ``BatchNorm2d``; its state dict has the same keys.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(input)
        x64 = input.double()
        count = torch.full(
            (1,), float(input.numel() // input.shape[1]), dtype=torch.float64, device=input.device
        )
        stats = torch.cat([count, x64.sum((0, 2, 3)), (x64 * x64).sum((0, 2, 3))])
        stats = all_reduce(stats, op=dist.ReduceOp.SUM)
        channels = input.shape[1]
        n = stats[0]
        mean = stats[1 : 1 + channels] / n
        var = (stats[1 + channels :] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(input.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(input.dtype))
        shape = (1, channels, 1, 1)
        out = (x64 - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        out = out.to(input.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Makes every BatchNorm layer of ``module`` normalise over the global batch, in place.

    CUDA uses ``nn.SyncBatchNorm``; other devices :class:`CrossRankBatchNorm2d`. Parameters
    and buffers are shared with the replaced layers (optimizers built before stay valid).

    Returns:
        ``module`` (the same object; its BatchNorm children are replaced).
    """
    if device.type == "cuda":
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if converted is not module:
            raise TypeError("convert_batchnorm expects a container, not a BatchNorm layer")
        return module
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = CrossRankBatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module
