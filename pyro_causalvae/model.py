"""The CausalVAE as a Pyro program: structural-equation sample sites, amortised guide, learned DAG.

References:
    [1] Yang, Liu, Chen, Shen, Hao, Wang. "CausalVAE: Disentangled Representation Learning via Neural
        Structural Causal Models", CVPR 2021 (arXiv 2004.08697).
    [2] Louizos et al. "Causal Effect Inference with Deep Latent-Variable Models" (Pyro's CEVAE: the
        model/guide ``PyroModule`` pattern followed here).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence

import networkx as nx
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_
from torch.nn import functional as F

from ._validation import (
    check_concepts,
    check_edges,
    check_positive_float,
    check_positive_int,
    check_real_vector,
    check_scale,
)
from .dag import AugmentedLagrangian, GraphSpec, acyclicity, causal_order, order_mask, to_networkx
from .nets import ConvDecoder, ConvEncoder, Mechanisms, MLPDecoder, MLPEncoder, check_image_size


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


#: keys of :meth:`CausalVAE.config` (``from_config`` refuses others)
_CONFIG_REQUIRED = ("concepts", "image_shape", "graph_spec")
_CONFIG_OPTIONAL = ("concept_dim", "channels", "hidden", "mechanism_hidden", "pixel_scale", "label_noise",
                    "label_loc", "label_scale")


def noise_site(concept: str) -> str:
    """Name of the exogenous-noise sample site of ``concept`` (``"<concept>_noise"``)."""
    return f"{concept}_noise"


class CausalVAE(PyroModule):
    r"""CausalVAE with one structural-equation sample site per concept.

    Generative story, for each image ``n`` in the plate ``"data"`` and each concept ``i`` in a
    topological order of the graph (``concept_dim = d``):

    .. code-block:: none

        eps_i ~ Normal(0, I_d)                          site "<concept>_noise"  [N, d]  exogenous noise
        z_i   = g_i(A[:, i] o z) + s_i * eps_i          site "<concept>"        [N, d]  structural equation
        u     ~ Normal(z, sigma_u)                      site "labels"           [N, K, d]  concept labels
        x     ~ Normal(decoder(z), sigma_x)             site "x"                [N, C, H, W]

    ``A`` (``[K, K]``, zero diagonal, ``A[j, i]``: edge ``j -> i``) is learned under an acyclicity
    constraint or fixed by a known graph; ``g_i`` are the mask-layer mechanisms
    (:class:`~pyro_causalvae.nets.Mechanisms`). A concept site is a deterministic function of its parents
    and of its own noise site, so ``pyro.poutine.do(model, {"shadow_length": v})`` replaces its value and
    every descendant is recomputed from it (multi-hop), while replaying a guide trace holds each concept's
    exogenous noise: that is abduction-action-prediction with plain Pyro handlers.

    Concept values live in *normalised label units*: the labels site reads each concept's normalised
    label (about [-1, 1]; see :class:`~pyro_causalvae.datasets.ConceptImageDataset`) in every dim of its
    block (as the official code's label-conditioned prior does), so ``do(c=v)`` sets concept ``c`` to the
    label value ``v`` and the mean of a block is the model's reading of its concept.

    The guide ``q(eps | x)`` is a convolutional encoder (an MLP for flat inputs) giving a diagonal Normal
    posterior for each concept block, turned into the posterior of each concept's noise through the
    structural equations (see :meth:`guide`). It conditions on the image only, so that unlabelled images can be
    abducted; ``u`` is accepted for the common signature.

    :param concepts: the K concept names (site names).
    :param image_shape: ``(C, H, W)`` of the images (square, side a multiple of 4), or ``(D,)`` for flat
        observations (MLP encoder/decoder).
    :param concept_dim: dims per concept block ``d``.
    :param graph: ``"learn"`` (default), or a known ``networkx.DiGraph`` / edge list that fixes A's support.
    :param required: edges that a learned graph must contain.
    :param forbidden: edges that a learned graph must not contain.
    :param channels: conv channels of the encoder and decoder.
    :param hidden: width of the MLP layers.
    :param mechanism_hidden: width of the mechanisms g_i.
    :param pixel_scale: std of the Normal likelihood of the pixels (images in [0, 1]).
    :param label_noise: std ``sigma_u`` of the labels given the concept blocks (normalised units).
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
        concept_dim: int = 4,
        graph: nx.DiGraph | Sequence[tuple[str, str]] | str | None = "learn",
        required: Sequence[tuple[str, str]] = (),
        forbidden: Sequence[tuple[str, str]] = (),
        channels: int = 64,
        hidden: int = 256,
        mechanism_hidden: int = 32,
        pixel_scale: float = 0.1,
        label_noise: float = 0.05,
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
        concept_dim, channels, hidden, mechanism_hidden = (
            check_positive_int(v, name) for name, v in
            [("concept_dim", concept_dim), ("channels", channels), ("hidden", hidden), ("mechanism_hidden", mechanism_hidden)]
        )
        if channels % 2:
            raise ValueError(f"channels must be even, got {channels}")
        pixel_scale = check_positive_float(pixel_scale, "pixel_scale")
        label_noise = check_positive_float(label_noise, "label_noise")
        required = check_edges(required, self.concepts, "required")
        forbidden = check_edges(forbidden, self.concepts, "forbidden")
        loc = torch.zeros(K) if label_loc is None else check_real_vector(label_loc, K, "label_loc")
        scale = torch.ones(K) if label_scale is None else check_real_vector(label_scale, K, "label_scale")
        check_scale(scale, "label_scale", self.concepts)
        self.spec = GraphSpec.build(self.concepts, graph, required, forbidden)
        self.image_shape = image_shape
        self.concept_dim = int(concept_dim)
        self.pixel_scale = float(pixel_scale)
        self.label_noise = float(label_noise)
        self._config = dict(
            concepts=list(self.concepts), image_shape=list(image_shape), concept_dim=concept_dim,
            graph_spec=self.spec.to_json(), channels=channels, hidden=hidden,
            mechanism_hidden=mechanism_hidden, pixel_scale=pixel_scale, label_noise=label_noise,
        )

        latent = K * self.concept_dim
        if len(image_shape) == 3:
            self.encoder = ConvEncoder(image_shape, 2 * latent, channels, hidden)
            self.decoder = ConvDecoder(latent, image_shape, channels, hidden)
        else:
            self.encoder = MLPEncoder(image_shape[0], 2 * latent, (hidden, hidden))
            self.decoder = MLPDecoder(latent, image_shape[0], (hidden, hidden))
        self.mechanisms = Mechanisms(K, self.concept_dim, mechanism_hidden)
        for m in (self.encoder, self.decoder, self.mechanisms):
            to_pyro_module_(m)

        support = self.spec.support()
        self.register_buffer("support", support)
        self.register_buffer("required_edges", self.spec.required_mask())
        init = support.clone() if not self.spec.learned else torch.zeros(K, K)
        self.A_raw = torch.nn.Parameter(init)
        self.noise_scale_raw = torch.nn.Parameter(torch.full((K,), -0.5))  # softplus -> about 0.47
        self.al = AugmentedLagrangian()
        # The causal order is a plain list (read every step without touching the device), saved in
        # state dicts as extra state; ``order_mask`` is derived from it.
        self.order: list[int] = self._known_order() if not self.spec.learned else list(range(K))
        self.register_buffer("order_mask", order_mask(self.order))
        # Entries of A against a causal order found from the labels (penalised by LossWeights.order_prior).
        self.register_buffer("order_penalty", torch.zeros(K, K))
        # Set once A has been started from a causal order, so that a second fit() continues from it.
        self.order_initialised = False
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

    def scm_adjacency(self) -> torch.Tensor:
        """``A`` restricted to the current causal order (always a DAG): what the structural equations use."""
        return self.adjacency * self.order_mask

    def possible_parents(self) -> list[set[int]]:
        """For each concept, the concepts that may enter its structural equation: its parents in a known
        graph; for a learned graph, the concepts before it in the causal order (forbidden edges excluded).
        Computed on the host from the graph spec and the order (no device access)."""
        idx = {c: i for i, c in enumerate(self.concepts)}
        if not self.spec.learned:
            return [{idx[p] for p in self.spec.known.predecessors(c)} for c in self.concepts]
        forbidden = {(idx[a], idx[b]) for a, b in self.spec.forbidden} | set(self.pruned)
        pos = {c: k for k, c in enumerate(self.order)}
        return [{j for j in range(len(self.concepts)) if pos[j] < pos[i] and (j, i) not in forbidden}
                for i in range(len(self.concepts))]

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
                "pruned": [list(e) for e in self.pruned]}

    def set_extra_state(self, state: dict) -> None:
        order = [int(i) for i in state["order"]]
        if sorted(order) != list(range(len(self.concepts))):
            raise ValueError(f"invalid causal order {order} in the state dict")
        self._set_order(order)
        self.order_initialised = bool(state.get("order_initialised", False))
        self.pruned = [(int(j), int(i)) for j, i in state.get("pruned", [])]

    def graph(self, threshold: float = 0.02, relative: float = 0.2) -> nx.DiGraph:
        """The causal graph over the concept names.

        An edge ``j -> i`` is kept when ``|A[j, i]| > threshold`` and ``|A[j, i]| > relative *
        max_k |A[k, i]|`` (relative to the strongest edge into the same concept: with MLP mechanisms the
        overall scale of ``A`` is traded against the networks' weights under the L1 penalty, so a fixed
        absolute cut is not meaningful across concepts). ``relative=0`` gives a plain absolute threshold.
        Required (and known) edges are always included. Edge attribute ``weight`` holds ``A[j, i]``.

        :raises ValueError: unless ``threshold`` and ``relative`` are finite numbers >= 0.
        """
        for name, v in (("threshold", threshold), ("relative", relative)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 <= float(v) < math.inf):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        g = to_networkx(self.adjacency, self.concepts, threshold, relative)
        A = self.adjacency.detach().cpu()
        for j, i in self.required_edges.nonzero().tolist():
            g.add_edge(self.concepts[j], self.concepts[i], weight=float(A[j, i]))
        return g

    def noise_scales(self) -> torch.Tensor:
        """``s`` of shape ``[K]``: scale of each concept's exogenous noise."""
        return F.softplus(self.noise_scale_raw) + 1e-3

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
            raise ValueError(
                f"model config has missing key(s) {missing} and unknown key(s) {unknown}; "
                f"expected {list(_CONFIG_REQUIRED)} and optionally {list(_CONFIG_OPTIONAL)}"
            )
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
    def _as_block(self, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Broadcast an intervened value (scalar, ``[N]``, ``[N, 1]`` or ``[N, d]``, possibly with extra
        batch dims on the left, e.g. ChiRho's world plates) against a block like ``like`` (``[..., N, d]``)."""
        value = value.to(like)
        if value.dim() == 1 and value.shape[0] == like.shape[-2] and value.shape[0] != like.shape[-1]:
            value = value[:, None]
        return value.expand(torch.broadcast_shapes(value.shape, like.shape))

    @staticmethod
    def _stack_blocks(blocks: list[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
        """Stack per-concept blocks (``[..., d]``; ``None`` is a block of zeros) into ``[..., K, d]``."""
        present = [b for b in blocks if b is not None]
        shape = torch.broadcast_shapes(like.shape, *(b.shape for b in present))
        zeros = like.new_zeros(shape)
        return torch.stack([zeros if b is None else b.expand(shape) for b in blocks], dim=-2)

    @staticmethod
    def _with_block(z: torch.Tensor, i: int, zi: torch.Tensor) -> torch.Tensor:
        """``z`` (``[..., K, d]``) with block ``i`` replaced by ``zi`` (``[..., d]``), batch dims broadcast."""
        batch = torch.broadcast_shapes(z.shape[:-2], zi.shape[:-1])
        z = z.expand(*batch, *z.shape[-2:])
        zi = zi.expand(*batch, zi.shape[-1])
        return torch.cat([z[..., :i, :], zi.unsqueeze(-2), z[..., i + 1 :, :]], dim=-2)

    def structural_forward(self, eps: torch.Tensor) -> torch.Tensor:
        """The structural equations as a tensor function (no Pyro sites).

        :param eps: exogenous noise of shape ``[N, K, d]``.
        :returns: concept blocks ``z`` of shape ``[N, K, d]``.
        """
        A, s = self.scm_adjacency(), self.noise_scales()
        z = torch.zeros_like(eps)
        for i in self.order:
            z = self._with_block(z, i, self.mechanisms(z, A, i) + s[i] * eps[..., i, :])
        return z

    # ------------------------------------------------------------------ Pyro program
    def _batch_size(self, x, u, size) -> int:
        if x is not None:
            return x.shape[0]
        if u is not None:
            return u.shape[0]
        if size is None:
            raise ValueError("model(x=None, u=None) needs size= (the number of images to generate)")
        return int(size)

    def model(self, x: torch.Tensor | None = None, u: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        """The generative model.

        :param x: images ``[N, C, H, W]`` in [0, 1] (observed), or ``None`` to generate.
        :param u: normalised labels ``[N, K]`` (observed); ``None`` or NaN entries are unobserved.
        :param size: ``N`` when both ``x`` and ``u`` are ``None``.
        :returns: the concept blocks ``z`` of shape ``[N, K, d]``.
        """
        N = self._batch_size(x, u, size)
        K, d = len(self.concepts), self.concept_dim
        A, s = self.scm_adjacency(), self.noise_scales()
        ref = self.label_loc
        parents = self.possible_parents()
        blocks: list[torch.Tensor | None] = [None] * K
        with pyro.plate("data", N):
            for i in self.order:
                c = self.concepts[i]
                eps = pyro.sample(noise_site(c), dist.Normal(ref.new_zeros(d), 1.0).to_event(1))
                # only the possible parents' blocks enter g_i, so that value provenance (render_model)
                # follows the graph
                z_in = self._stack_blocks([blocks[j] if j in parents[i] else None for j in range(K)], eps)
                zi = pyro.deterministic(c, self.mechanisms(z_in, A, i) + s[i] * eps, event_dim=1)
                blocks[i] = self._as_block(zi, eps)
            z = self._stack_blocks(blocks, eps)
            self._labels(z, u)
            loc = self.decoder(z.reshape(*z.shape[:-2], K * d))
            pyro.sample("x", dist.Normal(loc, self.pixel_scale).to_event(len(self.image_shape)), obs=x)
        return z

    def _labels(self, z: torch.Tensor, u: torch.Tensor | None) -> None:
        """Site ``"labels"`` ``[N, K, d]``: every dim of a concept block is a noisy reading of its label."""
        fn = dist.Normal(z, self.label_noise)
        if u is None:
            with pyro.poutine.mask(mask=False):
                pyro.sample("labels", fn.to_event(2), infer={"is_auxiliary": True})
            return
        obs = u[..., None].expand(z.shape)
        # NaN entries are unobserved; masking always (rather than testing for NaN) avoids a host sync.
        pyro.sample("labels", fn.mask(~torch.isnan(obs)).to_event(2), obs=obs.nan_to_num(0.0))

    def posterior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's Normal posterior over the concept blocks ``z``.

        :param x: images ``[N, C, H, W]``.
        :returns: ``(loc, scale)``, each ``[N, K, d]`` (normalised label units).
        """
        K, d = len(self.concepts), self.concept_dim
        out = self.encoder(x).reshape(x.shape[0], 2, K, d)
        return out[:, 0], F.softplus(out[:, 1]) + 1e-4

    def guide(self, x: torch.Tensor | None = None, u: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        """Amortised guide ``q(eps | x)``, one Normal noise site per concept (abduction).

        The encoder gives a Normal ``q(z_i | x) = N(m_i, v_i)`` for each concept block; the guide samples
        the noise that produces it through the structural equation, in causal order:
        ``eps_i ~ N((m_i - g_i(A[:, i] o z)) / s_i, v_i / s_i)``, so that ``z_i = g_i(...) + s_i eps_i``
        is distributed as ``N(m_i, v_i)``. The mechanisms then receive no gradient from the pixels, only
        from fitting the posterior concepts (the KL term), which is what fits the SCM.

        :param x: images ``[N, C, H, W]`` (required).
        :returns: the concept blocks ``z`` of shape ``[N, K, d]``.
        """
        if x is None:
            raise ValueError("the guide needs images x to infer the exogenous noise")
        loc, scale = self.posterior_params(x)
        A, s = self.scm_adjacency(), self.noise_scales()
        z = torch.zeros_like(loc)
        with pyro.plate("data", x.shape[0]):
            for i in self.order:
                g = self.mechanisms(z, A, i)
                fn = dist.Normal((loc[:, i] - g) / s[i], scale[:, i] / s[i]).to_event(1)
                eps = pyro.sample(noise_site(self.concepts[i]), fn)
                z = self._with_block(z, i, g + s[i] * eps)
        return z

    # ------------------------------------------------------------------ tensor helpers
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean of the concept blocks: ``[N, K, d]`` (normalised label units)."""
        return self.posterior_params(x)[0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder means at the posterior mean: ``[N, C, H, W]``."""
        z = self.encode(x)
        return self.decoder(z.reshape(z.shape[0], -1))

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
