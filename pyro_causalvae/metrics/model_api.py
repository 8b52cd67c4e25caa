"""The few calls the counterfactual metrics make on a model, through its public API only.

A "model" here is anything with ``concepts``, ``image_shape``, ``encode(x)`` and
``counterfactual(x, do=..., units=...)`` as :class:`~pyro_causalvae.CausalVAE` has them (and
``reconstruct(x)`` for reconstructions), so that the metrics score a CausalVAE, the ground truth
wrapped as a model (:mod:`pyro_causalvae.metrics.reference_models`), or any other counterfactual
image model alike. Images go in and come out as float ``[N, C, H, W]`` in [0, 1] on the CPU, in
batches of ``batch_size``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch

__all__ = ["counterfactual_images", "read_concepts", "reconstructions"]


def _device(model) -> torch.device:
    params = getattr(model, "parameters", None)
    if params is None:
        return torch.device("cpu")
    p = next(iter(params()), None)
    return torch.device("cpu") if p is None else p.device


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _batched(x: torch.Tensor, batch_size: int, fn: Callable[[torch.Tensor, slice], torch.Tensor]) -> torch.Tensor:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    out = [fn(x[i : i + batch_size], slice(i, i + batch_size)) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


@torch.no_grad()
def read_concepts(model, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The concept values the model reads from images: its encoder's posterior mean, ``[N, K]``.

    ``model.encode(x)`` is ``[N, K]`` (one value per concept) or ``[N, K, d]`` (a block of ``d``
    dims per concept, reduced by its mean over the last dim). Normalised label units.

    :param x: images ``[N, C, H, W]`` (uint8, or float in [0, 1]).
    """
    dev = _device(model)

    def enc(b, _):
        z = model.encode(_as_float(b).to(dev))
        if z.dim() == 3:
            z = z.mean(-1)
        if z.dim() != 2:
            raise ValueError(f"model.encode must return [N, K] or [N, K, d], got shape {list(z.shape)}")
        return z.float().cpu()

    return _batched(x, batch_size, enc)


@torch.no_grad()
def reconstructions(model, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``model.reconstruct(x)``: ``[N, C, H, W]`` in [0, 1]."""
    dev = _device(model)
    return _batched(x, batch_size, lambda b, _: model.reconstruct(_as_float(b).to(dev)).float().cpu())


@torch.no_grad()
def counterfactual_images(model, x: torch.Tensor, do: Mapping[str, torch.Tensor], batch_size: int = 256) -> torch.Tensor:
    """Counterfactual images under ``do`` (normalised units), abduction at the posterior mean.

    Warnings that a value lies outside a concept's observed range (the model extrapolates) are
    silenced: the metrics intervene there on purpose and report the result.

    :param x: images ``[N, C, H, W]`` (uint8, or float in [0, 1]).
    :param do: ``{concept: [N] values}`` in normalised label units.
    :returns: ``[N, C, H, W]``: ``model.counterfactual(x, do=do, units="normalised")["images"][0]``.
    """
    dev = _device(model)
    do = {c: torch.as_tensor(v, dtype=torch.float32).reshape(-1) for c, v in do.items()}
    for c, v in do.items():
        if v.shape[0] != x.shape[0]:
            raise ValueError(f"do[{c!r}] has {v.shape[0]} values for {x.shape[0]} images")

    def cf(b, sl):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*the model extrapolates", category=UserWarning)
            out = model.counterfactual(_as_float(b).to(dev), do={c: v[sl].to(dev) for c, v in do.items()}, units="normalised")
        return out["images"][0].float().cpu()

    return _batched(x, batch_size, cf)
