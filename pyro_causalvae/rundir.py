"""The run directory as a whole: which folders training may write into, and one training at a time.

- :func:`check_out_dir` -- an existing folder that holds files but is not a run of this library is
  refused (its files would be overwritten: they are named), unless ``force``.
- :class:`RunLock` -- ``train.lock`` in the run directory, held (``fcntl.flock``) by the one process that
  trains into it; it records that process's PID and host. A second training, or a resume while one is
  training, is refused with the holder's PID. The operating system releases the lock of a process that
  dies in any way (``SIGKILL`` included), so a lock left by a killed process is recognised as stale and
  taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .checkpoint import CONFIG, checkpoints

try:  # POSIX; elsewhere the lock falls back to O_EXCL + a PID check
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK = "train.lock"
#: the files ``fit`` writes into a run directory (besides checkpoints)
FIT_WRITES = (CONFIG, LOCK)


def is_run(out_dir: Path) -> bool:
    """Whether ``out_dir`` looks like a run directory of this library (checkpoints, a lock, or a
    ``config.json`` with ``"model"`` and ``"fit"`` sections)."""
    if checkpoints(out_dir) or (out_dir / LOCK).exists():
        return True
    cfg = out_dir / CONFIG
    try:
        if cfg.is_file() and cfg.stat().st_size < 50_000_000:
            data = json.loads(cfg.read_text(encoding="utf-8"))
            return isinstance(data, dict) and isinstance(data.get("model"), dict) and isinstance(data.get("fit"), dict)
    except (OSError, ValueError, RecursionError):
        return False
    return False


def check_out_dir(out_dir: str | Path, *, force: bool = False, writes: tuple[str, ...] = FIT_WRITES, flag: str = "force=True") -> None:
    """Refuse to train into a folder that holds files but is not a run of this library.

    :param writes: names of the files that training would write there (those that exist are named).
    :param flag: how the caller overrides (``"force=True"``, ``"--force"``).
    :raises ValueError: for a file, or a non-empty non-run folder without ``force``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a directory")
    if not out_dir.is_dir() or force or is_run(out_dir):
        return
    try:
        entries = sorted(p.name for p in out_dir.iterdir())
    except OSError as err:
        raise ValueError(f"out_dir {out_dir} cannot be listed: {err.strerror}") from err
    if not entries:
        return
    hit = [w for w in writes if w in entries]
    what = (f"training would overwrite {', '.join(hit)} there" if hit else
            f"it holds {len(entries)} other file(s) ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''})")
    raise ValueError(f"out_dir {out_dir} is not empty and is not a run of pyro_causalvae: {what}; choose a new or "
                     f"empty folder, or pass {flag}")


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), to tell it from a reused PID."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return start is None or now is None or now == start


class RunLock:
    """The lock of one training in ``run_dir`` (a context manager; :meth:`release` is idempotent).

    :raises ValueError: when another live process holds it (its PID, host and start time are named).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None
        self._acquire()

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"PID {info['pid']} on host {info['host']}, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def _refuse(self) -> ValueError:
        return ValueError(f"{self.path.parent} is in use by another training ({self._holder()}); wait for it to "
                          f"finish or stop it (a lock left by a process that died is taken over by itself)")

    def _record(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()

    def _acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            self._acquire_excl()
            return
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse() from None
            try:  # the file may have been removed (released) between open and flock: retry on the new one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, self._record())
                os.fsync(fd)
                self.fd = fd
                return
            os.close(fd)
        raise self._refuse()

    def _acquire_excl(self) -> None:  # pragma: no cover - systems without fcntl
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    info = json.loads(self.path.read_text(encoding="utf-8"))
                    stale = info["host"] == socket.gethostname() and not _alive(int(info["pid"]), info.get("start"))
                except (OSError, ValueError, KeyError, TypeError):
                    stale = False
                if not stale:
                    raise self._refuse() from None
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, self._record())
            self.fd = fd
            return
        raise self._refuse()

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing releases the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
