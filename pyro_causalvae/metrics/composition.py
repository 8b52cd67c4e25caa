"""Composition (Monteiro et al., ICLR 2023): a null intervention must leave an image unchanged.

**Null intervention.** For images ``x`` and a concept ``c``, the null intervention on ``c`` is the
counterfactual ``N_c(x) = model.counterfactual(x, do={c: c_hat(x)})``, where ``c_hat(x)`` is the value
the model itself reads for ``c`` on each image: its encoder's posterior mean
(:func:`~pyro_causalvae.metrics.model_api.read_concepts`, normalised units), with abduction at the
posterior mean. It asks the model for the world that already is, so an ideal model returns ``x``.

**Composition after m applications** is ``mean |N_c^m(x) - x|`` (``N_c`` applied ``m`` times, each
time to the previous output with ``c_hat`` read again on it), the L1 distance per pixel, channel and
image, images in [0, 1]. An identity map scores 0 for every ``m``. For an autoencoding model,
``m = 1`` is about its reconstruction error; a sound model does not drift further with ``m``
(the benchmark's target: composition(10) <= 1.2 x composition(1)).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ._arrays import mean_abs_error
from .model_api import counterfactual_images, read_concepts

__all__ = ["composition_curve", "model_composition", "null_intervention"]


def composition_curve(x: torch.Tensor, step: Callable[[torch.Tensor], torch.Tensor], steps: int = 10) -> np.ndarray:
    """``[steps]``: ``mean |step^m(x) - x|`` for ``m = 1 .. steps`` (the core, for any image map).

    :param x: images ``[N, C, H, W]`` in [0, 1].
    :param step: an image map ``[N, C, H, W] -> [N, C, H, W]`` (e.g. :func:`null_intervention`).
    :param steps: the number of applications (``>= 1``).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    out, cur = [], x
    for _ in range(steps):
        nxt = step(cur)
        if tuple(nxt.shape) != tuple(x.shape):
            raise ValueError(f"the image map returned shape {list(nxt.shape)} for images {list(x.shape)}")
        cur = nxt
        out.append(mean_abs_error(cur.numpy(), x.numpy()))
    return np.asarray(out)


def null_intervention(model, concept: str, batch_size: int = 256) -> Callable[[torch.Tensor], torch.Tensor]:
    """The image map ``N_c``: ``x -> model.counterfactual(x, do={c: c_hat(x)})`` (module docstring).

    :raises ValueError: for a concept the model does not have.
    """
    concepts = list(model.concepts)
    if concept not in concepts:
        raise ValueError(f"unknown concept {concept!r}; the model's concepts are {concepts}")
    k = concepts.index(concept)

    def step(x: torch.Tensor) -> torch.Tensor:
        c_hat = read_concepts(model, x, batch_size)[:, k]  # [N]
        return counterfactual_images(model, x, {concept: c_hat}, batch_size)

    return step


def model_composition(model, x: torch.Tensor, concept: str, steps: int = 10, batch_size: int = 256) -> np.ndarray:
    """``[steps]`` composition of the model's null intervention on ``concept`` after ``1 .. steps``
    applications, for images ``x`` ``[N, C, H, W]`` (uint8 or float in [0, 1])."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return composition_curve(x, null_intervention(model, concept, batch_size), steps)
