"""The DAG-penalised CausalVAE objective, as named terms::

    loss = recon + kl_weight * kl + label_weight * labels                      (-ELBO, per image)
           + augmented-Lagrangian(h(A)) + label_loss_weight * l_u + mask_loss_weight * l_m
           + sparsity * |A|_1 + path * sum(|A| @ |A|) + order_prior * |A o against_order|_1

- ``recon``: ``-log p(x | z)`` per image (pixels summed: a per-image log-likelihood, not the official
  code's mean over rows).
- ``kl``: ``KL(q(eps_i | x) || N(0, I))`` summed over concepts (analytic), per image.
- ``labels``: ``-log p(u | z)`` per image (only where labels are given).
- ``dag``: ``lam * h(A) + rho / 2 * h(A)^2`` with ``h`` the DAG-GNN acyclicity (learned graphs only).
- ``label_loss`` ``l_u``: labels reconstructed through the graph, ``mean_n sum_i ||u_i - g_i(A[:, i] o u)||^2``.
- ``mask_loss`` ``l_m``: mask-layer consistency of the posterior concepts,
  ``mean_n sum_i ||z_i - g_i(A[:, i] o z)||^2 / d``.
- ``sparsity``: ``sum |A[j, i]|`` over the non-required entries (learned graphs only).
- ``path``: ``sum(|A| @ |A|)``, the weight of two-step paths (learned graphs only).
- ``order_prior``: ``sum |A[j, i]|`` over the entries against the causal order found from the labels.

The ELBO part is computed from Pyro traces (guide traced, model replayed), so ``recon + kl + labels``
equals ``pyro.infer.TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, u) / N``
(tested).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import pyro
import torch
from pyro import poutine

from .model import CausalVAE, noise_site

TERMS = ("recon", "kl", "labels", "dag", "label_loss", "mask_loss", "sparsity", "path", "order_prior")


@dataclass
class LossWeights:
    """Named weights of the loss terms (see the module docstring).

    :param kl: weight of the KL term (1 = the ELBO; a beta-VAE otherwise).
    :param labels: weight of the label log-likelihood. The default 100 balances the label readings
        (``K * d`` numbers) against the per-image pixel log-likelihood (``C * H * W`` terms, 27,648 at
        3x96x96): with weight 1 the encoder follows the pixels and the concept blocks align with their
        labels only slowly (measured on Pendulum: label NLL about 200 per image after 4 epochs with weight
        1, about -30 with weight 100; test correlation of block means with labels 0.999+).
    :param label_loss: ``beta`` of the paper, weight of ``l_u``.
    :param mask_loss: ``gamma`` of the paper, weight of ``l_m``.
    :param sparsity: weight of the L1 penalty on ``A``.
    :param path: weight of ``sum(|A| @ |A|)``, a penalty on two-step paths (learned graphs only): among
        parent sets that predict a deterministic child equally well, it prefers the one with the fewest
        ancestral relations.
    :param order_prior: weight of the L1 penalty on the entries of ``A`` against the causal order found
        from the labels (:mod:`pyro_causalvae.discovery`); 0 when no order was searched.
    """

    kl: float = 1.0
    labels: float = 100.0
    label_loss: float = 1.0
    mask_loss: float = 0.1
    sparsity: float = 0.002
    path: float = 0.02
    order_prior: float = 1.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not (v >= 0) or v == float("inf"):
                raise ValueError(f"loss weight {f.name} must be a finite number >= 0, got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def loss_terms(model: CausalVAE, x: torch.Tensor, u: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Each loss term as a scalar tensor (per image where it applies), unweighted.

    :param x: images ``[N, C, H, W]`` in [0, 1].
    :param u: normalised labels ``[N, K]`` or ``None``.
    """
    N = x.shape[0]
    guide_tr = poutine.trace(model.guide).get_trace(x, u)
    model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x, u)
    recon = -model_tr.nodes["x"]["fn"].log_prob(x).sum() / N
    kl = x.new_zeros(())
    for c in model.concepts:
        name = noise_site(c)
        kl = kl + torch.distributions.kl_divergence(guide_tr.nodes[name]["fn"], model_tr.nodes[name]["fn"]).sum()
    kl = kl / N
    if u is not None:
        site = model_tr.nodes["labels"]
        labels = -site["fn"].log_prob(site["value"]).sum() / N  # masked entries count 0
    else:
        labels = x.new_zeros(())
    A = model.adjacency
    d = model.concept_dim
    z = torch.stack([model_tr.nodes[c]["value"] for c in model.concepts], dim=-2)  # [N, K, d]
    mask_loss = ((z - model.mechanisms(z, model.scm_adjacency())) ** 2).sum((-1, -2)).mean() / d
    if u is not None:
        observed = ~torch.isnan(u)
        ub = u.nan_to_num(0.0)[..., None].expand(*u.shape, d)  # [N, K, d]
        resid = (ub - model.mechanisms(ub, A)) ** 2 * observed[..., None]
        label_loss = resid.sum((-1, -2)).mean() / d
    else:
        label_loss = x.new_zeros(())
    if model.spec.learned:
        h = model.acyclicity()
        dag = model.al.penalty(h)
        Aa = A.abs()
        sparsity = (Aa * (1 - model.required_edges)).sum()
        path = (Aa @ Aa).sum()
        order_prior = (Aa * model.order_penalty).sum()
    else:
        dag = sparsity = path = order_prior = x.new_zeros(())
    return dict(recon=recon, kl=kl, labels=labels, dag=dag, label_loss=label_loss, mask_loss=mask_loss,
                sparsity=sparsity, path=path, order_prior=order_prior)


def total_loss(terms: dict[str, torch.Tensor], w: LossWeights) -> torch.Tensor:
    """Weighted sum of :func:`loss_terms`."""
    return (
        terms["recon"]
        + w.kl * terms["kl"]
        + w.labels * terms["labels"]
        + terms["dag"]
        + w.label_loss * terms["label_loss"]
        + w.mask_loss * terms["mask_loss"]
        + w.sparsity * terms["sparsity"]
        + w.path * terms["path"]
        + w.order_prior * terms["order_prior"]
    )


def pyro_elbo_loss(model: CausalVAE, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """The plain negative ELBO per image from Pyro's ``TraceMeanField_ELBO`` (for checks)."""
    return pyro.infer.TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, u) / x.shape[0]
