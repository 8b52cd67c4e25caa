"""Random nonlinear SCMs and the causal-discovery libraries that `benchmarks/scale.py` compares with.

The libraries are optional benchmark dependencies (``pip install -e ".[bench]"``: dagma, causal-learn,
lingam); the library itself never imports them. Each adapter takes standardised data ``X`` (``[n, K]``
NumPy) and returns ``(directed, undirected)``: sets of ``(parent, child)`` index pairs and of
unordered pairs ``frozenset({a, b})`` (only the CPDAG methods return undirected edges).

SHD convention (:func:`shd_edges`): an addition, a deletion and a reversal count 1 each (as
:func:`pyro_causalvae.metrics.shd`); an undirected edge between two adjacent nodes of the true graph
counts 1 (like a reversal: the orientation is not given), one between non-adjacent nodes counts 1.
"""

from __future__ import annotations

import numpy as np


def random_scm(K: int, n: int, seed: int, max_parents: int = 2) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """A random nonlinear additive SCM and ``n`` samples of it.

    A random causal order; each node takes ``0 .. max_parents`` parents (uniformly) among the nodes before
    it; ``x_i = sum_j a_ij tanh(b_ij x_j + c_ij) + s_i eps_i`` with ``|a| ~ U(0.5, 1.5)`` (random sign),
    ``b ~ U(1, 3)``, ``c ~ U(-1, 1)``, ``eps ~ N(0, 1)``, ``s_i ~ U(0.3, 0.6)`` relative to the standard
    deviation of the node's mechanism part (roots: ``N(0, 1)``). Every column is standardised before it
    is used as a cause and in the output, so the variance of a node says nothing about its position.

    :returns: ``(X, edges)``: ``[n, K]`` float64, and the true ``(parent, child)`` pairs.
    """
    rng = np.random.default_rng(seed)  # the graph and its parameters (independent of n)
    order = rng.permutation(K)
    plan = []  # (node, [(parent, a, b, c)], noise scale)
    for pos, i in enumerate(order):
        k = int(rng.integers(0, min(max_parents, pos) + 1))
        parents = rng.choice(order[:pos], size=k, replace=False) if k else []
        terms = [(int(j), rng.uniform(0.5, 1.5) * rng.choice([-1.0, 1.0]), rng.uniform(1.0, 3.0), rng.uniform(-1.0, 1.0))
                 for j in parents]
        plan.append((int(i), terms, rng.uniform(0.3, 0.6)))
    data = np.random.default_rng([seed, n])  # the samples
    X = np.zeros((n, K))
    edges: set[tuple[int, int]] = set()
    for i, terms, s in plan:
        if terms:
            f = sum(a * np.tanh(b * X[:, j] + c) for j, a, b, c in terms)
            f = (f - f.mean()) / (f.std() + 1e-12)
            x = f + s * data.standard_normal(n)
            edges |= {(j, i) for j, *_ in terms}
        else:
            x = data.standard_normal(n)
        X[:, i] = (x - x.mean()) / x.std()
    return X, edges


def shd_edges(directed: set, undirected: set, true: set) -> int:
    """SHD of a (partially directed) estimate against the true DAG's edges (see the module docstring)."""
    d = {e for e in directed if frozenset(e) not in undirected}
    s = 0
    for e in d:
        if e in true:
            continue
        s += 1  # reversed (counted once) or extra
    for u in undirected:
        s += 1  # orientation not given, or an extra adjacency
    for e in true:
        if e not in d and (e[1], e[0]) not in d and frozenset(e) not in undirected:
            s += 1  # missing
    return s


def _from_adjacency(B: np.ndarray) -> tuple[set, set]:
    """``B[j, i] != 0``: ``j -> i``; pairs with both directions set become undirected."""
    directed, undirected = set(), set()
    K = B.shape[0]
    for j in range(K):
        for i in range(K):
            if i != j and B[j, i]:
                if B[i, j]:
                    undirected.add(frozenset((i, j)))
                else:
                    directed.add((j, i))
    return directed, undirected


#: DAGMA's iterations per path step (its defaults, 5e4 and 8e4, take about 22 minutes per graph at K = 8,
#: n = 1,000 on this machine: 230,000 full-batch Adam steps at about 175 per second)
DAGMA_WARM_ITER, DAGMA_MAX_ITER = 5_000, 10_000


def dagma_nonlinear(X: np.ndarray, seed: int = 0) -> tuple[set, set]:
    """DAGMA with its MLP model (Bello, Aragam, Ravikumar 2022): the package's documented settings
    (hidden layer of 10, lambda1 0.02, lambda2 0.005, T = 4, weight threshold 0.3) except the number
    of iterations per path step, :data:`DAGMA_WARM_ITER` / :data:`DAGMA_MAX_ITER` (25,000 in all)."""
    import torch
    from dagma.nonlinear import DagmaMLP, DagmaNonlinear

    torch.manual_seed(seed)
    eq = DagmaMLP(dims=[X.shape[1], 10, 1], bias=True, dtype=torch.double)
    W = DagmaNonlinear(eq, dtype=torch.double, verbose=False).fit(X, lambda1=0.02, lambda2=0.005, warm_iter=DAGMA_WARM_ITER,
                                                                max_iter=DAGMA_MAX_ITER)
    return _from_adjacency(W != 0)


def _general_graph(G) -> tuple[set, set]:
    """causal-learn's GeneralGraph: ``graph[i, j] == -1 and graph[j, i] == 1`` is ``i -> j``; both -1: undirected."""
    g = G.graph
    K = g.shape[0]
    directed, undirected = set(), set()
    for i in range(K):
        for j in range(i + 1, K):
            a, b = g[i, j], g[j, i]
            if a == -1 and b == 1:
                directed.add((i, j))
            elif a == 1 and b == -1:
                directed.add((j, i))
            elif a != 0 or b != 0:
                undirected.add(frozenset((i, j)))
    return directed, undirected


def grasp(X: np.ndarray, seed: int = 0) -> tuple[set, set]:
    """causal-learn's GRaSP (Lam, Andrews, Ramsey 2022) with its default linear-Gaussian BIC score, depth 3
    (returns a CPDAG)."""
    from causallearn.search.PermutationBased.GRaSP import grasp as _grasp

    np.random.seed(seed)
    return _general_graph(_grasp(X, depth=3, verbose=False))


def boss(X: np.ndarray, seed: int = 0) -> tuple[set, set]:
    """causal-learn's BOSS (Andrews et al. 2023) with its default linear-Gaussian BIC score (a CPDAG)."""
    from causallearn.search.PermutationBased.BOSS import boss as _boss

    np.random.seed(seed)
    return _general_graph(_boss(X, verbose=False))


def exact_bic(X: np.ndarray, seed: int = 0) -> tuple[set, set]:
    """causal-learn's exact search (A*, linear-Gaussian BIC; at most 3 parents per node): a DAG of the
    best-scoring Markov equivalence class."""
    from causallearn.search.ScoreBased.ExactSearch import bic_exact_search

    dag, _ = bic_exact_search(X, search_method="astar", max_parents=3)
    return _from_adjacency(np.asarray(dag) != 0)


def cam_uv(X: np.ndarray, seed: int = 0) -> tuple[set, set]:
    """causal-learn's CAM-UV (Maeda and Shimizu 2021: causal additive models with unobserved variables),
    alpha 0.01, at most 3 explanatory variables. Pairs it flags as confounded are left out."""
    from causallearn.search.FCMBased.lingam import CAMUV

    np.random.seed(seed)
    P, _ = CAMUV.execute(X, 0.01, 3)
    return {(int(j), i) for i, ps in enumerate(P) for j in ps}, set()


def resit(X: np.ndarray, seed: int = 0) -> tuple[set, set]:
    """lingam's RESIT (Peters et al. 2014) with a random-forest regressor (lingam's documented example:
    ``RandomForestRegressor(max_depth=4)``), alpha 0.01."""
    from lingam import RESIT
    from sklearn.ensemble import RandomForestRegressor

    model = RESIT(regressor=RandomForestRegressor(max_depth=4, random_state=seed), random_state=seed, alpha=0.01)
    model.fit(X)
    B = np.asarray(model.adjacency_matrix_)  # B[i, j] != 0: j -> i
    return _from_adjacency(B.T != 0)


#: name -> (adapter, largest number of rows it is given: more are subsampled, see scale.py)
LIBRARIES = {
    "dagma-mlp": (dagma_nonlinear, 10_000),
    "grasp": (grasp, 50_000),
    "boss": (boss, 50_000),
    "exact-bic": (exact_bic, 50_000),
    "cam-uv": (cam_uv, 2_000),
    "resit": (resit, 1_000),
}
