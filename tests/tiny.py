"""Tiny data and models shared by the training tests (and the torchrun worker).

    a --> b --> c        (GRAPH)
"""

import torch

from pyro_causalvae import CausalVAE
from pyro_causalvae.datasets import ConceptImageDataset

CONCEPTS = ("a", "b", "c")
GRAPH = [("a", "b"), ("b", "c")]


def tiny_dataset(n=48, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(n, 3, generator=g)
    images = (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)
    return ConceptImageDataset(images, labels, concepts=CONCEPTS, graph=GRAPH)


def tiny_model(graph="learn", size=16):
    return CausalVAE(CONCEPTS, (3, size, size), style_dim=2, graph=graph, channels=8, hidden=16, mechanism_hidden=8)


def params(model):
    """Tensors of the state dict (the causal order, extra state, is compared separately)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
