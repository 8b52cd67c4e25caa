"""A Bayesian graph: a posterior over the edge weights ``A`` of a trained CausalVAE.

Training (:func:`pyro_causalvae.train.fit`) gives a point estimate of ``A``. This module puts a prior on
the weights of the candidate edges and fits a variational posterior for them, post hoc, with every
network of the model frozen:

.. code-block:: none

    a_e ~ Laplace(0, b)   (or Normal(0, b))                  site "A"         [E]   one weight per candidate edge
    A   = A_trained with the candidate entries set to a                          [K, K]
    z_n = the concepts of item n (normalised labels)                              [N, K]
    z_n,i ~ p_i(z_n,i | g_i(A[:, i] o z_n))   for every concept i               factor "concepts"  [N]
    q(a) = Normal(m, diag(v))                                                    the guide (mean-field)

The likelihood is the SCM part of the CausalVAE: each concept's density under its structural equation
``z_i = g_i(A[:, i] o z) + s_i f_i(eps_i)`` (:mod:`pyro_causalvae.equations`, with the model's noise
scales and noise shapes), evaluated on the concepts given by the labels, or, for unlabelled data, on the
encoder's posterior means.

Why post hoc, with the networks frozen (rather than jointly with the VAE): the only parts of the ELBO
that involve ``A`` are the concepts' densities above. Fitting them with the encoder,
decoder and mechanisms held at their trained values gives the posterior of ``A`` *conditional on* the
trained mechanisms, in seconds, without retraining or changing the training objective. (Refitting the
mechanisms' weights by maximum likelihood together with ``q(A)`` overfits: on a tiny SCM with 300 labels
the non-edges' weights grew to 0.5-1.5 as the mechanisms fitted the labels' noise through them.)

What it does not capture: the uncertainty of the mechanisms' own weights, which were fitted together with
the point estimate of ``A``. Hence: fit on held-out labels (e.g. the test split), where wiggles that a
mechanism learned from the training labels' noise through a spurious edge are no evidence; and the
default prior ``Laplace(0, 0.05)`` is tight (``P(|a| > 0.1) = exp(-2)`` a priori), so that an edge whose
mechanism ignores it (a flat likelihood) stays unlikely and a high ``P(|A[j, i]| > threshold)`` means the
data moved the weight away from 0. Each parent enters ``g_i`` through a unit-norm weight vector, so
``|A[j, i]|`` alone is the edge's strength (its scale still trades against the mechanism's later layers,
differently per concept: choose the threshold from the weights in :meth:`GraphPosterior.summary`).

Candidate edges default to the model's allowed support (:func:`candidate_edges`): the known
edges of a known graph; for a learned graph, every pair consistent with the model's causal order
(forbidden edges excluded). Every draw of ``A`` is then a DAG; an edge against the causal order has
no weight in the structural equations and gets no posterior.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import _arviz, analysis
from ._validation import check_finite
from .model import CausalVAE
from .equations import AdditiveNoise, Mechanisms, NoiseSplines

__all__ = ["GraphPosterior", "candidate_edges", "edge_label", "fit_graph_posterior"]


def edge_label(parent: str, child: str) -> str:
    """The coordinate name of an edge: ``"light_angle -> shadow_length"``."""
    return f"{parent} -> {child}"


def candidate_edges(model: CausalVAE) -> list[tuple[str, str]]:
    """The edges whose weights may be non-zero in the structural equations (the model's allowed support):
    ``(parent, child)`` pairs, children in the model's causal order, then parents in that order."""
    allowed = (model.support * model.order_mask).detach().cpu()
    out = []
    for k, i in enumerate(model.order):
        for j in model.order[:k]:
            if allowed[j, i] != 0:
                out.append((model.concepts[j], model.concepts[i]))
    return out


def _check_edges(model: CausalVAE, edges) -> list[tuple[int, int]]:
    """Edge names -> index pairs; every edge must follow the causal order and not be forbidden."""
    idx = {c: i for i, c in enumerate(model.concepts)}
    pos = {c: k for k, c in enumerate(model.order)}
    forbidden = {tuple(e) for e in model.spec.forbidden}
    out = []
    try:
        pairs = [tuple(e) for e in edges]
    except TypeError as err:
        raise ValueError(f"edges must be a list of (parent, child) pairs, got {edges!r}") from err
    if not pairs:
        raise ValueError("edges is empty: name at least one (parent, child) edge")
    for e in pairs:
        if len(e) != 2 or any(c not in idx for c in e):
            raise ValueError(f"each edge must be a (parent, child) pair of concepts {list(model.concepts)}, got {e!r}")
        j, i = idx[e[0]], idx[e[1]]
        if e in forbidden:
            raise ValueError(f"edge {edge_label(*e)} is forbidden in this model")
        if pos[j] >= pos[i]:
            order = " < ".join(model.concepts[k] for k in model.order)
            raise ValueError(f"edge {edge_label(*e)} goes against the model's causal order ({order}): "
                             "the structural equations cannot use it")
        out.append((j, i))
    if len(set(out)) != len(out):
        raise ValueError("edges has duplicates")
    return out


def _normal_tail(loc: torch.Tensor, scale: torch.Tensor, threshold: float) -> torch.Tensor:
    """``P(|a| > threshold)`` for ``a ~ Normal(loc, scale)``."""
    n = torch.distributions.Normal(loc.double(), scale.double())
    t = torch.as_tensor(float(threshold), dtype=torch.float64)
    return (n.cdf(-t) + (1.0 - n.cdf(t))).float()


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < math.inf:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    return float(threshold)


@dataclass
class GraphPosterior:
    """The variational posterior of the candidate edges' weights, ``q(a_e) = Normal(loc_e, scale_e)``.

    :param concepts: the concept names.
    :param edges: the candidate edges ``(parent, child)``, ``E`` of them.
    :param loc: ``[E]`` posterior means.
    :param scale: ``[E]`` posterior standard deviations.
    :param point: ``[E]`` the trained point estimate of each weight (``model.adjacency``).
    :param prior: ``"laplace"`` or ``"normal"``; ``prior_scale``: its scale ``b``.
    :param noise_scale: ``[K]`` the likelihood's noise scale of each concept.
    :param losses: the negative ELBO at each optimisation step.
    """

    concepts: tuple[str, ...]
    edges: list[tuple[str, str]]
    loc: torch.Tensor
    scale: torch.Tensor
    point: torch.Tensor
    prior: str
    prior_scale: float
    noise_scale: torch.Tensor
    losses: list[float] = field(default_factory=list, repr=False)

    # ------------------------------------------------------------------ numbers
    @property
    def edge_names(self) -> list[str]:
        """``["parent -> child", ...]``, the ``edge`` coordinate of :meth:`to_inference_data`."""
        return [edge_label(p, c) for p, c in self.edges]

    @property
    def mean(self) -> torch.Tensor:
        """``[E]`` posterior mean of each edge's weight."""
        return self.loc

    @property
    def sd(self) -> torch.Tensor:
        """``[E]`` posterior standard deviation of each edge's weight."""
        return self.scale

    def interval(self, prob: float = 0.94) -> torch.Tensor:
        """``[E, 2]`` central credible interval of each weight (the HDI too: ``q`` is Normal)."""
        prob = _arviz.check_prob(prob)
        z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + prob / 2)).item()
        return torch.stack([self.loc - z * self.scale, self.loc + z * self.scale], dim=-1)

    def edge_probability(self, threshold: float = 0.1) -> dict[tuple[str, str], float]:
        """Posterior probability that ``|A[parent, child]| > threshold``, per candidate edge (exact under
        the Normal ``q``).

        :returns: ``{(parent, child): probability}``.
        """
        p = _normal_tail(self.loc, self.scale, _check_threshold(threshold))
        return {e: float(v) for e, v in zip(self.edges, p.tolist())}

    def probability_matrix(self, threshold: float = 0.1) -> torch.Tensor:
        """``[K, K]`` matrix of :meth:`edge_probability` (``[j, i]``: edge ``j -> i``; 0 off the candidates)."""
        P = torch.zeros(len(self.concepts), len(self.concepts))
        idx = {c: i for i, c in enumerate(self.concepts)}
        for (a, b), p in self.edge_probability(threshold).items():
            P[idx[a], idx[b]] = p
        return P

    def graph(self, threshold: float = 0.1, min_probability: float = 0.5) -> nx.DiGraph:
        """The edges with ``P(|A| > threshold) > min_probability``, over all concepts.

        Edge attributes: ``weight`` (posterior mean), ``sd``, ``probability``.
        """
        g = nx.DiGraph()
        g.add_nodes_from(self.concepts)
        probs = self.edge_probability(threshold)
        for k, e in enumerate(self.edges):
            if probs[e] > min_probability:
                g.add_edge(*e, weight=float(self.loc[k]), sd=float(self.scale[k]), probability=probs[e])
        return g

    def summary(self, threshold: float = 0.1, prob: float = 0.94):
        """A ``pandas.DataFrame``, one row per edge: ``mean``, ``sd``, the ``prob`` interval, ``P(|A|>t)``
        and the trained point estimate ``point``."""
        import pandas as pd

        ci = self.interval(prob)
        pct = f"{100 * prob:g}"
        p = _normal_tail(self.loc, self.scale, _check_threshold(threshold))
        return pd.DataFrame({
            "mean": self.loc.numpy(), "sd": self.scale.numpy(),
            f"hdi_{pct}%_lower": ci[:, 0].numpy(), f"hdi_{pct}%_upper": ci[:, 1].numpy(),
            f"P(|A|>{threshold:g})": p.numpy(), "point": self.point.numpy(),
        }, index=pd.Index(self.edge_names, name="edge"))

    def sample(self, num_draws: int = 1000, seed: int | None = 0) -> torch.Tensor:
        """``[num_draws, E]`` draws of the edge weights from ``q`` (reproducible for a seed)."""
        num_draws = analysis._check_count(num_draws, "num_draws")
        rng = np.random.default_rng(analysis._check_seed(seed))
        eps = torch.as_tensor(rng.standard_normal((num_draws, len(self.edges))), dtype=torch.float32)
        return self.loc + self.scale * eps

    def _prior_draws(self, num_draws: int, seed: int | None) -> np.ndarray:
        rng = np.random.default_rng(None if seed is None else seed + 1)
        size = (num_draws, len(self.edges))
        if self.prior == "laplace":
            return rng.laplace(0.0, self.prior_scale, size).astype(np.float32)
        return rng.normal(0.0, self.prior_scale, size).astype(np.float32)

    # ------------------------------------------------------------------ ArviZ
    def to_inference_data(self, num_draws: int = 1000, num_chains: int = 1, seed: int | None = 0, prior: bool = True):
        """Draws of the edge weights as an ArviZ object.

        - ``posterior["A"]``: ``(chain, draw, edge)`` ``[num_chains, num_draws, E]``, draws from ``q``;
        - ``prior["A"]`` (``prior=True``): draws from the prior, same dims;
        - ``constant_data["A_point"]``: ``(edge,)`` the trained point estimate.

        The coordinate ``edge`` names each edge ``"parent -> child"``.

        :returns: an ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ >= 1.0).
        """
        num_draws = analysis._check_count(num_draws, "num_draws")
        num_chains = analysis._check_count(num_chains, "num_chains")
        S, E = num_draws * num_chains, len(self.edges)
        coords = {"chain": np.arange(num_chains), "draw": np.arange(num_draws), "edge": self.edge_names}
        dims = ("chain", "draw", "edge")
        draws = self.sample(S, seed).numpy().reshape(num_chains, num_draws, E)
        groups = {"posterior": {"A": (dims, draws)}}
        if prior:
            groups["prior"] = {"A": (dims, self._prior_draws(S, seed).reshape(num_chains, num_draws, E))}
        groups["constant_data"] = {"A_point": (("edge",), self.point.numpy())}
        attrs = {"created_by": "pyro_causalvae.bayes_graph.GraphPosterior.to_inference_data",
                 "inference_library": "pyro", "inference": "mean-field Normal variational posterior (SVI)",
                 "prior": f"{self.prior}(0, {self.prior_scale:g})"}
        return _arviz.from_draws(groups, coords, attrs)

    def plot_forest(self, prob: float = 0.94, num_draws: int = 1000, seed: int | None = 0, **kwargs):
        """Forest plot of the edge weights (``az.plot_forest`` via :func:`pyro_causalvae._arviz.plot_forest`:
        the same intervals under ArviZ 0.x and 1.x), from ``num_draws`` draws of ``q``.

        :returns: matplotlib axes (ArviZ 0.x) or a ``PlotCollection`` (ArviZ >= 1.0).
        """
        return _arviz.plot_forest(self.to_inference_data(num_draws=num_draws, seed=seed, prior=False),
                                    var_names=["A"], prob=prob, **kwargs)

    def __repr__(self) -> str:
        rows = ", ".join(f"{n}: {m:.3g}±{s:.2g}"
                         for n, m, s in zip(self.edge_names, self.loc.tolist(), self.scale.tolist()))
        return f"GraphPosterior({len(self.edges)} edges, prior={self.prior}(0, {self.prior_scale:g}); {rows})"


# -------------------------------------------------------------------------------------------------------
# the fit
# -------------------------------------------------------------------------------------------------------
def _concept_data(model: CausalVAE, data, units: str) -> torch.Tensor:
    """``[N, K]`` normalised concepts (NaN where unobserved) from labels, a dataset or its images."""
    K = len(model.concepts)
    device = model.label_loc.device
    if isinstance(data, (torch.Tensor, np.ndarray)):
        u = torch.as_tensor(data, dtype=torch.float32).to(device)
        if u.dim() != 2 or u.shape[1] != K or u.shape[0] == 0:
            raise ValueError(f"labels must have shape [N, {K}] (N >= 1), got {list(u.shape)}")
        check_finite(analysis.nan_as_zero(u), "labels")
        return model.normalise(u) if units == "natural" else u
    concepts = getattr(data, "concepts", None)
    if concepts is None or not hasattr(data, "images"):
        raise ValueError("data must be a labels tensor [N, K] or a ConceptImageDataset, "
                         f"got {type(data).__name__}")
    if tuple(concepts) != tuple(model.concepts):
        raise ValueError(f"dataset concepts {list(concepts)} do not match the model's {list(model.concepts)}")
    if getattr(data, "labels", None) is not None:
        u = data.labels_normalised.to(device=device, dtype=torch.float32)
        check_finite(analysis.nan_as_zero(u), "dataset labels")
        return u
    # unlabelled: the encoder's posterior means of the concepts
    images = data.images
    if images.shape[0] == 0:
        raise ValueError("dataset is empty")
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], 256):
            x = images[start : start + 256].to(device)
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            out.append(model.encode(x))
    return torch.cat(out)


def _noise_scale_spec(spec, K: int) -> str | torch.Tensor:
    """Validate ``noise_scale``: ``"model"``, ``"residual"``, or positive numbers (``[K]``)."""
    msg = f"noise_scale must be 'model', 'residual', a positive number or {K} positive numbers, got {spec!r}"
    if isinstance(spec, str):
        if spec not in ("model", "residual"):
            raise ValueError(msg)
        return spec
    try:
        s = torch.as_tensor(spec, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(msg) from err
    s = s.expand(K) if s.dim() == 0 else s
    if s.shape != (K,) or not torch.isfinite(s).all() or (s <= 0).any():
        raise ValueError(msg)
    return s


def _noise_scale(model: CausalVAE, spec, z: torch.Tensor, mask: torch.Tensor, mech: Mechanisms,
                 A: torch.Tensor) -> torch.Tensor:
    """The likelihood's noise scale per concept, ``[K]``."""
    spec = _noise_scale_spec(spec, len(model.concepts))
    if isinstance(spec, torch.Tensor):
        return spec.to(z.device)
    if spec == "model":
        return model.noise_scales().detach()
    r = (z - mech(z, A)) ** 2  # [N, K]
    m = mask.float()
    ms = (r * m).sum(0) / m.sum(0).clamp_min(1.0)
    return ms.sqrt().clamp_min(1e-3)


def fit_graph_posterior(
    model: CausalVAE,
    data,
    num_steps: int = 1500,
    prior: str = "laplace",
    prior_scale: float = 0.05,
    seed: int | None = 0,
    *,
    edges: Sequence[tuple[str, str]] | None = None,
    units: str = "natural",
    noise_scale="model",
    batch_size: int = 256,
    lr: float = 0.01,
    num_particles: int = 1,
    init_scale: float = 0.05,
    progress: bool | None = None,
) -> GraphPosterior:
    """Fit a variational posterior over the weights of the candidate edges of a trained model's ``A``.

    The Pyro program (see the module docstring): a ``pyro.sample("A", Laplace(0, prior_scale))`` site
    over the ``E`` candidate edges, and the structural equations' likelihood of the concepts
    ``Normal(g_i(A[:, i] o z), s_i)`` under a subsampled ``pyro.plate("data", N)``; the guide is a
    mean-field Normal started at the trained weights (sd ``init_scale``). Optimised by SVI
    (``Trace_ELBO``, Adam with the step size decayed linearly to 10%), every network of ``model``
    frozen (the model is not modified).

    :param model: a trained :class:`~pyro_causalvae.model.CausalVAE`.
    :param data: preferably held-out data (see the module docstring): labels ``[N, K]`` in ``units``
        (NaN = unobserved: a concept's term is skipped where it or one of its parents is missing), or a
        :class:`~pyro_causalvae.datasets.ConceptImageDataset` (its labels; if it has none, the encoder's
        posterior means of its images).
    :param num_steps: SVI steps.
    :param prior: ``"laplace"`` (sparsity-inducing: its MAP is the L1 penalty of training) or ``"normal"``.
    :param prior_scale: the prior's scale ``b`` (default 0.05: an edge the data say nothing about keeps
        ``P(|a| > 0.1) = exp(-2) = 0.14``).
    :param seed: seeds the fit (subsampling and the ELBO's draws); the result is deterministic for a seed
        on the CPU, and the caller's RNG state is restored. ``None``: the current RNG state.
    :param edges: the candidate edges ``[(parent, child), ...]``; default :func:`candidate_edges`
        (the model's allowed support). Each must follow the model's causal order.
    :param units: units of a labels tensor: ``"natural"`` (default) or ``"normalised"``.
    :param noise_scale: the likelihood's noise per concept: ``"model"`` (default, the model's own
        noise: scale ``s_i`` and shape ``f_i``), or Gaussian noise with scale ``"residual"`` (RMS residual of
        the concepts under the trained ``A``: an empirical-Bayes choice, much sharper when children are
        near-deterministic functions of their parents), a number, or ``[K]`` numbers.
    :param batch_size: items per step (the likelihood is scaled to the full data).
    :param lr: Adam step size.
    :param num_particles: ELBO samples per step.
    :param init_scale: the guide's initial standard deviation.
    :param progress: show a tqdm bar (default: when ``num_steps >= 1000``).
    :returns: a :class:`GraphPosterior`.
    :raises ValueError: for bad data or settings (before any work).
    """
    K = len(model.concepts)
    num_steps = analysis._check_count(num_steps, "num_steps")
    batch_size = analysis._check_count(batch_size, "batch_size")
    num_particles = analysis._check_count(num_particles, "num_particles")
    units = analysis._check_units(units)
    seed = analysis._check_seed(seed)
    if prior not in ("laplace", "normal"):
        raise ValueError(f"prior must be 'laplace' or 'normal', got {prior!r}")
    for name, v in [("prior_scale", prior_scale), ("lr", lr), ("init_scale", init_scale)]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if edges is None:
        edges = candidate_edges(model)
        if not edges:
            raise ValueError("the model's graph allows no edge; name candidate edges with edges=[(parent, child), ...]")
    pairs = _check_edges(model, edges)
    _noise_scale_spec(noise_scale, K)  # fail before any work
    z = _concept_data(model, data, units).detach()  # [N, K], NaN where unobserved
    N, E = z.shape[0], len(pairs)
    device = z.device
    rows = torch.tensor([j for j, _ in pairs], device=device)
    cols = torch.tensor([i for _, i in pairs], device=device)
    # a frozen, plain (non-Pyro) copy of the mechanisms: no param-store traffic, the model is untouched
    src = model.mechanisms
    mech = Mechanisms(src.n, src.hidden, src.kind).to(device)
    mech.load_state_dict(src.state_dict())
    mech.requires_grad_(False)

    with torch.no_grad():
        A_model = model.scm_adjacency().detach()  # [K, K] what the structural equations use
        point = model.adjacency.detach()[rows, cols].clone()  # [E]
        base = A_model.clone()
        base[rows, cols] = 0.0  # the fixed entries (non-candidates keep their trained weights)
        # a concept's term counts where it and all its parents (fixed or candidate) are observed
        observed = ~torch.isnan(z)  # [N, K]
        candidate = torch.zeros(K, K, dtype=torch.bool, device=device)
        candidate[rows, cols] = True
        parents = ((A_model != 0) | candidate).float()  # [K, K]
        mask = observed & ((~observed).float() @ parents == 0)  # [N, K]
        z0 = z.nan_to_num(0.0)
        s = _noise_scale(model, noise_scale, z0, mask, mech, base.index_put((rows, cols), point))  # [K]
        splines = None
        if isinstance(noise_scale, str) and noise_scale == "model" and model.noise_splines is not None:
            src_splines = model.noise_splines  # a plain copy again: calling the PyroModule would register it
            plain = NoiseSplines(K, src_splines.unnormalized_widths.shape[-1], src_splines.bound).to(device)
            plain.load_state_dict(src_splines.state_dict())
            splines = tuple(p.detach() for p in plain())
    bound = model.noise_splines.bound if model.noise_splines is not None else 3.0
    bs = min(batch_size, N)

    def concept_log_prob(zi: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``[B, K]`` log-densities of the concepts given their mechanisms' outputs."""
        out = []
        for i in range(K):
            root = not bool(parents[:, i].any())  # the model's noise shape: a spline for roots only
            spline = None if splines is None or not root else tuple(p[i] for p in splines)
            base_fn = dist.Normal(torch.zeros_like(g[:, i]), 1.0)
            fn = dist.TransformedDistribution(base_fn, [AdditiveNoise(g[:, i], s[i], spline, bound)])
            out.append(fn.log_prob(zi[:, i]))
        return torch.stack(out, -1)

    def prior_dist():
        b = torch.full((E,), float(prior_scale), device=device)
        fn = dist.Laplace(torch.zeros_like(b), b) if prior == "laplace" else dist.Normal(torch.zeros_like(b), b)
        return fn.to_event(1)

    def graph_model():
        a = pyro.sample("A", prior_dist())  # [E]
        A = base.index_put((rows, cols), a)  # [K, K]
        with pyro.plate("data", N, subsample_size=bs) as idx:
            zi = z0[idx]  # [B, K]
            g = mech(zi, A)  # [B, K]: g_i(A[:, i] o z) for every concept i
            log_p = (concept_log_prob(zi, g) * mask[idx]).sum(-1)  # [B]
            pyro.factor("concepts", log_p)

    loc = point.clone().requires_grad_(True)
    raw = torch.full((E,), math.log(math.expm1(init_scale)), device=device, requires_grad=True)

    def graph_guide():
        pyro.sample("A", dist.Normal(loc, F.softplus(raw) + 1e-5).to_event(1))

    optim = torch.optim.Adam([loc, raw], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda t: 1.0 - 0.9 * t / num_steps)
    elbo = pyro.infer.Trace_ELBO(num_particles=num_particles)
    losses: list[float] = []
    show = progress if progress is not None else num_steps >= 1000
    with analysis.seeded(seed, device), tqdm(total=num_steps, disable=not show, desc="graph posterior",
                                             unit="step", dynamic_ncols=True) as bar:
        for step in range(num_steps):
            loss = elbo.differentiable_loss(graph_model, graph_guide)
            loc.grad, raw.grad = torch.autograd.grad(loss, [loc, raw])
            optim.step()
            sched.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"the graph posterior's ELBO became non-finite at step {step}")
            bar.update(1)
            if step % 100 == 99:
                bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4g}")
    return GraphPosterior(
        concepts=tuple(model.concepts),
        edges=[(model.concepts[j], model.concepts[i]) for j, i in pairs],
        loc=loc.detach().cpu().clone(),
        scale=(F.softplus(raw.detach()) + 1e-5).cpu(),
        point=point.cpu(),
        prior=prior,
        prior_scale=float(prior_scale),
        noise_scale=s.detach().cpu(),
        losses=losses,
    )
