"""pyro_causalvae: CausalVAE (Yang et al., CVPR 2021) as a first-class Pyro program.

- :class:`CausalVAE` -- the Pyro model and guide (one structural-equation site per concept).
- :func:`fit` -- SVI on the DAG-penalised loss; :class:`LossWeights` names the loss weights.
- :func:`load_model` -- rebuild a trained model from a run directory.
- :mod:`pyro_causalvae.datasets` -- Pendulum, Flow (with ground-truth SCMs), CelebA, your own data.
"""

from ._version import __version__
from .checkpoint import load_model
from .loss import LossWeights
from .model import CausalVAE
from .train import History, TrainingDiverged, fit

__all__ = ["CausalVAE", "History", "LossWeights", "TrainingDiverged", "__version__", "fit", "load_model"]
