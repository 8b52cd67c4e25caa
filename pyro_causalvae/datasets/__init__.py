"""Datasets: the synthetic worlds with ground-truth SCMs, CelebA, and users' own concept-labelled images.

- :class:`ConceptImageDataset` -- images + concept labels (+ optional graph); the container every dataset is.
- :class:`Pendulum`, :class:`Flow` -- the paper's synthetic worlds, rendered from their ground-truth SCMs
  (:class:`PendulumSCM`, :class:`FlowSCM`), with exact counterfactuals.
- :class:`CelebA` -- CelebA's ``smile`` and ``beard`` concept subsets, read from a local folder.
"""

from .base import ConceptImageDataset
from .celeba import CelebA
from .flow import Flow, FlowSCM
from .pendulum import Pendulum, PendulumSCM
from .scm import SCM

__all__ = ["SCM", "ConceptImageDataset", "CelebA", "Flow", "FlowSCM", "Pendulum", "PendulumSCM"]
