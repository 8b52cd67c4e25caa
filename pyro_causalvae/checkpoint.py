"""Run directories: checkpoints (tensors only, loaded with ``weights_only=True``) and a JSON config.

A run directory holds ``config.json`` (the model's constructor arguments, the dataset's description and
the training settings) and ``checkpoint-EEEE.pt`` files (state dicts and plain numbers, never pickled
objects). Every file is written to a temporary file in the same folder and renamed into place, so a run
killed at any moment leaves the previous files intact.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

CONFIG = "config.json"
_CKPT = re.compile(r"^checkpoint-(\d+)\.pt$")


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically."""
    _atomic_write(Path(path), lambda f: f.write(json.dumps(obj, indent=2).encode()))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing {path.name} in {path.parent} (is this a run directory?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoint files of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: str | Path, epoch: int, state: dict, keep_last: int = 3) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) as ``checkpoint-<epoch>.pt`` atomically,
    then delete all but the ``keep_last`` newest checkpoints."""
    path = Path(run_dir) / f"checkpoint-{epoch:04d}.pt"
    _atomic_write(path, lambda f: torch.save(state, f))
    for old in checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``: never unpickles arbitrary objects.

    :raises FileNotFoundError: if the file does not exist.
    :raises ValueError: if the file is not a plain-tensor checkpoint (e.g. a pickle with code in it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError / RuntimeError for unsafe or corrupt files
        raise ValueError(
            f"refusing to load {path}: it is not a plain-tensor checkpoint readable with weights_only=True ({type(err).__name__})"
        ) from err


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def load_model(run_dir: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the trained :class:`~pyro_causalvae.model.CausalVAE` of a run directory (latest checkpoint).

    :raises FileNotFoundError: if the folder has no ``config.json`` or no checkpoint.
    """
    from .model import CausalVAE

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    cfg = read_json(run_dir / CONFIG)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint-*.pt in {run_dir}")
    model = CausalVAE.from_config(cfg["model"])
    model.load_state_dict(load_checkpoint(ckpt, map_location)["model"])
    return model.to(map_location)
