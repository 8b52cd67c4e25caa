"""The MIC / TIC protocol of this project (the paper publishes none).

For each concept: the posterior mean of its concept value (the guide's reading), against that
concept's ground-truth label, on the test split; MINE statistics with minepy's defaults
(:mod:`pyro_causalvae.metrics.mic`: alpha = 0.6, c = 15, MIC approx, TIC normalised). The headline
numbers are the means over concepts of the matched pairs, x 100. The full concept x label matrices are
reported too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .mic import mic_matrix
from .model_api import read_concepts


def mic_tic_scores(latents: np.ndarray, labels: np.ndarray, concepts: Sequence[str], progress: bool = False) -> dict:
    """The protocol's numbers from per-concept latents and labels.

    :param latents: ``[N, K]`` one value per image and concept (the posterior mean).
    :param labels: ``[N, K]`` the concepts' labels, same column order.
    :param progress: a tqdm bar over the ``K x K`` pairs.
    :returns: ``{"mic": float, "tic": float}`` (x 100, means over the matched pairs), the matrices
        ``"mic_matrix"`` / ``"tic_matrix"`` (``[K latent, K label]`` lists, x 100) and ``"per_concept"``.
    """
    latents, labels = np.asarray(latents, float), np.asarray(labels, float)
    K = len(concepts)
    if latents.ndim != 2 or latents.shape != labels.shape or latents.shape[1] != K:
        raise ValueError(f"latents and labels must both have shape [N, {K}], got {latents.shape} and {labels.shape}")
    M, T = mic_matrix(latents, labels, progress=progress)  # [K, K] each: latent i vs label j
    diag_m, diag_t = np.diag(M), np.diag(T)
    return {
        "mic": float(100 * diag_m.mean()),
        "tic": float(100 * diag_t.mean()),
        "mic_matrix": (100 * M).round(2).tolist(),
        "tic_matrix": (100 * T).round(2).tolist(),
        "per_concept": {c: {"mic": float(100 * diag_m[k]), "tic": float(100 * diag_t[k])} for k, c in enumerate(concepts)},
    }


@torch.no_grad()
def concept_latents(model, images, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """``[N, K]``: for each image, the posterior mean of each concept.

    :param images: ``[N, C, H, W]`` uint8 or float in [0, 1], or a dataset whose items are
        ``(image, labels)`` (images read from disk, e.g. ``CelebA(preload=False)``).
    :param progress: a tqdm bar over the batches.
    """
    model.eval()
    out = []
    device = model.label_loc.device
    if isinstance(images, torch.Tensor):
        batches = (images[i : i + batch_size] for i in range(0, images.shape[0], batch_size))
    else:
        loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
        batches = (b[0] if isinstance(b, (list, tuple)) else b for b in loader)
    n_batches = -(-len(images) // batch_size)
    for x in tqdm(batches, total=n_batches, desc="encode", unit="batch", disable=not progress, dynamic_ncols=True,
                  leave=False):
        x = x.to(device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        out.append(read_concepts(model, x).cpu())
    return torch.cat(out).numpy()


def evaluate_mic_tic(model, dataset, batch_size: int = 256, progress: bool = False) -> dict:
    """The protocol on a labelled dataset (use the test split).

    :param progress: tqdm bars over the encoding batches and the MIC/TIC pairs.

    :raises ValueError: for an unlabelled dataset, or one whose concepts or image shape are not the model's.
    """
    if getattr(dataset, "labels", None) is None:
        raise ValueError("the MIC/TIC protocol needs a labelled dataset")
    if tuple(dataset.concepts) != tuple(model.concepts):
        raise ValueError(f"dataset concepts {list(dataset.concepts)} do not match the model's {list(model.concepts)}")
    if tuple(dataset.image_shape) != tuple(model.image_shape):
        raise ValueError(f"dataset images have shape {tuple(dataset.image_shape)} but the model expects {model.image_shape}")
    images = dataset.images if dataset.images is not None else dataset
    latents = concept_latents(model, images, batch_size, progress)
    return mic_tic_scores(latents, dataset.labels.cpu().numpy(), dataset.concepts, progress)
