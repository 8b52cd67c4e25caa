"""Resource limits checked before work starts: memory a load or a model would need, sizes of inputs.

- :func:`memory_budget` -- how many bytes one allocation-heavy step may use: 80 % of the memory the
  operating system reports as available, or the environment variable ``PYRO_CAUSALVAE_MEMORY_LIMIT``
  (bytes, or with a suffix ``K``, ``M``, ``G``, ``T``), whichever is smaller.
- :func:`check_memory` -- refuse a step that would need more than the budget, in one line.
- :func:`model_bytes` -- bytes of a model's parameters and buffers, measured by running its constructor
  with every large tensor placed on PyTorch's ``meta`` device (nothing is allocated).
- :func:`out_of_memory_message` -- one line for an allocator failure (``MemoryError``, torch's
  "can't allocate memory", CUDA out of memory), or ``None`` for another error.

Nothing here imports the model: the constructors are passed in.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: environment variable that lowers the memory budget (bytes; suffixes K, M, G, T are powers of 1024)
MEMORY_ENV = "PYRO_CAUSALVAE_MEMORY_LIMIT"
#: fraction of the available memory one step may take
AVAILABLE_FRACTION = 0.8
_SUFFIX = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def fmt_bytes(n: float) -> str:
    """``n`` bytes as a short text (``"1.5 GB"``; powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"  # pragma: no cover


def _env_limit() -> int | None:
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if not raw:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", raw.upper())
    if m is None:
        raise ValueError(f"environment variable {MEMORY_ENV}={raw!r} must be a number of bytes, e.g. 2G or 500M")
    return int(float(m.group(1)) * _SUFFIX[m.group(2)])


def available_memory() -> int | None:
    """Bytes of memory the operating system can still give (``MemAvailable`` on Linux), or ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget() -> tuple[int | None, str]:
    """``(bytes, where the figure comes from)``; ``(None, ...)`` when nothing bounds it."""
    env = _env_limit()
    avail = available_memory()
    from_os = None if avail is None else int(avail * AVAILABLE_FRACTION)
    if env is not None and (from_os is None or env <= from_os):
        return env, f"{MEMORY_ENV}={os.environ[MEMORY_ENV].strip()}"
    if from_os is None:
        return None, "no limit known"
    return from_os, f"{int(AVAILABLE_FRACTION * 100)}% of the {fmt_bytes(avail)} of memory available"


def check_memory(nbytes: int, what: str) -> None:
    """Raise ``ValueError`` when ``what`` needs more than :func:`memory_budget` (one line)."""
    budget, source = memory_budget()
    if budget is not None and nbytes > budget:
        raise ValueError(f"{what} needs {fmt_bytes(nbytes)} of memory, more than the budget of {fmt_bytes(budget)} "
                         f"({source}); set {MEMORY_ENV} to change the budget")


class _LargeOnMeta(TorchDispatchMode):
    """Creates every tensor of more than ``limit`` elements on the meta device (no memory)."""

    def __init__(self, limit: int = 1 << 14):
        super().__init__()
        self.limit = limit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        size = args[0] if args else kwargs.get("size")
        if "device" in kwargs and isinstance(size, (list, tuple)) and all(isinstance(s, int) for s in size):
            if math.prod(size) > self.limit:
                kwargs["device"] = torch.device("meta")
        return func(*args, **kwargs)


def model_bytes(build: Callable[[], torch.nn.Module]) -> int:
    """Bytes of the parameters and buffers of ``build()``, without allocating its large tensors.

    :param build: a constructor call, e.g. ``lambda: CausalVAE(...)``.
    :raises Exception: whatever the constructor raises for bad arguments.
    """
    with _LargeOnMeta():
        module = build()
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def size_fields(kwargs: dict) -> dict[str, int]:
    """The integer-valued (size) fields of a model's arguments."""
    return {k: v for k, v in kwargs.items() if isinstance(v, int) and not isinstance(v, bool)}


#: the largest value a size field (widths, channels, latent dims) may take
MAX_SIZE_FIELD = 1 << 16


def check_model_build(build: Callable[[], torch.nn.Module], kwargs: dict, where: str, factor: int = 1) -> None:
    """Refuse a model whose sizes are out of range or whose tensors would not fit in memory.

    :param build: the constructor call.
    :param kwargs: its keyword arguments (the integer fields are named in the message).
    :param where: what the arguments come from (``"RUN/config.json"``, ``"the command line"``).
    :param factor: memory per parameter byte that the caller will need (4 for training with Adam:
        parameters, gradients and two moments).
    :raises ValueError: one line naming the field(s).
    """
    sizes = size_fields(kwargs)
    for name, value in sizes.items():
        if value > MAX_SIZE_FIELD:
            shown = f"{value:.3g}" if value >= 10**12 else str(value)
            raise ValueError(f"{where}: model field {name!r} = {shown} is out of range (at most {MAX_SIZE_FIELD})")
    try:
        nbytes = model_bytes(build)
    except (MemoryError, RuntimeError, TypeError, OverflowError) as err:
        shown = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ValueError(f"{where}: cannot build a model of these sizes ({shown}): {type(err).__name__}: "
                         f"{_first_line(err)}") from err
    shown = ", ".join(f"{k}={v}" for k, v in sizes.items()) or "default sizes"
    check_memory(nbytes * factor, f"{where}: the model ({shown}; {fmt_bytes(nbytes)} of parameters"
                 + (f", x{factor} to train" if factor > 1 else "") + ")")


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def out_of_memory_message(err: BaseException) -> str | None:
    """One line for an allocator failure, else ``None``."""
    text = str(err)
    if isinstance(err, MemoryError) or isinstance(err, getattr(torch, "OutOfMemoryError", ())) or \
            "can't allocate memory" in text or "out of memory" in text.lower():
        m = re.search(r"tried to allocate ([0-9.]+ ?[A-Za-z]*)", text)
        need = f" (an allocation of {m.group(1)})" if m else ""
        budget, source = memory_budget()
        have = f"; the budget is {fmt_bytes(budget)} ({source})" if budget is not None else ""
        return f"out of memory{need}: use smaller images, a smaller --batch-size or fewer images{have}"
    return None
