"""Progress reporting: one log line per phase of the work, with its time.

The library logs to the ``"pyro_causalvae"`` logger (:data:`log`) at level INFO: reading and checking data,
decoding images, the causal-order search and warm start, each training epoch, pruning, evaluation. Nothing
is printed unless logging is configured; the command line prints these lines (also under
``--no-progress``, which turns off only the tqdm bars). In a script or notebook::

    import logging
    logging.basicConfig(level=logging.INFO, format="%(message)s")
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["log", "phase", "Phase", "log_to_stdout"]

#: The package's logger.
log = logging.getLogger("pyro_causalvae")


@dataclass
class Phase:
    """A phase in progress: set ``note`` to add a detail to its log line; ``seconds`` is set at the end."""

    name: str
    note: str = ""
    seconds: float = 0.0


@contextmanager
def phase(name: str) -> Iterator[Phase]:
    """Time a phase and log ``"<name>: <note> (<seconds> s)"`` when it ends (not when it raises)."""
    p = Phase(name)
    t0 = time.perf_counter()
    yield p
    p.seconds = time.perf_counter() - t0
    log.info("%s%s (%.1f s)", p.name, f": {p.note}" if p.note else "", p.seconds)


class _StdoutHandler(logging.Handler):
    """Writes each record to the *current* ``sys.stdout`` through ``tqdm.write`` (bars stay intact)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def log_to_stdout() -> None:
    """Print the package's INFO lines on standard output (what the command line does); idempotent."""
    if not any(isinstance(h, _StdoutHandler) for h in log.handlers):
        log.addHandler(_StdoutHandler())
    log.setLevel(logging.INFO)
