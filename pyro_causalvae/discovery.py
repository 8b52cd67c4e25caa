"""The graph from the concept labels: causal order by independence of residuals, sparse parents, pruning.

Why independence: when child concepts are deterministic functions of their parents (Pendulum, Flow),
least-squares or Gaussian-likelihood scores do not identify the graph (the labels lie on a
low-dimensional manifold, and explaining a root by a child always lowers the squared error), and the
augmented Lagrangian only trades the resulting cycles off. What does identify the order is
independence: in the true order, every concept's residual given its parents is independent of all its
predecessors (roots are mutually independent; deterministic children have residuals near 0). The score
of an order is the RESIT criterion (Peters et al. 2014, JMLR 15) with sparse regressions,

    score(order) = sum_k sum_{j before k} HSIC(r_k, u_j),   r_k = u_k - E[u_k | u_P(k)]  (out of sample)

where ``P(k)``, at most ``max_parents`` of the predecessors of ``k``, is chosen by forward selection
(a predecessor joins while it explains at least ``min_gain`` of ``u_k``'s variance beyond those already
in; on few rows the bar is raised to the chance level, :func:`selection_threshold`). Regressing on a few
selected parents rather than on every predecessor is what keeps the fits accurate for many concepts (a
kernel ridge fit on 15 inputs from a thousand rows is poor, and its residual then looks dependent in every
order); the pairwise HSIC terms share one feature map per variable. Scores come from
:class:`~pyro_causalvae.independence.KernelTable` (a fixed row sample whose size grows like ``sqrt(N)``,
cached regressions).

Search (:func:`search_orders`): a beam search over orders built from the last concept backwards (the
sink of the remaining set first, as RESIT), ``beam`` partial orders kept per step, at most
``per_subset`` of them per set of remaining concepts (partial orders over the same set share their
future), plus any within the near-tie tolerance of the best over that set (so the near-ties below are
not merged away before they are compared). For up to 6 concepts the default beam keeps every set.

Near-ties (:func:`label_graph`): independence alone can leave several orders equally good. On Pendulum
the shadow position is nearly additive in the two angles, so ``light_angle -> shadow_position`` also
has a residual independent of its cause, and ``light < position < angle < length`` scores like the true
order within the estimator's noise. Such orders need more edges (there 5 instead of 4): among the
orders within ``tolerance`` of the best score, the one with the fewest edges after pruning wins.

Pruning (:func:`redundant_edges`, as CAM: Buehlmann, Peters and Ernest 2014, Ann. Statist. 42): a parent
whose removal leaves its child as well predicted (within ``min_gain`` of the child's variance, out of
sample, the other parents kept) is dropped, greedily. ``fit`` also runs it after the last epoch on the
graph SVI learned: a deterministic child can be fitted through a redundant parent as well as through the
real one (on Flow, ``ball_size -> water_flow`` next to ``water_height -> water_flow``).

:func:`choose_order_and_warm_start` is the graph stage of :func:`~pyro_causalvae.train.fit`:
:func:`label_graph`, then :func:`warm_start_graph` (``A`` and the mechanisms fitted to the labels within
the chosen order, ``A``'s support the chosen parents), each phase timed and logged.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .independence import KernelTable, standardise

#: default intra-op threads of the graph stage (see :func:`torch_threads`)
GRAPH_THREADS = 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(n)``, restoring the previous setting after it.

    The graph stage is many small linear-algebra calls; with more intra-op threads than free cores (a
    shared machine) OpenMP's barriers stall them (measured: a warm start with 2 threads on a busy
    2-core machine still running after 30 minutes). It therefore runs with :data:`GRAPH_THREADS` = 1
    unless told otherwise.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _clean(labels: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels, dtype=torch.float64)
    if labels.dim() != 2:
        raise ValueError(f"labels must have shape [N, K], got {list(labels.shape)}")
    labels = labels[~torch.isnan(labels).any(1)]
    if labels.shape[0] < 16:
        raise ValueError(f"the graph search needs at least 16 fully labelled rows, got {labels.shape[0]}")
    if not torch.isfinite(labels).all():
        raise ValueError("labels contain inf values")
    return labels


def _table(labels: torch.Tensor, rows: int | None, seed: int) -> KernelTable:
    return KernelTable(standardise(_clean(labels)), rows=rows, seed=seed)


def _check_pairs(pairs, K: int, what: str) -> list[tuple[int, int]]:
    out = []
    for e in pairs:
        j, i = (int(v) for v in e)
        if not (0 <= j < K and 0 <= i < K) or j == i:
            raise ValueError(f"{what} edge {tuple(e)} is not a pair of distinct concept indices in 0..{K - 1}")
        out.append((j, i))
    return out


# ----------------------------------------------------------------------------------------- parents

#: the bar a parent's out-of-sample gain must clear on ``rows`` rows per half is at least
#: ``CHANCE_GAIN / rows`` (:func:`selection_threshold`)
CHANCE_GAIN = 5.0


def selection_threshold(min_gain: float, rows: int) -> float:
    """The share of a child's variance a parent must explain to be selected (or kept by the pruning):
    ``max(min_gain, CHANCE_GAIN / rows)``.

    An independent variable also "explains" some variance out of sample, by chance: between two
    independent roots the gain has a standard deviation of about ``1 / rows`` (0.6 to 1.2 / rows on
    Pendulum and Flow, 55 to 1,000 rows per half, 8 seeded label subsets each:
    ``benchmarks/graph_recovery.py --chance``). With a fixed 1 % bar, 274 rows per half (548 labelled
    rows) select such a spurious parent in some subsets, and the true order then needs as many edges as
    the wrong ones. ``CHANCE_GAIN = 5`` puts the bar several chance standard deviations up (the tail is
    heavier than a Gaussian's: of 40 pairs of independent uniforms on 274 rows per half, 3 clear 1 % and
    1 still clears 1.8 %); a higher bar loses true parents on 2 % of the labels. From 500 rows per half
    (1,000 labelled rows) on it is ``min_gain``, so larger label sets are unaffected.
    """
    return max(float(min_gain), CHANCE_GAIN / max(int(rows), 1))


def select_parents(table: KernelTable, c: int, candidates: Sequence[int], required: Sequence[int] = (),
                   max_parents: int = 4, min_gain: float = 0.01) -> tuple[tuple[int, ...], float, torch.Tensor]:
    """Forward selection of the parents of ``c`` among ``candidates``.

    Starts from the ``required`` parents; then repeatedly adds the candidate that lowers the
    out-of-sample squared error most, while it lowers it by at least ``min_gain`` times ``var(u_c)``
    and fewer than ``max_parents`` are in (required parents do not count against the limit).

    :returns: ``(parents, mse, hsic)``: sorted parent indices, the residual's mean squared error and
        its ``[K]`` HSIC row (:meth:`~pyro_causalvae.independence.KernelTable.regress`).
    """
    P = sorted(set(required))
    mse, h = table.regress(c, P)
    var = max(float(table.var[c]), 1e-12)
    free = [j for j in candidates if j not in P and j != c]
    added = 0
    while free and added < max_parents:
        trial = {j: table.regress(c, P + [j]) for j in free}
        j = min(trial, key=lambda k: trial[k][0])
        if (mse - trial[j][0]) / var < min_gain:
            break
        P = sorted(P + [j])
        mse, h = trial[j]
        free.remove(j)
        added += 1
    return tuple(P), mse, h


def _prune_child(table: KernelTable, c: int, parents: Sequence[int], keep: set, min_gain: float) -> list[dict]:
    """Backward elimination of ``c``'s parents (see :func:`redundant_edges`): the removed ones, in order."""
    parents = list(parents)
    var = max(float(table.var[c]), 1e-12)
    removed = []
    while parents:
        base = table.regress(c, parents)[0]
        cost = {p: (table.regress(c, [q for q in parents if q != p])[0] - base) / var
                for p in parents if (p, c) not in keep}
        if not cost:
            break
        p = min(cost, key=cost.get)
        if cost[p] >= min_gain:
            break
        removed.append({"edge": (p, c), "gain": cost[p]})
        parents.remove(p)
    return removed


def redundant_edges(
    labels: torch.Tensor,
    edges: Sequence[tuple[int, int]],
    min_gain: float = 0.01,
    keep: Sequence[tuple[int, int]] = (),
    rows: int | None = None,
    seed: int = 0,
    table: KernelTable | None = None,
) -> list[dict]:
    """Edges of a graph whose parent adds (almost) nothing to the prediction of its child.

    For each child with parents ``P``, the parent whose removal costs least is dropped while that cost,
    ``gain = (mse(child | P - {p}) - mse(child | P)) / var(child)`` (out-of-sample kernel ridge), is
    below ``min_gain``; then the next, on the reduced set (greedy backward elimination, as CAM's pruning).

    :param labels: ``[N, K]`` labels (rows with NaN are skipped).
    :param edges: ``[(parent, child), ...]`` concept indices.
    :param min_gain: the share of the child's variance a parent must explain beyond the others (raised
        to the chance level on few rows, :func:`selection_threshold`).
    :param keep: edges never removed (required edges).
    :param rows: rows per half of the fit / evaluation split (default:
        :func:`~pyro_causalvae.independence.sample_rows`).
    :param table: reuse the regressions of a search (then ``labels``, ``rows`` and ``seed`` are unused).
    :returns: ``[{"edge": (parent, child), "gain": float}, ...]`` in removal order.
    """
    table = table if table is not None else _table(labels, rows, seed)
    edges = _check_pairs(edges, table.K, "an")
    keep_set = set(_check_pairs(keep, table.K, "a kept"))
    threshold = selection_threshold(min_gain, table.n)
    removed = []
    for child in sorted({i for _, i in edges}):
        removed += _prune_child(table, child, sorted({j for j, i in edges if i == child}), keep_set, threshold)
    return removed


# ----------------------------------------------------------------------------------------- orders


@dataclass
class OrderCandidate:
    """One causal order found by :func:`search_orders`.

    :ivar order: concept indices, causes first.
    :ivar score: sum over concepts of the HSIC of its residual with each of its predecessors.
    :ivar parents: for each concept (by index), its selected parents (a sorted tuple).
    :ivar pruned: edges :func:`redundant_edges` removed from ``parents`` (filled by :func:`label_graph`).
    """

    order: list[int]
    score: float
    parents: list[tuple[int, ...]]
    pruned: list[dict] = field(default_factory=list)

    def edges(self) -> list[tuple[int, int]]:
        """``(parent, child)`` pairs of the selected parents, minus the pruned ones."""
        gone = {tuple(r["edge"]) for r in self.pruned}
        return [(j, i) for i, ps in enumerate(self.parents) for j in ps if (j, i) not in gone]


def search_orders(
    labels: torch.Tensor,
    required: Sequence[tuple[int, int]] = (),
    forbidden: Sequence[tuple[int, int]] = (),
    beam: int = 24,
    per_subset: int = 2,
    max_parents: int = 4,
    min_gain: float = 0.01,
    rows: int | None = None,
    seed: int = 0,
    table: KernelTable | None = None,
    progress: bool = False,
    tolerance: float = 0.0,
) -> list[OrderCandidate]:
    """Causal orders of the concepts by independence of sparse-regression residuals (beam search).

    :param labels: labels ``[N, K]`` (rows with NaN are dropped; at least 16 complete rows).
    :param required: ``(j, i)`` index pairs that must be edges (``j`` before ``i``, ``j`` a parent of ``i``).
    :param forbidden: ``(j, i)`` index pairs that must not be edges.
    :param beam: partial orders kept after each step.
    :param per_subset: at most this many of them over the same set of remaining concepts, besides those
        within ``tolerance / rows`` of the best of that set (near-ties are kept for :func:`label_graph`).
    :param max_parents: at most this many parents selected per concept (besides required ones).
    :param min_gain: share of a concept's variance a parent must explain to be selected (raised to the
        chance level on few rows, :func:`selection_threshold`).
    :param rows: rows per half of the fit / evaluation split (default: grows like ``sqrt(N)``,
        :func:`~pyro_causalvae.independence.sample_rows`).
    :param seed: seed of the row sample.
    :param table: reuse a :class:`~pyro_causalvae.independence.KernelTable` (its data and split).
    :param progress: show a tqdm bar over the steps of the search.
    :param tolerance: partial orders within ``tolerance / rows`` of the best over the same remaining set
        are kept even beyond ``per_subset`` (still within ``beam``).
    :returns: the complete orders of the final beam, best score first (at most ``beam``).
    :raises ValueError: for labels that are not ``[N, K]`` with 16 complete rows, bad settings, or
        required edges that form a cycle.
    """
    for name, v, lo in (("beam", beam, 1), ("per_subset", per_subset, 1), ("max_parents", max_parents, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not (isinstance(min_gain, (int, float)) and 0 <= min_gain < 1):
        raise ValueError(f"min_gain must be a number in [0, 1), got {min_gain!r}")
    table = table if table is not None else _table(labels, rows, seed)
    K = table.K
    threshold = selection_threshold(min_gain, table.n)
    req = _check_pairs(required, K, "a required")
    forb = set(_check_pairs(forbidden, K, "a forbidden"))
    req_parents = {i: {j for j, ii in req if ii == i} for i in range(K)}
    req_children = {j: {i for jj, i in req if jj == j} for j in range(K)}
    memo: dict[tuple[int, frozenset], tuple[tuple[int, ...], float]] = {}

    def term(c: int, before: frozenset) -> tuple[tuple[int, ...], float]:
        key = (c, before)
        if key not in memo:
            cands = [j for j in sorted(before) if (j, c) not in forb]
            P, _, h = select_parents(table, c, cands, req_parents[c], max_parents, threshold)
            memo[key] = (P, float(h[sorted(before)].sum()) if before else 0.0)
        return memo[key]

    # a state: (score, sinks so far (last concept first), remaining concepts, parents of the sinks)
    states: list[tuple[float, tuple[int, ...], frozenset, dict]] = [(0.0, (), frozenset(range(K)), {})]
    with tqdm(total=K, desc="order search", unit="step", disable=not progress, dynamic_ncols=True, leave=False) as bar:
        for _ in range(K):
            grown = []
            for score, sinks, remaining, parents in states:
                for c in sorted(remaining):
                    if req_children[c] & (remaining - {c}):
                        continue  # a required child of c is still to be placed after it
                    before = remaining - {c}
                    P, t = term(c, before)
                    grown.append((score + t, sinks + (c,), before, {**parents, c: P}))
            if not grown:
                raise ValueError("the required edges admit no causal order (they form a cycle)")
            grown.sort(key=lambda s: (s[0], s[1]))
            states, per, lead = [], {}, {}
            for s in grown:  # the complete orders (nothing remaining) are all kept, up to the beam
                lead.setdefault(s[2], s[0])  # the best score over this remaining set (grown is sorted)
                near = s[0] <= lead[s[2]] + tolerance / table.n
                if (not s[2] or per.get(s[2], 0) < per_subset or near) and len(states) < beam:
                    states.append(s)
                    per[s[2]] = per.get(s[2], 0) + 1
            bar.update(1)
            bar.set_postfix(regressions=table.regressions)
    return [OrderCandidate(order=list(sinks[::-1]), score=score, parents=[parents[i] for i in range(K)])
            for score, sinks, _, parents in states]


def order_search(labels: torch.Tensor, required: Sequence[tuple[int, int]] = (), seed: int = 0,
                 rows: int | None = None, **kw) -> tuple[list[int], float]:
    """The best-scoring causal order (:func:`search_orders`' first candidate, no tie-break).

    :returns: ``(order, score)``: concept indices causes first, and the order's score.
    """
    best = search_orders(labels, required=required, seed=seed, rows=rows, **kw)[0]
    return best.order, best.score


@dataclass
class LabelGraph:
    """What :func:`label_graph` decided: the chosen candidate, the near-tied ones, the timing.

    :ivar order: concept indices, causes first.
    :ivar score: the order's score.
    :ivar edges: ``(parent, child)`` index pairs after pruning.
    :ivar candidates: the orders within the tolerance of the best score (each with its edges).
    :ivar rows: rows per half of the fit / evaluation split.
    :ivar regressions: kernel regressions computed.
    :ivar seconds: time of the search and the pruning.
    """

    order: list[int]
    score: float
    edges: list[tuple[int, int]]
    candidates: list[OrderCandidate]
    rows: int
    regressions: int
    seconds: float


def label_graph(
    labels: torch.Tensor,
    required: Sequence[tuple[int, int]] = (),
    forbidden: Sequence[tuple[int, int]] = (),
    tolerance: float = 0.25,
    max_candidates: int = 8,
    min_gain: float = 0.01,
    rows: int | None = None,
    seed: int = 0,
    progress: bool = False,
    **search_kw,
) -> LabelGraph:
    """The graph of the labels: :func:`search_orders`, each near-tied order's parents pruned
    (:func:`redundant_edges`), and the order with the fewest edges among the near-ties.

    :param tolerance: orders whose score is within ``tolerance / rows`` of the best are near-ties (the
        estimator's noise falls like ``1 / rows``); at most ``max_candidates`` of them are compared.
    :param search_kw: passed to :func:`search_orders` (``beam``, ``per_subset``, ``max_parents``).
    :returns: a :class:`LabelGraph`.
    """
    t0 = time.perf_counter()
    table = _table(labels, rows, seed)
    ranked = search_orders(labels, required, forbidden, min_gain=min_gain, table=table, progress=progress,
                           tolerance=tolerance, **search_kw)
    best = ranked[0].score
    near = [c for c in ranked if c.score <= best + tolerance / table.n][:max_candidates]
    for cand in near:
        cand.pruned = redundant_edges(None, [(j, i) for i, ps in enumerate(cand.parents) for j in ps],
                                      min_gain=min_gain, keep=required, table=table)
    chosen = min(near, key=lambda c: (len(c.edges()), c.score))
    return LabelGraph(order=chosen.order, score=chosen.score, edges=chosen.edges(), candidates=near, rows=table.n,
                      regressions=table.regressions, seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------- warm start


def warm_start_graph(
    model,
    labels: torch.Tensor,
    order: Sequence[int],
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 3e-3,
    sparsity: float = 0.002,
    path: float = 0.02,
    seed: int = 0,
    parents: torch.Tensor | None = None,
    progress: bool = False,
) -> None:
    """Fit ``A`` and the mechanisms ``g_i`` to the labels within a causal order, before SVI.

    Entries of ``A`` against ``order`` (and, when ``parents`` is given, outside it) are held at 0 (the
    graph is a DAG by construction during the warm start); the loss is the label loss
    ``sum_i ||u_i - g_i(A[:, i] o u)||^2`` plus ``sparsity * |A|_1`` and ``path * sum(|A| @ |A|)`` (a
    penalty on two-step paths: among parent sets that predict a deterministic child equally well, it
    prefers the one with the fewest ancestral relations). Afterwards :func:`~pyro_causalvae.train.fit`
    trains ``A`` over its whole support under the augmented Lagrangian, with entries against the order
    penalised (``LossWeights.order_prior``).

    :param model: a :class:`~pyro_causalvae.model.CausalVAE` with a learned graph.
    :param labels: normalised labels ``[N, K]`` on the model's device (NaN rows are skipped).
    :param order: concept indices, causes first (from :func:`label_graph`).
    :param parents: optional ``[K, K]`` 0/1 mask, ``parents[j, i] = 1``: ``j`` may be a parent of ``i``.
    :param progress: show a tqdm bar over the steps.
    """
    model.init_from_order(order)
    labels = labels[~torch.isnan(labels).any(1)]
    N = labels.shape[0]
    if N == 0:
        return
    keep = model.support * model.order_mask  # [K, K] entries allowed during the warm start
    if parents is not None:
        keep = keep * parents.to(keep)
        with torch.no_grad():
            model.A_raw.mul_(keep)
    params = list(model.mechanisms.parameters()) + [model.A_raw]
    optim = torch.optim.Adam(params, lr=lr)
    g = torch.Generator(device="cpu").manual_seed(seed)
    for _ in tqdm(range(steps), desc="warm start", unit="step", disable=not progress, dynamic_ncols=True, leave=False):
        idx = torch.randint(0, N, (min(batch_size, N),), generator=g).to(labels.device)
        ub = labels[idx]  # [B, K]
        A = model.A_raw * keep
        resid = ((ub - model.mechanisms(ub, A)) ** 2).sum(-1).mean()
        Aa = A.abs()
        loss = resid + sparsity * Aa.sum() + path * (Aa @ Aa).sum()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    with torch.no_grad():
        model.A_raw.mul_(keep)


def choose_order_and_warm_start(
    model,
    labels: torch.Tensor,
    required: Sequence[tuple[int, int]] = (),
    seed: int = 0,
    steps: int = 2000,
    threads: int = GRAPH_THREADS,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **graph_kw,
) -> tuple[list[int], float, list[dict]]:
    """The graph stage of :func:`~pyro_causalvae.train.fit`: :func:`label_graph` on the labels, then
    :func:`warm_start_graph` within the chosen order, ``A``'s support the chosen parents.

    Runs with ``threads`` intra-op threads (:func:`torch_threads`). Each phase reports one line with its
    time through ``log`` (e.g. ``print``), with or without the progress bars.

    :param model: a :class:`~pyro_causalvae.model.CausalVAE` with a learned graph.
    :param labels: normalised labels ``[N, K]`` on the model's device.
    :param required: required edges as ``(parent, child)`` indices (``model.spec.forbidden`` is read
        from the model).
    :param graph_kw: passed to :func:`label_graph` (``tolerance``, ``beam``, ``max_parents``, ``rows``, ...).
    :returns: ``(order, score, candidates)``: the candidates as dicts ``{"order", "score", "edges",
        "pruned"}``; the model is left warm-started on the chosen order.
    """
    say = log if log is not None else (lambda s: None)
    idx = {c: k for k, c in enumerate(model.concepts)}
    forbidden = [(idx[a], idx[b]) for a, b in model.spec.forbidden]
    with torch_threads(threads):
        found = label_graph(labels.detach().cpu(), required=required, forbidden=forbidden, seed=seed,
                            progress=progress, **graph_kw)
        K = len(model.concepts)
        say(f"graph stage: order search {found.seconds:.1f} s ({K} concepts, {found.rows} + {found.rows} label rows, "
            f"{found.regressions} regressions, {len(found.candidates)} near-tied order(s), {len(found.edges)} edges; "
            f"torch intra-op threads {threads})")
        t0 = time.perf_counter()
        mask = torch.zeros(K, K)
        for j, i in list(found.edges) + [tuple(e) for e in required]:
            mask[j, i] = 1.0
        warm_start_graph(model, labels, found.order, steps=steps, seed=seed, parents=mask, progress=progress)
        say(f"graph stage: warm start {time.perf_counter() - t0:.1f} s ({steps} steps, "
            f"{model.graph().number_of_edges()} edges)")
    cands = [{"order": c.order, "score": c.score, "edges": len(c.edges()),
              "pruned": [list(r["edge"]) for r in c.pruned]} for c in found.candidates]
    return found.order, found.score, cands
