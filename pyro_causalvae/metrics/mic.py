"""Maximal Information Coefficient (MIC) and normalised Total Information Coefficient (TIC).

A pure-NumPy implementation of the ApproxMaxMI estimator of Reshef et al. (2011,
"Detecting novel associations in large data sets", Science; algorithms in the SOM),
following the semantics and defaults of minepy 1.2.6 (``MINE(alpha=0.6, c=15,
est="mic_approx")``, ``mic()`` and ``tic(norm=True)``):

* ``B = max(n ** alpha, 4)``; the characteristic matrix holds every grid of ``a`` rows and
  ``b`` columns with ``a, b >= 2`` and ``a * b <= B``.
* For each number of rows ``a`` the y axis is equipartitioned (ties kept together), the x
  axis is cut into clumps, then into at most ``c * (B // a)`` superclumps, and a dynamic
  programme (OptimizeXAxis) finds for every number of columns the x partition of maximal
  mutual information. The same is done with the roles of x and y swapped, and each cell of
  the characteristic matrix keeps the larger of the two normalised values
  ``I / log(min(a, b))`` (with ``a`` replaced by the number of rows actually obtained).
* MIC is the maximum of the matrix, normalised TIC its mean.

Only the order of the values (and their ties) matters, so both scores are invariant to
strictly monotone transforms of either variable. Runs in well under a second for
``n = 2000`` on one core.

Public API::

    mic_tic(x, y, alpha=0.6, c=15) -> (mic, tic)           # x, y: [n]
    mic_matrix(X, Y, alpha=0.6, c=15) -> (MIC, TIC)        # X: [n, p], Y: [n, q] -> [p, q], [p, q]
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

__all__ = ["mic_matrix", "mic_tic"]


# --------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------


def _check_params(alpha, c) -> tuple[float, float]:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise ValueError(f"alpha must be a real number in (0, 1], got {alpha!r}")
    if not (0.0 < float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    if isinstance(c, bool) or not isinstance(c, numbers.Real):
        raise ValueError(f"c must be a real number >= 1, got {c!r}")
    if not (math.isfinite(float(c)) and float(c) >= 1.0):
        raise ValueError(f"c must be a finite number >= 1, got {c!r}")
    return float(alpha), float(c)


def _as_array(v, name: str, ndim: int) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric: {err}") from None
    if a.ndim != ndim:
        shape = "1-d [n]" if ndim == 1 else "2-d [n, columns]"
        raise ValueError(f"{name} must be {shape}, got shape {a.shape}")
    if a.shape[0] < 4:
        raise ValueError(f"{name} needs at least n = 4 samples, got n = {a.shape[0]}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf values")
    return a


# --------------------------------------------------------------------------------------
# per-variable preprocessing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ranked:
    """A variable reduced to what the estimator uses: the order of its values and their ties."""

    order: np.ndarray  # [n] int: argsort of the values (ascending)
    rank: np.ndarray  # [n] int: dense rank of each sample (0 .. runs-1), in sample order
    sizes: np.ndarray  # [runs] int: number of samples in each run of tied values, ascending


def _rank(v: np.ndarray) -> _Ranked:
    # v: [n]
    order = np.argsort(v, kind="stable")  # [n]
    vs = v[order]  # [n]
    new_run = np.empty(v.shape[0], dtype=bool)  # [n]
    new_run[0] = True
    new_run[1:] = vs[1:] != vs[:-1]
    run_sorted = np.cumsum(new_run) - 1  # [n], run index in sorted order
    rank = np.empty(v.shape[0], dtype=np.int64)  # [n]
    rank[order] = run_sorted
    sizes = np.diff(np.append(np.flatnonzero(new_run), v.shape[0]))  # [runs]
    return _Ranked(order=order, rank=rank, sizes=sizes)


# --------------------------------------------------------------------------------------
# partitions
# --------------------------------------------------------------------------------------


def _equipartition(sizes: np.ndarray, n: int, bins: int) -> np.ndarray:
    """Assign runs of tied values (in ascending order) to at most ``bins`` consecutive bins.

    Algorithm 3 of the SOM (EquipartitionYAxis) with minepy's rule: a run starts a new bin
    when adding it would take the current bin further from the target size than leaving
    it out; the target size is re-computed from the remaining samples after each new bin.

    sizes: [runs] positive ints summing to n. Returns labels: [runs] ints in 0 .. q-1.
    """
    runs = sizes.shape[0]
    starts = np.zeros(runs, dtype=np.int64)  # [runs], first sample index of each run
    np.cumsum(sizes[:-1], out=starts[1:])
    labels = np.empty(runs, dtype=np.int64)  # [runs]
    rowsize = n / bins
    curr = 0
    g0 = 0
    while g0 < runs:
        # Every run holds >= 1 sample, so the bin closes within ceil(rowsize) + 1 runs;
        # search a window of that many first and the whole rest only as a fallback.
        end = None
        lo = g0 + 1
        for hi in (min(runs, g0 + 2 + int(math.ceil(rowsize))), runs):
            if lo >= hi:
                break
            h = (starts[lo:hi] - starts[g0]).astype(np.float64)  # [w], samples already in bin
            s = sizes[lo:hi]  # [w]
            close = np.abs(h + s - rowsize) >= np.abs(h - rowsize)  # [w]
            j = int(np.argmax(close))
            if close[j]:
                end = lo + j
                break
            lo = hi
        if end is None:
            end = runs
        labels[g0:end] = curr
        if end < runs:
            curr += 1
            rowsize = float(n - starts[end]) / float(bins - curr)
        g0 = end
    return labels


def _superclumps(
    xr: np.ndarray, x_starts: np.ndarray, q_by_x: np.ndarray, k_hat: int, n: int
) -> tuple[np.ndarray, int]:
    """Clumps of the x axis given the row labels, merged into at most ``k_hat`` superclumps.

    xr: [n] x-run index of each sample in x order; x_starts: [runs_x] first position of
    each x run; q_by_x: [n] row label of each sample in x order.
    Returns the column label of each sample in x order ([n] ints 0 .. p-1) and p.
    """
    # A run of tied x values holding several row labels becomes a clump of its own.
    q_min = np.minimum.reduceat(q_by_x, x_starts)  # [runs_x]
    q_max = np.maximum.reduceat(q_by_x, x_starts)  # [runs_x]
    mixed = (q_min != q_max)[xr]  # [n]
    q_tilde = np.where(mixed, -1 - xr, q_by_x)  # [n], distinct negative label per mixed run
    col = np.zeros(n, dtype=np.int64)  # [n]
    np.cumsum(q_tilde[1:] != q_tilde[:-1], out=col[1:])
    p = int(col[-1]) + 1
    if p > k_hat:
        labels = _equipartition(np.bincount(col, minlength=p), n, k_hat)  # [p]
        col = labels[col]
        p = int(labels[-1]) + 1
    return col, p


# --------------------------------------------------------------------------------------
# OptimizeXAxis
# --------------------------------------------------------------------------------------


def _optimize_x_axis(
    row: np.ndarray, q: int, col: np.ndarray, p: int, x: int, xlogx: np.ndarray, n: int
) -> np.ndarray:
    """Best mutual information over x partitions of 2 .. x columns built from the p superclumps.

    Algorithm 2 of the SOM. row: [n] row labels 0 .. q-1; col: [n] superclump labels
    0 .. p-1 (both in x order); xlogx: [n + 1] table of k * log(k) (0 for k = 0).
    Returns score: [x - 1], score[l - 2] = I_l / log(min(l, q)).
    """
    if p == 1:
        return np.zeros(x - 1)
    counts = np.bincount(row * p + col, minlength=q * p).reshape(q, p)  # [q, p]
    cum = np.zeros((q, p + 1), dtype=np.int64)  # [q, p+1], cum[:, t] = rows in columns < t
    np.cumsum(counts, axis=1, out=cum[:, 1:])
    C = cum.sum(axis=0)  # [p+1], samples in the first t superclumps
    Cf = C.astype(np.float64)  # [p+1]

    # G[s, t] = sum_r xlogx(samples of row r in superclumps s .. t-1)   (for s <= t)
    G = np.zeros((p + 1, p + 1))  # [p+1, p+1], indexed by (s, t)
    for r in range(q):
        d = cum[r][None, :] - cum[r][:, None]  # [p+1, p+1]
        np.maximum(d, 0, out=d)
        G += xlogx[d]
    D = C[None, :] - C[:, None]  # [p+1, p+1], samples in superclumps s .. t-1
    lower = D < 0  # s > t
    np.maximum(D, 0, out=D)
    # W[s, t] = (C[t] - C[s]) * H(Q | superclumps s .. t-1): the entropy of the rows inside
    # the last column <c_s, c_t>, weighted by its size (H_P2Q of the SOM times its mass).
    W = xlogx[D] - G  # [p+1, p+1]
    W[lower] = np.inf

    HQ = math.log(n) - float(G[0, p]) / n  # entropy of the row partition
    # I[t, l]: best MI with l columns using the first t superclumps (t, l >= 2).
    lmax = min(x, p)
    I = np.zeros((p + 1, lmax + 1))  # [p+1, lmax+1]

    # Two columns <c_0, c_s, c_t>: F = H(<c_0,c_s,c_t>) - H(<c_0,c_s,c_t>, Q), for 1 <= s <= t.
    # Multiplying by C[t]: F * C[t] = G[0, s] - xlogx(C[s]) - W[s, t].
    a = G[0, 1:] - xlogx[C[1:]]  # [p], indexed by s - 1
    F = a[:, None] - W[1:, 2:]  # [p, p-1], (s = 1..p, t = 2..p)
    I[2:, 2] = HQ + F.max(axis=0) / Cf[2:]

    # l columns: F = C[s]/C[t] * (I[s, l-1] - HQ) - (C[t]-C[s])/C[t] * H_P2Q(s, t), l-1 <= s <= t.
    for l in range(3, lmax + 1):
        a = Cf[l - 1 :] * (I[l - 1 :, l - 1] - HQ)  # [p-l+2], indexed by s - (l-1)
        F = a[:, None] - W[l - 1 :, l:]  # [p-l+2, p-l+1], (s = l-1..p, t = l..p)
        I[l:, l] = HQ + F.max(axis=0) / Cf[l:]

    mi = np.full(x - 1, I[p, lmax])  # [x-1]: more columns than superclumps adds nothing
    mi[: lmax - 1] = I[p, 2 : lmax + 1]
    ls = np.arange(2, x + 1)  # [x-1]
    return mi / np.log(np.minimum(ls, q))


# --------------------------------------------------------------------------------------
# characteristic matrix
# --------------------------------------------------------------------------------------


def _grid(n: int, alpha: float) -> tuple[int, list[int]]:
    """Rows of the characteristic matrix and, for each, its number of columns (minepy's layout)."""
    B = max(math.pow(n, alpha), 4.0)
    rows = max(int(math.floor(B / 2.0)), 2) - 1
    cols = [int(math.floor(B / (i + 2))) - 1 for i in range(rows)]
    return rows, cols


def _half(
    xr: _Ranked, yr: _Ranked, cols: list[int], c: float, xlogx: np.ndarray
) -> list[np.ndarray]:
    """Equipartition y into i + 2 rows, optimise the x axis: scores[i][j] for j + 2 columns."""
    n = xr.order.shape[0]
    x_run = xr.rank[xr.order]  # [n], x-run index in x order (non-decreasing)
    x_starts = np.flatnonzero(np.r_[True, x_run[1:] != x_run[:-1]])  # [runs_x]
    y_rank_by_x = yr.rank[xr.order]  # [n], y-run index of each sample, in x order
    out = []
    for i, m in enumerate(cols):
        y_labels = _equipartition(yr.sizes, n, i + 2)  # [runs_y]
        q = int(y_labels[-1]) + 1
        row = y_labels[y_rank_by_x]  # [n]
        k_hat = max(int(c * (m + 1)), 1)
        col, p = _superclumps(x_run, x_starts, row, k_hat, n)
        out.append(_optimize_x_axis(row, q, col, p, m + 1, xlogx, n))
    return out


def _scores(
    xr: _Ranked, yr: _Ranked, alpha: float, c: float, xlogx: np.ndarray
) -> tuple[float, float]:
    n = xr.order.shape[0]
    _, cols = _grid(n, alpha)
    a = _half(xr, yr, cols, c, xlogx)  # a[i][j]: i + 2 y-bins, j + 2 x-bins
    b = _half(yr, xr, cols, c, xlogx)  # b[i][j]: i + 2 x-bins, j + 2 y-bins
    total = 0.0
    count = 0
    best = 0.0
    for i, m in enumerate(cols):
        # cell (i, j) for j < m; the swapped problem gives b[j][i] for the same grid
        cell = np.maximum(a[i], np.array([b[j][i] for j in range(m)]))  # [m]
        total += float(cell.sum())
        count += m
        best = max(best, float(cell.max()))
    return best, total / count


def _xlogx_table(n: int) -> np.ndarray:
    k = np.arange(n + 1, dtype=np.float64)  # [n+1]
    t = np.zeros(n + 1)
    t[1:] = k[1:] * np.log(k[1:])
    return t


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def mic_tic(x, y, alpha: float = 0.6, c: float = 15) -> tuple[float, float]:
    """MIC and normalised TIC of two samples (minepy's ``mic()`` and ``tic(norm=True)``).

    x, y: [n] finite values, n >= 4. alpha in (0, 1] sets the grid bound B = n ** alpha;
    c >= 1 sets the number of superclumps (c times the largest number of columns).
    Returns (mic, tic), both in [0, 1].
    """
    alpha, c = _check_params(alpha, c)
    xa = _as_array(x, "x", 1)
    ya = _as_array(y, "y", 1)
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(f"x and y must have the same length, got {xa.shape[0]} and {ya.shape[0]}")
    n = xa.shape[0]
    return _scores(_rank(xa), _rank(ya), alpha, c, _xlogx_table(n))


def mic_matrix(X, Y, alpha: float = 0.6, c: float = 15) -> tuple[np.ndarray, np.ndarray]:
    """MIC and normalised TIC between every column of X and every column of Y.

    X: [n, p], Y: [n, q] with finite values and n >= 4. Returns (MIC, TIC), each [p, q],
    with MIC[i, j], TIC[i, j] = mic_tic(X[:, i], Y[:, j]).
    """
    alpha, c = _check_params(alpha, c)
    Xa = _as_array(X, "X", 2)
    Ya = _as_array(Y, "Y", 2)
    if Xa.shape[0] != Ya.shape[0]:
        raise ValueError(
            f"X and Y must have the same number of rows, got {Xa.shape[0]} and {Ya.shape[0]}"
        )
    n = Xa.shape[0]
    xlogx = _xlogx_table(n)
    xr = [_rank(Xa[:, i]) for i in range(Xa.shape[1])]
    yr = [_rank(Ya[:, j]) for j in range(Ya.shape[1])]
    mic = np.zeros((Xa.shape[1], Ya.shape[1]))  # [p, q]
    tic = np.zeros((Xa.shape[1], Ya.shape[1]))  # [p, q]
    for i, a in enumerate(xr):
        for j, b in enumerate(yr):
            mic[i, j], tic[i, j] = _scores(a, b, alpha, c, xlogx)
    return mic, tic
