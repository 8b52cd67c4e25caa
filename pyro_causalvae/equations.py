"""The structural equations of the concepts: mechanisms ``g_i`` and the exogenous-noise transform.

Each concept ``i`` is a scalar (normalised label units) with an additive-noise structural equation

.. math::

    c_i = g_i(A_{:, i} \\circ c) + s_i \\, f_i(\\epsilon_i), \\qquad \\epsilon_i \\sim \\mathcal N(0, 1),

where ``A`` is the weighted adjacency (``A[j, i]``: edge ``j -> i``), ``g_i`` a small network (or a linear
map), ``s_i > 0`` the noise scale and ``f_i`` a monotone rational-quadratic spline (Durkan et al., "Neural
Spline Flows", NeurIPS 2019; Pyro's :class:`~pyro.distributions.transforms.Spline`) that lets a root's
distribution take any shape (Pendulum's angles are uniform), or the identity for Gaussian noise
(the model uses splines for roots only: see :meth:`~pyro_causalvae.model.CausalVAE.concept_distribution`). The distribution of ``c_i`` given its parents is
``TransformedDistribution(Normal(0, 1), AdditiveNoise(g_i, s_i, f_i))``: one transform, so that
:class:`~pyro.infer.reparam.TransformReparam` exposes ``eps_i`` as ``"<c>_base"`` and ChiRho's
counterfactual handlers abduct it with no adaptor (convention of ChiRho and DeepSCM).

Parameters are computed eagerly by :meth:`NoiseSplines.forward` (inside the model's Pyro context), so
that every one of them is registered in Pyro's param store and trained by plain ``SVI``.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.transforms.spline import ConditionedSpline
from torch import nn
from torch.distributions import constraints
from torch.distributions.transforms import Transform
from torch.nn import functional as F

MECHANISMS = ("mlp", "linear")
NOISES = ("spline", "normal", "spline-all")


class Mechanisms(nn.Module):
    """The mechanisms ``g_i(A[:, i] o c)`` of all ``n`` concepts, batched over concepts.

    ``"mlp"``: each parent value ``c_j`` enters the first layer of ``g_i`` through the weight vector
    ``A[j, i] * V[j, i, :]`` with ``||V[j, i, :]|| = 1`` over the hidden units, so that ``|A[j, i]|`` alone
    measures the strength of the edge ``j -> i`` (no scale can hide in the network); two more layers map
    to the scalar output. With every parent weight zero, ``g_i`` is a learned constant (a root's location).
    ``"linear"``: ``g_i = sum_j A[j, i] c_j + b_i`` (the paper's linear causal layer).

    :param n: number of concepts.
    :param hidden: hidden width of each MLP mechanism.
    :param kind: ``"mlp"`` or ``"linear"``.
    """

    def __init__(self, n: int, hidden: int = 32, kind: str = "mlp"):
        super().__init__()
        if kind not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {kind!r}")
        self.n, self.hidden, self.kind = n, hidden, kind
        if kind == "linear":
            self.bias = nn.Parameter(torch.zeros(n))
            return
        self.V = nn.Parameter(torch.randn(n, n, hidden))
        self.b1 = nn.Parameter(torch.randn(n, hidden) * 0.5)
        self.W2 = nn.Parameter(torch.randn(n, hidden, hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(n, hidden))
        self.W3 = nn.Parameter(torch.randn(n, hidden) / math.sqrt(hidden))
        self.b3 = nn.Parameter(torch.zeros(n))

    def forward(self, c: torch.Tensor, A: torch.Tensor, i: int | None = None, detach: bool = False) -> torch.Tensor:
        """Mechanism outputs.

        :param c: concept values ``[..., n]`` (a non-parent's entry is ignored where ``A`` is 0).
        :param A: edge weights ``[n, n]`` (already masked to the graph).
        :param i: compute only concept ``i`` (returns ``[...]``), or all (``[..., n]``).
        :param detach: the same values with the networks' parameters held (gradient to ``c`` and ``A``
            only).
        """
        if self.kind == "linear":
            bias = self.bias.detach() if detach else self.bias
            if i is None:
                return c @ A + bias
            return c @ A[:, i] + bias[i]
        V, b1, W2, b2, W3, b3 = (p.detach() if detach else p for p in (self.V, self.b1, self.W2, self.b2, self.W3, self.b3))
        V = V / V.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # [j, i, H], unit rows
        if i is None:
            W1 = V * A[:, :, None]  # [j, i, H]
            h = F.silu(torch.einsum("...j,jih->...ih", c, W1) + b1)  # [..., i, H]
            h = F.silu(torch.einsum("...ih,ihk->...ik", h, W2) + b2)
            return (h * W3).sum(-1) + b3
        h = F.silu(c @ (V[:, i] * A[:, i, None]) + b1[i])  # [..., H]
        h = F.silu(h @ W2[i] + b2[i])
        return h @ W3[i] + b3[i]


class NoiseSplines(nn.Module):
    """The per-concept noise shapes ``f_i``: monotone rational-quadratic splines on ``[-bound, bound]``
    (identity outside), initialised to the identity (Gaussian noise).

    ``forward()`` returns the spline parameters ``(widths, heights, derivatives)`` of shapes ``[n, bins]``,
    ``[n, bins]``, ``[n, bins - 1]``, computed from the unconstrained parameters.

    :param n: number of concepts.
    :param bins: spline segments.
    :param bound: half-width of the spline's box.
    """

    def __init__(self, n: int, bins: int = 8, bound: float = 3.0):
        super().__init__()
        self.bound = float(bound)
        self.unnormalized_widths = nn.Parameter(torch.zeros(n, bins))
        self.unnormalized_heights = nn.Parameter(torch.zeros(n, bins))
        # softplus(log(e - 1)) = 1: unit slopes at the knots, with equal bins the identity
        self.unnormalized_derivatives = nn.Parameter(torch.full((n, bins - 1), math.log(math.e - 1)))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (F.softmax(self.unnormalized_widths, -1), F.softmax(self.unnormalized_heights, -1),
                F.softplus(self.unnormalized_derivatives))


class AdditiveNoise(Transform):
    """``eps -> loc + scale * f(eps)``: the additive-noise structural equation as one bijection.

    :param loc: ``g_i(parents)``, any shape (broadcast against ``eps``).
    :param scale: ``s_i > 0`` (a scalar tensor or broadcastable).
    :param spline: ``(widths [bins], heights [bins], derivatives [bins - 1])`` of ``f`` and its box
        ``bound``, or ``None`` for ``f = identity`` (Gaussian noise).
    """

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = +1

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor,
                 spline: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, bound: float = 3.0,
                 cache_size: int = 1):
        super().__init__(cache_size=cache_size)
        self.loc, self.scale, self.spline_params, self.bound = loc, scale, spline, bound
        self._spline = None
        if spline is not None:
            w, h, d = (p[None] for p in spline)  # input_dim 1
            self._spline = ConditionedSpline((w, h, d, None), bound=bound, order="quadratic")
        self._log_det = None

    def with_cache(self, cache_size: int = 1) -> "AdditiveNoise":
        if self._cache_size == cache_size:
            return self
        return AdditiveNoise(self.loc, self.scale, self.spline_params, self.bound, cache_size=cache_size)

    def _f(self, x: torch.Tensor, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if self._spline is None:
            return x, torch.zeros_like(x)
        y, log_det = self._spline.spline_op(x.unsqueeze(-1), inverse=inverse)
        return y.squeeze(-1), log_det.squeeze(-1)

    def _call(self, eps: torch.Tensor) -> torch.Tensor:
        f, log_df = self._f(eps)
        self._log_det = log_df + torch.log(self.scale)
        return self.loc + self.scale * f

    def _inverse(self, c: torch.Tensor) -> torch.Tensor:
        eps, log_dinv = self._f((c - self.loc) / self.scale, inverse=True)
        self._log_det = -log_dinv + torch.log(self.scale)
        return eps

    def log_abs_det_jacobian(self, eps: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        cached = self._cached_x_y if self._cache_size else (None, None)
        if self._log_det is None or eps is not cached[0] or c is not cached[1]:
            self._call(eps)
        return torch.broadcast_to(self._log_det, torch.broadcast_shapes(self._log_det.shape, eps.shape, c.shape))


def additive_noise_log_prob(c: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
                            spline: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                            shaped: list[int] | None = None, bound: float = 3.0) -> torch.Tensor:
    """``log p(c_i | parents)`` of every concept at once: the log-density of
    ``TransformedDistribution(Normal(0, 1), AdditiveNoise(loc_i, s_i, f_i))`` at ``c_i``, batched over the
    concepts (what each concept site's ``log_prob`` gives, in one call: the training loss uses it).

    :param c: concept values ``[..., K]``.
    :param loc: mechanism outputs ``g_i(parents)`` ``[..., K]``.
    :param scale: noise scales ``s`` ``[K]``.
    :param spline: ``(widths [K, bins], heights [K, bins], derivatives [K, bins - 1])`` of the noise shapes
        ``f_i``, or ``None`` (Gaussian noise for every concept).
    :param shaped: the indices of the concepts whose noise goes through their spline (the others:
        identity); default all, when ``spline`` is given. Only these columns enter the spline (its
        inverse has a square root whose gradient is infinite at some inputs: evaluated on a column that
        is then discarded, it still turns the gradient into NaN).
    :param bound: half-width of the splines' box.
    :returns: ``[..., K]`` log-densities.
    """
    z = (c - loc) / scale  # f_i(eps_i)
    log_det = -torch.log(scale).expand_as(z)
    if spline is not None:
        cols = list(range(z.shape[-1])) if shaped is None else list(shaped)
        if cols:
            w, h, d = (p[cols] for p in spline)  # one spline per shaped concept: input_dim len(cols)
            eps, log_dinv = ConditionedSpline((w, h, d, None), bound=bound, order="quadratic").spline_op(
                z[..., cols], inverse=True)
            idx = torch.tensor(cols, device=z.device)
            z = z.index_copy(-1, idx, eps)
            log_det = log_det.index_copy(-1, idx, log_det[..., cols] + log_dinv)
    return -0.5 * z * z - 0.5 * math.log(2 * math.pi) + log_det
