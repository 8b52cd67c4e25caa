"""Graph recovery: structural Hamming distance and edge precision / recall.

Inputs are ``networkx.DiGraph`` over the same node names; outputs are plain numbers.
"""

from __future__ import annotations

import networkx as nx


def _check(learned: nx.DiGraph, true: nx.DiGraph) -> None:
    for name, g in (("learned", learned), ("true", true)):
        if not isinstance(g, nx.DiGraph):
            raise ValueError(f"{name} must be a networkx.DiGraph, got {type(g).__name__}")
    if set(learned.nodes()) != set(true.nodes()):
        raise ValueError(f"graphs have different nodes: {sorted(learned.nodes())} vs {sorted(true.nodes())}")


def shd(learned: nx.DiGraph, true: nx.DiGraph) -> int:
    """Structural Hamming distance: edge additions, deletions and reversals turning ``learned`` into ``true``.

    A reversed edge counts once (the usual convention of NOTEARS / DAG-GNN evaluations).

    :raises ValueError: if either is not a ``networkx.DiGraph`` or their nodes differ.
    """
    _check(learned, true)
    L, T = set(learned.edges()), set(true.edges())
    reversed_ = {(u, v) for (u, v) in L - T if (v, u) in T}
    extra = (L - T) - reversed_
    missing = {(u, v) for (u, v) in T - L if (v, u) not in L}
    return len(reversed_) + len(extra) + len(missing)


def edge_precision_recall(learned: nx.DiGraph, true: nx.DiGraph) -> tuple[float, float]:
    """Precision and recall of the directed edges (precision is 1 for an empty learned graph).

    :raises ValueError: if either is not a ``networkx.DiGraph`` or their nodes differ.
    """
    _check(learned, true)
    L, T = set(learned.edges()), set(true.edges())
    tp = len(L & T)
    precision = tp / len(L) if L else 1.0
    recall = tp / len(T) if T else 1.0
    return precision, recall
