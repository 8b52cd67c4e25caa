"""Data-parallel training on ``torch.distributed``: the process group, its checks, and the few collectives
the training loop needs.

:func:`fit <pyro_causalvae.train.fit>` runs data-parallel when the environment that ``torchrun`` sets is
present (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), or when a
process group is already initialised::

    torchrun --nproc_per_node 4 -m pyro_causalvae train --dataset pendulum --out runs/ddp --device cuda

Backend: NCCL on GPUs, gloo on CPUs. Each rank binds ``cuda:LOCAL_RANK``. Nothing here is home-made
communication: it is ``torch.distributed`` and ``DistributedDataParallel`` (see :mod:`pyro_causalvae.train`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

_RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK")


@dataclass(frozen=True)
class Context:
    """Where this process stands in a data-parallel run (``world_size == 1``: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    #: ``True`` when :func:`setup` created the process group (and :func:`teardown` may destroy it)
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset).

    :raises ValueError: when it is not a positive integer.
    """
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"environment variable WORLD_SIZE={raw!r} is not a positive integer")
    return n


def env_rank() -> int:
    """This process's rank: from an initialised process group, else ``RANK`` (0 when unset)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def setup(device: str | torch.device, distributed: bool | None = None, timeout_s: float = 1800.0) -> Context:
    """Join (or create) the process group when running data-parallel, and pick this rank's device.

    :param device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Under ``torchrun`` with CUDA each rank uses
        ``cuda:LOCAL_RANK`` (an explicit index is refused there: it would put every rank on one GPU).
    :param distributed: ``None`` (default): data-parallel when a process group is initialised or
        ``WORLD_SIZE`` > 1; ``False``: a single process even under ``torchrun``; ``True``: require it.
    :param timeout_s: collective timeout.
    :returns: the :class:`Context`.
    :raises ValueError: for a missing rendezvous (``WORLD_SIZE`` > 1 without ``MASTER_ADDR`` /
        ``MASTER_PORT`` / ``RANK``), ``distributed=True`` without ``torchrun``, CUDA requested but not
        available, more local ranks than GPUs, or ranks on different device types (mixed devices).
    """
    try:
        device = torch.device(device)
    except (TypeError, RuntimeError, ValueError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {str(device)!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    initialised = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialised else env_world_size()
    if distributed is False or (distributed is None and world == 1):
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return Context(device=device)
    if world == 1:
        raise ValueError("distributed=True needs a data-parallel launch: run under torchrun (WORLD_SIZE > 1), "
                         "e.g. torchrun --nproc_per_node 2 -m pyro_causalvae train ...")
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed; data-parallel training is unavailable")
    owns = False
    if not initialised:
        missing = [v for v in _RENDEZVOUS if not os.environ.get(v)]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} but the rendezvous is incomplete: {', '.join(missing)} not set "
                             "(launch with torchrun, which sets them, or set MASTER_ADDR, MASTER_PORT, RANK and LOCAL_RANK)")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None and world > 1 and not initialised:
            raise ValueError(f"device {str(device)!r} names one GPU, but under torchrun each rank uses cuda:LOCAL_RANK; pass 'cuda'")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s): "
                             "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    if not initialised:
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kw)
        owns = True
    ctx = Context(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device, owns_group=owns)
    kinds = [None] * ctx.world_size
    dist.all_gather_object(kinds, device.type)
    if len(set(kinds)) > 1:
        raise ValueError(f"mixed devices across ranks: {kinds} (every rank must train on the same device type)")
    backend = dist.get_backend()
    if device.type == "cpu" and backend == "nccl":
        raise ValueError("the process group uses NCCL but this rank trains on the CPU: use gloo for CPU training")
    return ctx


def teardown(ctx: Context) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_mean_(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Average ``t`` over ranks in place (no-op for a single process)."""
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(ctx.world_size)
    return t


def all_true(flag: bool, ctx: Context) -> bool:
    """``True`` when ``flag`` holds on every rank."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast(obj, ctx: Context):
    """``obj`` of rank 0, on every rank (picklable objects within the trusted process group)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier(device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
