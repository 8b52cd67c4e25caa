"""Kernel regressions and HSIC on a fixed row sample: the scores behind :mod:`pyro_causalvae.discovery`.

Everything here works on standardised tabular data ``U`` (``[N, K]``, float64) split once into a *fit*
half and an *evaluation* half (disjoint random rows, at most :func:`sample_rows` each), so that the cost
of every score is independent of ``N`` beyond that size:

- :meth:`KernelTable.regress` fits ``E[u_c | u_P]`` by Nystroem kernel ridge regression (Gaussian
  kernel, product over the parents of one-dimensional kernels with each variable's median bandwidth;
  ``m`` landmark rows; the ridge picked from a grid on the evaluation half) and returns the
  out-of-sample residual on the evaluation half. One eigendecomposition of the ``[m, m]`` feature
  covariance serves the whole ridge grid, and every result is cached by ``(c, P)``: a search that asks
  for the same parent set under many candidate orders pays for it once.
- :meth:`KernelTable.hsic_row` gives ``HSIC(r, u_j)`` of a residual against *every* variable ``j`` at
  once, from whitened one-dimensional Nystroem features (``features`` landmarks at the quantiles of
  each variable, computed once): ``||Cov(phi(r), psi(u_j))||_F^2`` minus its expectation under
  independence. The residual is mapped with the features of its own variable ``c`` (same landmarks, same
  bandwidth), so an almost exactly fitted child (a deterministic mechanism) scores about 0 rather than
  being judged on the structure of tiny fit errors.

Costs, with ``n`` rows per half, ``m`` landmarks and ``f`` features: one regression
``O(n m^2 + m^3)``, one HSIC row ``O(n f^2 K)``; memory ``O(n f K)``. Nothing is ``O(n^2)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: ridge values tried for every regression (times the number of fit rows)
RIDGES = (1e-8, 1e-6, 1e-4, 1e-2, 1.0)


def sample_rows(n_rows: int, cap: int | None = None) -> int:
    """Rows in each of the fit and evaluation halves for ``n_rows`` usable rows.

    The rule: ``min(n_rows // 2, max(1000, ceil(10 * sqrt(n_rows))))``, or ``min(n_rows // 2, cap)``
    when ``cap`` is given: 500 rows per half for ``N = 1,000``, 1,000 for ``N = 10,000``, 2,237 for
    ``N = 50,000``, 4,473 for ``N = 200,000``. The scores' cost grows like ``sqrt(N)``.
    """
    if cap is not None:
        return max(min(n_rows // 2, int(cap)), 1)
    return max(min(n_rows // 2, max(1000, math.ceil(10.0 * math.sqrt(n_rows)))), 1)


def standardise(labels: torch.Tensor) -> torch.Tensor:
    """Columns of ``labels`` (``[N, K]``) centred and scaled to unit standard deviation (float64); a
    constant column stays 0."""
    U = torch.as_tensor(labels, dtype=torch.float64)
    sd = U.std(0)
    return (U - U.mean(0)) / torch.where(sd > 0, sd, torch.ones_like(sd))


def _median_abs_diff(x: torch.Tensor, rows: int = 500) -> float:
    """Median of ``|x_a - x_b|`` over pairs of the first ``rows`` values of ``x`` (``[n]``); 1 if all equal."""
    x = x[:rows]
    d = (x[:, None] - x[None, :]).abs()
    d = d[d > 0]
    return float(d.median()) if d.numel() else 1.0


def _gauss(X: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """``exp(-|x - z|^2 / 2)`` for pre-scaled rows: ``X`` ``[n, p]``, ``Z`` ``[m, p]`` -> ``[n, m]``."""
    d = (X * X).sum(-1)[:, None] + (Z * Z).sum(-1)[None, :] - 2.0 * X @ Z.T
    return torch.exp(-0.5 * d.clamp_min(0.0))


def _inverse_sqrt(Kzz: torch.Tensor, jitter: float = 1e-8) -> torch.Tensor:
    """``W`` (``[m, m']``) with ``W W^T`` the pseudo-inverse of the PSD matrix ``Kzz`` (``[m, m]``)."""
    evals, evecs = torch.linalg.eigh(Kzz)
    keep = evals > jitter * evals.max()
    return evecs[:, keep] / evals[keep].sqrt()


def _whitened_features(X: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """Nystroem features ``k(X, Z) K_ZZ^{-1/2}`` (``[n, m']``): their inner products approximate the kernel."""
    return _gauss(X, Z) @ _inverse_sqrt(_gauss(Z, Z))


class KernelTable:
    """Cached kernel regressions and HSIC rows on one two-fold split of standardised data.

    The sampled rows are split into two halves; a regression is fitted on each half and evaluated on the
    other (cross-fitting), so every sampled row has an out-of-sample residual and the scores use all
    ``2 * rows`` of them.

    :param U: standardised data ``[N, K]`` (float64, finite), e.g. from :func:`standardise`.
    :param rows: rows per half (default :func:`sample_rows`).
    :param seed: seed of the row sample.
    :param landmarks: Nystroem landmark rows of each regression (the first rows of the fitted half).
    :param features: one-dimensional features per variable for HSIC.

    The kernel of a parent set is the product of the parents' one-dimensional kernels and every
    regression on a half uses the same landmark rows, so the ``[2 rows, landmarks]`` kernel columns of
    each variable are computed once and a parent set's are their elementwise product.
    """

    def __init__(self, U: torch.Tensor, rows: int | None = None, seed: int = 0, landmarks: int = 64, features: int = 20):
        N, K = U.shape
        n = sample_rows(N) if rows is None else sample_rows(N, rows)
        g = torch.Generator().manual_seed(int(seed))
        self.data = U[torch.randperm(N, generator=g)[: 2 * n]]  # [2n, K]: half A, then half B
        self.n, self.K = n, K
        self.landmarks = min(int(landmarks), n)
        self.bw = torch.tensor([_median_abs_diff(self.data[:, c]) for c in range(K)], dtype=torch.float64)
        # one-dimensional HSIC features of each variable: landmarks at its quantiles, its own bandwidth
        q = torch.linspace(0.02, 0.98, int(features), dtype=torch.float64)
        self._feat_z = [torch.quantile(self.data[:, c], q).unique()[:, None] / self.bw[c] for c in range(K)]
        psi = [self._features(c, self.data[:, c]) for c in range(K)]  # K x [2n, f_c], centred
        self._psi = torch.cat(psi, 1)  # [2n, F]
        self._psi_len = [p.shape[1] for p in psi]
        self._psi_stats = _kernel_stats(psi)
        self.var = self.data.var(0, unbiased=False)  # [K]
        m = self.landmarks
        scaled = self.data / self.bw  # [2n, K]
        # _cols[h][j]: kernel of variable j between every sampled row and the landmarks of half h
        self._cols = [torch.exp(-0.5 * (scaled.T[:, :, None] - scaled[h * n : h * n + m].T[:, None, :]) ** 2)
                      for h in (0, 1)]  # 2 x [K, 2n, m]
        self._cache: dict[tuple[int, tuple[int, ...]], tuple[float, torch.Tensor]] = {}
        self.regressions = 0

    def _features(self, c: int, values: torch.Tensor) -> torch.Tensor:
        """Centred whitened features of ``values`` (``[m]``) in the feature map of variable ``c``."""
        F = _whitened_features(values[:, None] / self.bw[c], self._feat_z[c])
        return F - F.mean(0)

    def regress(self, c: int, parents: Sequence[int]) -> tuple[float, torch.Tensor]:
        """Cross-fitted regression of ``u_c`` on ``u_parents``.

        :returns: ``(mse, hsic)``: the mean squared out-of-sample residual over the ``2 * rows`` sampled
            rows, and the ``[K]`` vector of ``HSIC(residual, u_j)`` for every variable ``j``
            (:meth:`hsic_row`).
        """
        key = (int(c), tuple(sorted(int(p) for p in parents)))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        n, y = self.n, self.data[:, c]
        if not key[1]:
            r = torch.cat([y[:n] - y[n:].mean(), y[n:] - y[:n].mean()])
        else:
            P = list(key[1])
            r = torch.cat([self._krr_residual(1, P, y), self._krr_residual(0, P, y)])
            self.regressions += 1
        out = (float((r * r).mean()), self.hsic_row(c, r))
        self._cache[key] = out
        return out

    def _krr_residual(self, h: int, P: list[int], y: torch.Tensor) -> torch.Tensor:
        """Residual on the other half of Nystroem kernel ridge of ``y`` on ``u_P`` fitted on half ``h``;
        the ridge of :data:`RIDGES` with the smallest held-out error (one eigendecomposition for all).

        With ``C`` the ``[n, m]`` kernel columns of the fitted half and ``W`` = ``K_mm^{-1/2}``, the fit
        is ridge regression on the features ``C W``; only ``C^T C`` (``[m, m]``) touches every row.
        """
        n, m = self.n, self.landmarks
        cols = self._cols[h][P].prod(0)  # [2n, m]
        fit = slice(h * n, (h + 1) * n)
        ev = slice((1 - h) * n, (2 - h) * n)
        C, Ce = cols[fit], cols[ev]  # [n, m] each
        W = _inverse_sqrt(C[:m])  # [m, m']: the landmarks are the first m rows of the fitted half
        y_fit, y_eval = y[fit], y[ev]
        mean = y_fit.mean()
        CW = W.T @ (C.T @ C) @ W  # [m', m']
        S, Q = torch.linalg.eigh(CW)
        WQ = W @ Q  # [m, m']
        b = WQ.T @ (C.T @ (y_fit - mean))  # [m']
        ridge = torch.tensor(RIDGES, dtype=torch.float64) * n  # [R]
        coef = WQ @ (b[:, None] / (S.clamp_min(0)[:, None] + ridge[None, :]))  # [m, R]
        resid = (y_eval - mean)[:, None] - Ce @ coef  # [n, R]
        return resid[:, int((resid * resid).mean(0).argmin())]

    def hsic_row(self, c: int, r: torch.Tensor) -> torch.Tensor:
        """``[K]``: the unbiased HSIC estimate (Song et al. 2012) of ``r`` (``[2n]``, the sampled rows)
        against every variable ``u_j``, with the Nystroem kernels: ``r`` in the feature map of variable
        ``c``, ``u_j`` in its own. Independent pairs score about 0 (either sign)."""
        phi = self._features(c, r)  # [m, f]
        return _unbiased_hsic(_kernel_stats([phi]), phi, self._psi_stats, self._psi, self._psi_len)


def _kernel_stats(feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-block statistics of the kernels ``F F^T`` of feature blocks ``F`` (``[m, f]`` each), for
    :func:`_unbiased_hsic`: the diagonals ``[m, B]``, the sums of off-diagonal entries ``[B]`` and the
    row sums without the diagonal ``[m, B]``."""
    diag = torch.stack([(F * F).sum(1) for F in feats], 1)  # [m, B]
    rows = torch.stack([F @ F.sum(0) for F in feats], 1) - diag  # [m, B]
    off = torch.stack([(F.sum(0) ** 2).sum() for F in feats]) - diag.sum(0)  # [B]
    return {"diag": diag, "rows": rows, "off": off}


def _unbiased_hsic(a: dict, phi: torch.Tensor, b: dict, psi: torch.Tensor, psi_len: list[int]) -> torch.Tensor:
    """Unbiased HSIC of the kernel ``phi phi^T`` (one block) against each block of ``psi``: ``[B]``.

    With ``K~`` the kernel with its diagonal set to 0: ``(tr(K~ L~) + 1'K~1 1'L~1 / ((m-1)(m-2))
    - 2 / (m-2) 1'K~L~1) / (m (m-3))``, each term from features in ``O(m f F)``.
    """
    m = phi.shape[0]
    C = phi.T @ psi  # [f, F]
    cross = torch.stack([blk.pow(2).sum() for blk in torch.split(C, psi_len, dim=1)])  # [B]: ||phi' psi_j||^2
    tr = cross - a["diag"][:, 0] @ b["diag"]  # [B]: tr(K~ L~)
    ones = a["off"][0] * b["off"] / ((m - 1) * (m - 2))
    kl1 = a["rows"][:, 0] @ b["rows"]  # [B]: 1'K~ L~1
    return (tr + ones - 2.0 * kl1 / (m - 2)) / (m * (m - 3))
