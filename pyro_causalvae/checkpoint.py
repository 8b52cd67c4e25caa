"""Run directories: checkpoints (tensors only, loaded with ``weights_only=True``) and a JSON config.

A run directory holds ``config.json`` (the model's constructor arguments, the dataset's description and
the training settings) and ``checkpoint-SSSSSSSS.pt`` files, numbered by the global step after which they
were written (state dicts and plain numbers, never pickled objects). Every file is written to a temporary file in the same folder and renamed into place, so a run
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


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep_last: int = 3) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) as ``checkpoint-<step>.pt`` atomically,
    then delete all but the ``keep_last`` newest checkpoints (a crash between the two leaves one more)."""
    path = Path(run_dir) / f"checkpoint-{step:08d}.pt"
    _atomic_write(path, lambda f: torch.save(state, f))
    for stale in Path(run_dir).glob(".checkpoint-*.tmp"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
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


def progress(run_dir: str | Path) -> dict | None:
    """How far a run got: ``{"epoch": completed epochs, "batch": batches of the next epoch, "step": global
    step}`` from its newest checkpoint, or ``None`` when it has none."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None
    state = load_checkpoint(latest)
    return {"epoch": int(state["epoch"]), "batch": int(state.get("batch", 0)), "step": int(state.get("step", 0))}


def load_model(run_dir: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the trained :class:`~pyro_causalvae.model.CausalVAE` of a run directory (latest checkpoint).

    :raises FileNotFoundError: if the folder has no ``config.json`` or no checkpoint.
    """
    from .model import CausalVAE

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} is not a directory")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    cfg = read_json(run_dir / CONFIG)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ValueError(f'{run_dir / CONFIG} must be a JSON object with a "model" section (written by fit)')
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint-*.pt in {run_dir}")
    model = CausalVAE.from_config(cfg["model"])
    state = load_checkpoint(ckpt, map_location)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f'{ckpt} is not a checkpoint written by fit: expected a dict with a "model" state dict')
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        detail = str(err).strip().splitlines()
        raise ValueError(f"{ckpt} does not match {run_dir / CONFIG}: {detail[-1].strip() if detail else type(err).__name__}") from err
    return model.to(map_location)
