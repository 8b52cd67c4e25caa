"""Interventional MIC: does the model's encoder read each concept from its own pixels?

MIC / TIC on the observational test split cannot tell an encoder that reads Pendulum's shadow off
the shadow from one that reads it off the pendulum and the sun: there, the shadow is a function of
the angles. Here the encoder reads renders in which every concept is drawn independently over its
range (:func:`~pyro_causalvae.metrics.judge.independent_labels`, readable scenes only), and each
concept's reading (:func:`~pyro_causalvae.metrics.model_api.read_concepts`) is scored against its
own label with the MIC / TIC of the project's protocol (:func:`~pyro_causalvae.metrics.protocol.mic_tic_scores`).
An encoder that reads a concept off its causes scores low on that concept's diagonal entry and high
on the off-diagonal entry of the cause.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .judge import independent_labels
from .model_api import read_concepts
from .protocol import mic_tic_scores

__all__ = ["interventional_mic", "interventional_mic_scores"]


def interventional_mic_scores(readings: np.ndarray, labels: np.ndarray, concepts: Sequence[str]) -> dict:
    """The protocol's numbers on interventional renders, plus each concept's strongest off-diagonal MIC.

    :param readings: ``[N, K]`` the model's reading of each concept.
    :param labels: ``[N, K]`` the true (independent) labels, same column order.
    :returns: :func:`~pyro_causalvae.metrics.protocol.mic_tic_scores`'s dict; ``per_concept[c]`` also
        has ``"max_other_mic"`` (x 100): the largest MIC of ``c``'s reading with another concept's label.
    """
    out = mic_tic_scores(readings, labels, concepts)
    M = np.asarray(out["mic_matrix"])  # [K reading, K label], x 100
    for k, c in enumerate(concepts):
        others = np.delete(M[k], k)
        out["per_concept"][c]["max_other_mic"] = float(others.max()) if others.size else float("nan")
    return out


def interventional_mic(model, scm, n: int = 1000, seed: int = 0, batch_size: int = 256) -> dict:
    """:func:`interventional_mic_scores` of ``model`` on ``n`` fresh interventional renders of ``scm``.

    :param model: a model with ``concepts`` (those of ``scm``), ``image_shape`` and ``encode``.
    :param n: renders (``>= 4``).
    :raises ValueError: when the model's concepts are not the SCM's.
    """
    if tuple(model.concepts) != tuple(scm.concepts):
        raise ValueError(f"model concepts {list(model.concepts)} are not the SCM's {list(scm.concepts)}")
    labels = independent_labels(scm, n, seed=seed)  # [n, K] natural units
    images = scm.render(labels, size=int(model.image_shape[-1]))
    readings = read_concepts(model, images, batch_size).numpy()
    return interventional_mic_scores(readings, ((labels - scm.label_loc) / scm.label_scale).numpy(), scm.concepts)
