"""Judges: small CNNs that read concept labels off images, trained on simulator renders only.

A judge scores a model's images (counterfactuals, reconstructions) without sharing the model's
biases: it never sees a model's output in training, only renders of a ground-truth SCM
(:class:`~pyro_causalvae.datasets.SCM`). Two designs of its training labels:

- ``"interventional"`` (the default; the judge of every counterfactual benchmark): every concept is
  drawn independently and uniformly over its range (widened by ``margin`` on each side, in units of
  its half-width), keeping only scenes that the SCM calls readable (:meth:`SCM.readable`, e.g. a
  Pendulum shadow inside the image). Nothing in these images lets the judge infer one concept from
  another, so it must read each concept from its own pixels. That is what scoring ``do(effect)``
  needs.
- ``"observational"`` (a comparison row only): labels from ``scm.sample``, in which an effect is a
  function of its causes. Such a judge may read Pendulum's shadow off the pendulum and the sun, and
  then cannot see a wrong ``do(shadow_length)``.

:func:`load_judge` trains a judge once per setting and caches it in a file (tensors and plain values
only, loaded with ``torch.load(weights_only=True)``), so that every benchmark reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

__all__ = ["DESIGNS", "Judge", "JudgeSettings", "default_cache_dir", "independent_labels", "judge_labels",
           "judge_r2", "load_judge", "train_judge"]

#: the designs of a judge's training labels (see the module docstring)
DESIGNS = ("interventional", "observational")
#: bump when the architecture or the training changes: cached judges of other versions are retrained
VERSION = 1


def _check_design(design: str) -> str:
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
    return design


def independent_labels(scm, n: int, seed: int | None = None, margin: float = 0.0) -> torch.Tensor:
    """Labels with every concept drawn independently and uniformly over its range, readable scenes only.

    Concept ``k`` is uniform on ``label_loc[k] +- (1 + margin) * label_scale[k]``; rows that
    ``scm.readable`` rejects are redrawn (rejection sampling), so the result is the product of the
    uniform ranges restricted to readable scenes.

    :param scm: a ground-truth SCM (``label_loc``, ``label_scale``, ``readable``).
    :param n: number of rows (``>= 1``).
    :param seed: seed of a private generator (``None``: torch's global one).
    :param margin: widening of every range, in units of its half-width (``>= 0``).
    :returns: ``[n, K]`` labels in natural units.
    :raises ValueError: for a bad ``n`` / ``margin``, or when almost no draw is readable.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    g = None if seed is None else torch.Generator().manual_seed(seed)
    K = scm.label_loc.shape[0]
    kept, have, tries = [], 0, 0
    while have < n:
        tries += 1
        if tries > 50:
            raise ValueError(f"{type(scm).__name__}.readable rejected almost every independent draw")
        z = (torch.rand(2 * (n - have) + 16, K, generator=g) * 2 - 1) * (1 + margin)  # [m, K] normalised
        labels = z * scm.label_scale + scm.label_loc  # [m, K] natural units
        labels = labels[scm.readable(labels)]
        kept.append(labels)
        have += labels.shape[0]
    return torch.cat(kept)[:n].contiguous()


def judge_labels(scm, n: int, design: str = "interventional", seed: int | None = None, margin: float = 0.0) -> torch.Tensor:
    """``[n, K]`` training (or held-out) labels of a judge of the given design (natural units).

    ``"observational"``: ``scm.sample`` (``margin`` unused), unreadable scenes dropped and redrawn.
    """
    if _check_design(design) == "interventional":
        return independent_labels(scm, n, seed=seed, margin=margin)
    labels = scm.sample(n, seed=seed)
    labels = labels[scm.readable(labels)]
    if labels.shape[0] < n:  # a few rejected rows: top up from a second stream (deterministic for a seed)
        more = judge_labels(scm, n - labels.shape[0] + 16, design, seed=None if seed is None else seed + 7919)
        labels = torch.cat([labels, more])
    return labels[:n].contiguous()


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class Judge(nn.Module):
    """CNN regressor: images ``[N, C, size, size]`` in [0, 1] -> ``[N, K]`` normalised labels.

    Images are first area-resampled to ``resolution`` (when ``size`` is larger), then read by four
    stride-2 convolutions and a two-layer head.

    :param channels: image channels ``C``.
    :param num_concepts: ``K``.
    :param size: the image side the judge reads (it refuses others).
    :param resolution: internal image side (``min(size, resolution)`` is used).
    :param width: channels of the first convolution (then ``2x``, ``4x``, ``4x``).
    """

    def __init__(self, channels: int, num_concepts: int, size: int, resolution: int = 64, width: int = 16):
        super().__init__()
        self.channels, self.size, self.resolution = int(channels), int(size), int(min(size, resolution))
        self.net = nn.Sequential(
            _block(channels, width), _block(width, 2 * width), _block(2 * width, 4 * width), _block(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(4 * width * 16, 128), nn.SiLU(), nn.Linear(128, num_concepts),
        )

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, size, size]`` float -> ``[N, C, resolution, resolution]`` (area resampling)."""
        if tuple(x.shape[1:]) != (self.channels, self.size, self.size):
            raise ValueError(f"the judge reads images [N, {self.channels}, {self.size}, {self.size}], got {list(x.shape)}")
        return x if self.resolution == self.size else F.interpolate(x, size=self.resolution, mode="area")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.read_resampled(self.resample(x))

    def read_resampled(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, resolution, resolution]`` in [0, 1] -> ``[N, K]``."""
        return self.net(x * 2.0 - 1.0)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Normalised labels ``[N, K]`` of images ``[N, C, size, size]`` (uint8, or float in [0, 1])."""
        self.eval()
        device = next(self.parameters()).device
        out = []
        for i in range(0, x.shape[0], batch_size):
            b = x[i : i + batch_size].to(device)
            b = b.float() / 255.0 if b.dtype == torch.uint8 else b.float()
            out.append(self(b).cpu())
        return torch.cat(out)


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    """Everything a judge's weights depend on (its cache key, with the SCM)."""

    design: str = "interventional"
    size: int = 96
    num_images: int = 20000
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    width: int = 16
    resolution: int = 64
    margin: float = 0.05
    seed: int = 0

    def __post_init__(self):
        _check_design(self.design)
        for name in ("size", "num_images", "epochs", "batch_size", "width", "resolution"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {self.margin!r}")
        if self.size < 16:
            raise ValueError(f"size must be >= 16, got {self.size}")
        if self.batch_size > self.num_images:
            raise ValueError(f"batch_size {self.batch_size} exceeds num_images {self.num_images}")

    def key(self, scm) -> str:
        """A file name for the judge of ``scm`` with these settings."""
        world = {"scm": type(scm).__name__, "noise": float(getattr(scm, "noise", 0.0)), "concepts": list(scm.concepts),
                 "loc": [round(float(v), 6) for v in scm.label_loc], "scale": [round(float(v), 6) for v in scm.label_scale]}
        blob = json.dumps({"version": VERSION, "world": world, **dataclasses.asdict(self)}, sort_keys=True)
        return f"judge-{type(scm).__name__}-{self.design}-{self.size}px-{hashlib.sha1(blob.encode()).hexdigest()[:12]}.pt"


def _resampled_renders(scm, labels: torch.Tensor, judge: Judge, chunk: int = 512) -> torch.Tensor:
    """Render ``labels`` ``[n, K]`` at the judge's size and resample: uint8 ``[n, C, r, r]`` (bounded memory)."""
    out = []
    for a in range(0, labels.shape[0], chunk):
        img = scm.render(labels[a : a + chunk], size=judge.size).float() / 255.0
        out.append((judge.resample(img) * 255.0).round().to(torch.uint8))
    return torch.cat(out)


def train_judge(scm, settings: JudgeSettings | None = None, progress: bool = True, **overrides) -> Judge:
    """Train a :class:`Judge` on fresh renders of ``scm`` (never on a model's images).

    :param scm: the ground-truth SCM (``render``, ``normalise``, and ``sample`` / ``readable``).
    :param settings: a :class:`JudgeSettings` (default one), updated by ``overrides`` (e.g. ``size=64``).
    :returns: the judge, in eval mode, predicting normalised labels (``scm.normalise``).
    """
    s = dataclasses.replace(settings or JudgeSettings(), **overrides)
    torch.manual_seed(s.seed)
    labels = judge_labels(scm, s.num_images, s.design, seed=s.seed, margin=s.margin)
    target = ((labels - scm.label_loc) / scm.label_scale).float()  # [n, K]
    judge = Judge(3, target.shape[1], s.size, resolution=s.resolution, width=s.width)
    images = _resampled_renders(scm, labels, judge)  # [n, 3, r, r] uint8
    steps = s.epochs * (s.num_images // s.batch_size)
    opt = torch.optim.AdamW(judge.parameters(), lr=s.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=steps)
    g = torch.Generator().manual_seed(s.seed)
    bar = tqdm(total=steps, disable=not progress, desc=f"judge ({s.design})", unit="step")
    judge.train()
    for _ in range(s.epochs):
        perm = torch.randperm(s.num_images, generator=g)
        for b in range(s.num_images // s.batch_size):
            idx = perm[b * s.batch_size : (b + 1) * s.batch_size]
            loss = F.smooth_l1_loss(judge.read_resampled(images[idx].float() / 255.0), target[idx], beta=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    return judge.eval()


def judge_r2(judge: Judge, scm, n: int = 2000, design: str = "interventional", seed: int = 12345) -> dict[str, float]:
    """The judge's R^2 per concept on ``n`` held-out renders of the given design (no margin).

    :returns: ``{concept: R^2}`` against the true normalised labels.
    """
    from .counterfactual import r2_score

    labels = judge_labels(scm, n, design, seed=seed)
    pred = judge.predict(scm.render(labels, size=judge.size)).numpy()
    true = ((labels - scm.label_loc) / scm.label_scale).numpy()
    return {c: r2_score(true[:, k], pred[:, k]) for k, c in enumerate(scm.concepts)}


def default_cache_dir() -> Path:
    """``$PYRO_CAUSALVAE_CACHE`` or ``$XDG_CACHE_HOME/pyro_causalvae`` (``~/.cache/pyro_causalvae``), ``/judges``."""
    root = os.environ.get("PYRO_CAUSALVAE_CACHE")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyro_causalvae"
    return Path(root) / "judges"


def _load_cached(path: Path, settings: JudgeSettings, scm) -> Judge | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("version") != VERSION or blob.get("settings") != dataclasses.asdict(settings):
            raise ValueError("settings differ")
        judge = Judge(3, len(scm.concepts), settings.size, resolution=settings.resolution, width=settings.width)
        judge.load_state_dict(blob["state_dict"])
    except Exception as err:  # a corrupt, foreign or stale file: retrain (and overwrite it)
        warnings.warn(f"ignoring the cached judge {path} ({type(err).__name__}: {err}); training a new one", stacklevel=3)
        return None
    judge.heldout_r2 = dict(blob.get("heldout_r2", {}))
    return judge.eval()


def load_judge(scm, settings: JudgeSettings | None = None, cache_dir: str | Path | None = None, progress: bool = True,
               **overrides) -> Judge:
    """The judge of ``scm`` with these settings: from the cache, or trained (then cached).

    The file, named by :meth:`JudgeSettings.key` under ``cache_dir`` (default
    :func:`default_cache_dir`), holds the weights, the settings and the judge's held-out R^2
    (:func:`judge_r2` on 2,000 renders of its own design), available as ``judge.heldout_r2``. It is
    written atomically and read with ``weights_only=True``; a corrupt or stale file is retrained.

    :param settings: a :class:`JudgeSettings`, updated by ``overrides`` (e.g. ``design="observational"``).
    :returns: the judge, in eval mode.
    """
    s = dataclasses.replace(settings or JudgeSettings(), **overrides)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / s.key(scm)
    if path.is_file():
        judge = _load_cached(path, s, scm)
        if judge is not None:
            return judge
    judge = train_judge(scm, s, progress=progress)
    judge.heldout_r2 = judge_r2(judge, scm, design=s.design)
    folder.mkdir(parents=True, exist_ok=True)
    blob = {"version": VERSION, "settings": dataclasses.asdict(s), "state_dict": judge.state_dict(),
            "heldout_r2": {c: float(v) for c, v in judge.heldout_r2.items()}}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".judge-", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(blob, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is for every user of the machine
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return judge
