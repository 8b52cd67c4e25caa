"""The held-out split of a user's dataset: a ``split`` column if the CSV has one, else a seeded fraction.

:func:`heldout_split` returns the training and held-out row indices and a description of how they were
chosen; the command line records both in the run directory, so that ``evaluate`` and the queries use the
same held-out rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["HeldOutSplit", "heldout_split", "check_test_fraction"]


@dataclass(frozen=True)
class HeldOutSplit:
    """Row indices of the training and held-out parts of a dataset.

    :ivar train_rows: int64 ``[N_train]``, ascending.
    :ivar test_rows: int64 ``[N_test]``, ascending (may be empty).
    :ivar source: ``"column"`` (the CSV's ``split`` column), ``"random"`` (a seeded fraction) or ``"none"``.
    :ivar test_fraction: the fraction asked for (``"random"``), else the fraction found.
    :ivar seed: the seed of the random split.
    """

    train_rows: torch.Tensor
    test_rows: torch.Tensor
    source: str
    test_fraction: float
    seed: int

    def describe(self) -> str:
        """One phrase, e.g. ``"600 held-out rows (a seeded random 10%, seed 0)"``."""
        n_test = int(self.test_rows.numel())
        if self.source == "column":
            return f"{n_test} held-out rows (the CSV's split column)"
        if self.source == "random":
            return f"{n_test} held-out rows (a seeded random {100 * self.test_fraction:g}%, seed {self.seed})"
        return "no held-out rows (test fraction 0)"

    def record(self) -> dict:
        """A JSON-ready record (``test_rows`` as a list of ints)."""
        return {"source": self.source, "test_fraction": self.test_fraction, "seed": self.seed,
                "train": int(self.train_rows.numel()), "test_rows": self.test_rows.tolist()}


def check_test_fraction(test_fraction: float) -> float:
    """``test_fraction`` if it is a number in ``[0, 1)``, else ``ValueError``."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not (
            math.isfinite(test_fraction) and 0 <= test_fraction < 1):
        raise ValueError(f"test fraction must be a number in [0, 1), got {test_fraction!r}")
    return float(test_fraction)


def heldout_split(n: int, row_splits: Sequence[str] | None = None, test_fraction: float = 0.1,
                  seed: int = 0) -> HeldOutSplit:
    """Choose the held-out rows of a dataset of ``n`` rows.

    :param n: number of rows.
    :param row_splits: ``"train"`` / ``"test"`` per row (a CSV's ``split`` column), or ``None``.
    :param test_fraction: without ``row_splits``: the fraction of rows held out, in ``[0, 1)``; the count
        is ``round(n * test_fraction)``, at least 1 when the fraction is positive.
    :param seed: seed of the random choice (a ``torch.Generator``; the same seed gives the same rows).
    :raises ValueError: for a fraction outside ``[0, 1)``, ``row_splits`` of the wrong length, or a split
        that leaves no training row.
    """
    check_test_fraction(test_fraction)
    if row_splits is not None:
        if len(row_splits) != n:
            raise ValueError(f"split column has {len(row_splits)} entries for {n} rows")
        test = torch.tensor([s == "test" for s in row_splits], dtype=torch.bool)
        source, fraction = "column", float(test.float().mean()) if n else 0.0
    else:
        k = 0 if test_fraction == 0 else max(1, round(n * test_fraction))
        g = torch.Generator().manual_seed(int(seed))
        test = torch.zeros(n, dtype=torch.bool)
        test[torch.randperm(n, generator=g)[:k]] = True
        source, fraction = ("random" if k else "none"), float(test_fraction)
    if bool(test.all()):
        raise ValueError(f"the held-out split leaves no training rows ({n} rows, all held out)")
    return HeldOutSplit(train_rows=(~test).nonzero().flatten(), test_rows=test.nonzero().flatten(), source=source,
                        test_fraction=fraction, seed=int(seed))
