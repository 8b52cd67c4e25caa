"""The training loop: stochastic variational inference on the DAG-penalised loss.

Each step traces the guide, replays the model (Pyro's SVI estimator, reparameterised), adds the DAG
penalties (:mod:`pyro_causalvae.loss`) and steps a torch optimiser over the PyroModule's parameters. The
augmented-Lagrangian multipliers are updated every ``al_every`` steps. Everything stays on ``device``:
the dataset's uint8 images are moved there once, batches are indexed there, and loss values are summed
there; the host reads them once per epoch (and on the CPU after each step, to stop at the first
non-finite loss before the optimiser applies it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import discovery
from ._validation import check_finite
from .loss import TERMS, LossWeights, loss_terms, total_loss
from .model import CausalVAE


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or inf; the message names the step and the term(s)."""


@dataclass
class History:
    """Per-epoch means of each loss term (and ``loss``, ``h`` = h(A), ``images_per_s``, ``seconds``)."""

    rows: list[dict] = field(default_factory=list)
    #: the causal order found from the labels before training (learned graphs), or ``None``
    graph_search: dict | None = None

    def __getitem__(self, key: str) -> list[float]:
        return [r[key] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def last(self) -> dict:
        return self.rows[-1]


def _check_data(model: CausalVAE, dataset) -> None:
    images = getattr(dataset, "images", None)
    if not isinstance(images, torch.Tensor) or images.dim() != len(model.image_shape) + 1:
        raise ValueError("dataset must have an `images` tensor of shape [N, C, H, W] (a ConceptImageDataset)")
    if tuple(images.shape[1:]) != model.image_shape:
        raise ValueError(f"dataset images have shape {tuple(images.shape[1:])} but the model expects {model.image_shape}")
    if images.shape[0] == 0:
        raise ValueError("dataset is empty")
    if images.is_floating_point():
        check_finite(images, "dataset images")
    if tuple(dataset.concepts) != tuple(model.concepts):
        extra = sorted(set(dataset.concepts) - set(model.concepts))
        raise ValueError(
            f"dataset concepts {list(dataset.concepts)} do not match the model's {list(model.concepts)}"
            + (f" (unknown to the model: {extra})" if extra else "")
        )
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        if labels.shape != (images.shape[0], len(model.concepts)):
            raise ValueError(f"labels have shape {list(labels.shape)}, expected [{images.shape[0]}, {len(model.concepts)}]")
        check_finite(labels, "dataset labels")


def fit(
    model: CausalVAE,
    dataset,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    weights: LossWeights | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    out_dir: str | Path | None = None,
    resume: bool = False,
    keep_last: int = 3,
    al_every: int = 100,
    progress: bool = True,
    extra_config: dict | None = None,
    callback: Callable[[int, dict], None] | None = None,
    order_search: bool = True,
    warm_start_steps: int = 2000,
) -> History:
    """Train ``model`` on ``dataset`` by SVI on the DAG-penalised loss.

    :param model: a :class:`~pyro_causalvae.model.CausalVAE`.
    :param dataset: a :class:`~pyro_causalvae.datasets.ConceptImageDataset` (``images`` uint8
        ``[N, C, H, W]``, ``labels_normalised`` ``[N, K]`` or ``None`` for unlabelled data) whose concepts
        are the model's.
    :param epochs: passes over the data (in total, counting epochs of a resumed run).
    :param batch_size: images per step.
    :param lr: Adam learning rate.
    :param weights: :class:`~pyro_causalvae.loss.LossWeights`.
    :param device: ``"cpu"`` (default) or ``"cuda"``; model and dataset are moved there.
    :param seed: seeds Pyro/torch/NumPy; on the CPU the run is deterministic for a seed.
    :param out_dir: run directory for ``config.json`` and checkpoints (one per epoch), or ``None``.
    :param resume: continue from the newest checkpoint in ``out_dir``.
    :param keep_last: checkpoints to keep.
    :param al_every: steps between augmented-Lagrangian updates (and causal-order updates).
    :param progress: show a tqdm progress bar.
    :param callback: called as ``callback(epoch, row)`` after each epoch.
    :param order_search: for a learned graph with labels, first find a causal order from the labels
        (:func:`pyro_causalvae.discovery.order_search`) and warm-start ``A`` and the mechanisms within it
        (:func:`pyro_causalvae.discovery.warm_start_graph`, ``warm_start_steps`` steps); ``A`` is then
        trained over its whole support under the augmented Lagrangian. ``False``: start from ``A = 0``
        (the order is then not identified when children are deterministic functions of their parents).
        A model whose ``A`` was already started from an order (a second ``fit``) continues from it.
    :returns: the :class:`History` of per-epoch loss terms.
    :raises ValueError: for data that does not match the model, or bad settings (before any work).
    :raises TrainingDiverged: when a loss term turns NaN or inf; the last good checkpoint is kept.
    """
    weights = weights if weights is not None else LossWeights()
    for name, v in [("epochs", epochs), ("batch_size", batch_size), ("keep_last", keep_last), ("al_every", al_every),
                    ("warm_start_steps", warm_start_steps)]:
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "warm_start_steps" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'warm_start_steps' else 'positive'} integer, got {v!r}")
    if not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available on this machine")
    _check_data(model, dataset)
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the run directory to resume)")
    out_dir = Path(out_dir) if out_dir is not None else None

    pyro.set_rng_seed(seed)  # torch, NumPy and Python's random
    model.to(device)
    images = dataset.images.to(device)
    labels = dataset.labels_normalised
    labels = labels.to(device=device, dtype=torch.float32) if labels is not None else None
    N = images.shape[0]
    bs = min(batch_size, N)
    steps_per_epoch = N // bs
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    history = History()
    start_epoch = 0

    config = {"model": model.config(), "fit": dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, al_every=al_every,
              weights=weights.to_dict(), order_search=order_search, warm_start_steps=warm_start_steps), **(extra_config or {})}
    if out_dir is not None:
        latest = ckpt.latest_checkpoint(out_dir)
        if resume and latest is not None:
            state = ckpt.load_checkpoint(latest, map_location=device)
            model.load_state_dict(state["model"])
            optim.load_state_dict(state["optim"])
            torch.set_rng_state(state["rng"]["torch"].cpu())
            history.rows = [dict(r) for r in state["history"]]
            start_epoch = int(state["epoch"])
        elif not resume and latest is not None:
            raise ValueError(f"{out_dir} already holds checkpoints; pass resume=True to continue it, or choose a new out_dir")
        ckpt.write_json(out_dir / ckpt.CONFIG, config)

    if start_epoch == 0 and order_search and model.spec.learned and labels is not None and not model.order_initialised:
        t0 = time.perf_counter()
        required = [(model.concepts.index(a), model.concepts.index(b)) for a, b in model.spec.required]
        order, score, candidates = discovery.choose_order_and_warm_start(model, labels, required=required, seed=seed,
                                                                         steps=warm_start_steps)
        history.graph_search = {"order": [model.concepts[i] for i in order], "score": score,
                                "candidates": [{**c, "order": [model.concepts[i] for i in c["order"]]} for c in candidates],
                                "seconds": time.perf_counter() - t0}
        if progress:
            tqdm.write(f"causal order from the labels: {' < '.join(history.graph_search['order'])} "
                       f"({history.graph_search['seconds']:.1f} s)")

    def to_x(idx):
        x = images[idx]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    step = start_epoch * steps_per_epoch
    bar = tqdm(total=(epochs - start_epoch) * steps_per_epoch, disable=not progress, desc="fit", unit="step", dynamic_ncols=True)
    check_each_step = device.type == "cpu"
    # Distribution argument checks are off in the hot loop (speed, and a NaN would otherwise surface as an
    # opaque ValueError from torch.distributions): the loop's own finite check names the step and term.
    with pyro.validation_enabled(False):
        try:
            for epoch in range(start_epoch, epochs):
                model.train()
                g = torch.Generator(device="cpu").manual_seed(seed * 100003 + epoch)
                perm = torch.randperm(N, generator=g).to(device)
                sums = torch.zeros(len(TERMS) + 1, device=device)
                bad_step = torch.full((), -1, dtype=torch.long, device=device)
                bad_terms = torch.zeros(len(TERMS) + 1, dtype=torch.bool, device=device)
                t0 = time.perf_counter()
                for b in range(steps_per_epoch):
                    idx = perm[b * bs : (b + 1) * bs]
                    terms = loss_terms(model, to_x(idx), labels[idx] if labels is not None else None)
                    loss = total_loss(terms, weights)
                    vals = torch.stack([terms[t].detach() for t in TERMS] + [loss.detach()])
                    finite = torch.isfinite(vals)
                    if check_each_step:
                        if not bool(finite.all()):
                            _diverged(epoch, step, vals, out_dir)
                    else:
                        first = (bad_step < 0) & ~finite.all()
                        bad_step = torch.where(first, torch.as_tensor(step, device=device), bad_step)
                        bad_terms = torch.where(first, ~finite, bad_terms)
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    sums += vals
                    step += 1
                    if model.spec.learned and step % al_every == 0:
                        model.al.update(model.acyclicity().detach())
                        model.update_order()
                    bar.update(1)
                if not check_each_step and int(bad_step) >= 0:
                    _diverged(epoch, int(bad_step), torch.where(bad_terms, torch.nan, 0.0), out_dir)
                seconds = time.perf_counter() - t0
                means = (sums / steps_per_epoch).tolist()
                row = {t: means[k] for k, t in enumerate(TERMS)}
                row.update(loss=means[-1], h=float(model.acyclicity().detach()), epoch=epoch + 1, step=step,
                           seconds=seconds, images_per_s=steps_per_epoch * bs / seconds,
                           lam=float(model.al.lam), rho=float(model.al.rho))
                history.rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.1f}", h=f"{row['h']:.2g}")
                if out_dir is not None:
                    state = {"model": model.state_dict(), "optim": optim.state_dict(), "epoch": epoch + 1, "step": step,
                             "history": [dict(r) for r in history.rows], "rng": {"torch": torch.get_rng_state()}}
                    ckpt.save_checkpoint(out_dir, epoch + 1, state, keep_last=keep_last)
                if callback is not None:
                    callback(epoch + 1, row)
        finally:
            bar.close()
    model.eval()
    return history


def _diverged(epoch: int, step: int, vals: torch.Tensor, out_dir) -> None:
    names = list(TERMS) + ["loss"]
    bad = [f"{names[k]}={float(v)}" for k, v in enumerate(vals.tolist()) if not math.isfinite(v)]
    where = f"; the last good checkpoint in {out_dir} is kept" if out_dir is not None else ""
    raise TrainingDiverged(f"training diverged at step {step} (epoch {epoch + 1}): non-finite loss term(s) {', '.join(bad)}{where}")
