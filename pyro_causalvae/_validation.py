"""Input checks shared by the datasets, the model and the CLI.

Every public entry point validates its input here *before* any work starts, so that a user gets one
readable ``ValueError`` (or ``FileNotFoundError``) naming the problem instead of an error from deep inside
torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import networkx as nx
import torch

GraphLike = nx.DiGraph | Iterable[tuple[str, str]] | None


def check_concepts(concepts: Sequence[str]) -> tuple[str, ...]:
    """Return ``concepts`` as a tuple of unique, non-empty strings, or raise ``ValueError``."""
    if isinstance(concepts, str) or not isinstance(concepts, Sequence):
        raise ValueError(f"concepts must be a sequence of names, got {concepts!r}")
    names = tuple(concepts)
    if not names:
        raise ValueError("concepts must name at least one concept")
    for c in names:
        if not isinstance(c, str) or not c:
            raise ValueError(f"concept names must be non-empty strings, got {c!r}")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise ValueError(f"duplicate concept names: {dup}")
    return names


def check_graph(graph: GraphLike, concepts: Sequence[str]) -> nx.DiGraph | None:
    """Validate a causal graph over ``concepts``.

    :param graph: a ``networkx.DiGraph`` or an iterable of ``(parent, child)`` name pairs, or ``None``
        (unknown graph).
    :param concepts: the concept names; every node of the graph must be one of them.
    :returns: a new ``DiGraph`` whose nodes are exactly ``concepts`` (in that order), or ``None``.
    :raises ValueError: for an unknown node, a self-loop or a directed cycle (the cycle is named).
    """
    if graph is None:
        return None
    concepts = tuple(concepts)
    if isinstance(graph, nx.Graph):
        if not isinstance(graph, nx.DiGraph):
            raise ValueError("graph must be directed (a networkx.DiGraph), got an undirected graph")
        edges = list(graph.edges())
        nodes = list(graph.nodes())
    else:
        try:
            edges = [tuple(e) for e in graph]
        except TypeError as err:
            raise ValueError(f"graph must be a networkx.DiGraph or a list of edges, got {graph!r}") from err
        for e in edges:
            if len(e) != 2:
                raise ValueError(f"each edge must be a (parent, child) pair, got {e!r}")
        nodes = [n for e in edges for n in e]
    unknown = sorted({str(n) for n in nodes if n not in concepts})
    if unknown:
        raise ValueError(f"graph has node(s) {unknown} that are not concepts; concepts are {list(concepts)}")
    g = nx.DiGraph()
    g.add_nodes_from(concepts)
    g.add_edges_from(edges)
    loops = [u for u, v in g.edges() if u == v]
    if loops:
        raise ValueError(f"graph has a self-loop on {loops[0]!r}; a causal graph must be acyclic")
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        raise ValueError(f"graph has a cycle: {path}; a causal graph must be acyclic")
    return g


def check_do(do: Mapping[str, object], concepts: Sequence[str], n: int | None = None) -> dict[str, torch.Tensor]:
    """Validate an intervention ``{concept: value}``.

    :param do: concept name -> a number, or a tensor of shape ``[n]`` (one value per row).
    :param concepts: the known concept names.
    :param n: the batch size the values must broadcast to, if known.
    :returns: ``{concept: float tensor of shape [] or [n]}``.
    :raises ValueError: for an unknown concept, a non-finite value, or a wrong shape.
    """
    if not isinstance(do, Mapping):
        raise ValueError(f"do must be a dict {{concept: value}}, got {type(do).__name__}")
    if not do:
        raise ValueError("do is empty: name at least one concept to intervene on")
    out = {}
    for name, value in do.items():
        if name not in concepts:
            raise ValueError(f"unknown concept {name!r} in do; concepts are {list(concepts)}")
        try:
            t = torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"do[{name!r}] must be a number or a 1-d tensor, got {value!r}") from err
        if t.dim() > 1 or (n is not None and t.dim() == 1 and t.shape[0] not in (1, n)):
            raise ValueError(
                f"do[{name!r}] must be a number or have shape [{n if n is not None else 'n'}], "
                f"got shape {list(t.shape)}"
            )
        if not torch.isfinite(t).all():
            raise ValueError(f"do[{name!r}] is not finite: {value!r}")
        out[name] = t
    return out


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` and the first bad index if ``t`` holds NaN or inf."""
    if t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bad.any():
            idx = tuple(int(i) for i in bad.nonzero()[0])
            kind = "NaN" if math.isnan(float(t[idx])) else "inf"
            raise ValueError(f"{what} has non-finite values ({int(bad.sum())} entries; first {kind} at index {idx})")
