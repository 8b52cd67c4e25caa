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
strictly monotone transforms of either variable.

Cost: the x-axis dynamic programme is ``O(k^2 x)`` per grid row (``k = c x`` superclumps), about
1.5 CPU-s per pair at ``n = 6000`` on one core. It reads only the blocks of the cost matrix on or
above the diagonal (:func:`_max_plus`, :func:`_entropy_block`), small equipartitions run as a plain
loop, and :func:`mic_matrix` equipartitions each column once for all its pairs; every number is
the same as the direct computation's (tested against minepy's references).

Public API::

    mic_tic(x, y, alpha=0.6, c=15) -> (mic, tic)           # x, y: [n]
    mic_matrix(X, Y, alpha=0.6, c=15) -> (MIC, TIC)        # X: [n, p], Y: [n, q] -> [p, q], [p, q]
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

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


@dataclass
class _Ranked:
    """A variable reduced to what the estimator uses: the order of its values and their ties, plus its
    equipartitions, computed once per variable and reused for every pair it is in."""

    order: np.ndarray  # [n] int: argsort of the values (ascending)
    rank: np.ndarray  # [n] int: dense rank of each sample (0 .. runs-1), in sample order
    sizes: np.ndarray  # [runs] int: number of samples in each run of tied values, ascending
    parts: dict = field(default_factory=dict)  # bins -> [runs] labels of _equipartition(sizes, n, bins)

    def equipartition(self, bins: int) -> np.ndarray:
        if bins not in self.parts:
            self.parts[bins] = _equipartition(self.sizes, self.order.shape[0], bins)
        return self.parts[bins]


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
    if rowsize <= _SMALL_BIN:
        return _equipartition_small(sizes.tolist(), starts.tolist(), labels, n, bins)
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


#: target bin sizes up to this many samples are partitioned by the plain loop below
_SMALL_BIN = 48.0


def _equipartition_small(sizes: list, starts: list, labels: np.ndarray, n: int, bins: int) -> np.ndarray:
    """:func:`_equipartition` for small target sizes (many bins of a few runs each, e.g. superclumps):
    the same rule on Python ints, without NumPy's per-call cost. The target may grow past
    ``_SMALL_BIN`` as bins close; the rule stays exact."""
    runs = len(sizes)
    rowsize = n / bins
    curr = 0
    g0 = 0
    while g0 < runs:
        base = starts[g0]
        end = runs
        for j in range(g0 + 1, runs):
            h = starts[j] - base  # samples already in the bin
            if abs(h + sizes[j] - rowsize) >= abs(h - rowsize):
                end = j
                break
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


#: columns of the (max, +) product handled per block (see :func:`_max_plus`)
_BLOCK = 96


def _max_plus(a: np.ndarray, W: np.ndarray, s0: int, t0: int, p: int, buf: np.ndarray) -> np.ndarray:
    """``max_{s0 <= s <= t} (a[s] - W[s, t])`` for ``t = t0 .. p`` (``W[s, t] = inf`` for ``s > t``).

    The columns are taken in blocks, and each block only reads the rows ``s <= t`` can reach, which
    skips most of the lower triangle of ``W`` (the same maxima as over every row, about half the work).
    a: [p+1]; W: [p+1, p+1]; buf: scratch of at least [p+1, _BLOCK]. Returns [p - t0 + 1].
    """
    out = np.empty(p - t0 + 1)
    for b0 in range(t0, p + 1, _BLOCK):
        b1 = min(b0 + _BLOCK, p + 1)
        tmp = buf[: b1 - s0, : b1 - b0]
        np.subtract(a[s0:b1, None], W[s0:b1, b0:b1], out=tmp)  # rows s0 .. b1-1 reach every column
        tmp.max(axis=0, out=out[b0 - t0 : b1 - t0])
    return out


def _entropy_block(cum: np.ndarray, C: np.ndarray, xlogx: np.ndarray, b0: int, b1: int) -> np.ndarray:
    """``W[s, t]`` of :func:`_optimize_x_axis` for ``s < b1`` and ``b0 <= t < b1``: ``[b1, b1 - b0]``.

    ``W[s, t] = xlogx(C[t] - C[s]) - sum_r xlogx(cum[r, t] - cum[r, s])`` (inf for ``s > t``).
    """
    G = np.zeros((b1, b1 - b0))  # sum over rows r, in order
    for r in range(cum.shape[0]):
        d = cum[r][None, b0:b1] - cum[r][:b1, None]  # [b1, b1-b0]
        np.maximum(d, 0, out=d)
        G += xlogx[d]
    D = C[None, b0:b1] - C[:b1, None]  # [b1, b1-b0], samples in superclumps s .. t-1
    lower = D < 0  # s > t
    np.maximum(D, 0, out=D)
    W = xlogx[D] - G
    W[lower] = np.inf
    return W


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

    # W[s, t] = (C[t] - C[s]) * H(Q | superclumps s .. t-1): the entropy of the rows inside
    # the last column <c_s, c_t>, weighted by its size (H_P2Q of the SOM times its mass);
    # inf for s > t. Only the blocks _max_plus reads are filled (columns in blocks, rows s < b1).
    W = np.full((p + 1, p + 1), np.inf)  # [p+1, p+1], indexed by (s, t)
    for b0 in range(0, p + 1, _BLOCK):
        b1 = min(b0 + _BLOCK, p + 1)
        W[:b1, b0:b1] = _entropy_block(cum, C, xlogx, b0, b1)
    G0 = np.zeros(p + 1)  # [p+1]: G[0, t] = sum_r xlogx(samples of row r in superclumps 0 .. t-1)
    for r in range(q):
        G0 += xlogx[cum[r]]

    HQ = math.log(n) - float(G0[p]) / n  # entropy of the row partition
    # I[t, l]: best MI with l columns using the first t superclumps (t, l >= 2).
    lmax = min(x, p)
    I = np.zeros((p + 1, lmax + 1))  # [p+1, lmax+1]

    # Two columns <c_0, c_s, c_t>: F = H(<c_0,c_s,c_t>) - H(<c_0,c_s,c_t>, Q), for 1 <= s <= t.
    # Multiplying by C[t]: F * C[t] = G[0, s] - xlogx(C[s]) - W[s, t].
    a = np.full(p + 1, -np.inf)  # [p+1], indexed by s
    a[1:] = G0[1:] - xlogx[C[1:]]
    buf = np.empty((p + 1, _BLOCK))
    I[2:, 2] = HQ + _max_plus(a, W, 1, 2, p, buf) / Cf[2:]

    # l columns: F = C[s]/C[t] * (I[s, l-1] - HQ) - (C[t]-C[s])/C[t] * H_P2Q(s, t), l-1 <= s <= t.
    for l in range(3, lmax + 1):
        a[l - 1 :] = Cf[l - 1 :] * (I[l - 1 :, l - 1] - HQ)
        I[l:, l] = HQ + _max_plus(a, W, l - 1, l, p, buf) / Cf[l:]

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
        y_labels = yr.equipartition(i + 2)  # [runs_y]
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


def mic_matrix(X, Y, alpha: float = 0.6, c: float = 15, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MIC and normalised TIC between every column of X and every column of Y.

    X: [n, p], Y: [n, q] with finite values and n >= 4. Returns (MIC, TIC), each [p, q],
    with MIC[i, j], TIC[i, j] = mic_tic(X[:, i], Y[:, j]). Each column is ranked and
    equipartitioned once for all the pairs it is in. ``progress``: a tqdm bar over the pairs.
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
    pairs = [(i, j) for i in range(len(xr)) for j in range(len(yr))]
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc="MIC/TIC", unit="pair", dynamic_ncols=True, leave=False)
    for i, j in pairs:
        mic[i, j], tic[i, j] = _scores(xr[i], yr[j], alpha, c, xlogx)
    return mic, tic
