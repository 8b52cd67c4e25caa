"""The training loop: stochastic variational inference on the DAG-penalised loss, on one process or
data-parallel on ``torch.distributed``.

Each step traces the guide, replays the model (Pyro's SVI estimator, reparameterised), adds the DAG
penalties (:mod:`pyro_causalvae.loss`) and steps a torch optimiser over the PyroModule's parameters.
The augmented-Lagrangian multipliers are updated every ``al_every`` steps.

Data-parallel (``torchrun``, see :mod:`pyro_causalvae.distributed`): the loss is the output of
:class:`Objective`, a ``torch.nn.Module`` wrapped in ``DistributedDataParallel``, so the gradients of the
whole loss (ELBO and every penalty) are averaged over ranks; every rank then holds identical
parameters and therefore identical augmented-Lagrangian state. ``SVI.step`` is not used: it would not
pass through DDP's forward.

Runs are reproducible and resumable at any step: batch ``b`` of epoch ``e`` is a fixed set of images
(:mod:`pyro_causalvae.data_feed`), and the Monte-Carlo noise of step ``s`` on rank ``r`` comes from a
generator seeded with ``(seed, s, r)``. A checkpoint written after step ``s`` (every
``checkpoint_every`` steps and at each epoch's end) therefore continues exactly: a run killed mid-epoch
and resumed ends with the parameters of an uninterrupted run on the CPU (tested).

Everything stays on ``device``: resident datasets are moved there once and indexed there, and loss
values are summed there; the host reads them once per epoch and at checkpoints (and, on the CPU, after
each step, to stop at the first non-finite loss before the optimiser applies it).
"""

from __future__ import annotations

import contextlib
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
from . import distributed as D
from ._validation import check_finite, check_partial_labels, missing_label_line
from .data_feed import BatchFeed
from .loss import TERMS, LossWeights, loss_terms, total_loss
from .model import CausalVAE
from .progress import log

PRECISIONS = ("fp32", "bf16")


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or inf; the message names the step and the term(s)."""


@dataclass
class History:
    """Per-epoch means of each loss term (and ``loss``, ``h`` = h(A), ``images_per_s``, ``seconds``)."""

    rows: list[dict] = field(default_factory=list)
    #: the causal order found from the labels before training (learned graphs), or ``None``
    graph_search: dict | None = None
    #: edges removed after the last epoch as redundant (``[{"edge": [parent, child], "gain": float}]``), or ``None``
    pruned: list | None = None

    def __getitem__(self, key: str) -> list[float]:
        return [r[key] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def last(self) -> dict:
        return self.rows[-1]


class Objective(torch.nn.Module):
    """The loss as a module: ``forward(x, u)`` returns the dict of :func:`~pyro_causalvae.loss.loss_terms`.

    This is what ``DistributedDataParallel`` wraps: its forward is where DDP prepares the gradient
    all-reduce of every parameter the terms depend on.
    """

    def __init__(self, model: CausalVAE):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, u: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return loss_terms(self.model, x, u)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the Monte-Carlo noise of global step ``step`` on ``rank`` (a pure function: resumable)."""
    return hash((int(seed), int(step), int(rank))) & 0x7FFF_FFFF_FFFF_FFFF


def _check_data(model: CausalVAE, dataset) -> int:
    """Check ``dataset`` against ``model``; return its size."""
    images = getattr(dataset, "images", None)
    if not hasattr(dataset, "concepts") or (images is None and not hasattr(dataset, "__getitem__")):
        raise ValueError(f"dataset must be a ConceptImageDataset (images, labels, concepts), got {type(dataset).__name__}")
    if images is not None:
        if not isinstance(images, torch.Tensor) or images.dim() != len(model.image_shape) + 1:
            raise ValueError("dataset must have an `images` tensor of shape [N, C, H, W] (a ConceptImageDataset)")
        if tuple(images.shape[1:]) != model.image_shape:
            raise ValueError(f"dataset images have shape {tuple(images.shape[1:])} but the model expects {model.image_shape}")
        if images.is_floating_point():
            check_finite(images, "dataset images")
        n = int(images.shape[0])
    else:
        shape = tuple(getattr(dataset, "image_shape", ()))
        if shape != tuple(model.image_shape):
            raise ValueError(f"dataset images have shape {shape} but the model expects {model.image_shape}")
        n = len(dataset)
    if n == 0:
        raise ValueError("dataset is empty")
    if tuple(dataset.concepts) != tuple(model.concepts):
        extra = sorted(set(dataset.concepts) - set(model.concepts))
        raise ValueError(
            f"dataset concepts {list(dataset.concepts)} do not match the model's {list(model.concepts)}"
            + (f" (unknown to the model: {extra})" if extra else "")
        )
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        if labels.shape != (n, len(model.concepts)):
            raise ValueError(f"labels have shape {list(labels.shape)}, expected [{n}, {len(model.concepts)}]")
        check_partial_labels(labels, model.concepts, "dataset labels")  # NaN = missing (masked), inf refused
    return n


def _check_settings(**kw) -> None:
    seed = kw["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    for name in ("epochs", "batch_size", "keep_last", "al_every"):
        v = kw[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    for name in ("warm_start_steps", "checkpoint_every", "num_workers"):
        v = kw[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    lr = kw["lr"]
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr < math.inf):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if kw["precision"] not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {kw['precision']!r}")
    if not isinstance(kw["weights"], LossWeights):
        raise ValueError(f"weights must be a LossWeights, got {type(kw['weights']).__name__}")


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
    checkpoint_every: int = 200,
    al_every: int = 100,
    progress: bool = True,
    extra_config: dict | None = None,
    callback: Callable[[int, dict], None] | None = None,
    order_search: bool = True,
    warm_start_steps: int = 2000,
    prune: bool = True,
    precision: str = "fp32",
    num_workers: int = 0,
    distributed: bool | None = None,
) -> History:
    """Train ``model`` on ``dataset`` by SVI on the DAG-penalised loss.

    :param model: a :class:`~pyro_causalvae.model.CausalVAE`.
    :param dataset: a :class:`~pyro_causalvae.datasets.ConceptImageDataset` whose concepts are the
        model's: resident (``images`` uint8 ``[N, C, H, W]``, ``labels_normalised`` ``[N, K]`` or ``None``
        for unlabelled data), or read from disk on access (``images is None``, e.g.
        ``CelebA(preload=False)`` or a large folder: then a DataLoader with ``num_workers`` workers feeds it).
        Labels may be missing (NaN): they are masked in the loss, and the order search and pruning use the
        fully labelled rows; a concept without any label, or an infinite label, is refused.
    :param epochs: passes over the data (in total, counting epochs of a resumed run).
    :param batch_size: images per step, all processes together (the global batch; each of ``W`` ranks
        takes ``batch_size / W``); at most the dataset's size.
    :param lr: Adam learning rate.
    :param weights: :class:`~pyro_causalvae.loss.LossWeights`.
    :param device: ``"cpu"`` (default) or ``"cuda"``; model and resident data are moved there. Under
        ``torchrun`` each rank uses ``cuda:LOCAL_RANK``.
    :param seed: seeds Pyro/torch/NumPy, the data order and the per-step noise; on the CPU a run is
        deterministic for a seed (and so is a resumed one).
    :param out_dir: run directory for ``config.json`` and checkpoints, or ``None``.
    :param resume: continue from the newest checkpoint in ``out_dir`` (written at any step, by any
        number of processes).
    :param keep_last: checkpoints to keep.
    :param checkpoint_every: also write a checkpoint every this many steps within an epoch (0: at the end
        of each epoch only). Each holds the model, the optimiser, the position in the data and the
        history; ``resume`` continues from the exact step.
    :param al_every: steps between augmented-Lagrangian updates (and causal-order updates).
    :param progress: show a tqdm progress bar (rank 0 only). Whatever its value, one INFO line per phase
        (missing labels, the order search and warm start, each epoch, pruning) goes to the
        ``"pyro_causalvae"`` logger (:mod:`pyro_causalvae.progress`).
    :param callback: called as ``callback(epoch, row)`` after each epoch (on every rank).
    :param order_search: for a learned graph with labels, first find a causal order from the labels
        (:func:`pyro_causalvae.discovery.order_search`) and warm-start ``A`` and the mechanisms within it
        (:func:`pyro_causalvae.discovery.warm_start_graph`, ``warm_start_steps`` steps); ``A`` is then
        trained over its whole support under the augmented Lagrangian. ``False``: start from ``A = 0``
        (the order is then not identified when children are deterministic functions of their parents).
        A model whose ``A`` was already started from an order (a second ``fit``) continues from it.
        Data-parallel: rank 0 searches and the result is broadcast.
    :param prune: for a learned graph with labels, after the last epoch remove the edges of
        ``model.graph()`` whose parent explains less than 1% of its child's variance beyond the child's
        other parents (:func:`pyro_causalvae.discovery.redundant_edges`, CAM-style pruning on the
        labels; required edges are kept). Recorded in ``History.pruned`` and in the model
        (:meth:`~pyro_causalvae.model.CausalVAE.prune`). A finished run that is resumed with more
        ``epochs`` continues with its pruned graph.
    :param precision: ``"fp32"`` (default) or ``"bf16"`` (``torch.autocast`` to bfloat16 around the loss;
        parameters, optimiser state and the penalties stay float32).
    :param num_workers: DataLoader workers for datasets read from disk (ignored for resident data).
    :param distributed: ``None``: data-parallel when launched by ``torchrun`` (``WORLD_SIZE`` > 1) or when
        a process group exists; ``False``: never; ``True``: require it.
    :returns: the :class:`History` of per-epoch loss terms (identical on every rank).
    :raises ValueError: for data that does not match the model, bad settings, a global batch that the
        world size does not divide, a missing rendezvous or mixed devices (before any training step).
    :raises TrainingDiverged: when a loss term turns NaN or inf; the last good checkpoint is kept.
    """
    weights = weights if weights is not None else LossWeights()
    if not isinstance(model, CausalVAE):
        raise ValueError(f"model must be a CausalVAE, got {type(model).__name__}")
    _check_settings(seed=seed, epochs=epochs, batch_size=batch_size, keep_last=keep_last, al_every=al_every, lr=lr,
                    warm_start_steps=warm_start_steps, checkpoint_every=checkpoint_every, num_workers=num_workers,
                    precision=precision, weights=weights)
    n = _check_data(model, dataset)
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the run directory to resume)")
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a directory")
    ctx = D.setup(device, distributed)
    device = ctx.device
    batch_size = min(batch_size, n)  # a dataset smaller than one batch is one batch
    feed = BatchFeed(dataset, n, batch_size, seed, device, ctx.rank, ctx.world_size, num_workers)
    spe = feed.steps_per_epoch
    labelled = feed.labelled
    if labelled and ctx.is_main:
        log.info("%s", missing_label_line(dataset.labels, dataset.concepts))

    pyro.set_rng_seed(seed)  # torch, NumPy and Python's random
    model.to(device)
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    history = History()
    start_epoch = start_batch = 0
    sums = torch.zeros(len(TERMS) + 1, device=device)

    config = {"model": model.config(), "fit": dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, al_every=al_every,
              weights=weights.to_dict(), order_search=order_search, warm_start_steps=warm_start_steps, prune=prune,
              precision=precision, world_size=ctx.world_size), **(extra_config or {})}
    if out_dir is not None:
        latest = ckpt.latest_checkpoint(out_dir)
        D.barrier(ctx)  # every rank has looked before rank 0 writes
        if resume and latest is not None:
            state = ckpt.load_checkpoint(latest, map_location=device)
            model.load_state_dict(state["model"])
            optim.load_state_dict(state["optim"])
            history.rows = [dict(r) for r in state["history"]]
            history.graph_search = state.get("graph_search")
            history.pruned = state.get("pruned")
            start_epoch, start_batch = int(state["epoch"]), int(state.get("batch", 0))
            if "sums" in state:
                sums.copy_(state["sums"].to(device))
            if start_batch >= spe:  # written with another batch size: start the next epoch
                start_epoch, start_batch = start_epoch + 1, 0
        elif not resume and latest is not None:
            raise ValueError(f"{out_dir} already holds checkpoints; pass resume=True to continue it, or choose a new out_dir")
        if ctx.is_main:
            ckpt.write_json(out_dir / ckpt.CONFIG, config)

    show = progress and ctx.is_main
    if (start_epoch, start_batch) == (0, 0) and order_search and model.spec.learned and labelled and not model.order_initialised:
        if ctx.is_main:
            history.graph_search = _search_order(model, dataset, seed, warm_start_steps, show)
        history.graph_search = D.broadcast(history.graph_search, ctx)
        model.set_extra_state(D.broadcast(model.get_extra_state(), ctx))
        D.barrier(ctx)

    objective = Objective(model)
    if ctx.distributed:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)  # broadcasts rank 0's weights

    step = start_epoch * spe + start_batch

    def save(epoch_done: int, batch_done: int, sums_now: torch.Tensor) -> None:
        if out_dir is None:
            return
        sums_avg = D.all_mean_(sums_now.detach().clone(), ctx)
        if ctx.is_main:
            state = {"model": model.state_dict(), "optim": optim.state_dict(), "epoch": epoch_done, "batch": batch_done,
                     "step": step, "sums": sums_avg.cpu(), "history": [dict(r) for r in history.rows],
                     "graph_search": history.graph_search, "pruned": history.pruned, "world_size": ctx.world_size,
                     "seed": seed}
            ckpt.save_checkpoint(out_dir, step, state, keep_last=keep_last)

    if out_dir is not None and step == 0:
        save(0, 0, sums)  # the searched order survives a kill in the first epoch

    bar = tqdm(total=epochs * spe - step, disable=not show, desc="fit", unit="step", dynamic_ncols=True)
    check_each_step = device.type == "cpu"
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    # Distribution argument checks are off in the hot loop (speed, and a NaN would otherwise surface as an
    # opaque ValueError from torch.distributions): the loop's own finite check names the step and term.
    with pyro.validation_enabled(False):
        try:
            for epoch in range(start_epoch, epochs):
                model.train()
                first = start_batch if epoch == start_epoch else 0
                if epoch != start_epoch:
                    sums.zero_()
                bad_step = torch.full((), -1, dtype=torch.long, device=device)
                bad_terms = torch.zeros(len(TERMS) + 1, dtype=torch.bool, device=device)
                t0 = time.perf_counter()
                for b, (x, u) in enumerate(feed.epoch(epoch, first), start=first):
                    torch.manual_seed(step_seed(seed, step, ctx.rank))
                    with autocast:
                        terms = objective(x, u if labelled else None)
                    terms = {k: v.float() for k, v in terms.items()}
                    loss = total_loss(terms, weights)
                    vals = torch.stack([terms[t].detach() for t in TERMS] + [loss.detach()])
                    finite = torch.isfinite(vals)
                    if check_each_step:
                        if not D.all_true(bool(finite.all()), ctx):
                            _diverged(epoch, step, vals, out_dir, ctx)
                    else:
                        new_bad = (bad_step < 0) & ~finite.all()
                        bad_step = torch.where(new_bad, torch.as_tensor(step, device=device), bad_step)
                        bad_terms = torch.where(new_bad, ~finite, bad_terms)
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    sums += vals
                    step += 1
                    if model.spec.learned and step % al_every == 0:
                        model.al.update(model.acyclicity().detach())
                        model.update_order()
                    bar.update(1)
                    if checkpoint_every and step % checkpoint_every == 0 and b + 1 < spe:
                        if not check_each_step and int(bad_step) >= 0:
                            _diverged(epoch, int(bad_step), torch.where(bad_terms, torch.nan, 0.0), out_dir, ctx)
                        save(epoch, b + 1, sums)
                if not check_each_step and int(bad_step) >= 0:
                    _diverged(epoch, int(bad_step), torch.where(bad_terms, torch.nan, 0.0), out_dir, ctx)
                seconds = time.perf_counter() - t0
                means = (D.all_mean_(sums.clone(), ctx) / spe).tolist()
                row = {t: means[k] for k, t in enumerate(TERMS)}
                done = spe - first
                row.update(loss=means[-1], h=float(model.acyclicity().detach()), epoch=epoch + 1, step=step,
                           seconds=seconds, images_per_s=done * batch_size / seconds,
                           lam=float(model.al.lam), rho=float(model.al.rho))
                history.rows.append(row)
                if ctx.is_main:
                    log.info("epoch %d/%d: loss %.1f, recon %.1f, h(A) %.2g (%.1f s, %.0f images/s)", epoch + 1, epochs,
                             row["loss"], row["recon"], row["h"], seconds, row["images_per_s"])
                bar.set_postfix(loss=f"{row['loss']:.1f}", h=f"{row['h']:.2g}")
                if epoch + 1 == epochs and prune and model.spec.learned and labelled:
                    history.pruned = prune_learned_graph(model, dataset, ctx, show)
                save(epoch + 1, 0, torch.zeros_like(sums))
                if callback is not None:
                    callback(epoch + 1, row)
        finally:
            bar.close()
    model.eval()
    return history


def _search_order(model: CausalVAE, dataset, seed: int, steps: int, show: bool) -> dict:
    """Causal order from the labels and the warm start of ``A`` within it (see :mod:`~pyro_causalvae.discovery`)."""
    t0 = time.perf_counter()
    labels = dataset.labels_normalised.to(device=model.label_loc.device, dtype=torch.float32)
    required = [(model.concepts.index(a), model.concepts.index(b)) for a, b in model.spec.required]
    order, score, candidates = discovery.choose_order_and_warm_start(model, labels, required=required, seed=seed, steps=steps)
    found = {"order": [model.concepts[i] for i in order], "score": score,
             "candidates": [{**c, "order": [model.concepts[i] for i in c["order"]]} for c in candidates],
             "seconds": time.perf_counter() - t0}
    log.info("causal order search and warm start: %s (%.1f s)", " < ".join(found["order"]), found["seconds"])
    return found


def prune_learned_graph(model: CausalVAE, dataset, ctx: D.Context | None = None, show: bool = False) -> list[dict]:
    """The last step of :func:`fit` for a learned graph: remove the edges of ``model.graph()`` that are
    redundant given the child's other parents (:func:`~pyro_causalvae.discovery.redundant_edges` on the
    dataset's labels; required edges kept). Data-parallel: rank 0 decides, every rank applies.

    :returns: ``[{"edge": [parent, child], "gain": float}, ...]``, the removed edges.
    """
    ctx = ctx if ctx is not None else D.Context()
    idx = {c: k for k, c in enumerate(model.concepts)}
    removed = None
    t0 = time.perf_counter()
    if ctx.is_main:
        edges = [(idx[a], idx[b]) for a, b in model.graph().edges()]
        keep = [(idx[a], idx[b]) for a, b in model.spec.required]
        removed = [{"edge": [model.concepts[j], model.concepts[i]], "gain": r["gain"]}
                   for r in discovery.redundant_edges(dataset.labels_normalised.cpu(), edges, keep=keep)
                   for j, i in [r["edge"]]]
    removed = D.broadcast(removed, ctx)
    model.prune([(idx[a], idx[b]) for a, b in (r["edge"] for r in removed)])
    if ctx.is_main:
        log.info("pruning: %s (%.1f s)", ", ".join(f"{r['edge'][0]}->{r['edge'][1]} removed (explains {100 * r['gain']:.2f}% more)"
                                                   for r in removed) or "no edge removed", time.perf_counter() - t0)
    return removed


def _diverged(epoch: int, step: int, vals: torch.Tensor, out_dir, ctx: D.Context) -> None:
    names = list(TERMS) + ["loss"]
    bad = [f"{names[k]}={float(v)}" for k, v in enumerate(vals.tolist()) if not math.isfinite(v)]
    where = f"; the last good checkpoint in {out_dir} is kept" if out_dir is not None else ""
    rank = f" on rank {ctx.rank}" if ctx.distributed and bad else ""
    raise TrainingDiverged(f"training diverged at step {step} (epoch {epoch + 1}){rank}: non-finite loss term(s) "
                           f"{', '.join(bad) or '(on another rank)'}{where}")
