"""The DAG-penalised CausalVAE objective, as named terms::

    loss = recon + kl_weight * kl + label_weight * labels                      (-ELBO, per image)
           + encoder_weight * encoder + rereading_weight * rereading + label_loss_weight * l_u
           + augmented-Lagrangian(h(A)) + sparsity * |A|_1 + path * sum(|A| @ |A|)
           + order_prior * |A o against_order|_1

- ``recon``: ``-log p(x | c, style)`` per image (pixels summed: a per-image log-likelihood, not the
  official code's mean over rows).
- ``kl``: the KL part of the ELBO: ``KL(q(style | x) || N(0, I))`` (analytic) plus, for every concept
  value the guide infers (unlabelled entries), ``log q(c_i | x) - log p(c_i | parents)`` (one sample).
- ``labels``: ``-log p(u_i | parents)`` summed over the labelled entries: the structural equations' density
  of the labels, which is what fits the mechanisms, ``A`` and the noise to the labelled concepts.
- ``encoder``: ``-log q(u_i | x)`` over the labelled entries, per *labelled* image: the guide's reading
  of the concepts trained on the labels (the auxiliary term of semi-supervised VAEs, Kingma et al. 2014;
  without it a fully labelled dataset would never train the concept encoder, since observed concepts need
  no guide). A mean over the labelled images of the batch, not over all of them: with 10 % of the images
  labelled, a mean over the batch would weaken the supervision tenfold against the image terms. With
  ``encoder_beta`` > 0 each entry is weighted by ``stop_grad(scale) ** (2 * encoder_beta)`` (beta-NLL,
  Seitzer et al., ICLR 2022): with plain ``-log q`` the gradient on a reading's mean is
  ``error / scale^2``, so a concept the encoder has not learnt yet (a large scale) gets far less of the
  shared layers' gradient than those it reads already. Measured on Flow with 10 % labels (docs/results.md):
  0.5 rescued a ball_size reading that stayed unlearnt, but read the other concepts 2-4x worse after 6
  epochs, so the default is 0 (``fit``'s ``reading_warmup`` is what prevents that failure).
- ``rereading`` (off by default): a quarter of the batch decoded under a random single-concept intervention
  and read back by the encoder, the decoder held (:func:`rereading_term`): an encoder trained on
  observational labels alone reads an effect (Pendulum's shadow) off its causes' pixels; the decoder's
  counterfactuals show effects that do not follow their causes.
- ``label_loss`` ``l_u`` (the paper's): the labels reconstructed through the *whole* support of ``A``,
  ``mean_n sum_i (u_i - g_i(A[:, i] o u))^2``, a mean over the fully labelled images of the batch (so its
  balance against the per-step penalties on ``A`` does not depend on the labelled share). The structural equations only
  read the edges that agree with the current causal order; this term lets every entry of ``A`` (those
  against the order too) follow the labels, the augmented Lagrangian keeps them acyclic, and the causal
  order is updated from ``A`` during training.
- ``dag``: ``lam * h(A) + rho / 2 * h(A)^2`` with ``h`` the DAG-GNN acyclicity (learned graphs only).
- ``sparsity``: ``sum |A[j, i]|`` over the non-required entries (learned graphs only).
- ``path``: ``sum(|A| @ |A|)``, the weight of two-step paths (learned graphs only).
- ``order_prior``: ``sum |A[j, i]|`` over the entries against the causal order found from the labels.

The paper's ``l_m`` (mask-layer consistency of the posterior concepts) is part of the ``kl`` term here:
with the structural equation as each concept's density, the consistency of inferred concepts with their
mechanisms is their log-density.

The ELBO part is computed as tensors, every concept at once (the per-concept sites of the Pyro program
cost a Python loop; the loss does not need them): ``recon + kl + labels`` equals
``pyro.infer.TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, u) / N`` (the style's
KL analytic, the concepts' by one sample) with the same random draws, values and gradients (tested).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import pyro
import torch

from .model import CausalVAE

TERMS = ("recon", "kl", "labels", "encoder", "rereading", "cycle", "minimality", "label_loss", "dag", "sparsity", "path", "order_prior")


@dataclass
class LossWeights:
    """Named weights of the loss terms (see the module docstring).

    :param kl: weight of the KL term (1 = the ELBO; a beta-VAE otherwise).
    :param labels: weight of the labels' log-density under the structural equations (1 = the ELBO).
    :param encoder: weight of the auxiliary ``-log q(u | x)`` that trains the guide's concept readings on
        the labels. The default 10 lets the concept readings train as fast as the image terms train the
        shared encoder layers (the pixel log-likelihood sums ``C * H * W`` terms per image, the readings
        ``K``).
    :param encoder_beta: ``beta`` of beta-NLL for the ``encoder`` term, in ``[0, 1]``: each reading's
        ``-log q`` is weighted by ``stop_grad(scale) ** (2 * beta)``. 0 is the plain ``-log q``; 1 gives
        every concept's mean the gradient of a squared error; 0.5 (Seitzer et al.'s choice) is between.
        Default 0 (measured, see the module docstring).
    :param rereading: weight of :func:`rereading_term`: the encoder also learns to read the decoder's own
        counterfactual images (the decoder held), from the end of ``fit``'s readings' warm-up on; 0: off.
        Default 0 (off). 100 (the ``encoder`` term's weight) lifts the interventional MIC of Pendulum's and
        Flow's effects from 12-56 to 28-96 but costs about 10 % of a step, worsens Pendulum's composition
        and the semi-supervised runs, so it is opt-in (measured: docs/method.md, "Counterfactual images").
    :param cycle: weight of :func:`cycle_term` (counterfactual images read back by the encoder; 0: off).
    :param minimality: weight of :func:`minimality_term` (what a counterfactual must not change, read back by
        the encoder; 0: off).
    :param label_loss: ``beta`` of the paper, weight of ``l_u`` (learned graphs only).
    :param sparsity: weight of the L1 penalty on ``A``.
    :param path: weight of ``sum(|A| @ |A|)``, a penalty on two-step paths (learned graphs only): among
        parent sets that predict a deterministic child equally well, it prefers the one with the fewest
        ancestral relations.
    :param order_prior: weight of the L1 penalty on the entries of ``A`` against the causal order found
        from the labels (:mod:`pyro_causalvae.discovery`); 0 when no order was searched.
    """

    kl: float = 1.0
    labels: float = 1.0
    encoder: float = 100.0
    encoder_beta: float = 0.0
    rereading: float = 0.0
    cycle: float = 0.0
    minimality: float = 0.0
    label_loss: float = 1.0
    sparsity: float = 0.002
    path: float = 0.02
    order_prior: float = 1.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0) or v == float("inf"):
                raise ValueError(f"loss weight {f.name} must be a finite number >= 0, got {v!r}")
        if self.encoder_beta > 1:
            raise ValueError(f"loss weight encoder_beta must be in [0, 1], got {self.encoder_beta!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _read_back_counterfactuals(model: CausalVAE, u: torch.Tensor | None, post, n: int, k: torch.Tensor | None = None,
                               v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` images of the batch under ``do(c_k = v)`` (``k`` and ``v`` uniform over the concepts and
    ``[-1, 1]`` unless given), decoded and read back by the encoder with its weights held.

    :returns: the factual concepts ``c`` ``[n, K]`` (labels where known, else the encoder's means), ``k``
        ``[n]``, the counterfactual concepts ``[n, K]`` and the encoder's readings of the decoded images
        ``[n, K]``; gradients reach the decoder only.
    """
    K = len(model.concepts)
    dev = post.loc.device
    c = post.loc[:n].detach() if u is None else torch.where(torch.isnan(u[:n]), post.loc[:n].detach(), u[:n])
    k = torch.randint(0, K, (n,), device=dev) if k is None else k
    v = torch.rand(n, device=dev) * 2 - 1 if v is None else v
    target = model.counterfactual_concepts(c, k, v).detach()
    x_cf = model.decode(target, post.style_loc[:n].detach() if model.style_dim else None)
    frozen = {name: p.detach() for name, p in model.encoder.named_parameters()}
    read = torch.func.functional_call(model.encoder, frozen, (x_cf,)).reshape(n, 2, -1)[:, 0, :K].float()
    return c, k, target, read


def rereading_term(model: CausalVAE, u: torch.Tensor | None, post, share: float = 0.25,
                   scale: float = 0.05) -> torch.Tensor:
    """The encoder reads the decoder's counterfactual images: the first ``share`` of the batch (``n`` images)
    under ``do(c_k = v)``, ``k`` uniform over the concepts and ``v`` the value of concept ``k`` in another
    image of the batch (so within the data's range, and independent of the image's other concepts), is
    decoded with every weight held, and the encoder's reading of it must find the counterfactual concepts:
    ``sum_i (read_i - c'_i)^2 / (2 scale^2)`` per image.

    The labels tie a sink to its causes in every training image (Pendulum's shadow is a function of the two
    angles), so an encoder trained on them alone reads the shadow off the pendulum and the sun. The decoder
    of one layer per object draws the shadow from the shadow's concepts only, so its counterfactuals show
    shadows that do not follow the angles: reading them back teaches the encoder to read each concept from
    its own pixels. Gradients reach the encoder's means only (not its scales: the readings' uncertainty is
    learnt on real images; scored with a learnt scale, the term made training spike, see docs/method.md).

    :param u: normalised labels ``[N, K]`` (NaN: missing) or ``None``.
    :param post: the encoder's :class:`~pyro_causalvae.model.Posterior` of the batch (``loc`` ``[N, K]``).
    :param share: the share of the batch decoded under an intervention (``n = round(share * N)``, at least 1).
    :param scale: the reading's error scale, normalised units.
    :returns: a scalar, the mean over the ``n`` images.
    """
    N, K = post.loc.shape
    n = max(1, int(round(share * N)))
    with torch.no_grad():
        c = post.loc if u is None else torch.where(torch.isnan(u), post.loc, u)  # [N, K] factual concepts
        k = torch.randint(0, K, (n,), device=c.device)  # [n] the intervened concept
        other = torch.randint(0, N, (n,), device=c.device)  # [n] the image its new value comes from
        target = model.counterfactual_concepts(c[:n], k, c[other, k])  # [n, K]
        x_cf = model.decode(target, post.style_loc[:n] if model.style_dim else None)  # [n, C, H, W]
    read = model.posterior(x_cf).loc  # [n, K]
    return ((read - target) ** 2).sum(-1).mean() / (2 * scale**2)


def cycle_term(model: CausalVAE, x: torch.Tensor, u: torch.Tensor | None, post, scale: float = 0.05) -> torch.Tensor:
    """Counterfactual consistency: each image under a random ``do(c_k = v)`` (``k`` and ``v`` uniform over
    the concepts and ``[-1, 1]``), decoded, is read back by the encoder (its weights held), which must find
    the counterfactual concepts: ``sum_i (read_i - c'_i)^2 / (2 scale^2)`` per image. The decoder then has
    to draw each concept so that its own reading follows it (Ribeiro et al., ICML 2023 train counterfactuals
    with such anti-causal predictors)."""
    _, _, target, read = _read_back_counterfactuals(model, u, post, x.shape[0])
    return ((read - target) ** 2).sum(-1).mean() / (2 * scale**2)


def minimality_term(model: CausalVAE, x: torch.Tensor, u: torch.Tensor | None, post, scale: float = 0.05,
                    share: float = 0.25, k: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
    """Counterfactual minimality: under a random ``do(c_k = v)`` (``k`` and ``v`` uniform over the concepts and
    ``[-1, 1]``), the decoded image must keep every concept that is not ``k`` or one of its descendants, as
    read by the encoder (its weights held): ``sum_i (read_i - c_i)^2 / (2 scale^2)`` over those concepts, per
    image, on the first ``share`` of the batch (``n`` images; ``k`` ``[n]`` and ``v`` ``[n]`` may be given).

    Unlike :func:`cycle_term` it asks nothing of the intervened concept and its descendants, whose readings
    an encoder trained on observational images may take from their causes' pixels; it asks that a
    decoder of one layer per object does not draw another object from the intervened concepts (a jet's layer
    drawing the water whose height the jet's concepts imply).
    """
    n = max(1, int(round(share * x.shape[0])))
    K = len(model.concepts)
    c, k, _, read = _read_back_counterfactuals(model, u, post, n, k, v)
    kept = ~(model.descendants_mask().to(x.device)[k] | torch.nn.functional.one_hot(k, K).bool())  # [n, K]
    return (((read - c) ** 2) * kept).sum(-1).mean() / (2 * scale**2)


def guide_draws(model: CausalVAE, post, seen: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One draw of the guide's latent sites as tensors: the concepts that ``seen`` leaves unlabelled, in the
    guide's site order, then the style (so the same random numbers as a trace of the guide).

    :param post: the encoder's :class:`~pyro_causalvae.model.Posterior`.
    :param seen: normalised labels ``[N, K]`` (NaN: missing) or ``None``.
    :returns: ``z`` ``[N, K]`` (drawn where a concept is not labelled for every image, 0 elsewhere) and
        the style ``[N, S]`` (``None`` without style).
    """
    N, K = post.loc.shape
    states = model._label_states(seen)  # one host read, as the guide's own
    draws = [post.loc.new_zeros(N)] * K
    for i in model.order:
        if states[i] != "observed":
            draws[i] = torch.distributions.Normal(post.loc[:, i], post.scale[:, i]).rsample()
    style = torch.distributions.Normal(post.style_loc, post.style_scale).rsample() if model.style_dim else None
    return torch.stack(draws, -1), style


def normal_nll(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``-sum log Normal(x | loc, scale)`` over every entry, as a scalar: the value and gradients of
    ``-dist.Normal(loc, scale).log_prob(x).sum()`` with fewer passes over the images: one residual, whose
    squared norm is taken per entry of the scale (per channel), and no support check. At 96x96 on one
    core the log-density's elementwise passes were a tenth of a training step.

    :param x: ``[N, ...]`` observations (images ``[N, C, H, W]``).
    :param loc: means, the shape of ``x``.
    :param scale: a positive float, or a tensor that broadcasts to ``x`` (``[C, 1, 1]`` per channel).
    """
    d = loc - x  # (not x - loc: the gradient then reaches loc without a negation)
    if not isinstance(scale, torch.Tensor):
        quad = torch.linalg.vector_norm(d).square() / scale**2
        log_scale = x.numel() * math.log(scale)
    else:
        aligned = (1,) * (x.dim() - scale.dim()) + tuple(scale.shape)  # the scale's shape against x's dims
        dims = tuple(i for i, n in enumerate(aligned) if n == 1)  # the dims each entry of the scale covers
        s = scale.reshape(aligned)
        if dims:
            quad = (torch.linalg.vector_norm(d, dim=dims, keepdim=True).square() / s.square()).sum()
        else:
            quad = (d / s).square().sum()
        # each entry of the scale is repeated numel(x) / numel(scale) times by broadcasting
        log_scale = torch.log(scale).sum() * (x.numel() / scale.numel())
    return 0.5 * quad + log_scale + 0.5 * x.numel() * math.log(2 * math.pi)


def loss_terms(model: CausalVAE, x: torch.Tensor, u: torch.Tensor | None,
               hide: torch.Tensor | None = None, cycle: bool = False, minimality: bool = False,
               encoder_beta: float = 0.0, detach_draws: bool = False,
               rereading: bool = False) -> dict[str, torch.Tensor]:
    """Each loss term as a scalar tensor (per image where it applies), unweighted.

    The ELBO part is computed as tensors, every concept at once: the guide's draws (in the guide's
    site order, so the same random numbers as a trace of :meth:`~pyro_causalvae.model.CausalVAE.guide`),
    the concept densities by :meth:`~pyro_causalvae.model.CausalVAE.concept_log_prob` (one batched call
    of the mechanisms, not ``K`` sites), the style's KL analytic. ``recon + kl + labels`` equals
    :func:`pyro_elbo_loss` with the same draws (tested, values and gradients).

    :param x: images ``[N, C, H, W]`` in [0, 1].
    :param u: normalised labels ``[N, K]`` (NaN: missing) or ``None``.
    :param hide: ``[N]`` booleans or ``None``: images whose labels the ELBO treats as missing (their
        concepts are then inferred by the guide, so the encoder also learns from the reconstruction
        path), while the ``encoder`` term still reads them (label dropout, see
        :func:`~pyro_causalvae.train.fit`).
    :param encoder_beta: beta-NLL's ``beta`` for the ``encoder`` term (:class:`LossWeights`; 0: ``-log q``).
    :param detach_draws: the decoder reads the guide's draws of the inferred concepts detached: the
        reconstruction then trains the decoder on them but not the encoder's readings (``fit``'s
        ``reading_warmup``). The values and the other terms are unchanged.
    :param rereading: compute :func:`rereading_term` (else 0).
    """
    N = x.shape[0]
    seen = u if u is None or hide is None else u.masked_fill(hide[:, None], float("nan"))
    post = model.posterior(x)  # the encoder runs once: the guide's draws and the encoder term share it
    z, style = guide_draws(model, post, seen)
    missing = torch.ones_like(z, dtype=torch.bool) if seen is None else torch.isnan(seen)
    c = z if seen is None else torch.where(missing, z, seen.nan_to_num(0.0))
    # Labelled rows whose labels are hidden (label dropout) are there to train the encoder through the
    # decoder. Their concepts are the guide's noisy draws, and fitting the structural equations to those
    # where the labels are known flattens the mechanisms (errors in variables; measured on Flow: the prior's
    # water_flow error 0.046 -> 0.024, seeing 5 -> 7 of 9 rows, docs/results.md). So these rows pass no
    # gradient to the equations, which learn from the labels of the other rows; unlabelled images still
    # train them.
    held = None if u is None or hide is None else hide & ~torch.isnan(u).all(-1)
    log_p = model.concept_log_prob(c, held=held)  # [N, K]
    log_q = torch.distributions.Normal(post.loc, post.scale).log_prob(z)
    kl = ((log_q - log_p) * missing).sum()
    labels = -(log_p * ~missing).sum()
    if model.style_dim:
        q = torch.distributions.Normal(post.style_loc, post.style_scale)
        kl = kl + torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum()
    loc = model.decode(torch.where(missing, z.detach(), c) if detach_draws else c, style)
    recon = normal_nll(x, loc, model.pixel_scales()) / N
    if u is not None:
        observed = ~torch.isnan(u)
        reading = torch.distributions.Normal(post.loc, post.scale).log_prob(u.nan_to_num(0.0))  # [N, K]
        if encoder_beta:
            reading = reading * post.scale.detach() ** (2 * encoder_beta)
        encoder = -(reading * observed).sum() / observed.any(-1).sum().clamp_min(1)
    else:
        encoder = x.new_zeros(())
    if model.spec.learned:
        A = model.adjacency
        if u is not None:
            complete = ~torch.isnan(u).any(-1)  # [N] fully labelled images
            uc = u.nan_to_num(0.0)
            label_loss = (((uc - model.mechanisms(uc, A)) ** 2).sum(-1) * complete).sum() / complete.sum().clamp_min(1)
        else:
            label_loss = x.new_zeros(())
        dag = model.al.penalty(model.acyclicity())
        Aa = A.abs()
        sparsity = (Aa * (1 - model.required_edges)).sum()
        path = (Aa @ Aa).sum()
        order_prior = (Aa * model.order_penalty).sum()
    else:
        label_loss = dag = sparsity = path = order_prior = x.new_zeros(())
    reread = rereading_term(model, u, post) if rereading else x.new_zeros(())
    cyc = cycle_term(model, x, u, post) if cycle else x.new_zeros(())
    mini = minimality_term(model, x, u, post) if minimality else x.new_zeros(())
    return dict(recon=recon, kl=kl / N, labels=labels / N, encoder=encoder, rereading=reread, cycle=cyc, minimality=mini,
                label_loss=label_loss, dag=dag,
                sparsity=sparsity, path=path, order_prior=order_prior)


def total_loss(terms: dict[str, torch.Tensor], w: LossWeights) -> torch.Tensor:
    """Weighted sum of :func:`loss_terms`."""
    return (
        terms["recon"]
        + w.kl * terms["kl"]
        + w.labels * terms["labels"]
        + w.encoder * terms["encoder"]
        + w.rereading * terms["rereading"]
        + w.cycle * terms["cycle"]
        + w.minimality * terms["minimality"]
        + w.label_loss * terms["label_loss"]
        + terms["dag"]
        + w.sparsity * terms["sparsity"]
        + w.path * terms["path"]
        + w.order_prior * terms["order_prior"]
    )


def pyro_elbo_loss(model: CausalVAE, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """The plain negative ELBO per image from Pyro's ``TraceMeanField_ELBO`` (for checks)."""
    return pyro.infer.TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, u) / x.shape[0]
