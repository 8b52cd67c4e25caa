"""Data-parallel training on ``torch.distributed``: the process group, its checks, and the few collectives
the training loop needs.

:func:`fit <pyro_causalvae.train.fit>` runs data-parallel when the environment that ``torchrun`` sets is
present (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), or when a
process group is already initialised::

    torchrun --nproc_per_node 4 -m pyro_causalvae train --dataset pendulum --out runs/ddp --device cuda

Backend: NCCL on GPUs, gloo on CPUs. Each rank binds ``cuda:LOCAL_RANK``. The communication is
``torch.distributed`` and ``DistributedDataParallel`` (see :mod:`pyro_causalvae.train`).

A lost rank ends the job in bounded time (``peer_timeout``, default :data:`DEFAULT_PEER_TIMEOUT` s):

- :class:`Watchdog` -- a thread on every rank that beats a counter in the process group's key-value
  store and watches the others'. A rank whose counter stands still for ``peer_timeout`` seconds
  (``SIGSTOP``, a hang, a lost node) makes the others print one line and exit with status 2: a blocked
  collective cannot be interrupted any other way. A rank that dies closes its connections, and the
  others' next collective fails at once (:class:`PeerLost`).
- The collective timeout is ``peer_timeout`` plus a margin, so even a deadlock among live ranks ends.
- :func:`on_main` -- work done by rank 0 alone (the causal-order search, pruning) while the others wait
  on the store, not in a collective, so that a long search is not mistaken for a lost rank; rank 0's
  error reaches every rank.
- :func:`raise_if_any`, :func:`check_same` -- an error raised on some ranks (a refused run directory)
  is raised on all, and values that must agree (the step a resumed run starts from) are compared.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

_RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK")
#: seconds a rank may stay silent before the others stop (``fit(peer_timeout=...)``, ``--peer-timeout``)
DEFAULT_PEER_TIMEOUT = 120.0
#: the collective timeout is the peer timeout plus this margin (the watchdog speaks first)
COLLECTIVE_MARGIN = 30.0
_FIT_CALLS = itertools.count()


class PeerLost(RuntimeError):
    """Another rank died or stopped responding; the message names it where known."""


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


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`, checked: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, present here.

    :raises ValueError: naming the device otherwise.
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
    return device


def _attempt_store(world: int, timeout_s: float):
    """Under torchrun's agent store, a store whose keys belong to this restart attempt alone, else ``None``.

    torchrun (``--standalone`` / c10d rendezvous) keeps one store for the whole job, and the default group's
    keys (each rank's Gloo address) stay there across ``--max-restarts``: a rank of the restarted group could
    read a dead rank's address and wait on it until the timeout (measured: "Gloo connectFullMesh failed ...
    Connection refused" after a restart). The prefix ``TORCHELASTIC_RESTART_COUNT`` keeps the attempts apart.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                         timeout=timedelta(seconds=timeout_s))
    return dist.PrefixStore(f"pyro_causalvae/attempt{os.environ['TORCHELASTIC_RESTART_COUNT']}/", base)


def setup(device: str | torch.device, distributed: bool | None = None,
          timeout_s: float = DEFAULT_PEER_TIMEOUT + COLLECTIVE_MARGIN) -> Context:
    """Join (or create) the process group when running data-parallel, and pick this rank's device.

    :param device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Under ``torchrun`` with CUDA each rank uses
        ``cuda:LOCAL_RANK`` (an explicit index is refused there: it would put every rank on one GPU).
    :param distributed: ``None`` (default): data-parallel when a process group is initialised or
        ``WORLD_SIZE`` > 1; ``False``: a single process even under ``torchrun``; ``True``: require it.
    :param timeout_s: collective timeout (seconds) of a process group created here.
    :returns: the :class:`Context`.
    :raises ValueError: for a missing rendezvous (``WORLD_SIZE`` > 1 without ``MASTER_ADDR`` /
        ``MASTER_PORT`` / ``RANK``), ``distributed=True`` without ``torchrun``, CUDA requested but not
        available, more local ranks than GPUs, or ranks on different device types (mixed devices).
    """
    device = check_device(device)
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
        store = _attempt_store(world, timeout_s)
        if store is not None:
            kw.update(store=store, rank=int(os.environ["RANK"]), world_size=world)
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


# ----------------------------------------------------------------------------------------------------
# lost ranks, errors on some ranks, rank-0 work
# ----------------------------------------------------------------------------------------------------
def _say_and_exit(message: str) -> None:
    sys.stderr.write(f"pyro-causalvae: error: {message}\n")
    sys.stderr.flush()
    os._exit(2)


class Watchdog:
    """Heartbeats through the process group's store; ends this process when a peer falls silent.

    :param ctx: the :class:`Context` (nothing is started for a single process).
    :param timeout_s: seconds of silence after which a peer counts as lost.
    :param on_lost: called with the one-line message instead of exiting (for tests).
    """

    def __init__(self, ctx: Context, timeout_s: float = DEFAULT_PEER_TIMEOUT,
                 on_lost: Callable[[str], None] = _say_and_exit):
        self.ctx, self.timeout_s, self.on_lost = ctx, float(timeout_s), on_lost
        self.store = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not ctx.distributed:
            return
        try:
            base = dist.distributed_c10d._get_default_store()
        except (RuntimeError, ValueError, AttributeError):  # pragma: no cover - a group without a store
            return
        self.store = dist.PrefixStore(f"pyro_causalvae/fit{next(_FIT_CALLS)}/", base)
        self.store.add(f"hb{ctx.rank}", 1)
        self._thread = threading.Thread(target=self._run, name="pyro_causalvae-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = min(1.0, self.timeout_s / 5)
        seen = {r: (-1, time.monotonic()) for r in range(self.ctx.world_size) if r != self.ctx.rank}
        while not self._stop.wait(interval):
            try:
                self.store.add(f"hb{self.ctx.rank}", 1)
                now = time.monotonic()
                for r in list(seen):
                    if self.store.check([f"done{r}"]):
                        del seen[r]
                        continue
                    beat = self.store.add(f"hb{r}", 0)
                    last, since = seen[r]
                    if beat != last:
                        seen[r] = (beat, now)
                    elif now - since > self.timeout_s:
                        self._lost(f"rank {r} has not responded for {now - since:.0f} s (it stopped, hung or lost "
                                   f"its node); rank {self.ctx.rank} stops too (peer_timeout {self.timeout_s:g} s)")
                        return
            except Exception as err:  # the store itself is gone (its host stopped or died)
                if not self._stop.is_set():
                    self._lost(f"rank {self.ctx.rank} lost the rendezvous store ({str(err).splitlines()[0] if str(err) else type(err).__name__}): "
                               "another rank or the launcher died or stopped responding")
                return

    def _lost(self, message: str) -> None:
        if not self._stop.is_set():
            self.on_lost(message)

    def wait_for(self, key: str, what: str) -> None:
        """Block until ``key`` is set in the store (rank 0's work is done), while the heartbeats go on."""
        if self.store is None:
            return
        while True:
            try:
                # short waits: the store's client serves one request at a time, and a long wait would hold
                # back this rank's heartbeats (the others would count it as lost)
                self.store.wait([key], timedelta(seconds=min(0.5, self.timeout_s / 10)))
                return
            except dist.DistStoreError:  # a chunk timed out: rank 0 is still working (or the watchdog speaks)
                continue
            except RuntimeError as err:  # pragma: no cover - older torch raise a plain RuntimeError
                if "timeout" in str(err).lower():
                    continue
                raise PeerLost(f"rank {self.ctx.rank} lost rank 0 while waiting for {what}: {err}") from err

    def close(self) -> None:
        """Stop beating and tell the others that this rank is done (not lost)."""
        if self.store is None or self._stop.is_set():
            return
        self._stop.set()
        try:
            self.store.set(f"done{self.ctx.rank}", "1")
        except Exception:  # noqa: BLE001 - the group is going away anyway
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)


_ON_MAIN = itertools.count()


def on_main(fn: Callable[[], object], ctx: Context, watch: Watchdog | None, what: str):
    """``fn()`` computed by rank 0 and returned on every rank (rank 0's exception raised on every rank).

    The other ranks wait on the store (heartbeats continue), so work longer than the collective timeout
    is fine.
    """
    if not ctx.distributed:
        return fn()
    key = f"on_main{next(_ON_MAIN)}"
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
            error = err
        if watch is not None and watch.store is not None:
            watch.store.set(key, "1")
    elif watch is not None:
        watch.wait_for(key, what)
    box = broadcast((result, None if error is None else f"{type(error).__name__}: {error}"), ctx)
    if error is not None:
        raise error
    if box[1] is not None:
        raise RuntimeError(f"rank 0 failed during {what}: {box[1]}")
    return box[0]


def raise_if_any(error: Exception | None, ctx: Context) -> None:
    """Raise on every rank when ``error`` is set on any (the lowest failing rank's message)."""
    if not ctx.distributed:
        if error is not None:
            raise error
        return
    messages = [None] * ctx.world_size
    dist.all_gather_object(messages, None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    for r, m in enumerate(messages):
        if m is not None:
            kind = FileNotFoundError if m[0] == "FileNotFoundError" else ValueError
            raise kind(f"(rank {r}) {m[1]}")


def check_same(value, ctx: Context, what: str) -> None:
    """Raise ``ValueError`` on every rank unless ``value`` is equal on all of them.

    :param what: what the value is (``"the checkpoint each rank resumes from"``), for the message.
    """
    if not ctx.distributed:
        return
    values = [None] * ctx.world_size
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        shown = "; ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise ValueError(f"the ranks disagree on {what} ({shown})")
