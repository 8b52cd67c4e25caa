"""The causal graph: acyclicity, the augmented Lagrangian, and the support of the adjacency matrix.

Conventions: ``A`` is an ``[n, n]`` tensor over the concepts; ``A[j, i] != 0`` means an edge ``j -> i``
(concept ``j`` is a parent of concept ``i``). The diagonal is always zero.

References:
    [1] Zheng, Aragam, Ravikumar, Xing. "DAGs with NO TEARS", NeurIPS 2018.
    [2] Yu, Chen, Gao, Yu. "DAG-GNN: DAG Structure Learning with Graph Neural Networks", ICML 2019.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import networkx as nx
import torch

from ._validation import check_graph


def acyclicity(A: torch.Tensor) -> torch.Tensor:
    """DAG-GNN's acyclicity function ``h(A) = tr((I + A o A / m)^m) - m`` [2].

    ``h(A) >= 0`` with equality iff the weighted graph of ``A`` has no directed cycle.

    :param A: adjacency weights of shape ``[m, m]``.
    :returns: a scalar tensor.
    """
    m = A.shape[-1]
    A64 = A.double()  # tr(.) - m cancels: float32 would lose small cycles entirely
    M = torch.eye(m, dtype=torch.float64, device=A.device) + A64 * A64 / m
    return (torch.linalg.matrix_power(M, m).diagonal(dim1=-2, dim2=-1).sum(-1) - m).to(A.dtype)


@dataclass(frozen=True)
class GraphSpec:
    """What is known about the graph before training.

    :param concepts: the concept names, in the model's order.
    :param known: a complete known graph (fixes A's support to its edges), or ``None`` to learn it.
    :param required: edges that must be present (learned weights, never thresholded away).
    :param forbidden: edges that must be absent.
    """

    concepts: tuple[str, ...]
    known: nx.DiGraph | None = None
    required: tuple[tuple[str, str], ...] = ()
    forbidden: tuple[tuple[str, str], ...] = ()

    @classmethod
    def build(
        cls,
        concepts: Sequence[str],
        graph: nx.DiGraph | Iterable[tuple[str, str]] | str | None = "learn",
        required: Iterable[tuple[str, str]] = (),
        forbidden: Iterable[tuple[str, str]] = (),
    ) -> "GraphSpec":
        """Validate and build a spec. ``graph`` is ``"learn"``/``None`` (learn it) or a known DAG."""
        concepts = tuple(concepts)
        known = None if graph is None or (isinstance(graph, str) and graph == "learn") else graph
        if isinstance(known, str):
            raise ValueError(f"graph must be 'learn', a networkx.DiGraph or a list of edges, got {graph!r}")
        known = check_graph(known, concepts)
        req = check_graph(list(required), concepts)
        forb_g = nx.DiGraph()
        forb = [tuple(e) for e in forbidden]
        for e in forb:
            if len(e) != 2 or e[0] not in concepts or e[1] not in concepts:
                raise ValueError(f"forbidden edge {e!r} must be a (parent, child) pair of concepts {list(concepts)}")
        forb_g.add_edges_from(forb)
        req_edges = tuple(req.edges()) if req is not None else ()
        clash = sorted(set(req_edges) & set(forb_g.edges()))
        if clash:
            raise ValueError(f"edges {clash} are both required and forbidden")
        if known is not None:
            missing = [e for e in req_edges if not known.has_edge(*e)]
            if missing:
                raise ValueError(f"required edges {missing} are not in the known graph")
            present = [e for e in forb_g.edges() if known.has_edge(*e)]
            if present:
                raise ValueError(f"forbidden edges {present} are in the known graph")
        return cls(concepts, known, req_edges, tuple(forb_g.edges()))

    @property
    def learned(self) -> bool:
        return self.known is None

    def support(self) -> torch.Tensor:
        """``[n, n]`` 0/1 mask of the entries of ``A`` that may be non-zero."""
        n = len(self.concepts)
        idx = {c: i for i, c in enumerate(self.concepts)}
        if self.known is not None:
            S = torch.zeros(n, n)
            for u, v in self.known.edges():
                S[idx[u], idx[v]] = 1.0
            return S
        S = 1.0 - torch.eye(n)
        for u, v in self.forbidden:
            S[idx[u], idx[v]] = 0.0
        return S

    def required_mask(self) -> torch.Tensor:
        """``[n, n]`` 0/1 mask of the edges that must be present."""
        n = len(self.concepts)
        idx = {c: i for i, c in enumerate(self.concepts)}
        R = torch.zeros(n, n)
        edges = self.known.edges() if self.known is not None else self.required
        for u, v in edges:
            R[idx[u], idx[v]] = 1.0
        return R

    def to_json(self) -> dict:
        return {
            "known": None if self.known is None else [list(e) for e in self.known.edges()],
            "required": [list(e) for e in self.required],
            "forbidden": [list(e) for e in self.forbidden],
        }

    @classmethod
    def from_json(cls, concepts: Sequence[str], d: dict) -> "GraphSpec":
        graph = "learn" if d.get("known") is None else [tuple(e) for e in d["known"]]
        return cls.build(concepts, graph, [tuple(e) for e in d["required"]], [tuple(e) for e in d["forbidden"]])


def causal_order(A: torch.Tensor) -> list[int]:
    """A causal order of the concepts from (possibly cyclic) weights ``A``.

    Greedy: repeatedly take the remaining node with the least incoming weight mass from the remaining
    nodes. For a DAG this is a topological order; for a not-yet-acyclic ``A`` (early in training) it
    is the order that drops the least edge weight.

    :param A: ``[n, n]`` weights (``A[j, i]``: edge ``j -> i``).
    :returns: node indices, causes first.
    """
    W = A.detach().abs().cpu()
    remaining = list(range(W.shape[0]))
    order = []
    while remaining:
        sub = W[remaining][:, remaining]
        incoming = sub.sum(0)
        k = int(torch.argmin(incoming))
        order.append(remaining.pop(k))
    return order


def order_mask(order: Sequence[int]) -> torch.Tensor:
    """``[n, n]`` 0/1 mask keeping only the edges ``j -> i`` with ``j`` before ``i`` in ``order``."""
    n = len(order)
    pos = torch.empty(n, dtype=torch.long)
    pos[torch.as_tensor(list(order))] = torch.arange(n)
    return (pos[:, None] < pos[None, :]).float()


def edge_mask(A: torch.Tensor, threshold: float, relative: float = 0.0) -> torch.Tensor:
    """``[n, n]`` 0/1 mask (``A``'s dtype and device) of the entries with ``|A[j, i]| > threshold`` and
    ``|A[j, i]| > relative * max_k |A[k, i]|`` (relative to the strongest edge into the same concept), off
    the diagonal. Computed on ``A``'s device, without gradient."""
    W = A.detach().abs()
    col_max = W.max(0).values
    keep = (W > threshold) & (W > relative * col_max[None, :])
    return (keep & ~torch.eye(W.shape[0], dtype=torch.bool, device=W.device)).to(A.dtype)


def to_networkx(A: torch.Tensor, concepts: Sequence[str], threshold: float, relative: float = 0.0) -> nx.DiGraph:
    """The graph of the edges of :func:`edge_mask` ``(A, threshold, relative)``.

    Weights are stored as edge attribute ``weight``.
    """
    g = nx.DiGraph()
    g.add_nodes_from(concepts)
    W = A.detach().cpu()
    for j, i in edge_mask(W, threshold, relative).nonzero().tolist():
        g.add_edge(concepts[j], concepts[i], weight=float(W[j, i]))
    return g


class AugmentedLagrangian(torch.nn.Module):
    """State of the augmented Lagrangian for ``h(A) = 0``: penalty ``lam * h + rho / 2 * h^2``.

    Updated as in NOTEARS [1] / DAG-GNN [2] after each inner optimisation (here: each epoch):
    ``lam <- lam + rho * h``; ``rho <- min(rho * rho_factor, rho_max)`` when ``h`` did not fall below
    ``progress * h_prev`` (and is above ``h_tol``). All state is kept in buffers on the model's device (no host synchronisation)
    and is saved in checkpoints.
    """

    def __init__(self, lam: float = 0.0, rho: float = 1.0, rho_factor: float = 10.0, rho_max: float = 1e6,
                 progress: float = 0.25, h_tol: float = 1e-8):
        super().__init__()
        self.register_buffer("lam", torch.tensor(float(lam)))
        self.register_buffer("rho", torch.tensor(float(rho)))
        self.register_buffer("h_prev", torch.tensor(float("inf")))
        self.rho_factor = float(rho_factor)
        self.rho_max = float(rho_max)
        self.progress = float(progress)
        self.h_tol = float(h_tol)

    def penalty(self, h: torch.Tensor) -> torch.Tensor:
        """``lam * h + rho / 2 * h^2`` (a scalar tensor)."""
        return self.lam * h + 0.5 * self.rho * h * h

    @torch.no_grad()
    def update(self, h: torch.Tensor) -> None:
        """One outer step of the method of multipliers, given the current ``h(A)``."""
        h = h.detach()
        grow = (h > self.progress * self.h_prev) & (h > self.h_tol)
        self.lam.add_(self.rho * h)
        self.rho.copy_(torch.where(grow, (self.rho * self.rho_factor).clamp(max=self.rho_max), self.rho))
        self.h_prev.copy_(h)
