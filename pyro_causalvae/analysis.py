"""Posterior analysis with ArviZ: the amortised posterior of each image's concepts, and counterfactuals.

- :func:`to_inference_data`: draws from the guide ``q(c, style | x)``, i.e. the posterior of every image's
  concept values, as an ArviZ object (``posterior``; optionally the
  posterior-predictive images and the observed labels / images).
- :func:`intervention_effect`: the distribution of counterfactual concept values under ``do(...)``
  (abduction by sampling the guide, action, prediction: :func:`pyro_causalvae.queries.counterfactual`
  with ``abduction="sample"``), next to the factual values and the per-draw effect.
- :func:`summary`, :func:`hdi`, :func:`plot_forest` (re-exported from :mod:`pyro_causalvae._arviz`):
  ``az.summary`` / ``az.hdi`` / ``az.plot_forest`` with the same arguments and the same numbers under
  ArviZ 0.x and 1.x.

Layout of the ArviZ objects (one design for every function here):

.. code-block:: none

    posterior / concepts        (chain, draw, image, concept)          concept values, in `units`
    posterior / style           (chain, draw, image, style_dim)        the style latents (if any)
    posterior_predictive / x    (chain, draw, image, *pixel dims)      decoder mean or a sample of p(x | z)
    observed_data / labels      (image, concept)                       the labels given as `u`
    observed_data / x           (image, *pixel dims)                   the images (with posterior_predictive)

A *concept value* is the value of the concept's sample site (normalised label units in the model, shown
in ``units``): what :mod:`pyro_causalvae.queries` reports too. Draws are i.i.d. from the amortised
guide (no MCMC): ``chain`` only splits them into independent batches, so ``r_hat`` and ``ess`` are
trivially good; :func:`summary` shows the statistics only (``kind="stats"``) by default.

ArviZ versions. ArviZ 0.x (0.23 on Python 3.11) stores groups in an ``arviz.InferenceData``; ArviZ >= 1.0
(Python >= 3.12) uses an ``xarray.DataTree`` with one child node per group. The functions here hand plain
arrays of draws to :func:`pyro_causalvae._arviz.from_draws`, which builds the installed version's object;
:data:`ARVIZ_1` says which one you get (found by trying the installed ArviZ, not from its version
number). :func:`get_group` reads a group as an ``xarray.Dataset`` under both.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from ._arviz import (  # noqa: F401  (az, SAMPLE_DIMS, check_prob: for callers of analysis)
    ARVIZ_1,
    ARVIZ_VERSION,
    SAMPLE_DIMS,
    az,
    check_prob,
    forest_intervals,
    from_draws,
    get_group,
    hdi,
    plot_forest,
    summary,
)
from ._validation import check_do, check_finite
from .model import STYLE, CausalVAE
from .queries import check_images, counterfactual

__all__ = [
    "ARVIZ_1",
    "ARVIZ_VERSION",
    "forest_intervals",
    "from_draws",
    "get_group",
    "hdi",
    "intervention_effect",
    "plot_forest",
    "summary",
    "to_inference_data",
]


# ---------------------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------------------
def _check_count(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


def _check_units(units: str) -> str:
    if units not in ("natural", "normalised"):
        raise ValueError(f"units must be 'natural' or 'normalised', got {units!r}")
    return units


def _check_seed(seed) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    return None if seed is None else int(seed)


def _check_labels(model: CausalVAE, u, n: int) -> torch.Tensor:
    """Labels ``u`` as a float32 tensor ``[n, K]`` on the model's device, or ``ValueError``.

    NaN entries are allowed (unobserved labels); infinities are not.
    """
    try:
        t = torch.as_tensor(u, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"u must be a tensor or array of labels [N, K], got {type(u).__name__}") from err
    K = len(model.concepts)
    if t.dim() == 1 and n == 1:
        t = t.unsqueeze(0)
    if tuple(t.shape) != (n, K):
        raise ValueError(f"u must have shape [{n}, {K}] (one row of {K} labels per image), got {list(t.shape)}")
    check_finite(nan_as_zero(t), "u")  # NaN means unobserved; inf is an error
    return t.to(model.label_loc.device)


def nan_as_zero(t: torch.Tensor) -> torch.Tensor:
    """``t`` with NaN replaced by 0 and infinities kept (``torch.nan_to_num`` would clip them)."""
    return torch.where(torch.isnan(t), torch.zeros_like(t), t)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """Run the block with torch's RNG seeded with ``seed`` and restore the caller's RNG state afterwards
    (``seed=None``: use and advance the current RNG state)."""
    if seed is None:
        yield
        return
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _pixel_dims(model: CausalVAE) -> tuple[str, ...]:
    return ("channel", "row", "column") if len(model.image_shape) == 3 else ("feature",)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _sample_coords(num_chains: int, num_samples: int, n: int, model: CausalVAE) -> dict:
    return {"chain": np.arange(num_chains), "draw": np.arange(num_samples), "image": np.arange(n),
            "concept": list(model.concepts)}


def _to_units(model: CausalVAE, z: torch.Tensor, units: str) -> torch.Tensor:
    """Concept values ``[..., K]`` (normalised) in ``units``."""
    return model.denormalise(z) if units == "natural" else z


# ---------------------------------------------------------------------------------------------------------
# the posterior of the concepts
# ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def _guide_draws(model: CausalVAE, x: torch.Tensor, u: torch.Tensor | None, num: int, predictive: str | None):
    """``num`` draws of the concept values from the guide, vectorised over draws with a plate (in chunks of
    at most 4,096 image rows, or about 16 M pixel values with images). Labelled concepts (``u``, normalised)
    keep their label in every draw.

    :returns: ``(c [num, N, K], style [num, N, S], images [num, N, *image_shape] or None)``.
    """
    N = x.shape[0]
    max_rows = 4096 if predictive is None else max(1, min(4096, (1 << 24) // math.prod(model.image_shape)))
    per_chunk = max(1, max_rows // N)
    zs, ss, xs = [], [], []
    for start in range(0, num, per_chunk):
        s = min(per_chunk, num - start)
        with pyro.plate("draws", s, dim=-2):
            guide_tr = poutine.trace(model.guide).get_trace(x, u)
            model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(None, u, N)
        z = model_tr.nodes["_RETURN"]["value"]  # [s, N, K] (or [1, N, K] when nothing was drawn)
        if predictive is not None:
            mean = model_tr.nodes["x"]["value"].expand(s, N, *model.image_shape)
            xs.append(mean if predictive == "mean" else mean + model.pixel_scales() * torch.randn_like(mean))
        zs.append(z.expand(s, *z.shape[-2:]))
        if model.style_dim:
            ss.append(guide_tr.nodes[STYLE]["value"])
    style = torch.cat(ss) if ss else x.new_zeros(num, N, 0)
    return torch.cat(zs), style, (torch.cat(xs) if predictive is not None else None)


def to_inference_data(
    model: CausalVAE,
    x: torch.Tensor,
    u=None,
    num_samples: int = 100,
    num_chains: int = 1,
    posterior_predictive: bool | str = False,
    seed: int | None = None,
    units: str = "natural",
):
    """The amortised posterior of each image's concept values as an ArviZ object.

    Each draw samples every unlabelled concept (and the style) from the guide ``model.guide``
    (``q(c, style | x)``), exactly as in training; a concept labelled in ``u`` keeps its label. The draws
    are i.i.d. (``num_chains * num_samples`` of them, split into chains for ArviZ's layout).

    Groups and variables (``S = num_samples``, ``C = num_chains``, ``N`` images, ``K`` concepts):

    - ``posterior["concepts"]``: ``(chain, draw, image, concept)`` ``[C, S, N, K]``, the concept values,
      coordinate ``concept`` = the concept names, ``image`` = ``0..N-1``.
    - ``posterior["style"]`` (``model.style_dim > 0``): ``(chain, draw, image, style_dim)``, the style latents.
    - ``posterior_predictive["x"]`` (``posterior_predictive`` set): ``(chain, draw, image, *pixel dims)``
      with pixel dims ``(channel, row, column)`` for images and ``(feature,)`` for flat observations:
      the decoder mean (``True`` or ``"mean"``) or a sample of ``p(x | c, style)`` (``"sample"``: the mean plus
      Normal pixel noise of std ``model.pixel_scales()``, not clipped to [0, 1]). ``observed_data["x"]``
      then holds the images.
    - ``observed_data["labels"]`` (``u`` given): ``(image, concept)``, ``u`` as given.

    Units: with ``units="natural"`` (default) concept values are in the dataset's
    label units, ``model.denormalise(z) = z * label_scale + label_loc`` (radians for Pendulum's angles),
    and ``u`` must be in natural units too (``dataset.labels``); with ``"normalised"``, the model's own
    units (about [-1, 1]) and ``u`` like ``dataset.labels_normalised``.

    :param model: a (trained) :class:`~pyro_causalvae.model.CausalVAE`.
    :param x: images ``[N, *model.image_shape]`` in [0, 1] (or uint8), or one image.
    :param u: labels ``[N, K]`` in ``units`` (NaN = unobserved), or ``None``.
    :param num_samples: draws per chain (``>= 1``).
    :param num_chains: chains (``>= 1``).
    :param posterior_predictive: ``False``, ``True``/``"mean"`` (decoder mean) or ``"sample"``; stores
        ``num_chains * num_samples * N`` images (float32: mind the memory at 96x96).
    :param seed: seeds torch's RNG for the draws (the caller's RNG state is restored); ``None`` uses and
        advances the current state.
    :param units: ``"natural"`` or ``"normalised"``.
    :returns: an ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ >= 1.0).
    :raises ValueError: for images of the wrong shape, non-finite or out-of-range pixels, bad labels,
        ``num_samples < 1`` and other bad arguments (before any work).
    """
    x = check_images(model, x)
    num_samples = _check_count(num_samples, "num_samples")
    num_chains = _check_count(num_chains, "num_chains")
    units = _check_units(units)
    seed = _check_seed(seed)
    if posterior_predictive is True:
        predictive = "mean"
    elif posterior_predictive is False or posterior_predictive is None:
        predictive = None
    elif posterior_predictive in ("mean", "sample"):
        predictive = posterior_predictive
    else:
        raise ValueError(f"posterior_predictive must be False, True, 'mean' or 'sample', got {posterior_predictive!r}")
    N = x.shape[0]
    labels = _check_labels(model, u, N) if u is not None else None

    u_norm = None if labels is None else (model.normalise(labels) if units == "natural" else labels)
    with seeded(seed, x.device):
        z, style, images = _guide_draws(model, x, u_norm, num_chains * num_samples, predictive)
    K = len(model.concepts)
    z = z.reshape(num_chains, num_samples, N, K)
    coords = _sample_coords(num_chains, num_samples, N, model)
    post = {"concepts": (("chain", "draw", "image", "concept"), _np(_to_units(model, z, units)))}
    if model.style_dim:
        post["style"] = (("chain", "draw", "image", "style_dim"),
                         _np(style.reshape(num_chains, num_samples, N, model.style_dim)))
        coords["style_dim"] = np.arange(model.style_dim)
    groups: dict[str, dict] = {"posterior": post}

    pix = _pixel_dims(model)
    observed = {}
    if images is not None:
        images = images.reshape(num_chains, num_samples, N, *model.image_shape)
        groups["posterior_predictive"] = {"x": (("chain", "draw", "image", *pix), _np(images))}
        observed["x"] = (("image", *pix), _np(x))
    if labels is not None:
        observed["labels"] = (("image", "concept"), _np(labels))
    if observed:
        groups["observed_data"] = observed
    attrs = {
        "created_by": "pyro_causalvae.analysis.to_inference_data",
        "inference_library": "pyro",
        "inference": "amortised variational guide, i.i.d. draws",
        "units": units,
        "concept_value": "the concept site's value (the label where labelled)",
        "posterior_predictive": predictive or "none",
    }
    return from_draws(groups, coords, attrs)


# ---------------------------------------------------------------------------------------------------------
# interventions
# ---------------------------------------------------------------------------------------------------------
def _do_description(do: Mapping[str, object]) -> str:
    parts = []
    for c, v in do.items():
        t = torch.as_tensor(v, dtype=torch.float32)
        parts.append(f"{c}={float(t):.6g}" if t.dim() == 0 else f"{c}=[{t.numel()} values]")
    return ", ".join(parts)


def intervention_effect(
    model: CausalVAE,
    x: torch.Tensor,
    do: Mapping[str, object],
    num_samples: int = 100,
    num_chains: int = 1,
    units: str = "natural",
    seed: int | None = None,
    posterior_predictive: bool = False,
):
    """The posterior of each image's counterfactual concept values under ``do``, as an ArviZ object.

    Abduction-action-prediction with sampled abduction (:func:`pyro_causalvae.queries.counterfactual`
    with ``abduction="sample"``): each draw samples the exogenous noise of every concept from the guide,
    replaces the intervened concepts' structural equations by the values, and recomputes their
    descendants; the factual values use the same noise draw. Hence a non-descendant of the intervened
    concepts equals its factual value in every draw, and ``effect`` is the per-draw (individual)
    counterfactual effect.

    Groups (``[C, S, N, K]`` as in :func:`to_inference_data`, values in ``units``):

    - ``posterior["concepts"]``: ``(chain, draw, image, concept)``, the counterfactual concept values;
    - ``posterior["effect"]``: counterfactual minus factual, draw by draw;
    - ``factual["concepts"]``: the factual concept values (the same draws of the noise);
    - ``constant_data["do"]``: ``(image, intervened)``, the intervention values per image;
    - ``posterior_predictive["x"]`` / ``["x_factual"]`` (``posterior_predictive=True``): the decoder
      means of the counterfactual / factual images, ``(chain, draw, image, *pixel dims)``.

    Compare factual and counterfactual with ``plot_forest({"factual": get_group(out, "factual"),
    "do(...)": get_group(out, "posterior")}, coords={"image": [0]})``.

    :param model: a (trained) :class:`~pyro_causalvae.model.CausalVAE`.
    :param x: factual images ``[N, *model.image_shape]`` in [0, 1] (or uint8).
    :param do: ``{concept: value}``, a value a number or a tensor ``[N]``, in ``units``.
    :param num_samples: draws per chain; ``num_chains``: chains.
    :param units: ``"natural"`` (default) or ``"normalised"``; for ``do`` and the outputs.
    :param seed: seeds torch's RNG (the caller's state is restored); ``None``: the current state.
    :param posterior_predictive: also store the counterfactual and factual images.
    :returns: an ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ >= 1.0).
    :raises ValueError: for bad images, an unknown concept or a bad value in ``do``, ``num_samples < 1``.
    """
    x = check_images(model, x)
    num_samples = _check_count(num_samples, "num_samples")
    num_chains = _check_count(num_chains, "num_chains")
    units = _check_units(units)
    seed = _check_seed(seed)
    N = x.shape[0]
    values = check_do(do, model.concepts, N)
    S = num_samples * num_chains
    # queries.counterfactual repeats the images: chunks of at most 1,024 rows or about 8 M pixel values
    per_chunk = max(1, min(1024, (1 << 23) // math.prod(model.image_shape)) // N)
    out: dict[str, list[torch.Tensor]] = {"concepts": [], "factual_concepts": [], "images": [], "factual_images": []}
    with seeded(seed, x.device):
        for k, start in enumerate(range(0, S, per_chunk)):
            s = min(per_chunk, S - start)
            with warnings.catch_warnings():
                if k > 0:  # the out-of-range warning once, not once per chunk
                    warnings.simplefilter("ignore", UserWarning)
                res = counterfactual(model, x, do, num_samples=s, units=units, abduction="sample")
            for key in out:
                if key.endswith("images") and not posterior_predictive:
                    continue
                out[key].append(res[key])
    K = len(model.concepts)
    cf = torch.cat(out["concepts"]).reshape(num_chains, num_samples, N, K)
    fa = torch.cat(out["factual_concepts"]).reshape(num_chains, num_samples, N, K)
    coords = _sample_coords(num_chains, num_samples, N, model)
    dims = ("chain", "draw", "image", "concept")
    groups = {
        "posterior": {"concepts": (dims, _np(cf)), "effect": (dims, _np(cf - fa))},
        "factual": {"concepts": (dims, _np(fa))},
    }
    coords["intervened"] = list(values)
    do_table = torch.stack([v.expand(N) for v in values.values()], dim=-1)  # [N, len(do)]
    groups["constant_data"] = {"do": (("image", "intervened"), _np(do_table))}
    if posterior_predictive:
        pix = _pixel_dims(model)
        shape = (num_chains, num_samples, N, *model.image_shape)
        groups["posterior_predictive"] = {
            "x": (("chain", "draw", "image", *pix), _np(torch.cat(out["images"]).reshape(shape))),
            "x_factual": (("chain", "draw", "image", *pix), _np(torch.cat(out["factual_images"]).reshape(shape)))}
    attrs = {
        "created_by": "pyro_causalvae.analysis.intervention_effect",
        "inference_library": "pyro",
        "inference": "counterfactual: guide-sampled abduction, action, prediction",
        "do": _do_description(do),
        "units": units,
        "concept_value": "the concept site's value",
    }
    return from_draws(groups, coords, attrs)
