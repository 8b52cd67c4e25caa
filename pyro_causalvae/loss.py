"""The DAG-penalised CausalVAE objective, as named terms::

    loss = recon + kl_weight * kl + label_weight * labels                      (-ELBO, per image)
           + encoder_weight * encoder + label_loss_weight * l_u
           + augmented-Lagrangian(h(A)) + sparsity * |A|_1 + path * sum(|A| @ |A|)
           + order_prior * |A o against_order|_1

- ``recon``: ``-log p(x | c, style)`` per image (pixels summed: a per-image log-likelihood, not the
  official code's mean over rows).
- ``kl``: the KL part of the ELBO: ``KL(q(style | x) || N(0, I))`` (analytic) plus, for every concept
  value the guide infers (unlabelled entries), ``log q(c_i | x) - log p(c_i | parents)`` (one sample).
- ``labels``: ``-log p(u_i | parents)`` summed over the labelled entries: the structural equations' density
  of the labels, which is what fits the mechanisms, ``A`` and the noise to the labelled concepts.
- ``encoder``: ``-log q(u_i | x)`` over the labelled entries: the guide's reading of the concepts trained
  on the labels (the auxiliary term of semi-supervised VAEs, Kingma et al. 2014; without it a fully
  labelled dataset would never train the concept encoder, since observed concepts need no guide).
- ``label_loss`` ``l_u`` (the paper's): the labels reconstructed through the *whole* support of ``A``,
  ``mean_n sum_i (u_i - g_i(A[:, i] o u))^2`` over the fully labelled images. The structural equations only
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

The ELBO part is computed from Pyro traces (guide traced, model replayed), so ``recon + kl + labels``
equals ``pyro.infer.TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, u) / N`` (the
style's KL analytic, the concepts' by one sample) with the same random draws (tested).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask

from .model import STYLE, CausalVAE, unobserved_site

TERMS = ("recon", "kl", "labels", "encoder", "cycle", "label_loss", "dag", "sparsity", "path", "order_prior")


@dataclass
class LossWeights:
    """Named weights of the loss terms (see the module docstring).

    :param kl: weight of the KL term (1 = the ELBO; a beta-VAE otherwise).
    :param labels: weight of the labels' log-density under the structural equations (1 = the ELBO).
    :param encoder: weight of the auxiliary ``-log q(u | x)`` that trains the guide's concept readings on
        the labels. The default 10 lets the concept readings train as fast as the image terms train the
        shared encoder layers (the pixel log-likelihood sums ``C * H * W`` terms per image, the readings
        ``K``).
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
    cycle: float = 0.0
    label_loss: float = 1.0
    sparsity: float = 0.002
    path: float = 0.02
    order_prior: float = 1.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0) or v == float("inf"):
                raise ValueError(f"loss weight {f.name} must be a finite number >= 0, got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _site_log_prob(site: dict) -> torch.Tensor:
    """A site's log-density with its mask and scale applied, summed (a scalar)."""
    lp = site["fn"].log_prob(site["value"])
    return scale_and_mask(lp, site["scale"], site["mask"]).sum()


def cycle_term(model: CausalVAE, x: torch.Tensor, u: torch.Tensor | None, post, scale: float = 0.05) -> torch.Tensor:
    """Counterfactual consistency: each image under a random ``do(c_k = v)`` (``k`` and ``v`` uniform over
    the concepts and ``[-1, 1]``), decoded, is read back by the encoder (its weights held), which must find
    the counterfactual concepts: ``sum_i (read_i - c'_i)^2 / (2 scale^2)`` per image. The decoder then has
    to draw each concept so that its own reading follows it (Ribeiro et al., ICML 2023 train counterfactuals
    with such anti-causal predictors)."""
    N, K = x.shape[0], len(model.concepts)
    c = post.loc.detach() if u is None else torch.where(torch.isnan(u), post.loc.detach(), u)
    k = torch.randint(0, K, (N,), device=x.device)
    v = torch.rand(N, device=x.device) * 2 - 1
    target = model.counterfactual_concepts(c, k, v).detach()
    x_cf = model.decode(target, post.style_loc.detach() if model.style_dim else None)
    frozen = {n: p.detach() for n, p in model.encoder.named_parameters()}
    out = torch.func.functional_call(model.encoder, frozen, (x_cf,)).reshape(N, 2, -1)[:, 0, :K].float()
    return ((out - target) ** 2).sum(-1).mean() / (2 * scale**2)


def loss_terms(model: CausalVAE, x: torch.Tensor, u: torch.Tensor | None,
               hide: torch.Tensor | None = None, cycle: bool = False) -> dict[str, torch.Tensor]:
    """Each loss term as a scalar tensor (per image where it applies), unweighted.

    :param x: images ``[N, C, H, W]`` in [0, 1].
    :param u: normalised labels ``[N, K]`` (NaN: missing) or ``None``.
    :param hide: ``[N]`` booleans or ``None``: images whose labels the ELBO treats as missing (their
        concepts are then inferred by the guide, so the encoder also learns from the reconstruction
        path), while the ``encoder`` term still reads them (label dropout, see
        :func:`~pyro_causalvae.train.fit`).
    """
    N = x.shape[0]
    seen = u if u is None or hide is None else u.masked_fill(hide[:, None], float("nan"))
    post = model.posterior(x)  # the encoder runs once: the guide's sites and the encoder term share it
    guide_tr = poutine.trace(model.guide_posterior).get_trace(post, seen)
    model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x, seen)
    recon = -model_tr.nodes["x"]["fn"].log_prob(x).sum() / N
    kl = x.new_zeros(())
    if model.style_dim:
        q, p = guide_tr.nodes[STYLE]["fn"], model_tr.nodes[STYLE]["fn"]
        kl = kl + torch.distributions.kl_divergence(q, p).sum()
    labels = x.new_zeros(())
    for c in model.concepts:
        site = model_tr.nodes[c]
        if c in guide_tr.nodes:  # latent in this batch
            kl = kl + _site_log_prob(guide_tr.nodes[c]) - _site_log_prob(site)
            continue
        labels = labels - _site_log_prob(site)  # observed (masked to the labelled entries)
        if unobserved_site(c) in guide_tr.nodes:
            name = unobserved_site(c)
            kl = kl + _site_log_prob(guide_tr.nodes[name]) - _site_log_prob(model_tr.nodes[name])
    if u is not None:
        observed = ~torch.isnan(u)
        reading = torch.distributions.Normal(post.loc, post.scale).log_prob(u.nan_to_num(0.0))
        encoder = -(reading * observed).sum() / N
    else:
        encoder = x.new_zeros(())
    if model.spec.learned:
        A = model.adjacency
        if u is not None:
            complete = ~torch.isnan(u).any(-1)  # [N] fully labelled images
            uc = u.nan_to_num(0.0)
            label_loss = (((uc - model.mechanisms(uc, A)) ** 2).sum(-1) * complete).sum() / N
        else:
            label_loss = x.new_zeros(())
        dag = model.al.penalty(model.acyclicity())
        Aa = A.abs()
        sparsity = (Aa * (1 - model.required_edges)).sum()
        path = (Aa @ Aa).sum()
        order_prior = (Aa * model.order_penalty).sum()
    else:
        label_loss = dag = sparsity = path = order_prior = x.new_zeros(())
    cyc = cycle_term(model, x, u, post) if cycle else x.new_zeros(())
    return dict(recon=recon, kl=kl / N, labels=labels / N, encoder=encoder, cycle=cyc, label_loss=label_loss, dag=dag,
                sparsity=sparsity, path=path, order_prior=order_prior)


def total_loss(terms: dict[str, torch.Tensor], w: LossWeights) -> torch.Tensor:
    """Weighted sum of :func:`loss_terms`."""
    return (
        terms["recon"]
        + w.kl * terms["kl"]
        + w.labels * terms["labels"]
        + w.encoder * terms["encoder"]
        + w.cycle * terms["cycle"]
        + w.label_loss * terms["label_loss"]
        + terms["dag"]
        + w.sparsity * terms["sparsity"]
        + w.path * terms["path"]
        + w.order_prior * terms["order_prior"]
    )


def pyro_elbo_loss(model: CausalVAE, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """The plain negative ELBO per image from Pyro's ``TraceMeanField_ELBO`` (for checks)."""
    return pyro.infer.TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, u) / x.shape[0]
