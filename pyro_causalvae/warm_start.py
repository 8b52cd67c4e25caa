"""Fitting the structural equations to the labels: before SVI (the last step of the graph stage), and again
after the last epoch (`fit(refit_equations=True)`).

Why: the concepts' densities have parameters that SVI at the image model's learning rate moves slowly.
A deterministic child's noise scale must fall from its initial 0.47 to its mechanism's residual (about
0.01-0.07 on Pendulum's normalised labels): at Adam's step size of 1e-3 that takes thousands of steps,
and until then the model's joint distribution (its "seeing" answers, its prior samples) is far too wide.
Fitting the equations to the labelled rows first, by maximum likelihood on the concept sites alone
(:meth:`~pyro_causalvae.model.CausalVAE.concept_log_prob`: the densities of the concept sites of
:meth:`~pyro_causalvae.model.CausalVAE.concept_model`, no images), takes seconds.

What is fitted: the mechanisms ``g_i``, the noise scales ``s_i`` and the noise splines ``f_i`` (with
``noise="spline-all"`` in two stages: the mechanisms with the children's noise Gaussian, then every
noise shape and scale with the mechanisms held); the
graph (``A``) is held (its edges into each concept first rescaled so that the strongest is 1:
:func:`unit_edge_scale`), as the order search and its warm start (:mod:`pyro_causalvae.discovery`) or the
known graph left it. So with ``mechanism="linear"`` (``g_i = sum_j A[j, i] c_j + b_i``) the slopes, which are
``A``'s entries, stay for SVI to learn; only the intercepts, scales and splines are fitted here.
"""

from __future__ import annotations

import torch

__all__ = ["fit_structural_equations", "unit_edge_scale"]


@torch.no_grad()
def unit_edge_scale(model) -> None:
    """Rescale each concept's incoming edges of ``A`` so that the strongest is 1 (MLP mechanisms only).

    An MLP mechanism takes each parent through unit-norm weights times ``A[j, i]``, so small entries mean
    small inputs, and a mechanism that has to amplify them fits worse: after the graph stage's warm start,
    Pendulum's edges into shadow_position were 0.12 / 0.22 and the fitted mechanism's residual 0.023, against
    0.006 with edges of 1 (``benchmarks/mechanism_fit.py``). The graph does not change: only the entries
    that are edges of :meth:`~pyro_causalvae.model.CausalVAE.graph` are scaled (their ratios, which the edge
    rule reads, are kept), the others stay below the rule.
    """
    keep = model.edge_mask()
    strongest = (model.adjacency.abs() * keep).amax(0)  # [K] per child
    gain = torch.where(strongest > 0, 1.0 / strongest.clamp_min(1e-12), torch.ones_like(strongest))
    model.A_raw.copy_(torch.where(keep.bool(), model.A_raw * gain, model.A_raw))


def fit_structural_equations(model, labels: torch.Tensor, steps: int = 1000, batch_size: int = 256,
                             lr: float = 1e-2, seed: int = 0) -> dict:
    """Maximum likelihood of the labels under the concept sites, ``A`` held.

    :param model: a :class:`~pyro_causalvae.model.CausalVAE`.
    :param labels: normalised labels ``[N, K]`` on the model's device; rows with a missing label are skipped.
    :param steps: Adam steps on batches of ``batch_size`` rows, the step size decayed from ``lr`` to 0 (cosine);
        with ``noise="spline-all"`` as many again for the second stage.
    :returns: ``{"steps": int, "rows": int, "nll_before": float, "nll_after": float}`` (mean negative
        log-density of a labelled row, over all the rows, before and after), or ``{"rows": 0}``.
    """
    rows = labels[~torch.isnan(labels).any(1)]
    if rows.shape[0] == 0 or steps == 0:
        return {"rows": int(rows.shape[0]), "steps": 0}
    g = torch.Generator(device="cpu").manual_seed(seed)
    was_training = model.training
    model.eval()  # the graph as reported, no straight-through edges: A is held
    # noise="spline-all": first the mechanisms with the children's noise Gaussian, then the noise shapes and
    # scales with the mechanisms held (fitted together from the start, a child's spline fits its marginal
    # instead of its mechanism; see CausalVAE.concept_distribution)
    two_stage = model.config()["noise"] == "spline-all"

    def nll(u: torch.Tensor, child_shapes: bool = True) -> torch.Tensor:  # the concept sites' densities
        return -model.concept_log_prob(u, child_shapes=child_shapes).mean(0).sum()

    @torch.enable_grad()  # also when called under no_grad (it is an optimisation)
    def descend(params: list[torch.Tensor], child_shapes: bool) -> None:
        optim = torch.optim.Adam(params, lr=lr)
        # cosine decay to 0: at a constant 1e-2 the last steps oscillate (4,000 steps on Pendulum's labels ended
        # once with shadow_length's prior error 0.53 against 0.058 one run later; benchmarks/mechanism_fit.py)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=steps)
        for _ in range(steps):
            idx = torch.randint(0, rows.shape[0], (min(batch_size, rows.shape[0]),), generator=g).to(rows.device)
            loss = nll(rows[idx], child_shapes)
            optim.zero_grad(set_to_none=True)
            loss.backward(inputs=params)
            optim.step()
            schedule.step()

    with torch.no_grad():
        before = float(nll(rows))  # as the model stood (before its edges are rescaled)
    if model.mechanisms.kind == "mlp":
        unit_edge_scale(model)
    shapes = [] if model.noise_splines is None else list(model.noise_splines.parameters())
    descend(list(model.mechanisms.parameters()) + [model.noise_scale_raw] + shapes, child_shapes=not two_stage)
    if two_stage:
        descend([model.noise_scale_raw] + shapes, child_shapes=True)
    with torch.no_grad():
        after = float(nll(rows))
    model.train(was_training)
    return {"steps": steps, "rows": int(rows.shape[0]), "nll_before": before, "nll_after": after}
