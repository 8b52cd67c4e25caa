"""Ground-truth structural causal models (SCMs) over scalar concepts, with exact counterfactuals.

An :class:`SCM` describes a synthetic world: ``K`` scalar concepts listed in a topological order of
a known causal graph, one structural equation per concept with *additive* exogenous noise,

.. math::

    x_i = u_i \\ (\\text{roots}), \\qquad x_i = f_i(\\mathrm{pa}_i) + u_i \\ (\\text{otherwise}),

and a renderer that turns label vectors into RGB images. Because the noise is additive, abduction is
exact (``u_i = x_i - f_i(pa_i)``) and so are counterfactuals (abduction, action, prediction).

Subclasses (:class:`~pyro_causalvae.datasets.PendulumSCM`,
:class:`~pyro_causalvae.datasets.FlowSCM`) set the class attributes ``concepts``, ``edges`` and
``label_range`` and implement :meth:`SCM._mechanism`, :meth:`SCM.sample_exogenous` and
:meth:`SCM._draw`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import networkx as nx
import torch

from .base import ConceptImageDataset

from .._validation import check_do, check_finite, check_graph
from . import _raster

__all__ = ["SCM"]

#: smallest image side :meth:`SCM.render` accepts
MIN_SIZE = 16


def _check_int(value, what: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


def _check_seed(seed) -> int | None:
    if seed is None:
        return None
    return _check_int(seed, "seed")


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < MIN_SIZE:
        raise ValueError(
            f"size must be an integer >= {MIN_SIZE} (image side in pixels), got {size!r}"
        )
    return int(size)


def _check_noise(noise) -> float:
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real):
        raise ValueError(f"noise must be a non-negative number, got {noise!r}")
    noise = float(noise)
    if not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    return noise


def _generator(seed: int | None) -> torch.Generator | None:
    """A seeded CPU generator, or ``None`` (torch's global generator) when ``seed`` is ``None``."""
    return None if seed is None else torch.Generator().manual_seed(seed)


def _check_split(split) -> str:
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return split


def _grid_split(
    scm: SCM, exogenous: torch.Tensor, n_train: int, split: str, seed: int
) -> torch.Tensor:
    """Labels of one split of a fixed label grid.

    The grid's exogenous values get the SCM's observation noise (when ``scm.noise > 0``), pass
    through the structural equations, and are shuffled by a ``torch.Generator`` seeded with
    ``seed``; the first ``n_train`` rows are the training split, the rest the test split.

    :param exogenous: the grid's exogenous values, of shape ``[N, K]``.
    :returns: the split's labels in natural units, of shape ``[N_split, K]``.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(exogenous.shape[0], generator=g)
    u = scm._add_noise(exogenous, g)
    labels = scm.forward(u)[perm]
    if split == "train":
        return labels[:n_train].contiguous()
    if split == "test":
        return labels[n_train:].contiguous()
    return labels.contiguous()


class SCM:
    """Base class of a ground-truth SCM over scalar concepts with additive exogenous noise.

    Subclasses define:

    - ``concepts``: the concept names, in a topological order of the true graph;
    - ``edges``: the true ``(parent, child)`` edges;
    - ``label_range``: ``{concept: (low, high)}``, each concept's documented range in natural units,
      from which ``label_loc`` (the midpoint) and ``label_scale`` (the half-width) are derived, so
      that normalised labels lie in about ``[-1, 1]``;
    - ``objects``: the concepts that describe one thing in the picture together (e.g. a shadow's length
      and position), for decoders that draw each object from its own concepts (``decoder_groups`` of
      :class:`~pyro_causalvae.CausalVAE`); concepts in none are things of their own;
    - :meth:`_mechanism`, :meth:`sample_exogenous` and :meth:`_draw`.

    Labels are in natural units, one column per concept in the order of ``concepts``. The methods
    compute in float32 on the CPU and return CPU tensors.

    :param float noise: standard deviation of additive observation noise on every non-root concept,
        in units of that concept's ``label_scale`` (``0``, the default, is the paper's deterministic
        setting).
    """

    concepts: tuple[str, ...] = ()
    edges: tuple[tuple[str, str], ...] = ()
    label_range: dict[str, tuple[float, float]] = {}
    objects: tuple[tuple[str, ...], ...] = ()
    #: images per rendering chunk (bounds memory; tuned for speed on CPU)
    render_chunk: int = 64

    def __init__(self, noise: float = 0.0):
        self.noise = _check_noise(noise)
        self.concepts = tuple(self.concepts)
        self.graph = check_graph(list(self.edges), self.concepts)
        index = {c: i for i, c in enumerate(self.concepts)}
        for u, v in self.graph.edges():
            if index[u] > index[v]:
                raise ValueError(f"concepts must be in topological order, but {u!r} -> {v!r}")
        self.parents = {
            c: tuple(sorted(self.graph.predecessors(c), key=index.__getitem__))
            for c in self.concepts
        }
        self.roots = tuple(c for c in self.concepts if not self.parents[c])
        lo = torch.tensor([self.label_range[c][0] for c in self.concepts], dtype=torch.float64)
        hi = torch.tensor([self.label_range[c][1] for c in self.concepts], dtype=torch.float64)
        self.label_loc = ((lo + hi) / 2).float()
        self.label_scale = ((hi - lo) / 2).float()
        self._root_mask = torch.tensor([c in self.roots for c in self.concepts])

    # ------------------------------------------------------------------ basic properties and checks
    @property
    def num_concepts(self) -> int:
        """The number ``K`` of concepts."""
        return len(self.concepts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(noise={self.noise})"

    def _check_labels(self, labels, what: str = "labels") -> torch.Tensor:
        """Return ``labels`` as a float32 tensor of shape ``[n, K]``, or raise ``ValueError``."""
        if not isinstance(labels, torch.Tensor):
            try:
                labels = torch.as_tensor(labels, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ValueError(
                    f"{what} must be a tensor of shape [n, {self.num_concepts}]"
                ) from err
        if labels.dim() != 2:
            raise ValueError(
                f"{what} must have shape [n, {self.num_concepts}] (one column per concept "
                f"{list(self.concepts)}), got shape {list(labels.shape)}"
            )
        if labels.shape[1] != self.num_concepts:
            raise ValueError(
                f"{what} has {labels.shape[1]} columns but {type(self).__name__} has "
                f"{self.num_concepts} concepts {list(self.concepts)}"
            )
        if labels.shape[0] < 1:
            raise ValueError(f"{what} is empty: n must be >= 1")
        if labels.is_complex():
            raise ValueError(f"{what} must be real numbers, got dtype {labels.dtype}")
        labels = labels.detach().to(device="cpu", dtype=torch.float32)
        check_finite(labels, what)
        self._check_domain(labels, what)
        return labels

    def _check_domain(self, labels: torch.Tensor, what: str) -> None:
        """Hook: raise ``ValueError`` if ``labels`` [n, K] lie where the equations are undefined."""

    def _col(self, name: str) -> int:
        return self.concepts.index(name)

    # ------------------------------------------------------------------ structural equations
    def _mechanism(self, name: str, parents: dict[str, torch.Tensor]) -> torch.Tensor:
        """Subclass hook: ``f_i(pa_i)`` for the non-root concept ``name``, in natural units."""
        raise NotImplementedError

    def mechanism(self, name: str, parents: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The structural equation ``f_i(pa_i)`` of a non-root concept, without its exogenous noise.

        :param str name: a non-root concept.
        :param dict parents: ``{parent name: tensor of shape [n]}`` for each parent of ``name``, in
            natural units.
        :returns: ``f_i(pa_i)``, a float32 tensor of shape ``[n]``, in natural units.
        :raises ValueError: for an unknown or root concept, or missing / unexpected parents.
        """
        if name not in self.concepts:
            raise ValueError(f"unknown concept {name!r}; concepts are {list(self.concepts)}")
        if not self.parents[name]:
            raise ValueError(f"{name!r} is a root concept: it has no parents and no mechanism")
        if not isinstance(parents, Mapping) or set(parents) != set(self.parents[name]):
            got = sorted(parents) if isinstance(parents, Mapping) else parents
            raise ValueError(
                f"mechanism of {name!r} needs the parents {list(self.parents[name])}, got {got}"
            )
        pa = {}
        for p in self.parents[name]:
            t = torch.as_tensor(parents[p], dtype=torch.float32)
            check_finite(t, f"parent {p!r}")
            pa[p] = t
        return self._mechanism(name, pa)

    def sample_exogenous(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Subclass hook: draw exogenous values, without observation noise.

        :returns: a float32 tensor of shape ``[n, K]``: each root's value, and each non-root
            concept's intrinsic exogenous term (``0`` for a deterministic mechanism).
        """
        raise NotImplementedError

    def _add_noise(
        self, exogenous: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Add the observation noise (``noise * label_scale * N(0, 1)``) to the non-root columns."""
        if self.noise == 0:
            return exogenous
        eps = torch.randn(exogenous.shape, generator=generator)
        std = self.noise * self.label_scale * (~self._root_mask).float()
        return exogenous + eps * std

    def forward(self, exogenous: torch.Tensor) -> torch.Tensor:
        """Apply the structural equations to exogenous values, in topological order.

        :param exogenous: ``u``, of shape ``[n, K]`` (roots' values; non-roots' additive terms).
        :returns: labels ``x``, of shape ``[n, K]``, in natural units: ``x_i = u_i`` for a root and
            ``x_i = f_i(pa_i) + u_i`` otherwise.
        """
        u = self._check_labels(exogenous, "exogenous")
        x = u.clone()
        for i, c in enumerate(self.concepts):
            if self.parents[c]:
                pa = {p: x[:, self._col(p)] for p in self.parents[c]}
                x[:, i] = self._mechanism(c, pa) + u[:, i]
        return x

    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        """Draw labels: roots from their continuous ranges, children ``f_i(pa_i) + noise``.

        :param int n: number of samples (``>= 1``).
        :param seed: seed of a private ``torch.Generator``; ``None`` uses torch's global generator.
        :returns: labels in natural units, a float32 tensor of shape ``[n, K]``.
        """
        n = _check_int(n, "n", minimum=1)
        g = _generator(_check_seed(seed))
        return self.forward(self._add_noise(self.sample_exogenous(n, g), g))

    def abduct(self, labels: torch.Tensor) -> torch.Tensor:
        """Exact abduction of the exogenous noise.

        :param labels: factual labels, of shape ``[n, K]``, in natural units.
        :returns: ``u`` of shape ``[n, K]``: roots keep their value, a child gets
            ``x_i - f_i(pa_i)``.
        """
        x = self._check_labels(labels)
        u = x.clone()
        for i, c in enumerate(self.concepts):
            if self.parents[c]:
                u[:, i] = x[:, i] - self._mechanism(
                    c, {p: x[:, self._col(p)] for p in self.parents[c]}
                )
        return u

    def descendants(self, names) -> set[str]:
        """The concepts strictly downstream of any of ``names`` in the true graph."""
        out = set()
        for name in names:
            out |= nx.descendants(self.graph, name)
        return out

    def counterfactual(
        self, labels: torch.Tensor, do: Mapping[str, float | torch.Tensor]
    ) -> torch.Tensor:
        """Exact counterfactual labels: abduction, action, prediction.

        Every concept's exogenous noise is abducted from the factual labels; the intervened concepts
        take the given values; every descendant is recomputed in topological order with its abducted
        noise held (``x'_i = f_i(pa'_i) + u_i``). Non-descendants are returned unchanged
        (bit-identical).

        :param labels: factual labels, of shape ``[n, K]``, in natural units.
        :param dict do: ``{concept: value}``, each value a number or a tensor of shape ``[n]``, in
            natural units.
        :returns: counterfactual labels, of shape ``[n, K]``.
        :raises ValueError: for bad labels, an unknown concept or a bad value in ``do``.
        """
        x = self._check_labels(labels)
        n = x.shape[0]
        values = check_do(do, self.concepts, n)
        cf = x.clone()
        for name, v in values.items():
            cf[:, self._col(name)] = v.expand(n)
        self._check_domain(cf, "counterfactual labels (after the intervention)")
        moved = self.descendants(values) - set(values)
        for i, c in enumerate(self.concepts):
            if c not in moved:
                continue
            # x'_i = f_i(pa') + (x_i - f_i(pa)): the abducted noise held; exact when pa' == pa
            f_new = self._mechanism(c, {p: cf[:, self._col(p)] for p in self.parents[c]})
            f_old = self._mechanism(c, {p: x[:, self._col(p)] for p in self.parents[c]})
            cf[:, i] = f_new + (x[:, i] - f_old)
        check_finite(cf, "counterfactual labels")
        return cf

    # ------------------------------------------------------------------ normalisation
    def normalise(self, labels: torch.Tensor) -> torch.Tensor:
        """Map labels [n, K] to ``(labels - label_loc) / label_scale`` (about ``[-1, 1]``)."""
        x = self._check_labels(labels)
        return (x - self.label_loc) / self.label_scale

    def denormalise(self, labels_norm: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalise`: ``labels_norm * label_scale + label_loc``, ``[n, K]``."""
        z = labels_norm
        if not isinstance(z, torch.Tensor):
            z = torch.as_tensor(z, dtype=torch.float32)
        if z.dim() != 2 or z.shape[1] != self.num_concepts:
            raise ValueError(
                f"normalised labels must have shape [n, {self.num_concepts}], "
                f"got shape {list(z.shape)}"
            )
        z = z.detach().to(device="cpu", dtype=torch.float32)
        check_finite(z, "normalised labels")
        return z * self.label_scale + self.label_loc

    # ------------------------------------------------------------------ rendering
    def readable(self, labels: torch.Tensor) -> torch.Tensor:
        """Which label rows render to images from which every concept can be read back.

        The renderer draws any combination of concept values, but a scene can hide a concept (e.g.
        Pendulum's shadow running off the image edge). Judges of counterfactual images are trained
        and scored on readable scenes only. The base class calls every row readable.

        :param labels: labels in natural units, of shape ``[n, K]``.
        :returns: a bool tensor of shape ``[n]``.
        """
        x = self._check_labels(labels)
        return torch.ones(x.shape[0], dtype=torch.bool)

    def _draw(self, labels: torch.Tensor, size: int, jitter: torch.Tensor | None) -> torch.Tensor:
        """Subclass hook: draw labels [c, K] as float images [c, 3, size, size] in [0, 1]."""
        raise NotImplementedError

    def _render_noise(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """Subclass hook: per-image rendering randomness drawn once for all ``n`` images (or
        ``None``)."""
        return None

    def render(self, labels: torch.Tensor, size: int = 96, seed: int | None = None) -> torch.Tensor:
        """Render labels as anti-aliased RGB images.

        :param labels: labels in natural units, of shape ``[n, K]``.
        :param int size: image side in pixels (``>= 16``).
        :param seed: seed of any rendering randomness; the result is deterministic for a given seed.
        :returns: a uint8 tensor of shape ``[n, 3, size, size]``.
        """
        x = self._check_labels(labels)
        size = _check_size(size)
        seed = _check_seed(seed)
        jitter = None if seed is None else self._render_noise(x.shape[0], _generator(seed))
        return _raster.render_in_chunks(
            x.shape[0],
            size,
            lambda a, b: self._draw(x[a:b], size, None if jitter is None else jitter[a:b]),
            chunk=self.render_chunk,
        )


class SyntheticDataset(ConceptImageDataset):
    """A split of a synthetic world: labels from an SCM's grid, images rendered by the SCM.

    Keeps the ground truth as ``self.scm`` and the generation settings as ``split``, ``size``, ``seed``
    and ``noise``; ``object_groups`` lists the concepts drawn as one thing (the SCM's ``objects``), the
    ``decoder_groups`` of a :class:`~pyro_causalvae.CausalVAE` that draws each object from its own concepts.
    """

    def _init_from_scm(self, scm: SCM, labels: torch.Tensor, images: torch.Tensor, *, name: str, split: str, size: int, seed: int) -> None:
        super().__init__(
            images,
            labels,
            concepts=scm.concepts,
            graph=scm.graph,
            label_loc=scm.label_loc,
            label_scale=scm.label_scale,
            name=name,
        )
        self.scm = scm
        self.split = split
        self.size = size
        self.seed = seed
        self.noise = scm.noise
        self.object_groups = [list(g) for g in scm.objects]
