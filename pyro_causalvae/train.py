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
generator seeded with ``(seed, s, r)``. A checkpoint written after step ``s`` (by default at most one a
minute, always after the last step; or every ``checkpoint_every`` steps) therefore continues exactly: a
run killed mid-epoch and resumed ends with the parameters of an uninterrupted run on the CPU (tested).

Divergence: after every step the loss terms and the parameters (the sum of each parameter tensor, which
is finite iff its entries are) are checked. No checkpoint is written after a non-finite loss or a
non-finite parameter, so the newest checkpoint of a run is always its last finite one.

Everything stays on ``device``: resident datasets are moved there once and indexed there, and loss
values are summed there; the host reads them once per epoch and at checkpoints (and, on the CPU, after
each step, to stop at the first non-finite loss before the optimiser applies it, and at the first
non-finite parameter after it).
"""

from __future__ import annotations

import contextlib
import inspect
import json
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
from . import rundir
from ._validation import check_finite, missing_label_line
from .data_feed import BatchFeed
from .loss import TERMS, LossWeights, loss_terms, total_loss
from .model import LEGACY_CONFIG, CausalVAE
from .progress import log
from .warm_start import fit_structural_equations

PRECISIONS = ("fp32", "bf16")


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or inf; the message names the step and the term(s)."""


@dataclass
class History:
    """Per-epoch means of each loss term (and ``loss``, ``h`` = h(A), ``images_per_s``, ``seconds``)."""

    rows: list[dict] = field(default_factory=list)
    #: the causal order found from the labels before training (learned graphs), or ``None``
    graph_search: dict | None = None
    #: the fit of the structural equations to the labels before SVI (:mod:`~pyro_causalvae.warm_start`), or ``None``
    equations: dict | None = None
    #: edges removed after the last epoch as redundant (``[{"edge": [parent, child], "gain": float}]``), or ``None``
    pruned: list | None = None
    #: the refit of the structural equations to the labels after the last epoch (``fit(refit_equations=True)``),
    #: or ``None``
    refit: dict | None = None

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

    def __init__(self, model: CausalVAE, cycle: bool = False, minimality: bool = False, encoder_beta: float = 0.0):
        super().__init__()
        self.model = model
        self.cycle, self.minimality, self.encoder_beta = cycle, minimality, encoder_beta

    def forward(self, x: torch.Tensor, u: torch.Tensor | None, hide: torch.Tensor | None = None,
                detach_draws: bool = False, rereading: bool = False) -> dict[str, torch.Tensor]:
        return loss_terms(self.model, x, u, hide, cycle=self.cycle, minimality=self.minimality,
                          encoder_beta=self.encoder_beta, detach_draws=detach_draws, rereading=rereading)


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
        if torch.isinf(labels).any():
            raise ValueError("dataset labels hold inf; labels must be finite numbers, or NaN where missing")
        empty = [c for c, e in zip(model.concepts, torch.isnan(labels).all(0).tolist()) if e]
        if empty:
            raise ValueError(f"concept(s) {empty} have no label at all in the dataset; give labels for some "
                             "images or leave the concept out")
    return n


#: Ranges of the integer settings of :func:`fit` (inclusive).
INT_RANGES = {"epochs": (1, 100_000), "batch_size": (1, 1 << 16), "keep_last": (1, 1000), "al_every": (1, 10**6),
              "warm_start_steps": (0, 10**6), "checkpoint_every": (0, 10**9), "num_workers": (0, 256),
              "equation_steps": (0, 10**6)}
#: Largest accepted Adam learning rate (larger ones overflow float32 parameters within a few steps).
MAX_LR = 1.0
#: Largest accepted loss weight.
MAX_WEIGHT = 1e6
#: Range of ``checkpoint_interval`` and of ``peer_timeout`` (seconds).
SECONDS_RANGE = (1.0, 86_400.0)


def _check_settings(**kw) -> None:
    seed = kw["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    for name, (lo, hi) in INT_RANGES.items():
        v = kw[name]
        if name == "checkpoint_every" and v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            kind = "a positive integer" if lo == 1 else "a non-negative integer"
            raise ValueError(f"{name} must be {kind}, got {v!r}")
        if v > hi:
            raise ValueError(f"{name} must be at most {hi}, got {v!r}")
    for name in ("label_dropout", "labelled_share"):
        p = kw[name]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"{name} must be a number in [0, 1), got {p!r}")
    w = kw["reading_warmup"]
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= INT_RANGES["epochs"][1]:
        raise ValueError(f"reading_warmup must be a number of epochs in [0, {INT_RANGES['epochs'][1]}], got {w!r}")
    lr = kw["lr"]
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr < math.inf):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if lr > MAX_LR:
        raise ValueError(f"lr must be at most {MAX_LR:g} (Adam moves each parameter by about lr per step), got {lr!r}")
    for name in ("checkpoint_interval", "peer_timeout"):
        v = kw[name]
        lo, hi = SECONDS_RANGE
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise ValueError(f"{name} must be a number of seconds in [{lo:g}, {hi:g}], got {v!r}")
    if kw["precision"] not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {kw['precision']!r}")
    if not isinstance(kw["weights"], LossWeights):
        raise ValueError(f"weights must be a LossWeights, got {type(kw['weights']).__name__}")
    for name, v in kw["weights"].to_dict().items():
        if v > MAX_WEIGHT:
            raise ValueError(f"loss weight {name} must be at most {MAX_WEIGHT:g}, got {v!r}")


_SETTINGS = ("seed", "epochs", "batch_size", "keep_last", "al_every", "lr", "warm_start_steps", "checkpoint_every",
             "num_workers", "checkpoint_interval", "peer_timeout", "precision", "weights", "label_dropout", "labelled_share",
             "equation_steps", "reading_warmup")


#: default of ``fit(equation_steps=...)``: Adam steps fitting the structural equations to the labels before SVI
EQUATION_STEPS = 4000


def check_settings(**kw) -> None:
    """Check settings of :func:`fit` (those not given take its defaults) before any work, e.g. from the CLI.

    :raises ValueError: one line naming the setting, its value and its range.
    """
    if "device" in kw:
        D.check_device(kw.pop("device"))
    params = inspect.signature(fit).parameters
    full = {k: kw.get(k, params[k].default) for k in _SETTINGS}
    full["weights"] = full["weights"] if full["weights"] is not None else LossWeights()
    full["equation_steps"] = EQUATION_STEPS if full["equation_steps"] is None else full["equation_steps"]
    _check_settings(**full)


#: ``fit`` settings that only act before the first step: a resumed run keeps the values it started with.
_START_ONLY = ("order_search", "warm_start_steps")
#: keys of ``extra_config`` sections that may change on resume (where the data are, not what they are)
_MOVABLE = ("root", "labels")


def _short(v) -> str:
    text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _resume_conflicts(saved: dict, config: dict, seed: int, state: dict) -> list[str]:
    """Settings of the new call that contradict the run being resumed (each named with both values)."""
    out = []
    if "seed" in state and state["seed"] != seed:
        out.append(f"seed (the run: {state['seed']}, now: {seed})")
    elif isinstance(saved.get("fit"), dict) and "seed" in saved["fit"] and saved["fit"]["seed"] != seed:
        out.append(f"seed (the run: {saved['fit']['seed']}, now: {seed})")
    old_model, new_model = saved.get("model"), json.loads(json.dumps(config["model"]))
    if isinstance(old_model, dict):
        old_model = {**LEGACY_CONFIG, **old_model}  # a run saved before these were settings had these values
        for k in sorted(set(old_model) | set(new_model)):
            if old_model.get(k) != new_model.get(k):
                what = "graph" if k == "graph_spec" else k
                out.append(f"{what} (the run: {_short(old_model.get(k))}, now: {_short(new_model.get(k))})")
    for section, new in config.items():
        if section in ("model", "fit") or not isinstance(new, dict) or not isinstance(saved.get(section), dict):
            continue
        old = saved[section]
        for k in sorted(set(old) & set(new)):  # a key one side lacks was not recorded (another version)
            if k not in _MOVABLE and old[k] != new[k]:
                out.append(f"{section}.{k} (the run: {_short(old[k])}, now: {_short(new[k])})")
    return out


def _resumed_fit_config(saved_fit: dict, fit_cfg: dict, step: int) -> dict:
    """The ``"fit"`` section after a resume at ``step``: the settings in force from now on, the start-only
    settings as the run applied them, and a record of what changed."""
    out = dict(fit_cfg)
    for k in _START_ONLY:
        if k in saved_fit:
            out[k] = saved_fit[k]
    changed = {k: [saved_fit[k], out[k]] for k in out if k in saved_fit and k != "resumed" and saved_fit[k] != out[k]}
    record = {"step": step, **({"changed": changed} if changed else {})}
    out["resumed"] = [*saved_fit.get("resumed", []), record]
    return out


def _finite_flag(params: list[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor on the parameters' device: ``True`` when the sum of every parameter is finite
    (which it is iff every entry is, unless the sum overflows: :func:`_bad_params` then decides)."""
    return torch.isfinite(torch.stack([p.detach().sum() for p in params]).sum())


def _bad_params(model: torch.nn.Module) -> list[str]:
    return ckpt.non_finite_tensors(dict(model.named_parameters()))


class _Cadence:
    """When to write a checkpoint: every ``every`` steps, or (``every is None``) when ``interval`` seconds
    passed since the last one, by rank 0's clock; ``every == 0``: only at the end. Always after the last
    step (that is :func:`fit`'s business)."""

    clock = staticmethod(time.monotonic)

    def __init__(self, every: int | None, interval: float, ctx: D.Context):
        self.every, self.interval, self.ctx = every, interval, ctx
        self.last = self.clock()

    def due(self, step: int, epoch_end: bool) -> bool:
        if self.every is not None:
            return self.every > 0 and step % self.every == 0
        if self.ctx.distributed and not epoch_end and step % 16:
            return False  # ranks agree on the clock every 16 steps (one small collective) and at epoch ends
        late = self.ctx.is_main and self.clock() - self.last >= self.interval
        return not D.all_true(not late, self.ctx)

    def saved(self) -> None:
        self.last = self.clock()


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
    checkpoint_every: int | None = None,
    checkpoint_interval: float = 60.0,
    al_every: int = 100,
    progress: bool = True,
    extra_config: dict | None = None,
    callback: Callable[[int, dict], None] | None = None,
    order_search: bool = True,
    warm_start_steps: int = 2000,
    prune: bool = True,
    label_dropout: float = 0.5,
    labelled_share: float = 0.5,
    reading_warmup: float = 1.0,
    equation_steps: int | None = None,
    refit_equations: bool = True,
    precision: str = "fp32",
    num_workers: int = 0,
    distributed: bool | None = None,
    force: bool = False,
    peer_timeout: float = D.DEFAULT_PEER_TIMEOUT,
) -> History:
    """Train ``model`` on ``dataset`` by SVI on the DAG-penalised loss.

    :param model: a :class:`~pyro_causalvae.model.CausalVAE`.
    :param dataset: a :class:`~pyro_causalvae.datasets.ConceptImageDataset` whose concepts are the
        model's: resident (``images`` uint8 ``[N, C, H, W]``, ``labels_normalised`` ``[N, K]`` or ``None``
        for unlabelled data), or read from disk on access (``images is None``, e.g.
        ``CelebA(preload=False)`` or a large folder: then a DataLoader with ``num_workers`` workers feeds it).
        Labels may be missing (NaN); a concept without any label, or an infinite label, is refused.
    :param epochs: passes over the data (in total, counting epochs of a resumed run); at most 100,000.
    :param batch_size: images per step, all processes together (the global batch; each of ``W`` ranks
        takes ``batch_size / W``); at most the dataset's size (and 65,536).
    :param lr: Adam learning rate, in (0, 1]. On resume it replaces the saved optimiser's.
    :param weights: :class:`~pyro_causalvae.loss.LossWeights` (each at most 1e6).
    :param device: ``"cpu"`` (default) or ``"cuda"``; model and resident data are moved there. Under
        ``torchrun`` each rank uses ``cuda:LOCAL_RANK``.
    :param seed: seeds Pyro/torch/NumPy, the data order and the per-step noise; on the CPU a run is
        deterministic for a seed (and so is a resumed one).
    :param out_dir: run directory for ``config.json`` and checkpoints, or ``None``. An existing folder
        that holds files but is not a run of this library is refused (unless ``force``); a folder another
        process is training into is refused (its PID is named; see :class:`~pyro_causalvae.rundir.RunLock`).
    :param resume: continue from the newest checkpoint in ``out_dir`` (written at any step, by any
        number of processes). The model, the seed and ``extra_config`` must be those of the run (a
        difference is refused, naming it); ``lr``, ``weights``, ``epochs``, ``batch_size``,
        ``precision``, ``al_every`` and the world size given now apply from the resumed step on, and
        ``config.json`` records them (``fit.resumed``). No checkpoint yet: a new run starts.
    :param keep_last: checkpoints to keep (1 to 1000).
    :param checkpoint_every: ``None`` (default): write a checkpoint when ``checkpoint_interval`` seconds
        passed since the last one; ``N > 0``: after every ``N``-th step; ``0``: only at the end. A
        checkpoint is always written after the last step. Each holds the model, the optimiser, the
        position in the data and the history; ``resume`` continues from the exact step.
    :param checkpoint_interval: seconds between checkpoints when ``checkpoint_every is None`` (1 to 86,400).
    :param al_every: steps between augmented-Lagrangian updates (and causal-order updates).
    :param progress: show a tqdm progress bar (rank 0 only). Whatever its value, the missing labels per
        concept and each epoch are logged (INFO) to the ``"pyro_causalvae"`` logger
        (:mod:`pyro_causalvae.progress`), and the graph stage prints its phases.
    :param callback: called as ``callback(epoch, row)`` after each epoch (on every rank).
    :param order_search: for a learned graph with labels, first find a causal order from the labels
        (:func:`pyro_causalvae.discovery.order_search`) and warm-start ``A`` and the mechanisms within it
        (:func:`pyro_causalvae.discovery.warm_start_graph`, ``warm_start_steps`` steps); ``A`` is then
        trained over its whole support under the augmented Lagrangian. ``False``: start from ``A = 0``
        (the order is then not identified when children are deterministic functions of their parents).
        A model whose ``A`` was already started from an order (a second ``fit``) continues from it.
        Data-parallel: rank 0 searches (the others wait without a collective timeout) and the result is
        broadcast.
    :param prune: for a learned graph with labels, after the last epoch remove the edges of
        ``model.graph()`` whose parent explains less than 1% of its child's variance beyond the child's
        other parents (:func:`pyro_causalvae.discovery.redundant_edges`, CAM-style pruning on the
        labels; required edges are kept). Recorded in ``History.pruned`` and in the model
        (:meth:`~pyro_causalvae.model.CausalVAE.prune`). A finished run that is resumed with more
        ``epochs`` continues with its pruned graph.
    :param equation_steps: before SVI (after the order search), fit the structural equations to the
        labelled rows by maximum likelihood for this many steps (:func:`~pyro_causalvae.warm_start.
        fit_structural_equations`: mechanisms, noise scales and shapes; ``A`` held); ``0``: never;
        default :data:`EQUATION_STEPS` (4000). Once per model, like the order search.
    :param refit_equations: after the last epoch (after pruning), fit the structural equations to the
        labelled rows again, the same way and for ``equation_steps`` steps, at the graph the model reports
        (recorded in ``History.refit``). SVI's minibatch steps at ``lr`` leave the mechanisms looser than a
        fit to the labels: measured on Flow, water_flow's mechanism residual 0.0058 after SVI against
        0.0013 after the fit, and its prior draws 1.78x the encoder's error against 0.79x after the refit
        (docs/results.md). The image model (encoder, decoder) is not touched. Data-parallel: rank 0 fits,
        every rank receives the result.
    :param label_dropout: the share of each batch's labelled images whose labels the ELBO hides (their
        concepts are inferred by the guide, as for unlabelled images, while the ``encoder`` term still
        reads them). Without it, a labelled image's concepts never pass through the encoder on their way
        to the decoder, and the encoder learns to read them from the auxiliary term alone (slowly:
        measured on Pendulum, 64 px, 3 epochs: encoder R^2 0.19-0.97 per concept without, see
        docs/method.md). ``0``: never.
    :param labelled_share: partly labelled data: when fewer than this share of the images carry a label,
        every batch holds this share of labelled images (cycled through the epoch) and unlabelled ones for
        the rest, and an epoch is one pass over the unlabelled images (:mod:`~pyro_causalvae.data_feed`);
        ``0``: batches drawn from all images alike. Measured with 10 % labels in docs/results.md.
    :param reading_warmup: epochs (a fraction allowed) at the start during which the reconstruction of the
        images does not train the encoder's readings of the concepts it infers (unlabelled entries, and
        labelled ones that ``label_dropout`` hides): the decoder learns from those draws, detached, while
        the encoder learns to read the concepts from the labels. Without it, the reconstruction's gradient
        can push a concept's readings out of the labels' range before the decoder draws that concept, and
        they stay there (measured on Flow with 10 % labels, in one seed of three: ball_size read with MAE
        1.1-1.3 over steps 40-240, worse than untrained, and drawn as one average ball after 6 epochs;
        docs/results.md). ``0``: never.
    :param precision: ``"fp32"`` (default) or ``"bf16"`` (``torch.autocast`` to bfloat16 around the loss;
        parameters, optimiser state and the penalties stay float32).
    :param num_workers: DataLoader workers for datasets read from disk (ignored for resident data).
    :param distributed: ``None``: data-parallel when launched by ``torchrun`` (``WORLD_SIZE`` > 1) or when
        a process group exists; ``False``: never; ``True``: require it.
    :param force: train into a non-empty folder that is not a run (its files may be overwritten).
    :param peer_timeout: data-parallel: seconds after which a rank that stopped responding counts as
        lost; the others then print one line and exit with status 2 (see :mod:`pyro_causalvae.distributed`).
    :returns: the :class:`History` of per-epoch loss terms (identical on every rank).
    :raises ValueError: for data that does not match the model, bad settings, a refused ``out_dir``, a
        resume that contradicts the run, a malformed checkpoint, a global batch that the world size does not
        divide, a missing rendezvous or mixed devices (before any training step).
    :raises TrainingDiverged: when a loss term or a parameter turns NaN or inf; no checkpoint is written
        after it, so the newest checkpoint is the last finite one.
    :raises pyro_causalvae.distributed.PeerLost: data-parallel, when another rank died.
    """
    weights = weights if weights is not None else LossWeights()
    if not isinstance(model, CausalVAE):
        raise ValueError(f"model must be a CausalVAE, got {type(model).__name__}")
    equation_steps = EQUATION_STEPS if equation_steps is None else equation_steps
    _check_settings(seed=seed, epochs=epochs, batch_size=batch_size, keep_last=keep_last, al_every=al_every, lr=lr,
                    warm_start_steps=warm_start_steps, checkpoint_every=checkpoint_every, num_workers=num_workers,
                    checkpoint_interval=checkpoint_interval, peer_timeout=peer_timeout, precision=precision,
                    weights=weights, label_dropout=label_dropout, labelled_share=labelled_share,
                    equation_steps=equation_steps, reading_warmup=reading_warmup)
    n = _check_data(model, dataset)
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the run directory to resume)")
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a directory")
    ctx = D.setup(device, distributed, timeout_s=peer_timeout + D.COLLECTIVE_MARGIN)
    watch = D.Watchdog(ctx, peer_timeout)
    lock = None
    try:
        if out_dir is not None:
            err = None
            try:
                if ctx.is_main:
                    rundir.check_out_dir(out_dir, force=force)
                    lock = rundir.RunLock(out_dir)
            except ValueError as e:
                err = e
            D.raise_if_any(err, ctx)
        return _fit(model, dataset, n, ctx, watch, out_dir, epochs=epochs, batch_size=batch_size, lr=lr,
                    weights=weights, seed=seed, resume=resume, keep_last=keep_last,
                    cadence=_Cadence(checkpoint_every, checkpoint_interval, ctx), al_every=al_every,
                    progress=progress, extra_config=extra_config, callback=callback, order_search=order_search,
                    warm_start_steps=warm_start_steps, prune=prune, precision=precision, num_workers=num_workers,
                    label_dropout=label_dropout, labelled_share=labelled_share, equation_steps=equation_steps,
                    refit_equations=refit_equations, reading_warmup=reading_warmup)
    except torch.distributed.DistError as err:
        if not ctx.distributed:
            raise
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise D.PeerLost(f"rank {ctx.rank} lost contact with another rank ({first}): it died or stopped "
                         "responding") from err
    finally:
        if lock is not None:
            lock.release()
        watch.close()


def _open_run(model, optim, history, sums, ctx, out_dir, resume, seed, config, spe, device):
    """Load the run's state into ``model``, ``optim``, ``history`` and ``sums`` when resuming, check that
    the ranks agree, and write ``config.json``. Returns ``(start_epoch, start_batch, step)``."""
    latest = ckpt.latest_checkpoint(out_dir)
    if latest is not None and not resume:
        raise ValueError(f"{out_dir} already holds checkpoints; pass resume=True to continue it, or choose a new out_dir")
    pos, saved_fit = {"epoch": 0, "batch": 0, "step": 0}, None
    err = None
    try:
        if resume and latest is not None:
            pos, saved_fit = _load_for_resume(model, optim, history, sums, latest, out_dir, seed, config, device)
    except (ValueError, FileNotFoundError) as e:
        err = e
    D.raise_if_any(err, ctx)
    D.check_same((latest.name if latest is not None else None, pos["step"]), ctx,
                 f"the checkpoint to resume from in {out_dir} (it must be on a file system every rank sees)")
    for g in optim.param_groups:  # the settings given now win over the saved optimiser's
        g["lr"], g["weight_decay"] = config["fit"]["lr"], 0.0
    start_epoch, start_batch = pos["epoch"], pos["batch"]
    if start_batch >= spe:  # written with another batch size: start the next epoch
        start_epoch, start_batch = start_epoch + 1, 0
    step = max(start_epoch * spe + start_batch, pos["step"])  # checkpoint numbers never go back
    if saved_fit is not None:
        config["fit"] = _resumed_fit_config(saved_fit, config["fit"], pos["step"])
    if ctx.is_main:
        ckpt.write_json(out_dir / ckpt.CONFIG, config)
    return start_epoch, start_batch, step


def _load_for_resume(model, optim, history, sums, latest, out_dir, seed, config, device) -> tuple[dict, dict]:
    """Load checkpoint ``latest`` for resuming, after checking every field and that the run's settings
    are the ones given now. Returns ``(position, the run's saved "fit" section)``."""
    state = ckpt.load_checkpoint(latest, map_location=device)
    pos = ckpt.check_state(state, latest, resume=True, sums_shape=tuple(sums.shape))
    cfg_path = out_dir / ckpt.CONFIG
    saved = ckpt.read_json(cfg_path) if cfg_path.is_file() else {}
    if not isinstance(saved, dict):
        raise ValueError(f'{cfg_path} must be a JSON object with a "model" section (written by fit)')
    conflicts = _resume_conflicts(saved, config, seed, state)
    if conflicts:
        raise ValueError(f"cannot resume {out_dir} with other settings than the run's: {'; '.join(conflicts)}; "
                         "resume with the run's settings, or train into a new out_dir")
    ckpt.load_state(model, state, latest, cfg_path)
    try:
        optim.load_state_dict(state["optim"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{latest}: field 'optim' does not match the model: {str(err).splitlines()[0]}") from err
    history.rows = [dict(r) for r in state["history"]]
    history.graph_search = state.get("graph_search")
    history.equations = state.get("equations")
    history.pruned = state.get("pruned")
    history.refit = state.get("refit")
    if "sums" in state:
        sums.copy_(state["sums"].to(sums.device))
    return pos, saved.get("fit", {}) if isinstance(saved.get("fit"), dict) else {}


def _fit(model, dataset, n, ctx, watch, out_dir, *, epochs, batch_size, lr, weights, seed, resume, keep_last,
         cadence, al_every, progress, extra_config, callback, order_search, warm_start_steps, prune, precision,
         num_workers, label_dropout, labelled_share, equation_steps, refit_equations, reading_warmup) -> History:
    device = ctx.device
    batch_size = min(batch_size, n)  # a dataset smaller than one batch is one batch
    feed = BatchFeed(dataset, n, batch_size, seed, device, ctx.rank, ctx.world_size, num_workers, labelled_share)
    spe = feed.steps_per_epoch
    labelled = feed.labelled
    if labelled and ctx.is_main:
        log.info("%s", missing_label_line(dataset.labels, dataset.concepts))

    pyro.set_rng_seed(seed)  # torch, NumPy and Python's random
    model.to(device)
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    history = History()
    start_epoch = start_batch = step = 0
    sums = torch.zeros(len(TERMS) + 1, device=device)

    refit_now = bool(refit_equations and labelled and equation_steps)  # after the last epoch
    warmup_steps = round(reading_warmup * spe) if labelled else 0  # global steps with detached readings
    reread = weights.rereading > 0  # from the end of the warm-up on
    config = {"model": model.config(), "fit": dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, al_every=al_every,
              weights=weights.to_dict(), warm_start_steps=warm_start_steps, precision=precision, world_size=ctx.world_size,
              label_dropout=label_dropout, labelled_share=labelled_share if feed.balanced else 0.0,
              reading_warmup=reading_warmup if labelled else 0,
              # what applies to this model and data, not only what was asked
              order_search=bool(order_search and model.spec.learned and labelled and not model.order_initialised),
              equation_steps=equation_steps if labelled and not model.equations_initialised else 0,
              refit_equations=refit_now,
              prune=bool(prune and model.spec.learned and labelled)), **(extra_config or {})}
    if out_dir is not None:
        start_epoch, start_batch, step = _open_run(model, optim, history, sums, ctx, out_dir, resume, seed, config,
                                                   spe, device)

    show = progress and ctx.is_main
    if (start_epoch, start_batch) == (0, 0) and order_search and model.spec.learned and labelled and not model.order_initialised:
        history.graph_search = D.on_main(lambda: _search_order(model, dataset, seed, warm_start_steps, show), ctx, watch,
                                         "the causal-order search")
        model.set_extra_state(D.broadcast(model.get_extra_state(), ctx))
    if (start_epoch, start_batch) == (0, 0) and labelled and equation_steps and not model.equations_initialised:
        # DDP broadcasts rank 0's parameters when it wraps the model
        history.equations = D.on_main(lambda: _fit_equations(model, dataset, seed, equation_steps, show), ctx, watch,
                                      "the fit of the structural equations")
        model.equations_initialised = True

    objective = Objective(model, cycle=weights.cycle > 0, minimality=weights.minimality > 0,
                          encoder_beta=weights.encoder_beta)
    if ctx.distributed:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)  # broadcasts rank 0's weights
    params = [p for p in model.parameters()]
    param_names = [k for k, _ in model.named_parameters()]

    def save(epoch_done: int, batch_done: int, sums_now: torch.Tensor) -> None:
        if out_dir is None:
            return
        bad = _bad_params(model)
        if bad:  # never reached when the per-step checks work; the guard that no such checkpoint is written
            _diverged_params(epoch_done, step, bad, out_dir, ctx, lr)
        sums_avg = D.all_mean_(sums_now.detach().clone(), ctx)
        if ctx.is_main:
            state = {"model": model.state_dict(), "optim": optim.state_dict(), "epoch": epoch_done, "batch": batch_done,
                     "step": step, "sums": sums_avg.cpu(), "history": [dict(r) for r in history.rows],
                     "graph_search": history.graph_search, "equations": history.equations, "pruned": history.pruned,
                     "refit": history.refit,
                     "world_size": ctx.world_size,
                     "seed": seed}
            ckpt.save_checkpoint(out_dir, step, state, keep_last=keep_last, finite=param_names)
        cadence.saved()

    if out_dir is not None and step == 0 and cadence.every != 0 and (cadence.every or cadence.due(0, True)):
        save(0, 0, sums)  # the searched order survives a kill in the first epoch

    bar = tqdm(total=(epochs - start_epoch) * spe - start_batch, disable=not show, desc="fit", unit="step", dynamic_ncols=True)
    check_each_step = device.type == "cpu"
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    nslots = len(TERMS) + 2  # the terms, the total, and the parameters after the update
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
                bad_terms = torch.zeros(nslots, dtype=torch.bool, device=device)

                def check_recorded() -> None:
                    nonlocal bad_step
                    if not check_each_step and int(bad_step) >= 0:
                        if bool(bad_terms[-1]) and not bool(bad_terms[:-1].any()):
                            bad = _bad_params(model)
                            if bad:
                                _diverged_params(epoch, int(bad_step), bad, out_dir, ctx, lr)
                            bad_step = torch.full_like(bad_step, -1)  # the sum overflowed; every entry is finite
                            return
                        _diverged(epoch, int(bad_step), torch.where(bad_terms[:-1], torch.nan, 0.0), out_dir, ctx)

                t0 = time.perf_counter()
                for b, (x, u) in enumerate(feed.epoch(epoch, first), start=first):
                    torch.manual_seed(step_seed(seed, step, ctx.rank))
                    hide = (torch.rand(x.shape[0], device=device) < label_dropout) if labelled and label_dropout else None
                    with autocast:
                        terms = objective(x, u if labelled else None, hide, step < warmup_steps,
                                          reread and step >= warmup_steps)
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
                        bad_terms = torch.where(new_bad, torch.cat([~finite, finite.new_zeros(1)]), bad_terms)
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    params_ok = _finite_flag(params)
                    if check_each_step:
                        if not D.all_true(bool(params_ok), ctx):
                            bad = _bad_params(model)  # identical on every rank (DDP)
                            if bad:
                                _diverged_params(epoch, step, bad, out_dir, ctx, lr)
                    else:
                        new_bad = (bad_step < 0) & ~params_ok
                        bad_step = torch.where(new_bad, torch.as_tensor(step, device=device), bad_step)
                        bad_terms = torch.where(new_bad, torch.arange(nslots, device=device) == nslots - 1, bad_terms)
                    sums += vals
                    step += 1
                    if model.spec.learned and step % al_every == 0:
                        model.al.update(model.acyclicity().detach())
                        model.update_order()
                    bar.update(1)
                    if out_dir is not None and b + 1 < spe and cadence.due(step, False):
                        check_recorded()
                        save(epoch, b + 1, sums)
                check_recorded()
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
                last = epoch + 1 == epochs
                if last and prune and model.spec.learned and labelled:
                    history.pruned = prune_learned_graph(model, dataset, ctx, show, watch)
                if last and refit_now:
                    history.refit = refit_structural_equations(model, dataset, seed, equation_steps, ctx, show, watch)
                if out_dir is not None and (last or cadence.due(step, True)):
                    save(epoch + 1, 0, torch.zeros_like(sums))
                if callback is not None:
                    callback(epoch + 1, row)
        finally:
            bar.close()
    model.eval()
    return history


def _search_order(model: CausalVAE, dataset, seed: int, steps: int, show: bool) -> dict:
    """The graph stage before SVI: causal order and parents from the labels, and the warm start of ``A``
    within them (see :mod:`~pyro_causalvae.discovery`). Each phase logs one INFO line with its time (with or
    without ``show``, which adds progress bars)."""
    t0 = time.perf_counter()
    labels = dataset.labels_normalised.to(device=model.label_loc.device, dtype=torch.float32)
    required = [(model.concepts.index(a), model.concepts.index(b)) for a, b in model.spec.required]
    order, score, candidates = discovery.choose_order_and_warm_start(model, labels, required=required, seed=seed,
                                                                     steps=steps, progress=show, log=log.info)
    found = {"order": [model.concepts[i] for i in order], "score": score,
             "candidates": [{**c, "order": [model.concepts[i] for i in c["order"]],
                             "pruned": [[model.concepts[j], model.concepts[i]] for j, i in c["pruned"]]}
                            for c in candidates],
             "seconds": time.perf_counter() - t0}
    log.info("causal order from the labels: %s (%.1f s)", " < ".join(found["order"]), found["seconds"])
    return found


def _fit_equations(model: CausalVAE, dataset, seed: int, steps: int, show: bool, when: str = "before SVI") -> dict:
    """The structural equations fitted to the labels (see :mod:`~pyro_causalvae.warm_start`)."""
    t0 = time.perf_counter()
    labels = dataset.labels_normalised.to(device=model.label_loc.device, dtype=torch.float32)
    found = fit_structural_equations(model, labels, steps=steps, seed=seed)
    found["seconds"] = time.perf_counter() - t0
    if found.get("steps"):
        log.info("structural equations fitted to %d labelled rows %s: -log p per row %.3f -> %.3f (%.1f s)",
                 found["rows"], when, found["nll_before"], found["nll_after"], found["seconds"])
    return found


#: the parameters of the structural equations (``A`` and what :func:`fit_structural_equations` fits), by name prefix
_EQUATION_PARAMS = ("A_raw", "mechanisms.", "noise_scale_raw", "noise_splines.")


def refit_structural_equations(model: CausalVAE, dataset, seed: int, steps: int, ctx: D.Context | None = None,
                               show: bool = False, watch: D.Watchdog | None = None) -> dict:
    """The last step of :func:`fit` (``refit_equations=True``): the structural equations fitted to the
    dataset's labelled rows again, at the graph the model reports, as before SVI (:func:`~pyro_causalvae.
    warm_start.fit_structural_equations`; the encoder and decoder are not touched). Data-parallel: rank 0
    fits, every rank loads rank 0's result.

    :returns: ``{"steps", "rows", "nll_before", "nll_after", "seconds"}`` (see
        :func:`~pyro_causalvae.warm_start.fit_structural_equations`).
    """
    ctx = ctx if ctx is not None else D.Context()
    found = D.on_main(lambda: _fit_equations(model, dataset, seed, steps, show, "after the last epoch"), ctx, watch,
                      "the refit of the structural equations")
    if ctx.distributed:
        state = model.state_dict()
        names = [k for k in state if k.startswith(_EQUATION_PARAMS)]
        fitted = D.broadcast({k: state[k].detach().cpu() for k in names} if ctx.is_main else None, ctx)
        with torch.no_grad():
            for k in names:
                state[k].copy_(fitted[k].to(state[k].device))
    return found


def prune_learned_graph(model: CausalVAE, dataset, ctx: D.Context | None = None, show: bool = False,
                        watch: D.Watchdog | None = None) -> list[dict]:
    """The last step of :func:`fit` for a learned graph: remove the edges of ``model.graph()`` that are
    redundant given the child's other parents (:func:`~pyro_causalvae.discovery.redundant_edges` on the
    dataset's labels; required edges kept). Data-parallel: rank 0 decides, every rank applies.

    :returns: ``[{"edge": [parent, child], "gain": float}, ...]``, the removed edges.
    """
    ctx = ctx if ctx is not None else D.Context()
    idx = {c: k for k, c in enumerate(model.concepts)}

    def decide() -> list[dict]:
        edges = [(idx[a], idx[b]) for a, b in model.graph().edges()]
        keep = [(idx[a], idx[b]) for a, b in model.spec.required]
        with discovery.torch_threads(discovery.GRAPH_THREADS):
            found = discovery.redundant_edges(dataset.labels_normalised.cpu(), edges, keep=keep)
        return [{"edge": [model.concepts[j], model.concepts[i]], "gain": r["gain"]} for r in found
                for j, i in [r["edge"]]]

    t0 = time.perf_counter()
    removed = D.on_main(decide, ctx, watch, "pruning")
    model.prune([(idx[a], idx[b]) for a, b in (r["edge"] for r in removed)])
    if ctx.is_main:
        log.info("graph stage: pruning %.1f s (%d redundant edge(s) removed%s)", time.perf_counter() - t0, len(removed),
                 "".join(f"; {r['edge'][0]}->{r['edge'][1]} explained {100 * r['gain']:.2f}% more" for r in removed))
    return removed


def _kept(out_dir) -> str:
    """Where the run stands after a divergence: the newest checkpoint, the last finite one."""
    if out_dir is None:
        return ""
    latest = ckpt.latest_checkpoint(out_dir)
    if latest is None:
        return f"; no checkpoint was written in {out_dir}"
    return f"; the last good checkpoint, {latest}, is kept (resume from it with a lower lr)"


def _diverged(epoch: int, step: int, vals: torch.Tensor, out_dir, ctx: D.Context) -> None:
    names = list(TERMS) + ["loss"]
    bad = [f"{names[k]}={float(v)}" for k, v in enumerate(vals.tolist()) if not math.isfinite(v)]
    rank = f" on rank {ctx.rank}" if ctx.distributed and bad else ""
    raise TrainingDiverged(f"training diverged at step {step} (epoch {epoch + 1}){rank}: non-finite loss term(s) "
                           f"{', '.join(bad) or '(on another rank)'}{_kept(out_dir)}")


def _diverged_params(epoch: int, step: int, bad: list[str], out_dir, ctx: D.Context, lr: float) -> None:
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    raise TrainingDiverged(f"training diverged at step {step} (epoch {epoch + 1}): the optimiser's update made "
                           f"parameter(s) {shown} non-finite while the loss was finite (lr {lr:g}){_kept(out_dir)}")
