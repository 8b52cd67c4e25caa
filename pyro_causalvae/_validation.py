"""Input checks shared by the datasets, the model and the CLI.

Every public entry point validates its input here *before* any work starts, so that a user gets one
readable ``ValueError`` (or ``FileNotFoundError``) naming the problem instead of an error from deep inside
torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import networkx as nx
import numpy as np
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


def check_positive_int(value: object, name: str) -> int:
    """``value`` if it is an ``int`` >= 1 (``bool`` refused), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_positive_float(value: object, name: str) -> float:
    """``value`` as a float if it is a real number in (0, inf) (``bool`` refused), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < float(value) < math.inf):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_real_vector(value: object, k: int, what: str, *, broadcast: bool = False) -> torch.Tensor:
    """``value`` as a finite float32 CPU tensor of shape ``[k]``, or ``ValueError`` naming ``what``.

    Refuses strings, complex numbers and non-numeric arrays (rather than letting numpy or torch parse or
    silently cast them). ``broadcast=True`` expands a scalar to ``[k]``.
    """
    if torch.is_tensor(value):
        if value.is_complex():
            raise ValueError(f"{what} must be real numbers, got a complex tensor")
        arr = value.detach().cpu().to(torch.float64).numpy()
    else:
        if isinstance(value, (str, bytes)):
            raise ValueError(f"{what} must be {k} numbers, got {value!r}")
        try:
            raw = np.asarray(value)
        except (TypeError, ValueError) as err:  # ragged nested lists
            raise ValueError(f"{what} must be {k} numbers, got {value!r}") from err
        if raw.dtype.kind == "c":
            raise ValueError(f"{what} must be real numbers, got complex values {value!r}")
        if raw.dtype.kind not in "biuf":
            raise ValueError(f"{what} must be {k} numbers, got {value!r}")
        arr = raw.astype(np.float64)
    t = torch.as_tensor(arr, dtype=torch.float32)
    if broadcast and t.dim() == 0:
        t = t.expand(k).clone()
    if t.shape != (k,):
        raise ValueError(f"{what} must have shape [{k}] (one value per concept), got shape {list(t.shape)}")
    check_finite(t, what)
    return t


def check_scale(scale: torch.Tensor, what: str, concepts: Sequence[str]) -> None:
    """Raise ``ValueError`` unless every entry of ``scale`` is > 0 and ``1 / scale`` is finite in float32."""
    bad = ~(scale > 0)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{what} must be positive, got {float(scale[i])} for concept {concepts[i]!r}")
    tiny = ~torch.isfinite(1.0 / scale)
    if tiny.any():
        i = int(tiny.nonzero()[0, 0])
        raise ValueError(
            f"{what} is too small for concept {concepts[i]!r}: {float(scale[i])!r} (1 / {what} overflows float32)"
        )


def check_edges(edges: object, concepts: Sequence[str], what: str) -> list[tuple[str, str]]:
    """``edges`` (an iterable of ``(parent, child)`` pairs of concept names) as a list, or ``ValueError``."""
    if isinstance(edges, (str, bytes)) or isinstance(edges, Mapping):
        raise ValueError(f"{what} must be a list of (parent, child) pairs, got {edges!r}")
    try:
        items = list(edges)
    except TypeError as err:
        raise ValueError(f"{what} must be a list of (parent, child) pairs, got {edges!r}") from err
    out = []
    for e in items:
        if isinstance(e, (str, bytes)):
            raise ValueError(f"each {what} edge must be a (parent, child) pair, got {e!r}")
        try:
            pair = tuple(e)
        except TypeError as err:
            raise ValueError(f"each {what} edge must be a (parent, child) pair, got {e!r}") from err
        if len(pair) != 2:
            raise ValueError(f"each {what} edge must be a (parent, child) pair, got {e!r}")
        for n in pair:
            if not isinstance(n, str) or n not in concepts:
                raise ValueError(f"{what} edge {e!r} names {n!r}, which is not a concept; concepts are {list(concepts)}")
        out.append((pair[0], pair[1]))
    return out


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
        if isinstance(value, (str, bytes, bool)) or (torch.is_tensor(value) and value.is_complex()):
            raise ValueError(f"do[{name!r}] must be a number or a 1-d tensor, got {value!r}")
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
            raise ValueError(f"do[{name!r}] is not finite (as float32): {_show(value)}")
        out[name] = t
    return out


def _show(value: object) -> str:
    """A short readable form of a number or tensor for error messages."""
    if torch.is_tensor(value):
        value = value.detach().cpu().tolist()
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` and the first bad index if ``t`` holds NaN or inf."""
    if t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bad.any():
            idx = tuple(int(i) for i in bad.nonzero()[0])
            kind = "NaN" if math.isnan(float(t[idx])) else "inf"
            raise ValueError(f"{what} has non-finite values ({int(bad.sum())} entries; first {kind} at index {idx})")


def missing_label_line(labels: torch.Tensor, concepts: Sequence[str]) -> str:
    """One line: how many labels are missing per concept (``labels`` ``[N, K]``, NaN = missing)."""
    n = labels.shape[0]
    counts = torch.isnan(labels).sum(0).tolist()
    parts = [f"{c} {m}" + (f" ({100 * m / n:.1f}%)" if m else "") for c, m in zip(concepts, counts, strict=True)]
    return f"missing labels of {n} rows: " + ", ".join(parts)
