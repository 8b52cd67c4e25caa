"""Causal order from concept labels, by independence of residuals (a RESIT score over all orders).

Why: when child concepts are deterministic functions of their parents (Pendulum, Flow), least-squares
or Gaussian-likelihood scores do not identify the graph (the labels lie on a low-dimensional manifold,
and explaining a root by a child always lowers the squared error), and the augmented Lagrangian only
trades the resulting cycles off. What does identify the order is independence: in the true order, every
concept's residual given its predecessors is independent of them (roots are mutually independent;
deterministic children have residuals near 0). This module scores each order by

    score(order) = sum_k HSIC(r_k, u_pred(k)),   r_k = u_k - E[u_k | u_pred(k)]  (kernel ridge, out of sample)

(the criterion of RESIT, Peters et al. 2014, JMLR 15) and returns the best one, found exactly by scoring
every order from ``K * 2^(K-1)`` cached regressions, or greedily for many concepts. The residual's
kernel uses the bandwidth of the variable itself, so an almost exactly fitted child scores about 0
rather than being judged on the structure of tiny fit errors.

:func:`pyro_causalvae.train.fit` uses the order to initialise a learned graph: the causal order of the
structural equations, and ``A``'s starting support; ``A`` is then learned under the augmented Lagrangian.

After training, :func:`redundant_edges` prunes the learned graph the way CAM does (Buehlmann, Peters and
Ernest 2014, Ann. Statist. 42): a parent whose removal leaves the child as well predicted (out-of-sample
kernel ridge regression on the labels, the child's other parents kept) is dropped. A deterministic
child can be fitted by the SVI penalties through a redundant parent as well as through the real one
(on Flow, ``ball_size -> water_flow`` next to ``water_height -> water_flow``); the labels say which
parent carries information that the others do not.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence

import torch


def _sqdist(X: torch.Tensor, Y: torch.Tensor | None = None) -> torch.Tensor:
    Y = X if Y is None else Y
    return ((X * X).sum(-1)[:, None] + (Y * Y).sum(-1)[None, :] - 2 * X @ Y.T).clamp_min(0)


def median_bandwidth(X: torch.Tensor) -> float:
    """Median pairwise distance of the rows of ``X`` (``[n, p]``); 1 if all rows are equal."""
    d = _sqdist(X).sqrt()
    d = d[d > 0]
    return float(d.median()) if d.numel() else 1.0


def gram(X: torch.Tensor, bandwidth: float, Y: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian kernel matrix ``exp(-|x - y|^2 / (2 bw^2))``: ``[n, m]``."""
    return torch.exp(-_sqdist(X, Y) / (2.0 * bandwidth * bandwidth))


def hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimate (Song et al. 2012) from two ``[n, n]`` Gram matrices (``n >= 4``)."""
    n = K.shape[0]
    K = K - torch.diag(torch.diag(K))
    L = L - torch.diag(torch.diag(L))
    KL = K @ L
    return (KL.diagonal().sum() + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2.0 * KL.sum() / (n - 2)) / (n * (n - 3))


def krr_residuals(X_fit: torch.Tensor, y_fit: torch.Tensor, X_eval: torch.Tensor, y_eval: torch.Tensor,
                  ridge: float = 1e-4) -> torch.Tensor:
    """Out-of-sample residuals of Gaussian-kernel ridge regression of ``y`` on ``X`` (``[n]``)."""
    bw = median_bandwidth(X_fit)
    n = X_fit.shape[0]
    K = gram(X_fit, bw)
    mean = y_fit.mean()
    alpha = torch.linalg.solve(K + ridge * n * torch.eye(n, dtype=K.dtype), y_fit - mean)
    return y_eval - (gram(X_eval, bw, X_fit) @ alpha + mean)


def _fit_eval_split(labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random halves of the rows (at most ``n`` each, float64): regressions are fitted on the
    first and evaluated on the second."""
    g = torch.Generator().manual_seed(seed)
    m = min(n, labels.shape[0] // 2)
    U = labels[torch.randperm(labels.shape[0], generator=g)[: 2 * m]].double()
    return U[:m], U[m:]


class _Scorer:
    """Cached ``HSIC(residual of u_c given u_P, u_P)`` terms on a fixed fit / evaluation split."""

    def __init__(self, labels: torch.Tensor, n: int, seed: int, ridge: float):
        self.fit, self.eval = _fit_eval_split(labels, n, seed)
        self.ridge = ridge
        self.bw = [median_bandwidth(self.eval[:500, c : c + 1]) for c in range(self.eval.shape[1])]
        self.cache: dict[tuple[int, tuple[int, ...]], float] = {}

    def term(self, c: int, preds: Sequence[int]) -> float:
        key = (c, tuple(sorted(preds)))
        if key not in self.cache:
            if not preds:
                self.cache[key] = 0.0
            else:
                P = list(key[1])
                r = krr_residuals(self.fit[:, P], self.fit[:, c], self.eval[:, P], self.eval[:, c], self.ridge)
                Kp = gram(self.eval[:, P], median_bandwidth(self.eval[:, P]))
                self.cache[key] = float(hsic_unbiased(Kp, gram(r[:, None], self.bw[c])))
        return self.cache[key]


def order_scores(
    labels: torch.Tensor,
    required: Sequence[tuple[int, int]] = (),
    n: int = 1000,
    seed: int = 0,
    ridge: float = 1e-4,
) -> list[tuple[float, list[int]]]:
    """Every causal order admitted by ``required`` with its score, best first (``K!`` orders from
    ``K * 2^(K-1)`` cached regressions; for up to about 8 concepts)."""
    labels = _clean(labels)
    K = labels.shape[1]
    sc = _Scorer(labels, n, seed, ridge)
    out = []
    for perm in itertools.permutations(range(K)):
        pos = {c: k for k, c in enumerate(perm)}
        if any(pos[j] > pos[i] for j, i in required):
            continue
        out.append((sum(sc.term(c, perm[:k]) for k, c in enumerate(perm)), list(perm)))
    if not out:
        raise ValueError("the required edges admit no causal order (they form a cycle)")
    return sorted(out)


def _clean(labels: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels, dtype=torch.float64)
    if labels.dim() != 2:
        raise ValueError(f"labels must have shape [N, K], got {list(labels.shape)}")
    labels = labels[~torch.isnan(labels).any(1)]
    if labels.shape[0] < 16:
        raise ValueError(f"order_search needs at least 16 fully labelled rows, got {labels.shape[0]}")
    return labels


def _mse_table(labels: torch.Tensor, n: int, seed: int, ridge: float):
    """Out-of-sample mean squared error of each concept given a parent set (cached), on a fit/eval split."""
    fit_, eval_ = _fit_eval_split(_clean(labels), n, seed)
    cache: dict[tuple[int, tuple[int, ...]], float] = {}

    def mse(c: int, parents) -> float:
        key = (c, tuple(sorted(parents)))
        if key not in cache:
            if not parents:
                r = eval_[:, c] - fit_[:, c].mean()
            else:
                P = list(key[1])
                r = krr_residuals(fit_[:, P], fit_[:, c], eval_[:, P], eval_[:, c], ridge)
            cache[key] = float((r * r).mean())
        return cache[key]

    return mse


def redundant_edges(
    labels: torch.Tensor,
    edges: Sequence[tuple[int, int]],
    min_gain: float = 0.01,
    keep: Sequence[tuple[int, int]] = (),
    n: int = 1000,
    seed: int = 0,
    ridge: float = 1e-4,
) -> list[dict]:
    """Edges of a graph whose parent adds (almost) nothing to the prediction of its child.

    For each child with parents ``P``, the parent whose removal costs least is dropped while that cost,
    ``gain = (mse(child | P - {p}) - mse(child | P)) / var(child)`` (out-of-sample kernel ridge), is
    below ``min_gain``; then the next, on the reduced set (greedy backward elimination, as CAM's pruning).

    :param labels: ``[N, K]`` labels (rows with NaN are skipped).
    :param edges: ``[(parent, child), ...]`` concept indices.
    :param min_gain: the share of the child's variance a parent must explain beyond the others.
    :param keep: edges never removed (required edges).
    :returns: ``[{"edge": (parent, child), "gain": float}, ...]`` in removal order.
    """
    mse = _mse_table(labels, n, seed, ridge)
    keep = {tuple(e) for e in keep}
    removed = []
    for child in sorted({i for _, i in edges}):
        parents = [j for j, i in edges if i == child]
        var = mse(child, [])
        while parents:
            base = mse(child, parents)
            cost = {p: (mse(child, [q for q in parents if q != p]) - base) / max(var, 1e-12)
                    for p in parents if (p, child) not in keep}
            if not cost:
                break
            p = min(cost, key=cost.get)
            if cost[p] >= min_gain:
                break
            removed.append({"edge": (p, child), "gain": cost[p]})
            parents.remove(p)
    return removed


def order_search(
    labels: torch.Tensor,
    required: Sequence[tuple[int, int]] = (),
    n: int = 1000,
    seed: int = 0,
    ridge: float = 1e-4,
    exact_max: int = 8,
) -> tuple[list[int], float]:
    """The causal order of the concepts that makes residuals most independent of their predecessors.

    :param labels: normalised labels ``[N, K]`` (finite; rows with NaN are dropped).
    :param required: ``(j, i)`` index pairs that must have ``j`` before ``i`` (required edges).
    :param n: rows used to fit the regressions, and as many to evaluate them.
    :param seed: seed of the row sample.
    :param exact_max: up to this many concepts the best order is found exactly (every order scored by
        :func:`order_scores`); beyond, greedily from the last concept backwards (RESIT's sink search).
    :returns: ``(order, score)``: concept indices causes first, and the order's score.
    """
    labels = _clean(labels)
    K = labels.shape[1]
    if K <= exact_max:
        score, order = order_scores(labels, required=required, n=n, seed=seed, ridge=ridge)[0]
        return order, score
    sc = _Scorer(labels, n, seed, ridge)
    parents_required = {i: {j for j, ii in required if ii == i} for i in range(K)}
    # Greedy, as RESIT: repeatedly take as the last concept the one whose residual given all the
    # remaining others is the most independent of them.
    remaining = list(range(K))
    reverse: list[int] = []
    score = 0.0
    while remaining:
        options = [c for c in remaining if not any(c in parents_required[o] for o in remaining if o != c)]
        if not options:
            raise ValueError("the required edges admit no causal order (they form a cycle)")
        terms = {c: sc.term(c, [o for o in remaining if o != c]) for c in options}
        c = min(terms, key=terms.get)
        reverse.append(c)
        remaining.remove(c)
        score += terms[c]
    return reverse[::-1], score


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
) -> None:
    """Fit ``A`` and the mechanisms ``g_i`` to the labels within a causal order, before SVI.

    Entries of ``A`` against ``order`` are held at 0 (the graph is a DAG by construction during the warm
    start); the loss is the label loss ``sum_i ||u_i - g_i(A[:, i] o u)||^2`` plus ``sparsity * |A|_1``
    and ``path * sum(|A| @ |A|)`` (a penalty on two-step paths: among parent sets that predict a
    deterministic child equally well, it prefers the one with the fewest ancestral relations).
    Afterwards :func:`~pyro_causalvae.train.fit` trains ``A`` over its whole support under the augmented
    Lagrangian, with entries against the order penalised (``LossWeights.order_prior``).

    :param model: a :class:`~pyro_causalvae.model.CausalVAE` with a learned graph.
    :param labels: normalised labels ``[N, K]`` on the model's device (NaN rows are skipped).
    :param order: concept indices, causes first (from :func:`order_search`).
    """
    model.init_from_order(order)
    labels = labels[~torch.isnan(labels).any(1)]
    N = labels.shape[0]
    if N == 0:
        return
    keep = model.support * model.order_mask  # [K, K] entries allowed during the warm start
    params = list(model.mechanisms.parameters()) + [model.A_raw]
    optim = torch.optim.Adam(params, lr=lr)
    g = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(steps):
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
    tolerance: float = 1.5e-4,
    max_candidates: int = 6,
    seed: int = 0,
    steps: int = 2000,
) -> tuple[list[int], float, list[dict]]:
    """The graph stage of :func:`~pyro_causalvae.train.fit`: search the order, break near-ties by sparsity.

    Independence alone can leave several orders equally good: on Pendulum the shadow position is nearly
    additive in the two angles, so ``light_angle -> shadow_position`` also has a residual independent of
    its cause, and the order ``light, position, angle, length`` scores like the true one (within the
    estimator's noise, about 1e-4). Such orders need more edges (here 5 instead of 4). So every order
    within ``tolerance`` of the best score (at most ``max_candidates``) is warm-started
    (:func:`warm_start_graph`) and the one whose graph (``model.graph()``) has the fewest edges wins,
    then the lower score. For more than 8 concepts, only the greedy order is used.

    :returns: ``(order, score, candidates)``; the model is left warm-started on the chosen order.
    """
    K = len(model.concepts)
    if K > 8:
        order, score = order_search(labels.cpu(), required=required, seed=seed)
        warm_start_graph(model, labels, order, steps=steps, seed=seed)
        return order, score, [{"order": order, "score": score}]
    ranked = order_scores(labels.cpu(), required=required, seed=seed)
    best = ranked[0][0]
    candidates = [(s, o) for s, o in ranked if s <= best + tolerance][:max_candidates]
    initial = copy.deepcopy(model.state_dict())
    results = []
    for score, order in candidates:
        model.load_state_dict(initial)
        warm_start_graph(model, labels, order, steps=steps, seed=seed)
        results.append({"order": order, "score": score, "edges": model.graph().number_of_edges(),
                        "state": copy.deepcopy(model.state_dict())})
    chosen = min(results, key=lambda r: (r["edges"], r["score"]))
    model.load_state_dict(chosen["state"])
    return chosen["order"], chosen["score"], [{k: v for k, v in r.items() if k != "state"} for r in results]
