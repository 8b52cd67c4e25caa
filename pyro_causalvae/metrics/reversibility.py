"""Reversibility (Monteiro et al., ICLR 2023): intervening and then intervening back restores the image.

For images ``x``, a concept ``c`` and values ``v``: ``x1 = model.counterfactual(x, do={c: v})``, then
``x2 = model.counterfactual(x1, do={c: c_hat(x)})``, where ``c_hat(x)`` is the value the model read
for ``c`` on the *original* images (its encoder's posterior mean, as for the null intervention of
:mod:`pyro_causalvae.metrics.composition`). Reversibility is ``mean |x2 - x|`` (L1 per pixel,
channel and image, images in [0, 1]); 0 is perfect, and an autoencoding model cannot do better than
about its reconstruction error (the benchmark's target: <= 1.5 x the reconstruction L1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._arrays import mean_abs_error
from .model_api import counterfactual_images, read_concepts

__all__ = ["cycle_l1", "model_reversibility"]


def cycle_l1(x: torch.Tensor, there: Callable[[torch.Tensor], torch.Tensor], back: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """``mean |back(there(x)) - x|`` for images ``x`` ``[N, C, H, W]`` in [0, 1] (the core)."""
    return mean_abs_error(back(there(x)).numpy(), x.numpy())


def model_reversibility(model, x: torch.Tensor, concept: str, values: torch.Tensor, batch_size: int = 256) -> float:
    """Reversibility of ``do(concept = values)`` (module docstring).

    :param x: images ``[N, C, H, W]`` (uint8, or float in [0, 1]).
    :param values: ``[N]`` the intervened values, normalised units.
    :raises ValueError: for a concept the model does not have.
    """
    concepts = list(model.concepts)
    if concept not in concepts:
        raise ValueError(f"unknown concept {concept!r}; the model's concepts are {concepts}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    c_hat = read_concepts(model, x, batch_size)[:, concepts.index(concept)]  # [N]
    return cycle_l1(x, lambda a: counterfactual_images(model, a, {concept: values}, batch_size),
                    lambda b: counterfactual_images(model, b, {concept: c_hat}, batch_size))
