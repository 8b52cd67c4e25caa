"""The model is a correct probabilistic program: "seeing" (condition) observes, "doing" (do) intervenes,
labels are observations of the concept sites, and standard Pyro inference gets the exact answer.

A linear-Gaussian chain (ChiRho-style) with known weights, so that every posterior is exact:

    a --> b --> c         a ~ N(0.2, 0.5^2),  b = 1.5 a - 0.1 + 0.3 eps_b,  c = -0.8 b + 0.3 + 0.4 eps_c
"""

import math

import networkx as nx
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import MCMC, NUTS, EmpiricalMarginal, Importance, Predictive
from pyro.infer.reparam import TransformReparam
from torch.testing import assert_close

from pyro_causalvae import CausalVAE

MU_A, S_A, W_AB, B_B, S_B, W_BC, B_C, S_C = 0.2, 0.5, 1.5, -0.1, 0.3, -0.8, 0.3, 0.4


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y - 1e-3))  # the model adds a 1e-3 floor to softplus


def chain(**kw) -> CausalVAE:
    kw.setdefault("style_dim", 0)
    m = CausalVAE(("a", "b", "c"), (4,), graph=[("a", "b"), ("b", "c")], mechanism="linear", noise="normal",
                  hidden=8, **kw).eval()
    with torch.no_grad():
        m.A_raw[0, 1], m.A_raw[1, 2] = W_AB, W_BC
        m.mechanisms.bias.copy_(torch.tensor([MU_A, B_B, B_C]))
        m.noise_scale_raw.copy_(torch.tensor([_inv_softplus(S_A), _inv_softplus(S_B), _inv_softplus(S_C)]))
    return m


def exact_a_given_b(v: float) -> tuple[float, float]:
    """Posterior mean and variance of a given b = v (Gaussian conditioning)."""
    prec = W_AB**2 * S_A**2 + S_B**2
    return MU_A + S_A**2 * W_AB * (v - W_AB * MU_A - B_B) / prec, S_A**2 * S_B**2 / prec


def latent_sites(tr) -> set[str]:
    return {n for n, s in tr.nodes.items() if s["type"] == "sample" and not s["is_observed"]
            and not poutine.util.site_is_subsample(s)}


def weighted_moments(tr, site: str, weight_site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-normalised importance sampling over the data plate (prior proposal): each of the N
    independent copies of the query is one particle, weighted by the log-density of the observed site."""
    tr.compute_log_prob()
    logw = tr.nodes[weight_site]["log_prob"].detach()
    w = torch.softmax(logw, 0)
    x = tr.nodes[site]["value"].detach()
    mean = (w * x).sum()
    return mean, (w * (x - mean) ** 2).sum()


def test_condition_on_a_child_moves_the_parent_by_the_exact_gaussian_amount():
    model = chain()
    v = 1.4
    pyro.set_rng_seed(0)
    n = 200_000
    seen = poutine.condition(model.model, data={"b": torch.full((n,), v)})
    mean, var = weighted_moments(poutine.trace(seen).get_trace(None, None, n), "a", "b")
    exact_mean, exact_var = exact_a_given_b(v)
    assert abs(float(mean) - exact_mean) < 0.01 and abs(float(var) / exact_var - 1) < 0.05
    assert abs(exact_mean - MU_A) > 0.5  # the evidence really moves a (not a vacuous check)


def test_pyro_importance_and_nuts_see_the_exact_posterior_and_do_does_not_move_the_parent():
    model = chain()
    v = torch.tensor([1.4])
    exact_mean, exact_var = exact_a_given_b(1.4)
    seen = poutine.condition(model.model, data={"b": v})
    pyro.set_rng_seed(1)
    imp = Importance(seen, guide=None, num_samples=400).run(None, None, 1)
    assert abs(float(EmpiricalMarginal(imp, "a").mean.detach()) - exact_mean) < 0.08  # ESS about 100: 4 sd
    pyro.set_rng_seed(2)
    mcmc = MCMC(NUTS(seen), num_samples=150, warmup_steps=100, disable_progbar=True)
    mcmc.run(None, None, 1)
    a = mcmc.get_samples()["a"]
    assert abs(float(a.mean()) - exact_mean) < 0.08 and 0.5 < float(a.var()) / exact_var < 1.6
    # doing: do(b = v) leaves a at its prior, and every Importance weight is the same
    done = poutine.do(model.model, data={"b": v})
    pyro.set_rng_seed(3)
    imp = Importance(done, guide=None, num_samples=200).run(None, None, 1)
    assert torch.stack(imp.log_weights).std() < 1e-6
    assert abs(float(EmpiricalMarginal(imp, "a").mean.detach()) - MU_A) < 0.1
    # ... but moves the child of b: c = -0.8 v + 0.3 on average
    c = Predictive(done, num_samples=1)(None, None, 4000)["c"]  # 4,000 independent copies in the plate
    assert abs(float(c.mean()) - (W_BC * 1.4 + B_C)) < 0.03


def test_seeing_the_grandchild_moves_both_ancestors():
    model = chain()
    n = 200_000
    pyro.set_rng_seed(4)
    tr = poutine.trace(poutine.condition(model.model, data={"c": torch.full((n,), -1.0)})).get_trace(None, None, n)
    mean_a, _ = weighted_moments(tr, "a", "c")
    # a -> c is linear Gaussian: c = W_BC (W_AB a + B_B) + B_C + noise
    w, b0 = W_BC * W_AB, W_BC * B_B + B_C
    s2 = W_BC**2 * S_B**2 + S_C**2
    exact = MU_A + S_A**2 * w * (-1.0 - w * MU_A - b0) / (w**2 * S_A**2 + s2)
    assert abs(float(mean_a) - exact) < 0.01


def test_labels_and_condition_give_the_same_evidence():
    model = chain(style_dim=2)
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(0))
    u = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    with poutine.trace() as t1:
        pyro.set_rng_seed(5)
        model.model(x, u)
    data = {c: u[:, i] for i, c in enumerate(model.concepts)}
    with poutine.trace() as t2:
        pyro.set_rng_seed(5)
        poutine.condition(model.model, data=data)(x, None)
    tr1, tr2 = t1.trace, t2.trace
    assert_close(tr1.log_prob_sum(), tr2.log_prob_sum())
    for c in model.concepts:
        assert tr1.nodes[c]["is_observed"] and tr2.nodes[c]["is_observed"]
        assert_close(tr1.nodes[c]["fn"].log_prob(u[:, model.concepts.index(c)]).sum(),
                     tr2.nodes[c]["fn"].log_prob(data[c]).sum())


def test_missing_labels_are_latent_sites_with_a_density():
    model = chain(style_dim=2)
    x = torch.rand(4, 4)
    u = torch.tensor([[0.1, float("nan"), 0.0], [0.2, 0.5, float("nan")], [0.0, float("nan"), float("nan")],
                      [0.3, 1.0, float("nan")]])
    u[:, 2] = float("nan")  # c: no label in the batch
    tr = poutine.trace(model.model).get_trace(x, u)
    # a: every label given; b: some given; c: none given
    assert tr.nodes["a"]["is_observed"]
    assert tr.nodes["b"]["is_observed"] and not tr.nodes["b_unobserved"]["is_observed"]
    assert not tr.nodes["c"]["is_observed"] and "c_unobserved" not in tr.nodes
    observed_b = ~torch.isnan(u[:, 1])
    assert torch.equal(tr.nodes["b"]["mask"], observed_b) and torch.equal(tr.nodes["b_unobserved"]["mask"], ~observed_b)
    assert_close(tr.nodes["b"]["value"][observed_b], u[observed_b, 1])
    assert torch.equal(tr.nodes["b"]["value"][~observed_b], tr.nodes["b_unobserved"]["value"][~observed_b])
    tr.compute_log_prob()
    for name in latent_sites(tr):  # every latent site carries a real density
        assert not isinstance(tr.nodes[name]["fn"], pyro.distributions.Delta)
        assert torch.isfinite(tr.nodes[name]["log_prob"]).all()
    # the guide provides exactly the latent sites
    guide_tr = poutine.trace(model.guide).get_trace(x, u)
    assert latent_sites(guide_tr) == latent_sites(tr) == {"b_unobserved", "c", "style"}


def test_image_free_queries_need_no_hidden_sites():
    model = chain(style_dim=2)
    tr = poutine.trace(model.model).get_trace(None, None, 3)
    assert tr.nodes["x"]["is_observed"] and tr.nodes["x"]["value"].shape == (3, 4)  # deterministic mean
    assert latent_sites(tr) == {"a", "b", "c", "style"}


def test_plain_svi_trains_every_parameter_including_A_and_the_noise():
    pyro.clear_param_store()
    model = CausalVAE(("a", "b", "c"), (4,), style_dim=1, hidden=8, mechanism_hidden=4)  # learned graph
    g = torch.Generator().manual_seed(0)
    a = torch.rand(128, generator=g) * 2 - 1
    b = torch.tanh(2 * a) + 0.05 * torch.randn(128, generator=g)
    u = torch.stack([a, b, torch.rand(128, generator=g) * 2 - 1], -1)
    u[::2] = float("nan")  # half the images unlabelled: the concept encoder trains too
    x = torch.randn(128, 4, generator=g)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
    for _ in range(30):
        svi.step(x, u)
    store = set(pyro.get_param_store().keys())
    names = {k for k, _ in model.named_parameters()}
    assert names == store  # every parameter is in Pyro's param store
    unmoved = [k for k in names if torch.equal(before[k], pyro.get_param_store()[k].detach())]
    assert not unmoved, unmoved
    assert model.adjacency.abs().sum() > 0  # A started at 0 and grew


def test_do_never_moves_a_non_descendant_of_the_reported_graph():
    model = CausalVAE(("a", "b", "c"), (4,), style_dim=0, hidden=8, mechanism_hidden=4).eval()
    with torch.no_grad():
        model.A_raw.copy_(torch.tensor([[0.0, 1.0, 1e-3], [0.0, 0.0, 0.01], [0.0, 0.0, 0.0]]))
    assert set(model.graph().edges()) == {("a", "b")}  # 1e-3 and 0.01 fall below the rule
    config = {c: TransformReparam() for c in "abc"}
    pyro.set_rng_seed(0)
    factual = poutine.trace(poutine.reparam(model.model, config=config)).get_trace(None, None, 50)
    noise = {f"{c}_base": factual.nodes[f"{c}_base"]["value"] for c in "abc"}
    intervened = poutine.reparam(poutine.do(model.model, data={"a": torch.tensor(3.0)}), config=config)
    cf = poutine.trace(poutine.condition(intervened, data=noise)).get_trace(None, None, 50)
    before, after = factual.nodes["_RETURN"]["value"], cf.nodes["_RETURN"]["value"]
    assert (after[:, 1] - before[:, 1]).abs().min() > 1e-3  # b is a's child
    assert torch.equal(after[:, 2], before[:, 2])  # c is not a descendant in graph(): not even 1e-5
    source = pyro.render_model(model.model, model_args=(None, None, 2)).source
    edges = {tuple(line.strip().split(" -> ")) for line in source.splitlines() if " -> " in line}
    assert {e for e in edges if e[0] in "abc" and e[1] in "abc"} == set(model.graph().edges())


def test_render_model_draws_exactly_the_graph_in_training_mode_too():
    model = CausalVAE(("a", "b", "c"), (4,), style_dim=0, hidden=8, mechanism_hidden=4)
    with torch.no_grad():
        model.A_raw.copy_(torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 1e-3], [0.0, 0.0, 0.0]]))
    assert model.training
    g = model.graph()
    source = pyro.render_model(model.model, model_args=(None, None, 2)).source
    edges = {tuple(line.strip().split(" -> ")) for line in source.splitlines() if " -> " in line}
    assert {e for e in edges if e[0] in "abc" and e[1] in "abc"} == set(g.edges()) == {("a", "b"), ("a", "c")}
    # the cut edge b -> c still gets a (straight-through) gradient while training
    model.model(None, torch.randn(8, 3), None)
    tr = poutine.trace(model.model).get_trace(None, torch.randn(8, 3))
    tr.log_prob_sum().backward()
    assert model.A_raw.grad[1, 2] != 0


def test_spline_noise_fits_a_uniform_root():
    """The prior lives on the data's manifold: a uniform root is fitted by its noise spline, not by a
    Gaussian (a Gaussian with the right sd would put 10% of its mass outside [-1, 1])."""
    pyro.set_rng_seed(0)
    model = CausalVAE(("a",), (4,), style_dim=0, hidden=8, mechanism_hidden=4)
    u = torch.rand(2000, 1) * 2 - 1
    params = list(model.noise_splines.parameters()) + [model.noise_scale_raw] + list(model.mechanisms.parameters())
    opt = torch.optim.Adam(params, lr=0.03)
    for _ in range(300):
        tr = poutine.trace(model.model).get_trace(None, u)
        loss = -tr.nodes["a"]["fn"].log_prob(u[:, 0]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        a = Predictive(model.model, num_samples=1)(None, None, 20000)["a"].flatten()
    assert abs(float(a.std()) / float(u.std()) - 1) < 0.05
    assert float(((a < -1.05) | (a > 1.05)).float().mean()) < 0.02


def test_counterfactual_agrees_with_the_exact_linear_scm():
    model = chain(style_dim=0)
    # a factual (a, b, c) and its counterfactual under do(a = 1): b' = b + W_AB (1 - a), c' = c + W_BC (b' - b)
    u = torch.tensor([[0.3, 0.1, -0.2], [-0.5, -0.9, 1.0]])
    x = torch.zeros(2, 4)
    out = model.counterfactual(x, u=u, do={"a": 1.0}, units="normalised")
    b_cf = u[:, 1] + W_AB * (1.0 - u[:, 0])
    c_cf = u[:, 2] + W_BC * (b_cf - u[:, 1])
    assert_close(out["concepts"][0], torch.stack([torch.ones(2), b_cf, c_cf], -1), atol=1e-5, rtol=0)
    assert_close(out["factual_concepts"][0], u)
    assert nx.is_directed_acyclic_graph(model.graph())


@pytest.mark.parametrize("noise", ["spline", "spline-all", "normal"])
def test_reparam_exposes_noise_and_round_trips(noise):
    model = CausalVAE(("a", "b"), (4,), graph=[("a", "b")], style_dim=0, noise=noise, hidden=8).eval()
    with torch.no_grad():
        if noise != "normal":
            model.noise_splines.unnormalized_widths.normal_()
            model.noise_splines.unnormalized_heights.normal_()
    tr = poutine.trace(poutine.reparam(model.model, config={c: TransformReparam() for c in "ab"})
                       ).get_trace(None, None, 10)
    eps = torch.stack([tr.nodes["a_base"]["value"], tr.nodes["b_base"]["value"]], -1)
    assert_close(model.structural_forward(eps), tr.nodes["_RETURN"]["value"])
    assert tr.nodes["b"]["fn"].base_dist.__class__ is pyro.distributions.Delta  # deterministic given its noise
