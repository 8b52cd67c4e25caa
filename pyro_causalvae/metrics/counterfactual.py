"""Counterfactual accuracy against a ground-truth simulator (pure NumPy core).

For a batch of factual images and one intervention ``do(c = v)``, with labels read off images by an
independent judge (:mod:`pyro_causalvae.metrics.judge`), all in normalised label units:

- ``effectiveness``: the judge's reading of ``c`` on the counterfactuals against ``v``, its mean
  absolute error and slope (:func:`~pyro_causalvae.metrics.effectiveness.effectiveness`);
- ``achieved``: the change the model's counterfactual makes on ``c`` relative to the intended change,
  the least-squares slope (through 0) of ``judge(cf)[c] - judge(x)[c]`` on ``v - u[c]`` (1 is perfect,
  0 is no movement);
- for each descendant ``k`` of ``c``: ``r2`` of ``judge(cf)[k]`` against the true counterfactual label
  (the simulator's structural equations with the abducted noise), and its mean absolute error;
- ``leakage`` (minimality): ``mean |judge(cf)[k] - judge(x)[k]|`` for each non-descendant ``k`` (0 is
  perfect: they must not move);
- pixel errors: the counterfactual image against the true counterfactual image, next to the error of
  returning the unchanged image and to the plain reconstruction error of the factual image.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np

from ._arrays import finite as _finite
from ._arrays import same_shape
from .effectiveness import effectiveness


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` of ``[n]`` arrays (``nan`` if ``y_true`` is constant)."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(((y_true - y_pred) ** 2).sum()) / ss_tot


def intervention_scores(
    concepts: Sequence[str],
    graph: nx.DiGraph,
    target: str,
    do_value: np.ndarray,
    factual_labels: np.ndarray,
    true_cf_labels: np.ndarray,
    judged_factual: np.ndarray,
    judged_cf: np.ndarray,
) -> dict:
    """Scores of one intervention ``do(target = do_value)`` (see the module docstring).

    :param do_value: ``[n]`` intended values (normalised units).
    :param factual_labels: ``[n, K]`` the true factual labels (normalised units).
    :param true_cf_labels: ``[n, K]`` the simulator's counterfactual labels.
    :param judged_factual: ``[n, K]`` the judge's reading of the model's reconstructions (the
        reference for ``achieved`` and ``leakage``).
    :param judged_cf: ``[n, K]`` the judge's reading of the model's counterfactual images.
    :raises ValueError: for an unknown target, a graph over other nodes, arrays of the wrong shape, or
        NaN / inf values (named).
    """
    concepts = list(concepts)
    if target not in concepts:
        raise ValueError(f"unknown concept {target!r}; concepts are {concepts}")
    if not isinstance(graph, nx.DiGraph) or set(graph.nodes()) != set(concepts):
        raise ValueError(f"graph must be a networkx.DiGraph over the concepts {concepts}")
    names = ("factual_labels", "true_cf_labels", "judged_factual", "judged_cf")
    arrays = [_finite(a, name) for a, name in zip((factual_labels, true_cf_labels, judged_factual, judged_cf), names)]
    shape = arrays[0].shape
    if len(shape) != 2 or shape[0] == 0 or shape[1] != len(concepts) or any(a.shape != shape for a in arrays):
        raise ValueError(f"label arrays must all have shape [n, {len(concepts)}] with n >= 1, got {[b.shape for b in arrays]}")
    n = shape[0]
    v = _finite(do_value, "do_value")
    if v.shape not in ((), (1,), (n,)):
        raise ValueError(f"do_value must be a number or have shape [{n}], got shape {v.shape}")
    u, u_cf, j_x, j_cf = arrays
    v = np.broadcast_to(v, (n,))
    t = concepts.index(target)
    desc = sorted(nx.descendants(graph, target), key=concepts.index)
    non_desc = [c for c in concepts if c != target and c not in desc]
    intended = v - u[:, t]
    moved = j_cf[:, t] - j_x[:, t]
    denom = float(np.sum(intended**2))
    out = {
        "target": target,
        "effectiveness": effectiveness(v, j_cf[:, t]),
        "achieved": float(np.sum(moved * intended)) / denom if denom > 1e-12 else float("nan"),
        "descendants": {},
        "leakage": {},
    }
    for c in desc:
        k = concepts.index(c)
        out["descendants"][c] = {"r2": r2_score(u_cf[:, k], j_cf[:, k]), "mae": float(np.mean(np.abs(j_cf[:, k] - u_cf[:, k])))}
    for c in non_desc:
        k = concepts.index(c)
        out["leakage"][c] = float(np.mean(np.abs(j_cf[:, k] - j_x[:, k])))
    return out


def pixel_errors(images: np.ndarray, reconstructions: np.ndarray, cf_images: np.ndarray, true_cf_images: np.ndarray) -> dict:
    """Pixel errors of one intervention (images in [0, 1], all ``[n, C, H, W]``).

    :returns: ``cf_mse`` (counterfactual vs. the true counterfactual), ``unchanged_mse`` (the
        factual image vs. the true counterfactual: the error of a model that ignores the
        intervention), ``recon_mse`` (reconstruction vs. the factual image), and ``cf_l1`` /
        ``recon_l1``, the same as mean absolute errors.
    :raises ValueError: if the four arrays do not have one shape or hold NaN / inf.
    """
    images, reconstructions, cf_images, true_cf_images = same_shape(
        {"images": images, "reconstructions": reconstructions, "cf_images": cf_images, "true_cf_images": true_cf_images},
        "image arrays")
    return {
        "cf_mse": float(np.mean((cf_images - true_cf_images) ** 2)),
        "unchanged_mse": float(np.mean((images - true_cf_images) ** 2)),
        "recon_mse": float(np.mean((reconstructions - images) ** 2)),
        "cf_l1": float(np.mean(np.abs(cf_images - true_cf_images))),
        "recon_l1": float(np.mean(np.abs(reconstructions - images))),
    }
