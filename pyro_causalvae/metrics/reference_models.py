"""Reference "models" with the query API of a CausalVAE, to check the metrics on known cases.

- :class:`SimulatorModel`: the ground truth itself: it reads an image's labels exactly (it keeps the
  labels of every image it rendered or was shown) and answers ``counterfactual`` with the SCM's exact
  counterfactual, rendered. Every soundness metric must score it perfectly (with a perfect judge).
  With ``frozen=(c, ...)`` it ignores interventions on those concepts (e.g. a shadow that does not
  change under ``do(shadow_length)``): a known-bad case.
- :class:`CopyModel`: a decoder that copies its input: every counterfactual is the unchanged image.
  Composition and reversibility are 0, effectiveness fails.

Both follow the methods the metrics use (:mod:`pyro_causalvae.metrics.model_api`): ``concepts``,
``image_shape``, ``graph()``, ``encode``, ``reconstruct``, ``counterfactual(x, do=..., units=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import networkx as nx
import torch

__all__ = ["CopyModel", "SimulatorModel"]


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _counterfactual_output(images, factual, concepts=None, factual_concepts=None) -> dict:
    out = {"images": images[None], "factual_images": factual[None]}
    if concepts is not None:
        out.update(concepts=concepts[None], factual_concepts=factual_concepts[None])
    return out


class SimulatorModel:
    """The ground-truth SCM wrapped as a counterfactual image model (see the module docstring).

    :param scm: a ground-truth SCM (``render``, ``counterfactual``, ``graph``, ``label_loc`` / ``label_scale``).
    :param size: the image side.
    :param frozen: concepts whose interventions the model ignores.
    """

    def __init__(self, scm, size: int, frozen: Iterable[str] = ()):
        self.scm, self.size = scm, int(size)
        self.concepts = tuple(scm.concepts)
        self.image_shape = (3, self.size, self.size)
        self.frozen = tuple(frozen)
        unknown = set(self.frozen) - set(self.concepts)
        if unknown:
            raise ValueError(f"unknown frozen concepts {sorted(unknown)}; concepts are {list(self.concepts)}")
        self._labels: dict[bytes, torch.Tensor] = {}

    def graph(self) -> nx.DiGraph:
        return self.scm.graph.copy()

    @staticmethod
    def _key(img: torch.Tensor) -> bytes:
        return (_float(img) * 255.0).round().to(torch.uint8).numpy().tobytes()

    def render(self, labels: torch.Tensor) -> torch.Tensor:
        """Render labels ``[n, K]`` (natural units) as float images ``[n, 3, size, size]``, remembering them."""
        images = self.scm.render(labels, size=self.size).float() / 255.0
        for img, lab in zip(images, labels):
            self._labels[self._key(img)] = lab.clone()
        return images

    def remember(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Remember the labels ``[n, K]`` (natural units) of existing renders ``[n, C, H, W]`` of this SCM."""
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} label rows")
        for img, lab in zip(images, labels):
            self._labels[self._key(img)] = torch.as_tensor(lab, dtype=torch.float32).clone()

    def labels_of(self, x: torch.Tensor) -> torch.Tensor:
        """The labels ``[N, K]`` (natural units) of images this model rendered; ``ValueError`` for others."""
        out = []
        for i, img in enumerate(x.cpu()):
            lab = self._labels.get(self._key(img))
            if lab is None:
                raise ValueError(f"image {i} was not rendered by this SimulatorModel: its labels are unknown")
            out.append(lab)
        return torch.stack(out)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The exact normalised labels ``[N, K]`` of the images."""
        return (self.labels_of(x) - self.scm.label_loc) / self.scm.label_scale

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return _float(x).cpu().clone()

    def counterfactual(self, x: torch.Tensor, do: Mapping[str, object], units: str = "natural", **_) -> dict:
        """The SCM's exact counterfactual of each image under ``do`` (frozen concepts ignored), rendered."""
        if units not in ("natural", "normalised"):
            raise ValueError(f"units must be 'natural' or 'normalised', got {units!r}")
        labels = self.labels_of(x)
        n = labels.shape[0]
        values = {}
        for c, v in do.items():
            if c not in self.concepts:
                raise ValueError(f"unknown concept {c!r}; concepts are {list(self.concepts)}")
            if c in self.frozen:
                continue
            v = torch.as_tensor(v, dtype=torch.float32).cpu().expand(n)
            k = self.concepts.index(c)
            values[c] = v * self.scm.label_scale[k] + self.scm.label_loc[k] if units == "normalised" else v
        cf = self.scm.counterfactual(labels, do=values) if values else labels.clone()
        return _counterfactual_output(self.render(cf), _float(x).cpu(), cf, labels)


class CopyModel:
    """A decoder that copies its input: ``counterfactual(x, do)`` returns ``x`` for any ``do``.

    :param concepts: the concept names.
    :param image_shape: ``(C, H, W)``.
    :param reader: ``images [N, C, H, W] -> [N, K]`` used as ``encode`` (default: zeros).
    """

    def __init__(self, concepts, image_shape, reader: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.concepts, self.image_shape = tuple(concepts), tuple(image_shape)
        self.reader = reader

    def graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.concepts)
        return g

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], len(self.concepts)) if self.reader is None else self.reader(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return _float(x).cpu().clone()

    def counterfactual(self, x: torch.Tensor, do: Mapping[str, object], units: str = "natural", **_) -> dict:
        unknown = set(do) - set(self.concepts)
        if unknown:
            raise ValueError(f"unknown concepts {sorted(unknown)}; concepts are {list(self.concepts)}")
        x = _float(x).cpu()
        return _counterfactual_output(x.clone(), x.clone())
