"""Effectiveness (Monteiro et al., ICLR 2023): does a counterfactual show the intervened value?

For ``do(c = v)`` on ``n`` images, a judge reads ``c`` off each counterfactual image; in normalised
label units:

- ``mae``: ``mean |judge(cf)[c] - v|`` (0 is perfect);
- ``slope``: the least-squares slope (with intercept) of ``judge(cf)[c]`` on ``v`` (1 is perfect; a
  model that ignores the intervention scores about 0 when ``v`` is drawn independently of the images);
- ``intercept`` and ``r2`` of the same fit.
"""

from __future__ import annotations

import numpy as np

from ._arrays import finite

__all__ = ["effectiveness"]


def effectiveness(target, judged) -> dict:
    """Effectiveness of one intervention (see the module docstring).

    :param target: ``[n]`` the intended values ``v``.
    :param judged: ``[n]`` the judge's reading of the intervened concept on the counterfactuals.
    :returns: ``{"mae", "slope", "intercept", "r2", "n"}`` (slope, intercept and r2 are ``nan`` when
        ``target`` is constant).
    :raises ValueError: for arrays of different or non-1-d shapes, empty ones, or NaN / inf.
    """
    v, j = finite(target, "target"), finite(judged, "judged")
    if v.ndim != 1 or v.shape != j.shape or v.size == 0:
        raise ValueError(f"target and judged must both have shape [n] with n >= 1, got {v.shape} and {j.shape}")
    out = {"mae": float(np.mean(np.abs(j - v))), "n": int(v.size)}
    dv = v - v.mean()  # [n]
    ss = float(np.sum(dv**2))
    if ss <= 1e-12 * max(1, v.size):
        out.update(slope=float("nan"), intercept=float("nan"), r2=float("nan"))
        return out
    slope = float(np.sum(dv * (j - j.mean())) / ss)
    intercept = float(j.mean() - slope * v.mean())
    resid = j - (intercept + slope * v)
    ss_j = float(np.sum((j - j.mean()) ** 2))
    out.update(slope=slope, intercept=intercept, r2=1.0 - float(np.sum(resid**2)) / ss_j if ss_j > 0 else float("nan"))
    return out
