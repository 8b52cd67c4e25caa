"""Array checks shared by the metric cores (NumPy)."""

from __future__ import annotations

import numpy as np


def finite(a, name: str) -> np.ndarray:
    """``a`` as a float array, or ``ValueError`` for non-numeric or non-finite values (named)."""
    try:
        arr = np.asarray(a, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric: {err}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")
    return arr


def same_shape(arrays: dict, what: str = "arrays") -> list[np.ndarray]:
    """The named arrays as finite float arrays of one non-empty shape, or ``ValueError``."""
    out = [finite(a, name) for name, a in arrays.items()]
    if any(a.shape != out[0].shape for a in out) or out[0].size == 0:
        raise ValueError(f"{what} must all have one non-empty shape, got {[a.shape for a in out]}")
    return out


def mean_abs_error(a, b) -> float:
    """``mean |a - b|`` of two arrays of one shape (pixels: the L1 distance per pixel, channel and image)."""
    a, b = same_shape({"a": a, "b": b})
    return float(np.mean(np.abs(a - b)))
