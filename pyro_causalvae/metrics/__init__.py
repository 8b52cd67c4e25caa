"""Evaluation metrics, one module per family (pure NumPy / networkx cores)."""

from .graph import edge_precision_recall, shd

__all__ = ["edge_precision_recall", "shd"]
