"""Evaluation metrics, one module per family (pure NumPy / networkx cores).

Counterfactual soundness against a ground-truth simulator: :mod:`.effectiveness`, :mod:`.composition`,
:mod:`.reversibility`, :mod:`.counterfactual` (leakage, descendants, pixel errors),
:mod:`.interventional_mic`, read by the judges of :mod:`.judge`; :mod:`.soundness` gathers them per concept.
"""

from .composition import composition_curve, model_composition, null_intervention
from .counterfactual import intervention_scores, pixel_errors, r2_score
from .effectiveness import effectiveness
from .graph import edge_precision_recall, shd
from .interventional_mic import interventional_mic, interventional_mic_scores
from .mic import mic_matrix, mic_tic
from .protocol import evaluate_mic_tic, mic_tic_scores
from .reversibility import cycle_l1, model_reversibility
from .soundness import evaluate_soundness

__all__ = ["composition_curve", "cycle_l1", "edge_precision_recall", "effectiveness", "evaluate_mic_tic", "evaluate_soundness",
           "intervention_scores", "interventional_mic", "interventional_mic_scores", "mic_matrix", "mic_tic", "mic_tic_scores",
           "model_composition", "model_reversibility", "null_intervention", "pixel_errors", "r2_score", "shd"]
