"""Run directories' files: checkpoints (tensors only, loaded with ``weights_only=True``) and a JSON config.

A run directory holds ``config.json`` (the model's constructor arguments, the dataset's description and
the training settings) and ``checkpoint-SSSSSSSS.pt`` files, numbered by the global step after which they
were written (state dicts and plain numbers, never pickled objects). Every file is written to a temporary
file in the same folder, flushed, ``fsync``'ed and renamed into place, so a run killed at any moment, or a
full disk, leaves the previous files intact. A checkpoint is serialised in memory first, so that a write
error is the operating system's (``No space left on device``, named in one line), not torch's.

Every field read back is checked (:func:`check_state`): a malformed checkpoint gives one line naming the
file and the field. No checkpoint with a non-finite parameter is ever written (:func:`save_checkpoint`
refuses it), and :func:`load_model` refuses one written elsewhere.

The run directory as a whole (refusing a folder that is not a run, the lock of a training) is
:mod:`pyro_causalvae.rundir`.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import _limits

CONFIG = "config.json"
_CKPT = re.compile(r"^checkpoint-(\d+)\.pt$")
#: errors of a write that mean the file system is full (or the user's quota / file-size limit reached)
_FULL = {errno.ENOSPC: "no space left on the device", getattr(errno, "EDQUOT", -1): "disk quota exceeded",
         errno.EFBIG: "file too large (a file-size limit)"}


def _write_error(path: Path, err: OSError) -> OSError:
    """One line for a failed write: what, why, how much room is left, and that older files are intact."""
    why = _FULL.get(err.errno, err.strerror or str(err))
    try:
        free = f"; {_limits.fmt_bytes(shutil.disk_usage(path.parent).free)} free there"
    except OSError:
        free = ""
    out = OSError(f"cannot write {path}: {why} ({errno.errorcode.get(err.errno, err.errno)}){free}; "
                  "the files already in that folder are intact")
    out.errno = err.errno
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder (fsync, then rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _unlink(tmp)
        raise _write_error(path, err) from err
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(p: str | Path) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically."""
    _atomic_write(Path(path), json.dumps(obj, indent=2).encode())


def read_json(path: str | Path) -> Any:
    """Read a JSON file (``config.json``).

    :raises FileNotFoundError: if it does not exist; ``ValueError`` if it is not valid JSON (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing {path.name} in {path.parent} (is this a run directory?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    except RecursionError as err:
        raise ValueError(f"{path} is not valid JSON: nested too deeply") from err


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoint files of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


def non_finite_tensors(tensors: dict) -> list[str]:
    """Names of the floating tensors of ``tensors`` (a state dict) that hold NaN or inf."""
    bad = []
    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and t.device.type != "meta":
            t = t.detach()
            # a sum is finite iff every entry is (or it overflowed: then check exactly)
            if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
                bad.append(name)
    return bad


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep_last: int = 3, finite=()) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) as ``checkpoint-<step>.pt`` atomically,
    then delete all but the ``keep_last`` newest checkpoints (a crash between the two leaves one more).

    :param finite: names of entries of ``state["model"]`` that must be finite (the parameters; some
        buffers are legitimately infinite).
    :raises ValueError: if one of them holds NaN or inf (nothing is written).
    :raises OSError: one line when the file cannot be written (disk full...); the older files are intact.
    """
    run_dir = Path(run_dir)
    path = run_dir / f"checkpoint-{step:08d}.pt"
    model_state = state.get("model") if isinstance(state.get("model"), dict) else {}
    bad = non_finite_tensors({k: model_state[k] for k in finite if k in model_state})
    if bad:
        raise ValueError(f"refusing to write {path}: non-finite parameter(s) {', '.join(bad[:5])}")
    buf = io.BytesIO()
    torch.save(state, buf)
    _atomic_write(path, buf.getbuffer())
    for stale in run_dir.glob(".checkpoint-*.tmp"):  # left by a process killed while writing
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
    except MemoryError:
        raise
    except Exception as err:  # torch raises UnpicklingError / RuntimeError for unsafe or corrupt files
        raise ValueError(
            f"refusing to load {path}: it is not a plain-tensor checkpoint readable with weights_only=True ({type(err).__name__})"
        ) from err


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------------
# what a checkpoint must hold
# ----------------------------------------------------------------------------------------------------
def _show(v: Any) -> str:
    text = repr(v) if not torch.is_tensor(v) else f"a tensor of shape {list(v.shape)}"
    return text if len(text) <= 60 else text[:57] + "..."


def _int_field(state: dict, key: str, path: Path, lo: int, default: int | None = None) -> int:
    if key not in state and default is not None:
        return default
    if key not in state:
        raise ValueError(f"{path}: field {key!r} is missing")
    v = state[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{path}: field {key!r} must be an integer >= {lo}, got {_show(v)}")
    return v


def check_state(state: Any, path: str | Path, *, resume: bool = False, sums_shape: tuple[int, ...] | None = None) -> dict:
    """Check the fields of a checkpoint written by :func:`~pyro_causalvae.train.fit`.

    :param state: what :func:`load_checkpoint` returned.
    :param path: the file (named in the messages).
    :param resume: also check what resuming training needs (optimiser state, history, sums...).
    :param sums_shape: the shape the ``"sums"`` tensor must have.
    :returns: ``{"epoch", "batch", "step"}`` as ints.
    :raises ValueError: one line naming the file and the field.
    """
    path = Path(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f'{path} is not a checkpoint written by fit: expected a dict with a "model" state dict')
    pos = {"epoch": _int_field(state, "epoch", path, 0), "batch": _int_field(state, "batch", path, 0, 0),
           "step": _int_field(state, "step", path, 0, 0)}
    for key in ("world_size",):
        if key in state:
            _int_field(state, key, path, 1)
    if "seed" in state:
        _int_field(state, "seed", path, 0)
    if not resume:
        return pos
    optim = state.get("optim")
    if optim is None:
        raise ValueError(f"{path} has no optimiser state (field 'optim'): it can be queried but not resumed")
    if not isinstance(optim, dict) or not isinstance(optim.get("state"), dict) or not isinstance(optim.get("param_groups"), list):
        raise ValueError(f"{path}: field 'optim' must be an optimiser state dict with 'state' and 'param_groups', got {_show(optim)}")
    hist = state.get("history")
    if not isinstance(hist, list) or not all(isinstance(r, dict) for r in hist):
        raise ValueError(f"{path}: field 'history' must be a list of per-epoch dicts, got {_show(hist)}")
    for r, row in enumerate(hist):
        for k, v in row.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{path}: field 'history' row {r} has {k!r} = {_show(v)}, not a number")
    if len(hist) != pos["epoch"]:
        raise ValueError(f"{path}: field 'history' has {len(hist)} rows but field 'epoch' says {pos['epoch']} epochs were done")
    if "sums" in state:
        sums = state["sums"]
        if not torch.is_tensor(sums) or not sums.is_floating_point() or (sums_shape is not None and tuple(sums.shape) != sums_shape):
            raise ValueError(f"{path}: field 'sums' must be a float tensor of shape {list(sums_shape or ())}, got {_show(sums)}")
    gs = state.get("graph_search")
    if gs is not None and not (isinstance(gs, dict) and isinstance(gs.get("order"), list)):
        raise ValueError(f"{path}: field 'graph_search' must be null or a dict with an 'order' list, got {_show(gs)}")
    pruned = state.get("pruned")
    if pruned is not None and not (isinstance(pruned, list) and all(
            isinstance(r, dict) and isinstance(r.get("edge"), list) and len(r["edge"]) == 2 for r in pruned)):
        raise ValueError(f"{path}: field 'pruned' must be null or a list of {{'edge': [parent, child]}}, got {_show(pruned)}")
    refit = state.get("refit")
    if refit is not None and not (isinstance(refit, dict) and all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in refit.items())):
        raise ValueError(f"{path}: field 'refit' must be null or a dict of numbers (the equations' refit), got {_show(refit)}")
    return pos


def progress(run_dir: str | Path) -> dict | None:
    """How far a run got: ``{"epoch": completed epochs, "batch": batches of the next epoch, "step": global
    step}`` from its newest checkpoint, or ``None`` when it has none."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None
    return check_state(load_checkpoint(latest), latest)


def read_config(run_dir: str | Path) -> dict:
    """``config.json`` of a run, checked to be an object with a ``"model"`` section.

    :raises FileNotFoundError: if it is missing; ``ValueError`` (one line naming the file) otherwise.
    """
    path = Path(run_dir) / CONFIG
    cfg = read_json(path)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ValueError(f'{path} must be a JSON object with a "model" section (written by fit)')
    return cfg


def build_model(model_cfg: dict, where: str, factor: int = 1):
    """``CausalVAE.from_config(model_cfg)``, after checking that its sizes are in range and that its
    tensors fit in memory (:func:`pyro_causalvae._limits.check_model_build`).

    :param where: the file the configuration comes from (named in every message).
    :raises ValueError: one line naming ``where`` and the field.
    """
    from .model import CausalVAE

    try:
        _limits.check_model_build(lambda: CausalVAE.from_config(model_cfg), model_cfg, where, factor)
        return CausalVAE.from_config(model_cfg)
    except ValueError as err:
        msg = str(err)
        raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from err


def load_state(model, state: dict, ckpt: Path, cfg_path: Path) -> None:
    """``model.load_state_dict(state["model"])``, with a one-line error when they do not match or when a
    parameter holds NaN or inf (a diverged run written by another program: refused, not loaded)."""
    names = [n for n, _ in model.named_parameters()]
    bad = non_finite_tensors({n: state["model"][n] for n in names if n in state["model"]})
    if bad:
        raise ValueError(f"{ckpt}: field 'model' holds non-finite values in {', '.join(bad[:3])}"
                         f"{' and more' if len(bad) > 3 else ''} (a diverged run); remove the file to use the previous checkpoint")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        detail = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        raise ValueError(f"{ckpt} does not match {cfg_path}: {detail[-1] if detail else type(err).__name__}") from err


def load_model(run_dir: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the trained :class:`~pyro_causalvae.model.CausalVAE` of a run directory (latest checkpoint).

    :raises FileNotFoundError: if the folder has no ``config.json`` or no checkpoint.
    :raises ValueError: for a malformed ``config.json`` or checkpoint (one line naming the file and the
        field), including a checkpoint with non-finite parameters.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} is not a directory")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    cfg = read_config(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint-*.pt in {run_dir}")
    model = build_model(cfg["model"], str(run_dir / CONFIG))
    state = load_checkpoint(ckpt, map_location)
    check_state(state, ckpt)
    load_state(model, state, ckpt, run_dir / CONFIG)
    return model.to(map_location)
