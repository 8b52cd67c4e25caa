"""Interventions and counterfactuals as compositions of Pyro handlers.

Both queries are a few lines of plain Pyro that a user can read and rewrite:

- :func:`intervene`: ``poutine.do`` on the concept sites, then sample the model forward.
- :func:`counterfactual`: abduction (trace the guide on the factual images, replay the model through
  ``poutine.reparam`` with ``TransformReparam`` to read each concept's exogenous noise
  ``"<concept>_base"``), action (``poutine.do``), prediction (``poutine.condition`` the intervened,
  reparametrised model on that noise and the style: every descendant of an intervened concept is
  recomputed, everything else keeps its abducted value exactly).

Values are given in the dataset's natural label units by default (``units="normalised"`` for the
model's own units, about [-1, 1]).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import pyro
import pyro.poutine as poutine
import networkx as nx
import torch
from pyro.infer.reparam import TransformReparam
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from ._validation import check_do, check_finite
from .model import STYLE, CausalVAE


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return v


def _fmt(v: torch.Tensor) -> str:
    vals = [f"{float(x):.6g}" for x in v.reshape(-1)[:8].tolist()]
    return vals[0] if v.dim() == 0 else "[" + ", ".join(vals) + (", ..." if v.numel() > 8 else "") + "]"


def _do_values(model: CausalVAE, do: Mapping[str, object], units: str, n: int | None) -> dict[str, torch.Tensor]:
    """Validate ``do`` and convert it to the model's normalised units (``{concept: [] or [n]}``)."""
    if units not in ("natural", "normalised"):
        raise ValueError(f"units must be 'natural' or 'normalised', got {units!r}")
    values = check_do(do, model.concepts, n)
    out = {}
    for c, v in values.items():
        v = v.to(model.label_loc.device)
        norm = model.normalise(v, c) if units == "natural" else v
        if not torch.isfinite(norm).all():
            raise ValueError(
                f"do[{c!r}] = {_fmt(v)} overflows float32 in the model's normalised units "
                f"((value - label_loc) / label_scale); give a value near the concept's observed range"
            )
        if (norm.abs() > 1.05).any():
            shown = model.denormalise(norm, c) if units == "natural" else norm
            lo, hi = (model.denormalise(torch.tensor([-1.0, 1.0], device=norm.device), c).tolist() if units == "natural" else (-1.0, 1.0))
            warnings.warn(
                f"do[{c!r}] = {shown.tolist()} lies outside the concept's observed range [{lo:.4g}, {hi:.4g}] "
                f"({units} units): the model extrapolates",
                UserWarning,
                stacklevel=3,
            )
        out[c] = norm
    return out


def check_images(model: CausalVAE, x: torch.Tensor) -> torch.Tensor:
    """``x`` as a float tensor ``[N, *image_shape]`` in [0, 1] (uint8 accepted), or ``ValueError``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a tensor of images [N, {', '.join(map(str, model.image_shape))}], got {type(x).__name__}")
    if x.dim() == len(model.image_shape):
        x = x.unsqueeze(0)
    if tuple(x.shape[1:]) != model.image_shape or x.shape[0] == 0:
        raise ValueError(f"x must have shape [N, {', '.join(map(str, model.image_shape))}], got {list(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"x must be a float tensor with values in [0, 1] or a uint8 tensor, got dtype {x.dtype}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    else:
        x = x.float()
        check_finite(x, "x")
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"x must hold values in [0, 1] (or be uint8), got [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x.to(model.label_loc.device)


def _check_outputs(model: CausalVAE, out: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Raise ``ValueError`` instead of returning non-finite images or concepts (never silent NaN)."""
    bad = [k for k, v in out.items() if not bool(torch.isfinite(v).all())]
    if bad:
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            cause = "the model's parameters hold NaN or inf (a diverged or corrupt model)"
        else:
            cause = "the do values are too far outside the concepts' observed range for the networks"
        raise ValueError(f"{what} gave non-finite {', '.join(bad)}: {cause}")
    return out


def concept_reparam(model: CausalVAE) -> dict:
    """``poutine.reparam`` config exposing each concept's exogenous noise as ``"<concept>_base"``."""
    return {c: TransformReparam() for c in model.concepts}


class PosteriorMeanMessenger(Messenger):
    """Every latent sample site takes its distribution's mean instead of a random draw."""

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and msg["value"] is None and not isinstance(msg["fn"], _Subsample):
            msg["value"] = msg["fn"].mean


def posterior_mean(fn):
    """Handler: ``poutine.trace(posterior_mean(model.guide)).get_trace(x)`` abducts each concept and the
    style at the guide's posterior mean (deterministic counterfactuals)."""
    return PosteriorMeanMessenger()(fn)


def abduct(model: CausalVAE, x: torch.Tensor, u: torch.Tensor | None = None, mean: bool = True) -> dict[str, torch.Tensor]:
    """Abduction: the exogenous values of images ``x`` (and their labels ``u``), as Pyro handlers::

        guide_trace = poutine.trace(posterior_mean(model.guide)).get_trace(x, u)      # q(c, style | x)
        factual = poutine.reparam(poutine.replay(model.model, trace=guide_trace), config)   # eps = f^-1(c)

    :param x: images ``[N, C, H, W]`` (already checked, on the model's device).
    :param u: normalised labels ``[N, K]`` or ``None``: labelled concepts keep their label.
    :param mean: the guide's posterior mean (default) or one sample.
    :returns: ``{"<concept>_base": [N], "style": [N, S]}`` (the noise and the style: what a
        counterfactual holds), plus ``"_factual"``: the factual trace.
    """
    guide = posterior_mean(model.guide) if mean else model.guide
    guide_tr = poutine.trace(guide).get_trace(x, u)
    factual = poutine.trace(
        poutine.reparam(poutine.replay(model.model, trace=guide_tr), config=concept_reparam(model))
    ).get_trace(None, u, x.shape[0])
    out = {f"{c}_base": factual.nodes[f"{c}_base"]["value"] for c in model.concepts}
    if model.style_dim:
        out[STYLE] = factual.nodes[STYLE]["value"]
    out["_factual"] = factual
    return out


def _concepts(trace) -> torch.Tensor:
    """The concept values the model used, ``[..., K]``, from a trace's return value."""
    return trace.nodes["_RETURN"]["value"]


@torch.no_grad()
def intervene(model: CausalVAE, do: Mapping[str, object], num_samples: int = 16, units: str = "natural") -> dict[str, torch.Tensor]:
    """Sample images from the interventional distribution ``p(x | do(c = v))``::

        tr = poutine.trace(poutine.do(model.model, data=do)).get_trace(None, None, num_samples)

    :param do: ``{concept: value}``; a value is a number or a tensor ``[num_samples]``. Several
        concepts at once are allowed.
    :param num_samples: number of images.
    :param units: ``"natural"`` (the dataset's label units) or ``"normalised"``.
    :returns: ``{"images": [S, C, H, W] decoder means in [0, 1], "concepts": [S, K] concept values in
        ``units``}``.
    :raises ValueError: for an unknown concept, a non-finite value or one of the wrong shape, a value that
        overflows in normalised units, bad ``num_samples`` / ``units``, or an output that would not be
        finite (never returned silently).
    """
    num_samples = _positive_int(num_samples, "num_samples")
    do_norm = _do_values(model, do, units, num_samples)
    with pyro.validation_enabled(False):
        tr = poutine.trace(poutine.do(model.model, data=do_norm)).get_trace(None, None, num_samples)
    z = _concepts(tr)
    out = {"images": tr.nodes["x"]["value"], "concepts": model.denormalise(z) if units == "natural" else z}
    return _check_outputs(model, out, "intervene")


@torch.no_grad()
def counterfactual(
    model: CausalVAE,
    x: torch.Tensor,
    do: Mapping[str, object],
    u: torch.Tensor | None = None,
    num_samples: int = 1,
    units: str = "natural",
    abduction: str = "mean",
) -> dict[str, torch.Tensor]:
    """Counterfactual images: what each image ``x`` would have looked like under ``do``.

    Abduction-action-prediction with Pyro handlers (:func:`abduct` gives the noise ``eps``)::

        noise = abduct(model, x, u)                                               # abduction
        intervened = poutine.do(model.model, data=do)                             # action
        cf = poutine.trace(poutine.condition(                                     # prediction
            poutine.reparam(intervened, config=concept_reparam(model)), data=noise)).get_trace(None, None, N)

    (:func:`prediction` also holds the non-descendants of the intervened concepts at their factual values,
    so that they are bit-identical rather than equal to float rounding.)

    Every concept keeps its exogenous noise ``eps_i`` (``"<concept>_base"``) and the image its style;
    descendants of an intervened concept are recomputed through their mechanisms, everything else keeps
    its factual value exactly. ``abduction="mean"`` (default) abducts at the guide's posterior mean
    (deterministic); ``abduction="sample"`` draws ``num_samples`` samples per image from the guide.

    :param x: factual images ``[N, C, H, W]`` in [0, 1] (or uint8).
    :param do: ``{concept: value}``; a value is a number or a tensor ``[N]`` (one per image).
    :param u: the images' labels ``[N, K]`` in ``units`` (NaN: unknown), or ``None``: labelled concepts
        are abducted at their label instead of the encoder's reading.
    :param num_samples: abduction samples per image.
    :returns: ``{"images": [S, N, C, H, W], "concepts": [S, N, K], "factual_images": [S, N, C, H, W],
        "factual_concepts": [S, N, K]}``; concepts in ``units``; images are decoder means.
    :raises ValueError: for images of the wrong shape or dtype, NaN or out-of-range pixels, a bad ``do``
        (as in :func:`intervene`), bad labels, bad ``num_samples`` / ``units`` / ``abduction``, or an output
        that would not be finite.
    """
    x = check_images(model, x)
    num_samples = _positive_int(num_samples, "num_samples")
    if abduction not in ("mean", "sample"):
        raise ValueError(f"abduction must be 'mean' or 'sample', got {abduction!r}")
    if abduction == "mean" and num_samples > 1:
        raise ValueError("num_samples > 1 needs abduction='sample' (the posterior mean is one value per image)")
    N = x.shape[0]
    do_norm = _do_values(model, do, units, N)
    u = _check_labels(model, u, N, units)
    do_rep = {c: (v.repeat(num_samples) if v.dim() == 1 else v) for c, v in do_norm.items()}
    xs = x.repeat(num_samples, *([1] * (x.dim() - 1)))
    us = None if u is None else u.repeat(num_samples, 1)
    with pyro.validation_enabled(False):
        noise = abduct(model, xs, us, mean=abduction == "mean")
        factual = noise.pop("_factual")
        cf = poutine.trace(prediction(model, do_rep, noise, factual)).get_trace(None, None, xs.shape[0])

    def shaped(t):
        return t.reshape(num_samples, N, *t.shape[1:])

    out = {}
    for key, tr in (("", cf), ("factual_", factual)):
        z = _concepts(tr)
        out[key + "images"] = shaped(tr.nodes["x"]["value"])
        out[key + "concepts"] = shaped(model.denormalise(z) if units == "natural" else z)
    return _check_outputs(model, out, "counterfactual")


def prediction(model: CausalVAE, do: Mapping[str, torch.Tensor], noise: Mapping[str, torch.Tensor], factual=None):
    """The intervened model that holds the abducted exogenous values (the prediction step)::

        held = poutine.condition(poutine.do(model.model, data=do), data=non_descendants)
        poutine.condition(poutine.reparam(held, config=concept_reparam(model)), data=noise)

    :param do: ``{concept: value}`` in normalised units.
    :param noise: ``{"<concept>_base": [N], "style": [N, S]}`` from :func:`abduct`.
    :param factual: the factual trace of :func:`abduct`: the concepts that are not descendants of an
        intervened one are then held at their factual value exactly (rather than recomputed from their
        noise, which agrees to float rounding), so they are bit-identical.
    """
    held = poutine.do(model.model, data=dict(do))
    if factual is not None:
        moved = set(do) | {d for c in do for d in nx.descendants(model.graph(), c)}
        values = factual.nodes["_RETURN"]["value"]
        held = poutine.condition(held, data={c: values[..., i] for i, c in enumerate(model.concepts) if c not in moved})
    return poutine.condition(poutine.reparam(held, config=concept_reparam(model)), data=dict(noise))


def _check_labels(model: CausalVAE, u, n: int, units: str) -> torch.Tensor | None:
    """Labels for abduction as normalised ``[n, K]`` (NaN kept: unknown), or ``None``."""
    if u is None:
        return None
    K = len(model.concepts)
    if not isinstance(u, torch.Tensor) or not u.is_floating_point() or tuple(u.shape) != (n, K):
        raise ValueError(f"u must be a float tensor of labels [{n}, {K}] (NaN: unknown), got "
                         f"{list(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
    u = u.float().to(model.label_loc.device)
    if torch.isinf(u).any():
        raise ValueError("u holds inf; give finite labels (NaN for unknown)")
    return model.normalise(u) if units == "natural" else u


def sweep_values(model: CausalVAE, concept: str, num: int = 7) -> torch.Tensor:
    """``num`` evenly spaced values over ``concept``'s observed range, natural units (``[num]``)."""
    if concept not in model.concepts:
        raise ValueError(f"unknown concept {concept!r}; concepts are {list(model.concepts)}")
    num = _positive_int(num, "num")
    return model.denormalise(torch.linspace(-1.0, 1.0, num, device=model.label_loc.device), concept)


@torch.no_grad()
def intervention_grid(
    model: CausalVAE,
    x: torch.Tensor,
    values: Mapping[str, object] | None = None,
    num: int = 7,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The paper's intervention grid for one image: for each concept, counterfactuals over a sweep.

    :param x: one image ``[C, H, W]`` (or ``[1, C, H, W]``).
    :param values: ``{concept: values}`` in natural units; default: every concept swept over its
        observed range with ``num`` values.
    :returns: ``{concept: (values [n], counterfactual images [n, C, H, W])}`` in row order.
    :raises ValueError: for more than one image, ``values`` that is not a dict of numbers / 1-d sequences
        over known concepts, or any error of :func:`counterfactual`.
    """
    x = check_images(model, x)
    if x.shape[0] != 1:
        raise ValueError(f"intervention_grid takes one image, got {x.shape[0]}")
    if values is None:
        values = {c: sweep_values(model, c, num) for c in model.concepts}
    if not isinstance(values, Mapping):
        raise ValueError(f"values must be a dict {{concept: values}}, got {type(values).__name__}")
    grid = {}
    for c, vals in values.items():
        if c not in model.concepts:
            raise ValueError(f"unknown concept {c!r} in values; concepts are {list(model.concepts)}")
        if isinstance(vals, (str, bytes)):
            raise ValueError(f"values[{c!r}] must be numbers, got {vals!r}")
        try:
            vals = torch.as_tensor(vals, dtype=torch.float32, device=model.label_loc.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"values[{c!r}] must be a number or a 1-d sequence of numbers, got {vals!r}") from err
        if vals.dim() > 1:
            raise ValueError(f"values[{c!r}] must be a number or a 1-d sequence of numbers, got shape {list(vals.shape)}")
        vals = vals.reshape(-1)
        if vals.numel() == 0:
            raise ValueError(f"no values given for concept {c!r}")
        out = counterfactual(model, x.expand(vals.numel(), *x.shape[1:]), {c: vals})
        grid[c] = (vals, out["images"][0])
    return grid
