"""The CausalVAE as a Pyro program: one structural-equation sample site per concept, style latents,
an amortised guide and a learned DAG.

References:
    [1] Yang, Liu, Chen, Shen, Hao, Wang. "CausalVAE: Disentangled Representation Learning via Neural
        Structural Causal Models", CVPR 2021 (arXiv 2004.08697).
    [2] Louizos et al. "Causal Effect Inference with Deep Latent-Variable Models" (Pyro's CEVAE: the
        model/guide ``PyroModule`` pattern followed here).
    [3] Pawlowski, Castro, Glocker. "Deep Structural Causal Models for Tractable Counterfactual
        Inference", NeurIPS 2020 (DeepSCM), and ChiRho: endogenous variables as sample sites whose
        distribution is their mechanism.
    [4] Kingma, Rezende, Mohamed, Welling. "Semi-supervised Learning with Deep Generative Models",
        NeurIPS 2014: labels as observations of latent variables, missing ones inferred by the guide.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import networkx as nx
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from pyro.nn.module import pyro_method, to_pyro_module_
from pyro.ops.provenance import ProvenanceTensor, detach_provenance
from torch.nn import functional as F

from ._validation import (
    check_concepts,
    check_edges,
    check_positive_float,
    check_positive_int,
    check_real_vector,
    check_scale,
)
from .dag import AugmentedLagrangian, GraphSpec, acyclicity, causal_order, edge_mask, order_mask, to_networkx
from .equations import MECHANISMS, NOISES, AdditiveNoise, Mechanisms, NoiseSplines, additive_noise_log_prob
from .nets import CompositeConvDecoder, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, check_image_size


def _check_image_shape(image_shape) -> tuple[int, ...]:
    """``image_shape`` as a tuple of positive ints, ``(C, H, W)`` or ``(D,)``, or ``ValueError``."""
    try:
        if isinstance(image_shape, (str, bytes, dict)):
            raise TypeError
        items = list(image_shape)
    except TypeError:
        raise ValueError(f"image_shape must be a sequence (C, H, W) or (D,) of positive integers, got {image_shape!r}") from None
    for s in items:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise ValueError(f"image_shape must be (C, H, W) or (D,) of positive integers, got {tuple(items)!r}")
    shape = tuple(int(s) for s in items)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) or (D,) of positive integers, got {shape}")
    return shape


def _check_nonnegative_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_nonnegative_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 <= float(value) < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_choice(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


#: keys of :meth:`CausalVAE.config` (``from_config`` refuses others)
_CONFIG_REQUIRED = ("concepts", "image_shape", "graph_spec")
_CONFIG_OPTIONAL = ("style_dim", "mechanism", "noise", "decoder", "decoder_groups", "channels", "hidden", "mechanism_hidden", "noise_bins",
                    "noise_bound", "pixel_scale", "edge_threshold", "edge_relative", "label_loc", "label_scale")

#: the values of settings a run saved before they were settings had (absent keys of its config mean these)
LEGACY_CONFIG = {"noise_bins": 8, "noise_bound": 3.0}

#: settings of :meth:`CausalVAE.config` that ``train`` has no flag for: ``train --resume`` takes them from the run
ARCHITECTURE_KEYS = ("mechanism", "noise", "channels", "hidden", "mechanism_hidden", "noise_bins", "noise_bound", "pixel_scale")

#: image decoders: one network of all concepts and the style; one per concept (or group) with summed logits;
#: one per concept (or group) painting a layer, the layers mixed per pixel by a softmax of their masks
DECODERS = ("joint", "composite", "layered")

#: the smallest noise scale ``s_i`` (normalised label units): keeps deterministic children's densities finite
MIN_NOISE_SCALE = 1e-3

#: the smallest learned pixel scale (about one grey level of 8-bit images)
MIN_PIXEL_SCALE = 0.005

#: site name of the style latents
STYLE = "style"


def _check_groups(groups, concepts: Sequence[str], decoder: str, image_shape) -> list[list[str]] | None:
    """``decoder_groups`` completed into a partition of the concepts (each unlisted concept alone, after the
    listed groups), or None; a ValueError names what is wrong."""
    if groups is None:
        return None
    if decoder not in ("composite", "layered") or len(image_shape) != 3:
        raise ValueError(f"decoder_groups needs decoder='composite' or 'layered' and images, got decoder={decoder!r} "
                         f"and image_shape {list(image_shape)}")
    if isinstance(groups, (str, bytes)) or not all(isinstance(g, (list, tuple)) and g for g in groups):
        raise ValueError(f"decoder_groups must be a list of non-empty lists of concept names, got {groups!r}")
    out = [[str(c) for c in g] for g in groups]
    names = [c for g in out for c in g]
    unknown = sorted(set(names) - set(concepts))
    twice = sorted({c for c in names if names.count(c) > 1})
    if unknown or twice:
        raise ValueError(f"decoder_groups must name concepts, each at most once: unknown {unknown}, more than once "
                         f"{twice} (concepts are {list(concepts)})")
    return out + [[c] for c in concepts if c not in names]


def unobserved_site(concept: str) -> str:
    """Name of the latent site that holds the *missing* labels of ``concept`` when a batch has some of its
    labels and not others (``"<concept>_unobserved"``, Pyro's convention for partially observed sites)."""
    return f"{concept}_unobserved"


class Posterior(NamedTuple):
    """The guide's Normal posterior for one batch of images (normalised label units).

    ``loc``, ``scale``: ``[N, K]`` for the concepts; ``style_loc``, ``style_scale``: ``[N, S]``.
    """

    loc: torch.Tensor
    scale: torch.Tensor
    style_loc: torch.Tensor
    style_scale: torch.Tensor


class CausalVAE(PyroModule):
    r"""CausalVAE with one structural-equation sample site per concept.

    Generative story, for each image ``n`` in the plate ``"data"`` (``K`` concepts, ``S = style_dim``):

    .. code-block:: none

        for each concept i, in a causal order of the graph:
            c_i ~ TransformedDistribution(Normal(0, 1), AdditiveNoise(g_i(A[:, i] o c), s_i, f_i))
                                                 site "<concept>"  [N]   c_i = g_i(...) + s_i f_i(eps_i)
        style ~ Normal(0, I_S)                   site "style"      [N, S]  (outside the graph)
        x     ~ Normal(decoder(c, style), sigma_x)                site "x"  [N, C, H, W]

    Each concept is a scalar in *normalised label units* (about [-1, 1]; see
    :class:`~pyro_causalvae.datasets.ConceptImageDataset`), and its site's distribution *is* its structural
    equation (:mod:`pyro_causalvae.equations`): ``g_i`` a mechanism of the parents selected by ``A``
    (``[K, K]``, ``A[j, i]``: edge ``j -> i``), ``s_i`` a noise scale and ``f_i`` a learned monotone spline
    of standard normal noise (``noise="normal"``: Gaussian noise). So:

    - labels are observations of the concept sites: ``model(x, u)`` observes ``c_i = u_i`` wherever
      ``u_i`` is not NaN, and ``pyro.condition(model.model, data={"shadow_length": v})`` gives the same
      evidence ("seeing"): a real log-density that moves the parents' posterior;
    - ``pyro.poutine.do(model.model, data={"shadow_length": v})`` replaces the site ("doing"): every
      descendant is recomputed from ``v`` (multi-hop), nothing upstream moves;
    - the exogenous noise stays recoverable: ``poutine.reparam`` with
      :class:`~pyro.infer.reparam.TransformReparam` exposes it as ``"<concept>_base"`` (counterfactuals,
      :mod:`pyro_causalvae.queries`), and ChiRho's counterfactual handlers abduct it directly.

    The structural equations read exactly the edges of :meth:`graph` (its default rule; entries of ``A``
    below it are zero in the equations, with a straight-through gradient while training so that they can
    grow back), so ``do`` never moves a non-descendant of the reported graph, and ``pyro.render_model``
    draws exactly ``graph()``'s edges.

    A batch whose concept ``i`` is labelled for some images and not others gets a latent site
    ``"<concept>_unobserved"`` (masked to the missing entries, inferred by the guide) next to the observed
    site ``"<concept>"``, which then holds the labels where given and the latent values elsewhere. With
    ``x=None`` the image is not observed: site ``"x"`` is then ``pyro.deterministic`` (the decoder's mean),
    so that ``Importance``, ``NUTS`` and ``Predictive`` run on image-free queries with no site to hide.

    The guide ``q(c, style | x)`` is a convolutional encoder (an MLP for flat inputs) giving a diagonal
    Normal for every concept and the style; it samples only the concepts that are not observed. On
    labelled images the encoder is trained by the auxiliary term ``-log q(u | x)`` of
    :mod:`pyro_causalvae.loss` (as in semi-supervised VAEs [4]; plain ``SVI`` trains it from unlabelled
    images only).

    :param concepts: the K concept names (site names).
    :param image_shape: ``(C, H, W)`` of the images (square, side a multiple of 4), or ``(D,)`` for flat
        observations (MLP encoder/decoder).
    :param graph: ``"learn"`` (default), or a known ``networkx.DiGraph`` / edge list that fixes A's support.
    :param required: edges that a learned graph must contain.
    :param forbidden: edges that a learned graph must not contain.
    :param style_dim: ``S``, unsupervised style latents outside the graph (0 for none).
    :param mechanism: ``"mlp"`` (default) or ``"linear"`` mechanisms ``g_i``.
    :param noise: ``"spline-all"`` (default: a learned noise shape for every concept), ``"spline"`` (a learned
        shape for the roots, Gaussian noise for the concepts with parents: the default before the
        children's shapes were fitted in a second stage, see :meth:`concept_distribution`) or ``"normal"``
        (Gaussian noise for all).
    :param decoder: ``"layered"`` (default: one decoder per object, see ``decoder_groups``, and one for the
        style, each painting a layer with a mask; a softmax over the masks and a learned background gives
        each pixel's owner: :class:`~pyro_causalvae.nets.CompositeConvDecoder`), ``"composite"`` (the same
        decoders, logits summed) or ``"joint"`` (one conv decoder of all concepts and the style); images
        only (flat observations use an MLP).
    :param decoder_groups: with ``decoder="composite"`` or ``"layered"``: concepts drawn by one decoder together,
        as lists of concept names, one list per object in the picture (e.g. ``[["shadow_length",
        "shadow_position"]]``: the shadow's length and position describe one thing). A concept in no list is
        drawn alone; none may be in two. Default: each concept alone. The datasets of simulated worlds give
        theirs as ``object_groups``.
    :param channels: conv channels of the encoder and decoder.
    :param hidden: width of the MLP layers.
    :param mechanism_hidden: width of the MLP mechanisms (default 64: Pendulum's shadow_length, a kinked
        function of the angles, kept a residual of 0.035 with 32; ``benchmarks/mechanism_fit.py``).
    :param noise_bins: segments of each noise spline.
    :param noise_bound: half-width of the splines' box in the standard-normal noise (identity outside):
        with 5 rather than 3, a root's prior puts 6e-7 rather than 0.3 % of its mass in the linear tails, which
        reach beyond the data's range (measured prior draws outside the range of Pendulum's uniform angles:
        0.8-1.0 % rather than 1.1-1.4 %).
    :param pixel_scale: std of the Normal likelihood of the pixels (images in [0, 1]), or ``"learned"``: one
        learned std per channel (started at 0.1, at least 0.005: about one grey level of 8-bit images).
    :param edge_threshold: an edge ``j -> i`` is in the graph when ``|A[j, i]| > edge_threshold`` ...
    :param edge_relative: ... and ``|A[j, i]| > edge_relative * max_k |A[k, i]|``.
    :param label_loc: ``[K]`` centre of each label's natural units (for unit conversion), default 0.
    :param label_scale: ``[K]`` half-range of each label's natural units, default 1.
    :raises ValueError: for any bad argument, before any network is built (the message names the argument
        and the value): concept names, ``image_shape``, non-integer or non-positive sizes, non-positive or
        non-finite scales, a graph / required / forbidden edge naming an unknown concept, a cycle, or
        label units of the wrong shape.
    """

    def __init__(
        self,
        concepts: Sequence[str],
        image_shape: Sequence[int],
        *,
        graph: nx.DiGraph | Sequence[tuple[str, str]] | str | None = "learn",
        required: Sequence[tuple[str, str]] = (),
        forbidden: Sequence[tuple[str, str]] = (),
        style_dim: int = 0,
        mechanism: str = "mlp",
        noise: str = "spline-all",
        decoder: str = "layered",
        decoder_groups: Sequence[Sequence[str]] | None = None,
        channels: int = 64,
        hidden: int = 256,
        mechanism_hidden: int = 64,
        noise_bins: int = 16,
        noise_bound: float = 5.0,
        pixel_scale: float | str = "learned",
        edge_threshold: float = 0.02,
        edge_relative: float = 0.2,
        label_loc: Sequence[float] | torch.Tensor | None = None,
        label_scale: Sequence[float] | torch.Tensor | None = None,
    ):
        super().__init__()
        # Every argument is checked before any network is built (one readable ValueError).
        self.concepts = check_concepts(concepts)
        K = len(self.concepts)
        image_shape = _check_image_shape(image_shape)
        if len(image_shape) == 3:
            try:
                check_image_size(image_shape)
            except ValueError as err:
                raise ValueError(f"image_shape {image_shape} is not supported: {err}") from None
        style_dim = _check_nonnegative_int(style_dim, "style_dim")
        channels, hidden, mechanism_hidden, noise_bins = (
            check_positive_int(v, name) for name, v in
            [("channels", channels), ("hidden", hidden), ("mechanism_hidden", mechanism_hidden),
             ("noise_bins", noise_bins)]
        )
        if noise_bins < 2:
            raise ValueError(f"noise_bins must be at least 2, got {noise_bins}")
        noise_bound = check_positive_float(noise_bound, "noise_bound")
        if channels % 2:
            raise ValueError(f"channels must be even, got {channels}")
        mechanism = _check_choice(mechanism, "mechanism", MECHANISMS)
        noise = _check_choice(noise, "noise", NOISES)
        decoder = _check_choice(decoder, "decoder", DECODERS)
        decoder_groups = _check_groups(decoder_groups, self.concepts, decoder, image_shape)
        if not (isinstance(pixel_scale, str) and pixel_scale == "learned"):
            pixel_scale = check_positive_float(pixel_scale, "pixel_scale")
        edge_threshold = _check_nonnegative_float(edge_threshold, "edge_threshold")
        edge_relative = _check_nonnegative_float(edge_relative, "edge_relative")
        if edge_relative > 1:
            raise ValueError(f"edge_relative must be in [0, 1], got {edge_relative!r}")
        required = check_edges(required, self.concepts, "required")
        forbidden = check_edges(forbidden, self.concepts, "forbidden")
        loc = torch.zeros(K) if label_loc is None else check_real_vector(label_loc, K, "label_loc")
        scale = torch.ones(K) if label_scale is None else check_real_vector(label_scale, K, "label_scale")
        check_scale(scale, "label_scale", self.concepts)
        self.spec = GraphSpec.build(self.concepts, graph, required, forbidden)
        self.image_shape = image_shape
        self.style_dim = style_dim
        self.pixel_scale = pixel_scale
        self.edge_threshold, self.edge_relative = edge_threshold, edge_relative
        self._config = dict(
            concepts=list(self.concepts), image_shape=list(image_shape), graph_spec=self.spec.to_json(),
            style_dim=style_dim, mechanism=mechanism, noise=noise, decoder=decoder, channels=channels, hidden=hidden,
            mechanism_hidden=mechanism_hidden, noise_bins=noise_bins, noise_bound=noise_bound,
            pixel_scale=pixel_scale, edge_threshold=edge_threshold, edge_relative=edge_relative,
        )
        if decoder_groups is not None:
            self._config["decoder_groups"] = decoder_groups

        latent = K + style_dim
        if len(image_shape) == 3:
            self.encoder = ConvEncoder(image_shape, 2 * latent, channels, hidden)
            if decoder in ("composite", "layered"):
                index = {c: i for i, c in enumerate(self.concepts)}
                groups = None if decoder_groups is None else [[index[c] for c in g] for g in decoder_groups]
                self.decoder = CompositeConvDecoder(K, style_dim, image_shape, channels // 2, hidden // 4, groups,
                                                    compose="sum" if decoder == "composite" else "masks")
            else:
                self.decoder = ConvDecoder(latent, image_shape, channels, hidden)
        else:
            self.encoder = MLPEncoder(image_shape[0], 2 * latent, (hidden, hidden))
            self.decoder = MLPDecoder(latent, image_shape[0], (hidden, hidden))
        self.mechanisms = Mechanisms(K, mechanism_hidden, mechanism)
        self.noise_splines = NoiseSplines(K, noise_bins, noise_bound) if noise != "normal" else None
        for m in (self.encoder, self.decoder, self.mechanisms, self.noise_splines):
            if m is not None:
                to_pyro_module_(m)

        support = self.spec.support()
        self.register_buffer("support", support)
        self.register_buffer("required_edges", self.spec.required_mask())
        init = support.clone() if not self.spec.learned else torch.zeros(K, K)
        self.A_raw = torch.nn.Parameter(init)
        self.noise_scale_raw = torch.nn.Parameter(torch.full((K,), -0.5))  # softplus -> about 0.47
        if pixel_scale == "learned":
            channels_out = image_shape[0] if len(image_shape) == 3 else 1
            self.pixel_scale_raw = torch.nn.Parameter(torch.full((channels_out,), math.log(0.1 - MIN_PIXEL_SCALE)))
        self.al = AugmentedLagrangian()
        # The causal order is a plain list (read every step without touching the device), saved in
        # state dicts as extra state; ``order_mask`` is derived from it.
        self.order: list[int] = self._known_order() if not self.spec.learned else list(range(K))
        self.register_buffer("order_mask", order_mask(self.order))
        # Entries of A against a causal order found from the labels (penalised by LossWeights.order_prior).
        self.register_buffer("order_penalty", torch.zeros(K, K))
        # Set once A has been started from a causal order, so that a second fit() continues from it.
        self.order_initialised = False
        # Set once the structural equations were fitted to the labels before SVI (pyro_causalvae.warm_start).
        self.equations_initialised = False
        # Edges removed after training (discovery.redundant_edges), as (parent, child) indices.
        self.pruned: list[tuple[int, int]] = []
        self.register_buffer("label_loc", loc)
        self.register_buffer("label_scale", scale)

    # ------------------------------------------------------------------ graph
    def _known_order(self) -> list[int]:
        idx = {c: i for i, c in enumerate(self.concepts)}
        return [idx[c] for c in nx.lexicographical_topological_sort(self.spec.known, key=idx.get)]

    @property
    def adjacency(self) -> torch.Tensor:
        """The weighted adjacency ``A`` of shape ``[K, K]`` (support-masked, zero diagonal)."""
        return self.A_raw * self.support

    def edge_mask(self) -> torch.Tensor:
        """``[K, K]`` 0/1 mask of the edges of :meth:`graph`: entries of ``A`` that agree with the causal
        order and pass the edge rule (``edge_threshold``, ``edge_relative``), plus the required (or known)
        edges. Computed on the device, without gradient."""
        A = (self.adjacency * self.order_mask).detach()
        keep = edge_mask(A, self.edge_threshold, self.edge_relative)
        return torch.maximum(keep, self.required_edges) * self.support

    def scm_adjacency(self) -> torch.Tensor:
        """``A`` as the structural equations use it (``[K, K]``): zero off the edges of :meth:`graph`.

        While training (``self.training`` and gradients on), the entries that the order allows but the edge
        rule cuts keep a straight-through gradient (their value is 0, their gradient that of a weight
        at 0), so that an edge can grow back; their forward value is 0 in every mode.
        """
        A = self.adjacency * self.order_mask
        keep = self.edge_mask()
        if self.training and torch.is_grad_enabled():
            return A * keep + (A - A.detach()) * (1.0 - keep)
        return A * keep

    def parents(self) -> list[list[int]]:
        """For each concept (by index), the parents that its structural equation reads: the edges of
        :meth:`graph` (host lists; one device read)."""
        keep = self.edge_mask().cpu()
        return [keep[:, i].nonzero().flatten().tolist() for i in range(len(self.concepts))]

    def _inactive_parents(self, parents: list[list[int]]) -> list[list[int]]:
        """Concepts the order allows as parents but the graph cuts: read (value 0, gradient for ``A``
        only) while training, so that their edges can grow back; nothing otherwise."""
        K = len(self.concepts)
        if not (self.training and torch.is_grad_enabled() and self.spec.learned):
            return [[] for _ in range(K)]
        allowed = (self.support * self.order_mask).cpu()
        return [[j for j in allowed[:, i].nonzero().flatten().tolist() if j not in parents[i]] for i in range(K)]

    def acyclicity(self) -> torch.Tensor:
        """``h(A)`` (zero for a known graph)."""
        return acyclicity(self.adjacency)

    @torch.no_grad()
    def update_order(self) -> None:
        """Recompute the causal order from the learned ``A`` (no-op for a known graph)."""
        if self.spec.learned:
            self._set_order(causal_order(self.adjacency))

    def _set_order(self, order: Sequence[int]) -> None:
        self.order = [int(i) for i in order]
        self.order_mask.copy_(order_mask(self.order).to(self.order_mask.device))

    @torch.no_grad()
    def init_from_order(self, order: Sequence[int]) -> None:
        """Start a learned graph from a causal order: the structural equations follow ``order``, ``A``
        starts at 1 on the entries that agree with it and 0 on the others, which are then penalised by
        the ``order_prior`` loss term (see :mod:`pyro_causalvae.discovery`)."""
        if not self.spec.learned:
            raise ValueError("init_from_order applies to a learned graph only")
        order = [int(i) for i in order]
        if sorted(order) != list(range(len(self.concepts))):
            raise ValueError(f"order must be a permutation of 0..{len(self.concepts) - 1}, got {order}")
        self._set_order(order)
        agree = self.support * self.order_mask
        self.A_raw.copy_(agree)
        self.order_penalty.copy_(self.support * (1.0 - self.order_mask) * (1.0 - self.required_edges))
        self.order_initialised = True

    @torch.no_grad()
    def prune(self, edges: Sequence[tuple[int, int]]) -> None:
        """Remove learned edges ``[(parent, child), ...]`` (concept indices) for good: their entries of
        ``A`` leave the support, and the child's structural equation no longer reads the parent."""
        if not self.spec.learned:
            raise ValueError("prune applies to a learned graph only")
        for j, i in edges:
            self.support[j, i] = 0.0
            self.A_raw[j, i] = 0.0
            if (int(j), int(i)) not in self.pruned:
                self.pruned.append((int(j), int(i)))

    def get_extra_state(self) -> dict:
        return {"order": list(self.order), "order_initialised": self.order_initialised,
                "equations_initialised": self.equations_initialised,
                "pruned": [list(e) for e in self.pruned]}

    def set_extra_state(self, state: dict) -> None:
        order = [int(i) for i in state["order"]]
        if sorted(order) != list(range(len(self.concepts))):
            raise ValueError(f"invalid causal order {order} in the state dict")
        self._set_order(order)
        self.order_initialised = bool(state.get("order_initialised", False))
        self.equations_initialised = bool(state.get("equations_initialised", False))
        self.pruned = [(int(j), int(i)) for j, i in state.get("pruned", [])]

    def graph(self, threshold: float | None = None, relative: float | None = None) -> nx.DiGraph:
        """The causal graph over the concept names: the edges the structural equations read.

        An edge ``j -> i`` is kept when ``|A[j, i]| > threshold`` and ``|A[j, i]| > relative *
        max_k |A[k, i]|`` (relative to the strongest edge into the same concept: with MLP mechanisms the
        overall scale of ``A`` is traded against the networks' weights under the L1 penalty, so a fixed
        absolute cut is not meaningful across concepts), among the entries that agree with the causal order.
        Required (and known) edges are always included. Edge attribute ``weight`` holds ``A[j, i]``.

        :param threshold: default the model's ``edge_threshold``; :param relative: default its
            ``edge_relative``. Only the defaults give the graph of the structural equations; other values
            show what a stricter or looser rule would keep.
        :raises ValueError: unless ``threshold`` and ``relative`` are finite numbers >= 0.
        """
        threshold = self.edge_threshold if threshold is None else threshold
        relative = self.edge_relative if relative is None else relative
        for name, v in (("threshold", threshold), ("relative", relative)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 <= float(v) < math.inf):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        A = (self.adjacency * self.order_mask).detach().cpu()
        g = to_networkx(A, self.concepts, threshold, relative)
        for j, i in self.required_edges.nonzero().tolist():
            g.add_edge(self.concepts[j], self.concepts[i], weight=float(A[j, i]))
        return g

    def noise_scales(self) -> torch.Tensor:
        """``s`` of shape ``[K]``: scale of each concept's exogenous noise (normalised units)."""
        return F.softplus(self.noise_scale_raw) + MIN_NOISE_SCALE

    def config(self) -> dict:
        """JSON-serialisable constructor arguments (plus label units)."""
        cfg = dict(self._config)
        cfg["label_loc"] = self.label_loc.tolist()
        cfg["label_scale"] = self.label_scale.tolist()
        return cfg

    @classmethod
    def from_config(cls, cfg: dict) -> "CausalVAE":
        """Rebuild a model from :meth:`config` (e.g. the ``"model"`` entry of a run's ``config.json``).

        :raises ValueError: if ``cfg`` is not such a dict: missing or unknown keys, a malformed
            ``graph_spec``, or any argument the constructor refuses (the message names it).
        """
        if not isinstance(cfg, dict):
            raise ValueError(f"model config must be a JSON object (dict), got {type(cfg).__name__}")
        try:
            cfg = json.loads(json.dumps(cfg, allow_nan=False))
        except (TypeError, ValueError) as err:
            raise ValueError(f"model config is not plain JSON (finite numbers, strings, lists, dicts): {err}") from err
        missing = [k for k in _CONFIG_REQUIRED if k not in cfg]
        unknown = sorted(k for k in cfg if k not in _CONFIG_REQUIRED + _CONFIG_OPTIONAL)
        if missing or unknown:
            hint = (" (concept_dim is from a run of an earlier version: concepts are scalars now; retrain)"
                    if "concept_dim" in unknown else "")
            raise ValueError(
                f"model config has missing key(s) {missing} and unknown key(s) {unknown}; "
                f"expected {list(_CONFIG_REQUIRED)} and optionally {list(_CONFIG_OPTIONAL)}{hint}"
            )
        for k, v in LEGACY_CONFIG.items():  # a run saved before these were settings
            cfg.setdefault(k, v)
        spec = cfg.pop("graph_spec")
        if not isinstance(spec, dict) or set(spec) != {"known", "required", "forbidden"}:
            raise ValueError(
                "model config: graph_spec must be an object with exactly the keys 'known', 'required' and "
                f"'forbidden', got {spec!r}"
            )
        for key in ("known", "required", "forbidden"):
            if not (isinstance(spec[key], list) or (key == "known" and spec[key] is None)):
                raise ValueError(f"model config: graph_spec[{key!r}] must be a list of [parent, child] edges, got {spec[key]!r}")
        g = "learn" if spec["known"] is None else check_edges(spec["known"], check_concepts(cfg["concepts"]), "graph_spec['known']")
        return cls(graph=g, required=spec["required"], forbidden=spec["forbidden"], **cfg)

    # ------------------------------------------------------------------ units
    def _concept_index(self, concept: str) -> int:
        if concept not in self.concepts:
            raise ValueError(f"unknown concept {concept!r}; concepts are {list(self.concepts)}")
        return self.concepts.index(concept)

    def normalise(self, values: torch.Tensor, concept: str | None = None) -> torch.Tensor:
        """Natural label units -> the model's normalised units (``[..., K]``, or one concept's values).

        :raises ValueError: for an unknown ``concept``.
        """
        if concept is None:
            return (values - self.label_loc) / self.label_scale
        i = self._concept_index(concept)
        return (values - self.label_loc[i]) / self.label_scale[i]

    def denormalise(self, values: torch.Tensor, concept: str | None = None) -> torch.Tensor:
        """Normalised units -> natural label units.

        :raises ValueError: for an unknown ``concept``.
        """
        if concept is None:
            return values * self.label_scale + self.label_loc
        i = self._concept_index(concept)
        return values * self.label_scale[i] + self.label_loc[i]

    # ------------------------------------------------------------------ structural equations
    def concept_distribution(self, i: int, loc: torch.Tensor, scales: torch.Tensor | None = None,
                             splines: tuple[torch.Tensor, ...] | None = None,
                             root: bool | None = None) -> dist.TransformedDistribution:
        """The distribution of concept ``i`` given its mechanism's output ``loc`` (``[...]``):
        ``TransformedDistribution(Normal(0, 1), AdditiveNoise(loc, s_i, f_i))``, batch shape ``loc.shape``.

        The noise shape ``f_i`` is a spline for a root concept (a root's noise is its whole distribution, e.g.
        uniform) and, with ``noise="spline-all"`` (the default), for a concept with parents too (Flow's
        water height is its ball's volume plus a *uniform* level: with Gaussian noise, seeing a high water
        level put the ball's posterior sd at 1.87x the simulator's). A child's shape fitted together with
        its mechanism from the start fits the child's marginal instead of its mechanism (on Pendulum's
        labels, 700 steps: shadow_length's mechanism residual 0.48 with a spline, 0.07 without), so the
        structural equations' warm start fits the mechanisms first with the children's noise Gaussian, then
        the shapes with the mechanisms held (:func:`~pyro_causalvae.warm_start.fit_structural_equations`);
        SVI then trains everything. ``noise="spline"``: Gaussian noise for the children.

        :param scales: ``[K]`` noise scales (default :meth:`noise_scales`).
        :param splines: the noise splines' parameters (default from the model).
        :param root: whether concept ``i`` has no parent in the graph (default: from :meth:`parents`).
        """
        scales = self.noise_scales() if scales is None else scales
        if root is None:
            root = not self.parents()[i]
        shaped = root or self._config["noise"] == "spline-all"
        if splines is None and self.noise_splines is not None and shaped:
            splines = self.noise_splines()
        spline = None if splines is None or not shaped else tuple(p[i] for p in splines)
        base = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc))
        bound = self.noise_splines.bound if self.noise_splines is not None else 3.0
        return dist.TransformedDistribution(base, [AdditiveNoise(loc, scales[i], spline, bound)])

    def _inputs(self, values: list, active: list[int], inactive: list[int], n: int) -> torch.Tensor:
        """The mechanism input ``[..., n, K]``: the parents' values (``active``), the inactive parents'
        values without provenance (they only carry ``A``'s straight-through gradient, so ``render_model``
        and ChiRho see the graph's edges only) and zeros elsewhere; batch dims broadcast (ChiRho's worlds)."""
        cols = {j: values[j] for j in active}
        cols.update({j: detach_provenance(values[j]) for j in inactive})
        shape = torch.broadcast_shapes((n,), *(v.shape for v in cols.values()))
        zeros = self.label_loc.new_zeros(shape)
        return torch.stack([cols[j].expand(shape) if j in cols else zeros for j in range(len(self.concepts))], -1)

    def structural_forward(self, eps: torch.Tensor) -> torch.Tensor:
        """The structural equations as a tensor function (no Pyro sites).

        :param eps: exogenous noise of shape ``[N, K]`` (the ``"<concept>_base"`` values).
        :returns: concept values ``[N, K]``.
        """
        A, s = self.scm_adjacency(), self.noise_scales()
        splines = self.noise_splines() if self.noise_splines is not None else None
        values: list = [None] * len(self.concepts)
        parents = self.parents()
        for i in self.order:
            loc = self.mechanisms(self._inputs(values, parents[i], [], eps.shape[0]), A, i)
            values[i] = self.concept_distribution(i, loc, s, splines, not parents[i]).transforms[0](eps[..., i])
        return torch.stack(values, -1)

    def concept_log_prob(self, c: torch.Tensor, held: torch.Tensor | None = None,
                         child_shapes: bool = True) -> torch.Tensor:
        """The concept sites' log-densities as a tensor function: ``log p(c_i | parents(c))`` under the
        structural equations, every concept in one batched call (no Pyro sites, no loop over concepts).

        Equal to each site's ``log_prob`` in a trace of :meth:`model` with these values (the mechanisms
        read the same edges of :attr:`scm_adjacency`, with the same straight-through gradient while
        training); the training loss uses it in place of ``K`` site densities.

        :param c: concept values ``[N, K]`` (normalised; every entry given).
        :param held: ``[N]`` booleans or ``None``: rows whose densities pass gradient to ``c`` only, not to
            the structural equations' parameters (``A``, the mechanisms, the noise scales and shapes); the
            same values. The loss holds them on the rows whose labels it hides from the ELBO (label dropout).
        :param child_shapes: ``False``: the concepts with parents get Gaussian noise even with
            ``noise="spline-all"`` (the first stage of the structural equations' warm start).
        :returns: ``[N, K]`` log-densities (float32, also under an autocast).
        """
        with torch.autocast(self.label_loc.device.type, enabled=False):
            c = c.float()
            shaped = [i for i, pa in enumerate(self.parents()) if not pa]  # spline noise (concept_distribution)
            if self._config["noise"] == "spline-all" and child_shapes:
                shaped = list(range(len(self.concepts)))
            bound = self.noise_splines.bound if self.noise_splines is not None else 3.0
            A, scales = self.scm_adjacency(), self.noise_scales()
            splines = self.noise_splines() if self.noise_splines is not None else None
            out = additive_noise_log_prob(c, self.mechanisms(c, A), scales, splines, shaped, bound)
            if held is None:
                return out
            splines = None if splines is None else tuple(p.detach() for p in splines)
            fixed = additive_noise_log_prob(c, self.mechanisms(c, A.detach(), detach=True), scales.detach(), splines,
                                            shaped, bound)
            return torch.where(held[:, None], fixed, out)

    def descendants_mask(self) -> torch.Tensor:
        """``[K, K]`` booleans: ``[k, i]`` is True when concept ``i`` is a descendant of ``k`` in :meth:`graph`."""
        K = len(self.concepts)
        g = self.graph()
        idx = {c: i for i, c in enumerate(self.concepts)}
        mask = torch.zeros(K, K, dtype=torch.bool)
        for c in self.concepts:
            for d in nx.descendants(g, c):
                mask[idx[c], idx[d]] = True
        return mask.to(self.label_loc.device)

    def counterfactual_concepts(self, c: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Counterfactual concept values as a tensor function (differentiable, no Pyro sites): image ``n``
        under ``do(concept k[n] = v[n])``. Every concept keeps its abducted exogenous term (the noise is
        additive: ``c_i - g_i(parents)``), descendants of ``k[n]`` are recomputed through their mechanisms,
        everything else is unchanged; the same values as :func:`pyro_causalvae.queries.counterfactual`.

        :param c: factual concept values ``[N, K]`` (normalised).
        :param k: ``[N]`` indices of the intervened concept; :param v: ``[N]`` values (normalised).
        :returns: ``[N, K]``.
        """
        A = self.scm_adjacency()
        parents = self.parents()
        moved = self.descendants_mask()[k]  # [N, K]
        K = len(self.concepts)
        cols = list(c.unbind(-1))
        fact = list(c.unbind(-1))
        for i in self.order:
            hit = k == i
            if parents[i]:
                g_fact = self.mechanisms(self._inputs(fact, parents[i], [], c.shape[0]), A, i)
                g_cf = self.mechanisms(self._inputs(cols, parents[i], [], c.shape[0]), A, i)
                cols[i] = torch.where(moved[:, i], g_cf + (fact[i] - g_fact), cols[i])
            cols[i] = torch.where(hit, v, cols[i])
        return torch.stack(cols, -1) if K else c

    # ------------------------------------------------------------------ Pyro program
    def _batch_size(self, x, u, size) -> int:
        if x is not None:
            return x.shape[0]
        if u is not None:
            return u.shape[0]
        if size is None:
            raise ValueError("model(x=None, u=None) needs size= (the number of images to generate)")
        return int(size)

    def _label_states(self, u: torch.Tensor | None) -> list[str]:
        """Per concept: ``"latent"`` (no label in the batch), ``"observed"`` (every label given) or
        ``"mixed"``. One host read of ``[2, K]`` booleans."""
        K = len(self.concepts)
        if u is None:
            return ["latent"] * K
        if u.dim() != 2 or u.shape[-1] != K:
            raise ValueError(f"u must be normalised labels of shape [N, {K}], got {list(u.shape)}")
        nan = torch.isnan(u)
        anyn, alln = torch.stack([nan.any(0), nan.all(0)]).tolist()
        return ["latent" if a else "mixed" if m else "observed" for m, a in zip(anyn, alln)]

    def _concept_site(self, name: str, fn, state: str, obs: torch.Tensor | None) -> torch.Tensor:
        """Sample site of one concept: latent, observed, or observed where labelled and latent elsewhere."""
        if state == "latent":
            return pyro.sample(name, fn)
        if state == "observed":
            return pyro.sample(name, fn, obs=obs)
        missing = torch.isnan(obs)
        with poutine.mask(mask=missing):
            latent = pyro.sample(unobserved_site(name), fn)
        with poutine.mask(mask=~missing):
            return pyro.sample(name, fn, obs=torch.where(missing, latent, obs.nan_to_num(0.0)))

    def _concepts(self, N: int, u: torch.Tensor | None) -> torch.Tensor:
        """The concept sites, in causal order, inside the ``"data"`` plate; returns ``[..., N, K]``.
        Computed in float32 (also under a bf16 autocast: the densities of near-deterministic children
        need it, and it is cheap)."""
        with torch.autocast(self.label_loc.device.type, enabled=False):
            return self._concept_sites(N, u)

    def _concept_sites(self, N: int, u: torch.Tensor | None) -> torch.Tensor:
        states = self._label_states(u)
        A, s = self.scm_adjacency(), self.noise_scales()
        splines = self.noise_splines() if self.noise_splines is not None else None
        parents = self.parents()
        inactive = self._inactive_parents(parents)
        values: list = [None] * len(self.concepts)
        for layer in self._schedule(parents, inactive):
            if len(layer) > 1 and not self._batchable(layer, values, parents, inactive, N):
                for i in layer:
                    loc = self.mechanisms(self._inputs(values, parents[i], inactive[i], N), A, i)
                    fn = self.concept_distribution(i, loc, s, splines, not parents[i])
                    values[i] = self._concept_site(self.concepts[i], fn, states[i], None if u is None else u[..., i])
                continue
            # one batched call of the mechanisms for the concepts of a layer (they do not read each other)
            active = sorted({j for i in layer for j in parents[i]})
            passive = sorted({j for i in layer for j in inactive[i]} - set(active))
            locs = self.mechanisms(self._inputs(values, active, passive, N), A, layer[0] if len(layer) == 1 else None)
            for i in layer:
                loc = locs if len(layer) == 1 else locs[..., i]
                fn = self.concept_distribution(i, loc, s, splines, not parents[i])
                values[i] = self._concept_site(self.concepts[i], fn, states[i], None if u is None else u[..., i])
        shape = torch.broadcast_shapes(*(v.shape for v in values))
        return torch.stack([v.expand(shape) for v in values], -1)

    @staticmethod
    def _batchable(layer, values, parents, inactive, N) -> bool:
        """Whether a layer's mechanisms may run as one call: a value's dependencies are tracked per tensor
        (``pyro.render_model``'s provenance, ChiRho's world dims), so a batched call must not make a concept
        depend on another's parents. That holds unless provenance is tracked, or the concepts' parents carry
        different batch shapes (ChiRho's worlds below a split)."""
        if any(isinstance(v, ProvenanceTensor) for v in values):
            return False
        shapes = {torch.broadcast_shapes((N,), *(values[j].shape for j in parents[i] + inactive[i])) for i in layer}
        return len(shapes) == 1

    def _schedule(self, parents: list[list[int]], inactive: list[list[int]]) -> list[list[int]]:
        """The concepts in causal order, grouped into layers that no concept of the same layer feeds (the
        graph's topological generations, in the order of :attr:`order`): the sites keep one per concept,
        their mechanisms are computed per layer. Concepts with inactive parents (learned graphs while
        training) read every concept before them, so each is a layer of its own."""
        layers: list[list[int]] = []
        current: list[int] = []
        for i in self.order:
            if (set(parents[i]) | set(inactive[i])) & set(current):
                layers.append(current)
                current = []
            current.append(i)
        if current:
            layers.append(current)
        return layers

    @pyro_method
    def model(self, x: torch.Tensor | None = None, u: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        """The generative model.

        :param x: images ``[N, C, H, W]`` in [0, 1] (observed), or ``None`` (site ``"x"`` is then the
            decoder's mean, deterministic).
        :param u: normalised labels ``[N, K]`` (observations of the concept sites); ``None`` or NaN entries
            are unobserved.
        :param size: ``N`` when both ``x`` and ``u`` are ``None``.
        :returns: the concept values ``[N, K]`` (normalised units).
        """
        N = self._batch_size(x, u, size)
        with pyro.plate("data", N):
            c = self._concepts(N, u)
            style = None
            if self.style_dim:
                prior = dist.Normal(self.label_loc.new_zeros(self.style_dim), 1.0).to_event(1)
                style = pyro.sample(STYLE, prior)
            self._image(x, c, style)
        return c

    @pyro_method
    def concept_model(self, u: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        """The structural causal model of the concepts alone: :meth:`model` without the style and the image
        (the same concept sites, so the same answers to queries about concepts, without the decoder's cost).

        :param u: normalised labels ``[N, K]`` (observations; NaN: unobserved) or ``None``.
        :param size: ``N`` when ``u`` is ``None``.
        :returns: the concept values ``[N, K]``.
        """
        N = self._batch_size(None, u, size)
        with pyro.plate("data", N):
            return self._concepts(N, u)

    def decode(self, c: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder means ``[..., C, H, W]`` in [0, 1] from concept values ``[..., K]`` and style
        ``[..., S]`` (default zeros, the prior's mean)."""
        if self.style_dim:
            if style is None:
                style = c.new_zeros(*c.shape[:-1], self.style_dim)
            shape = torch.broadcast_shapes(c.shape[:-1], style.shape[:-1])
            c = torch.cat([c.expand(*shape, c.shape[-1]), style.expand(*shape, style.shape[-1])], -1)
        return self.decoder(c)

    def _image(self, x: torch.Tensor | None, c: torch.Tensor, style: torch.Tensor | None) -> None:
        loc = self.decode(c, style)
        event = len(self.image_shape)
        if x is None:
            pyro.deterministic("x", loc, event_dim=event)
        else:
            pyro.sample("x", dist.Normal(loc, self.pixel_scales()).to_event(event), obs=x)

    def pixel_scales(self) -> torch.Tensor | float:
        """The pixels' Normal std: a float, or ``[C, 1, 1]`` learned per channel (``pixel_scale="learned"``)."""
        if self.pixel_scale != "learned":
            return self.pixel_scale
        s = self.pixel_scale_raw.exp() + MIN_PIXEL_SCALE
        return s[:, None, None] if len(self.image_shape) == 3 else s

    def posterior(self, x: torch.Tensor) -> Posterior:
        """The encoder's Normal posterior over the concepts and the style of images ``x`` (``[N, ...]``)."""
        K, S = len(self.concepts), self.style_dim
        out = self.encoder(x).reshape(x.shape[0], 2, K + S).float()  # float32 also under bf16 autocast
        loc, scale = out[:, 0], F.softplus(out[:, 1]) + 1e-4
        return Posterior(loc[:, :K], scale[:, :K], loc[:, K:], scale[:, K:])

    @pyro_method
    def guide(self, x: torch.Tensor | None = None, u: torch.Tensor | None = None, size: int | None = None) -> Posterior:
        """Amortised guide ``q(c, style | x)``: a Normal for each unobserved concept and for the style.

        Concepts observed in ``u`` get no guide site (their value is the label); a concept labelled for
        some images of the batch only gets the site ``"<concept>_unobserved"``, masked to the missing
        entries.

        :param x: images ``[N, C, H, W]`` (required).
        :param u: normalised labels ``[N, K]`` or ``None`` (NaN: missing).
        :returns: the :class:`Posterior` (encoder outputs).
        """
        if x is None:
            raise ValueError("the guide needs images x to infer the concepts")
        return self.guide_posterior(self.posterior(x), u)

    @pyro_method
    def guide_posterior(self, post: Posterior, u: torch.Tensor | None = None) -> Posterior:
        """The guide's sample sites given the encoder's output ``post`` (:meth:`guide` without the encoder,
        for a loss that needs the encoder's output too)."""
        states = self._label_states(u)
        with pyro.plate("data", post.loc.shape[0]):
            for i in self.order:  # the model's site order (TraceMeanField_ELBO checks it)
                c = self.concepts[i]
                q = dist.Normal(post.loc[:, i], post.scale[:, i])
                if states[i] == "latent":
                    pyro.sample(c, q)
                elif states[i] == "mixed":
                    with poutine.mask(mask=torch.isnan(u[:, i])):
                        pyro.sample(unobserved_site(c), q)
            if self.style_dim:
                pyro.sample(STYLE, dist.Normal(post.style_loc, post.style_scale).to_event(1))
        return post

    # ------------------------------------------------------------------ tensor helpers
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean of the concepts: ``[N, K]`` (normalised label units)."""
        return self.posterior(x).loc

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder means at the posterior mean: ``[N, C, H, W]``."""
        post = self.posterior(x)
        return self.decode(post.loc, post.style_loc)

    # ------------------------------------------------------------------ queries
    def intervene(self, do: dict, num_samples: int = 16, units: str = "natural") -> dict[str, torch.Tensor]:
        """Images sampled under ``do``: see :func:`pyro_causalvae.queries.intervene`."""
        from .queries import intervene

        return intervene(self, do, num_samples=num_samples, units=units)

    def counterfactual(self, x: torch.Tensor, u: torch.Tensor | None = None, do: dict | None = None, num_samples: int = 1,
                       units: str = "natural", abduction: str = "mean") -> dict[str, torch.Tensor]:
        """Counterfactuals of images ``x`` under ``do``: see :func:`pyro_causalvae.queries.counterfactual`."""
        from .queries import counterfactual

        if do is None:
            raise ValueError("counterfactual needs do={concept: value}")
        return counterfactual(self, x, do, u=u, num_samples=num_samples, units=units, abduction=abduction)

    def forward(self, x: torch.Tensor | None = None, u: torch.Tensor | None = None, size: int | None = None):
        return self.model(x, u, size)
