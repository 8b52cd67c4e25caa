"""Evaluation metrics, one module per family (pure NumPy / networkx cores)."""

from .counterfactual import intervention_scores, pixel_errors, r2_score
from .graph import edge_precision_recall, shd

__all__ = ["edge_precision_recall", "intervention_scores", "pixel_errors", "r2_score", "shd"]
