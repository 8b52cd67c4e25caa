"""Evaluation metrics, one module per family (pure NumPy / networkx cores)."""

from .counterfactual import intervention_scores, pixel_errors, r2_score
from .graph import edge_precision_recall, shd
from .mic import mic_matrix, mic_tic
from .protocol import evaluate_mic_tic, mic_tic_scores

__all__ = ["edge_precision_recall", "evaluate_mic_tic", "intervention_scores", "mic_matrix", "mic_tic", "mic_tic_scores",
           "pixel_errors", "r2_score", "shd"]
