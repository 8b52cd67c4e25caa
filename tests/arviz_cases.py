"""Fixed draws and readers of drawn forest plots, shared by tests/test_arviz_bridge.py and the script that
writes its reference numbers (tests/fixtures/make_arviz_reference.py).

The draws come from integer arithmetic (splitmix64), so they are the same bits on every platform and
NumPy version; they are skewed (HDI != equal-tailed interval), so a wrapper that falls back to ArviZ 1.x's
default interval (equal-tailed, 89%) gives other numbers.
"""

from __future__ import annotations

import numpy as np
import torch

CONCEPTS = ("a", "b", "c")
PROB = 0.9


def uniform(n: int, stream: int) -> np.ndarray:
    """``n`` uniforms in (0, 1) from splitmix64 (exact: uint64 arithmetic wraps the same everywhere)."""
    with np.errstate(over="ignore"):
        z = (np.arange(1, n + 1, dtype=np.uint64) + np.uint64(stream << 32)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53


def fixed_draws(chains: int = 2, draws: int = 200, images: int = 2) -> np.ndarray:
    """``[chains, draws, images, 3]`` skewed draws: ``shift + scale * Exp(1) ** power`` per (image, concept)."""
    K = len(CONCEPTS)
    out = np.empty((chains, draws, images, K))
    for i in range(images):
        for j in range(K):
            u = uniform(chains * draws, stream=i * K + j)
            power = (1.0, 0.5, 2.0)[j]
            out[:, :, i, j] = ((j - 1.0) + (1.0 + i) * (-np.log1p(-u)) ** power).reshape(chains, draws)
    return out


def groups_and_coords(values: np.ndarray):
    """``from_draws`` arguments for :func:`fixed_draws`: a posterior ``concepts (chain, draw, image, concept)``."""
    C, S, N, K = values.shape
    groups = {"posterior": {"concepts": (("chain", "draw", "image", "concept"), values)}}
    coords = {"image": np.arange(N), "concept": list(CONCEPTS)}
    return groups, coords


def graph_posterior():
    """A fixed ``GraphPosterior`` (three edges; its draws come from NumPy's default_rng)."""
    from pyro_causalvae.bayes_graph import GraphPosterior

    return GraphPosterior(concepts=CONCEPTS, edges=[("a", "b"), ("a", "c"), ("b", "c")],
                          loc=torch.tensor([0.4, -0.05, 0.2]), scale=torch.tensor([0.05, 0.1, 0.02]),
                          point=torch.tensor([0.45, 0.0, 0.21]), prior="laplace", prior_scale=0.05,
                          noise_scale=torch.ones(3))


# ------------------------------------------------------------------------------------------------ reading plots
def drawn_forest(result) -> np.ndarray:
    """The numbers a forest plot drew, one row per drawn interval, top row first:
    ``[rows, 5]`` = HDI lower, inner lower, point, inner upper, HDI upper.

    :param result: what ``az.plot_forest`` returned: matplotlib axes (ArviZ 0.x) or a ``PlotCollection``
        (ArviZ 1.x).
    """
    if hasattr(result, "viz"):
        return _drawn_forest_1x(result)
    return _drawn_forest_0x(np.ravel(result)[0])


def _drawn_forest_0x(ax) -> np.ndarray:
    """ArviZ 0.x: per row (a y position), two horizontal lines (thin: HDI; thick: quartiles) and a point."""
    segments: dict[float, list] = {}
    points: dict[float, float] = {}
    for coll in ax.collections:
        widths = np.broadcast_to(coll.get_linewidths(), (len(coll.get_segments()),))
        for ((x0, y), (x1, _)), lw in zip(coll.get_segments(), widths):
            segments.setdefault(round(float(y), 6), []).append((float(lw), x0, x1))
    for line in ax.lines:
        (x,), (y,) = line.get_xdata(), line.get_ydata()
        points[round(float(y), 6)] = x
    out = []
    for y in sorted(segments, reverse=True):
        (_, h0, h1), (_, q0, q1) = sorted(segments[y])  # thin (HDI) first, then thick (quartiles)
        out.append([h0, q0, points[y], q1, h1])
    return np.array(out, dtype=float)


def _drawn_forest_1x(pc) -> np.ndarray:
    """ArviZ 1.x: the ``twig`` (outer), ``trunk`` (inner) lines and ``point_estimate`` markers, read from
    the PlotCollection's artists, ordered top row first (by their y position)."""
    rows = []
    for var in pc.viz["twig"].data_vars:
        twig = pc.viz["twig"][var].values.ravel()
        trunk = pc.viz["trunk"][var].values.ravel()
        point = pc.viz["point_estimate"][var].values.ravel()
        for tw, tr, pe in zip(twig, trunk, point):
            (x0, x1), (y, _) = tw.get_xdata(), tw.get_ydata()
            (t0, t1) = tr.get_xdata()
            (px, _py) = pe.get_offsets()[0]
            rows.append((float(y), [x0, t0, px, t1, x1]))
    rows.sort(key=lambda r: -r[0])
    return np.array([r[1] for r in rows], dtype=float)
