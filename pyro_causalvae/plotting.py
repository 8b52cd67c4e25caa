"""Figures: reconstructions, the learned graph, loss curves (matplotlib, written as PNG)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import torch  # noqa: E402


def _image(t: torch.Tensor):
    t = t.detach().cpu().clamp(0, 1)
    return t[0] if t.shape[0] == 1 else t.permute(1, 2, 0)


def plot_reconstructions(x: torch.Tensor, recon: torch.Tensor, path: str | Path, n: int = 8) -> Path:
    """Originals (top row) over reconstructions (bottom row). ``x``, ``recon``: ``[N, C, H, W]`` in [0, 1]."""
    n = min(n, x.shape[0])
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.0), squeeze=False)
    for k in range(n):
        for r, t in enumerate((x, recon)):
            ax = axes[r, k]
            ax.imshow(_image(t[k]), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        if k == 0:
            axes[0, 0].set_ylabel("image")
            axes[1, 0].set_ylabel("reconstruction")
    fig.tight_layout()
    return _save(fig, path)


def plot_graph(graph: nx.DiGraph, path: str | Path, true_graph: nx.DiGraph | None = None, title: str = "learned graph") -> Path:
    """Draw ``graph`` on a circle; with ``true_graph``, correct edges are green, wrong ones red and
    missing ones dashed grey. Edge labels show the weights ``A[j, i]`` where present."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    nodes = list(true_graph.nodes()) if true_graph is not None else list(graph.nodes())
    pos = _layered_layout(graph, nodes)
    nx.draw_networkx_nodes(graph, pos, nodelist=nodes, node_color="#dde7f5", node_size=2200, ax=ax)
    nx.draw_networkx_labels(graph, pos, labels={v: v.replace("_", "\n") for v in nodes}, font_size=8, ax=ax)
    edges = list(graph.edges())
    colors = ["#2b8a3e" if true_graph is None or true_graph.has_edge(*e) else "#c92a2a" for e in edges]
    nx.draw_networkx_edges(graph, pos, edgelist=edges, edge_color=colors, width=2, arrowsize=18, node_size=2200, ax=ax)
    if true_graph is not None:
        missing = [e for e in true_graph.edges() if not graph.has_edge(*e)]
        nx.draw_networkx_edges(true_graph, pos, edgelist=missing, edge_color="#adb5bd", style="dashed", width=1.5, arrowsize=14, node_size=2200, ax=ax)
    weights = {e: f"{graph.edges[e]['weight']:.2f}" for e in edges if "weight" in graph.edges[e]}
    if weights:
        nx.draw_networkx_edge_labels(graph, pos, edge_labels=weights, font_size=7, label_pos=0.35, ax=ax)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _layered_layout(graph: nx.DiGraph, nodes: list) -> dict:
    """Causes above effects (topological generations as rows) for a DAG; a circle otherwise."""
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(graph.edges())
    if not nx.is_directed_acyclic_graph(g):
        return nx.circular_layout(nodes)
    for depth, generation in enumerate(nx.topological_generations(g)):
        for v in generation:
            g.nodes[v]["layer"] = -depth
    pos = nx.multipartite_layout(g, subset_key="layer", align="horizontal")
    return {v: (x, y) for v, (x, y) in pos.items()}


def plot_losses(history, path: str | Path) -> Path:
    """One panel per loss term of a :class:`~pyro_causalvae.train.History` (per-epoch means)."""
    keys = ["loss", "recon", "kl", "labels", "encoder", "h", "sparsity", "path"]
    keys = [k for k in keys if history.rows and k in history.rows[0]]
    cols = 4
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    epochs = history["epoch"]
    for ax, k in zip(axes.flat, keys):
        vals = history[k]
        ax.plot(epochs, vals, marker="o", ms=3)
        if k in ("loss", "recon") and min(vals) > 0 and max(vals) / max(min(vals), 1e-12) > 20:
            ax.set_yscale("log")
        ax.set_title(k)
        ax.set_xlabel("epoch")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_intervention_grid(x: torch.Tensor, grid: dict, path: str | Path, reconstruction: torch.Tensor | None = None,
                           title: str | None = None) -> Path:
    """The paper's intervention grid: one row per intervened concept, columns over the values swept, with
    the original image first (and its reconstruction second, if given).

    :param x: the original image ``[C, H, W]``.
    :param grid: ``{concept: (values [n], images [n, C, H, W])}`` from
        :func:`pyro_causalvae.queries.intervention_grid`.
    """
    x = x.reshape(-1, *x.shape[-3:])[0]
    lead = 2 if reconstruction is not None else 1
    cols = lead + max(len(v) for v, _ in grid.values())
    rows = len(grid)
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols + 1.6, 1.4 * rows + 0.4), squeeze=False)
    for r, (concept, (values, images)) in enumerate(grid.items()):
        panels = [(x, "original")]
        if reconstruction is not None:
            panels.append((reconstruction.reshape(-1, *x.shape)[0], "reconstruction"))
        panels += [(img, f"{float(v):.3g}") for v, img in zip(values, images)]
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(panels):
                ax.axis("off")
                continue
            img, label = panels[c]
            ax.imshow(_image(img), cmap="gray")
            ax.set_title(label, fontsize=7)
        axes[r, 0].set_ylabel(f"do({concept})", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
