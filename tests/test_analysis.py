"""Posterior analysis with ArviZ (pyro_causalvae.analysis) and the Bayesian graph (pyro_causalvae.bayes_graph).

Tiny models on flat observations (MLP encoder / decoder) keep these fast; one tiny conv model checks the
image dims.
"""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from pyro_causalvae import CausalVAE  # noqa: E402
from pyro_causalvae import analysis as an  # noqa: E402
from pyro_causalvae.analysis import az  # noqa: E402  (arviz, imported without its 0.x FutureWarning)
from pyro_causalvae.bayes_graph import GraphPosterior, candidate_edges, fit_graph_posterior  # noqa: E402
from pyro_causalvae.discovery import warm_start_graph  # noqa: E402

# Chain with an unrelated root:   a --> b --> c        d
CHAIN = [("a", "b"), ("b", "c")]
CONCEPTS = ("a", "b", "c", "d")
LOC = torch.tensor([1.0, -2.0, 10.0, 0.5])
SCALE = torch.tensor([2.0, 0.5, 4.0, 1.0])


def chain_model(**kw):
    kw.setdefault("graph", CHAIN)
    return CausalVAE(CONCEPTS, (10,), style_dim=2, hidden=16, mechanism_hidden=8, label_loc=LOC, label_scale=SCALE, **kw)


def images(n=3, seed=0):
    return torch.rand(n, 10, generator=torch.Generator().manual_seed(seed))


def labels(n=3, seed=1):
    return LOC + SCALE * (torch.rand(n, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------------------ to_inference_data
def test_to_inference_data_groups_dims_coords_and_observed_labels():
    model, x, u = chain_model(), images(), labels()
    u[1, 2] = float("nan")  # an unobserved label is kept as NaN
    idata = an.to_inference_data(model, x, u=u, num_samples=7, num_chains=2, posterior_predictive=True, seed=0)
    post = an.get_group(idata, "posterior")
    c = post["concepts"]
    assert c.dims == ("chain", "draw", "image", "concept")
    assert c.shape == (2, 7, 3, 4)
    assert list(post["concept"].values) == list(CONCEPTS)
    assert list(post["image"].values) == [0, 1, 2]
    assert list(post["chain"].values) == [0, 1] and list(post["draw"].values) == list(range(7))
    assert "concept_blocks" not in post
    assert np.isfinite(c.values).all()
    obs = an.get_group(idata, "observed_data")
    assert obs["labels"].dims == ("image", "concept")
    np.testing.assert_array_equal(obs["labels"].values, u.numpy())  # NaN where NaN
    np.testing.assert_array_equal(obs["x"].values, x.numpy())
    pp = an.get_group(idata, "posterior_predictive")["x"]
    assert pp.dims == ("chain", "draw", "image", "feature") and pp.shape == (2, 7, 3, 10)
    assert post.attrs["units"] == "natural" and post.attrs["posterior_predictive"] == "mean"
    # without u and predictive: only the posterior
    bare = an.to_inference_data(model, x, num_samples=2)
    with pytest.raises(KeyError):
        an.get_group(bare, "observed_data")


def test_posterior_predictive_mean_is_the_decoder_of_each_draw():
    model, x = chain_model(), images(2)
    idata = an.to_inference_data(model, x, num_samples=4, posterior_predictive="mean", seed=3, units="normalised")
    post = an.get_group(idata, "posterior")
    c = torch.as_tensor(post["concepts"].values)  # [1, 4, 2, K]
    style = torch.as_tensor(post["style"].values)  # [1, 4, 2, S]
    assert post["style"].dims == ("chain", "draw", "image", "style_dim") and style.shape == (1, 4, 2, 2)
    pp = torch.as_tensor(an.get_group(idata, "posterior_predictive")["x"].values)
    with torch.no_grad():
        expected = model.decode(c, style)
    assert_close(pp, expected, rtol=1e-5, atol=1e-5)
    sampled = an.to_inference_data(model, x, num_samples=4, posterior_predictive="sample", seed=3)
    assert an.get_group(sampled, "posterior")["concepts"].shape == (1, 4, 2, 4)
    assert an.get_group(sampled, "posterior").attrs["posterior_predictive"] == "sample"
    assert not np.allclose(an.get_group(sampled, "posterior_predictive")["x"].values, pp.numpy())


def test_natural_units_roundtrip():
    model, x = chain_model(), images()
    nat = an.to_inference_data(model, x, num_samples=5, seed=1)
    norm = an.to_inference_data(model, x, num_samples=5, seed=1, units="normalised")
    zn = torch.as_tensor(an.get_group(nat, "posterior")["concepts"].values)
    zz = torch.as_tensor(an.get_group(norm, "posterior")["concepts"].values)
    assert_close(zn, model.denormalise(zz), rtol=1e-5, atol=1e-5)
    assert_close(model.normalise(zn), zz, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(zn, zz)  # the units do differ here


def test_draws_follow_the_guide_posterior_and_labels_are_held():
    # the vectorised draws have the encoder's Normal posterior q(c | x) = N(m, v) per concept
    model, x = chain_model(), images(2)
    S = 4000
    idata = an.to_inference_data(model, x, num_samples=S, seed=0, units="normalised")
    z = torch.as_tensor(an.get_group(idata, "posterior")["concepts"].values)[0]  # [S, N, K]
    with torch.no_grad():
        post = model.posterior(x)
    assert_close(z.mean(0), post.loc, rtol=0, atol=float(5 * post.scale.max() / math.sqrt(S)))
    assert_close(z.std(0), post.scale, rtol=0.08, atol=1e-4)
    # a labelled concept keeps its label in every draw; the others are still drawn
    u = torch.full((2, 4), float("nan"))
    u[:, 1] = torch.tensor([0.3, -0.2])
    held = an.to_inference_data(model, x, u=u, num_samples=50, seed=0, units="normalised")
    zh = torch.as_tensor(an.get_group(held, "posterior")["concepts"].values)[0]
    assert torch.equal(zh[:, :, 1], u[:, 1].expand(50, 2)) and zh[:, :, 0].std(0).min() > 0


def test_seed_reproducible_and_caller_rng_restored():
    model, x = chain_model(), images()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = an.to_inference_data(model, x, num_samples=6, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    b = an.to_inference_data(model, x, num_samples=6, seed=5)
    c = an.to_inference_data(model, x, num_samples=6, seed=6)
    va, vb, vc = (an.get_group(d, "posterior")["concepts"].values for d in (a, b, c))
    np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(va, vc)


def test_conv_images_have_pixel_dims():
    model = CausalVAE(CONCEPTS, (3, 16, 16), style_dim=2, channels=4, hidden=16, mechanism_hidden=8)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    idata = an.to_inference_data(model, (x * 255).to(torch.uint8), num_samples=3, posterior_predictive=True, seed=0)
    pp = an.get_group(idata, "posterior_predictive")["x"]
    assert pp.dims == ("chain", "draw", "image", "channel", "row", "column") and pp.shape == (1, 3, 2, 3, 16, 16)
    assert float(pp.min()) >= 0 and float(pp.max()) <= 1  # decoder means (sigmoid)
    assert an.get_group(idata, "observed_data")["x"].dims == ("image", "channel", "row", "column")
    one = an.to_inference_data(model, x[0], num_samples=2)  # a single image [C, H, W]
    assert an.get_group(one, "posterior")["concepts"].shape == (1, 2, 1, 4)


def test_arviz_summary_hdi_and_plot_forest_work():
    model, x = chain_model(), images(2)
    idata = an.to_inference_data(model, x, num_samples=50, num_chains=2, seed=0)
    post = an.get_group(idata, "posterior")["concepts"]
    mean = post.mean(("chain", "draw")).values
    # ArviZ's own function, with arguments that both versions take (the defaults differ: see _arviz)
    s = az.summary(idata, var_names=["concepts"], kind="stats", round_to="none")
    assert len(s) == 2 * 4
    np.testing.assert_allclose(s["mean"].to_numpy(dtype=float), mean.reshape(-1), rtol=1e-4, atol=1e-5)
    assert list(s.index[:2]) == ["concepts[0, a]", "concepts[0, b]"]
    # the version-independent wrappers (same numbers under both: tests/test_arviz_bridge.py)
    s2 = an.summary(idata, var_names=["concepts"], coords={"image": [0]}, prob=0.9)
    assert list(s2.columns) == ["mean", "sd", "hdi_90%_lower", "hdi_90%_upper"] and len(s2) == 4
    assert (s2["hdi_90%_lower"] <= s2["mean"]).all() and (s2["mean"] <= s2["hdi_90%_upper"]).all()
    h = an.hdi(idata, var_names=["concepts"], prob=0.9)["concepts"]
    assert h.dims == ("image", "concept", "hdi") and h.shape == (2, 4, 2)
    np.testing.assert_allclose(h.sel(image=0).values, s2[["hdi_90%_lower", "hdi_90%_upper"]].to_numpy(), rtol=1e-6)
    assert (h.sel(hdi="lower").values <= mean + 1e-6).all() and (mean <= h.sel(hdi="upper").values + 1e-6).all()
    drawn = an.forest_intervals(idata, var_names=["concepts"], coords={"image": [0]}, prob=0.9)["concepts"]
    np.testing.assert_allclose(drawn.sel(image=0, forest=["hdi_lower", "hdi_upper"]).values, h.sel(image=0).values)
    an.plot_forest(idata, var_names=["concepts"], coords={"image": [0]})
    with pytest.raises(ValueError, match="prob"):
        an.summary(idata, prob=1.5)


@pytest.mark.parametrize("call, match", [
    (lambda m, x: an.to_inference_data(m, torch.rand(3, 11)), r"x must have shape \[N, 10\]"),
    (lambda m, x: an.to_inference_data(m, x.clone().fill_(float("nan"))), "x has non-finite values"),
    (lambda m, x: an.to_inference_data(m, x * 3), r"x must hold values in \[0, 1\]"),
    (lambda m, x: an.to_inference_data(m, x, num_samples=0), "num_samples must be an integer >= 1"),
    (lambda m, x: an.to_inference_data(m, x, num_chains=-1), "num_chains must be an integer >= 1"),
    (lambda m, x: an.to_inference_data(m, x, num_samples=2.5), "num_samples must be an integer >= 1"),
    (lambda m, x: an.to_inference_data(m, x, u=torch.zeros(3, 3)), r"u must have shape \[3, 4\]"),
    (lambda m, x: an.to_inference_data(m, x, u=torch.full((3, 4), float("inf"))), "u has non-finite values"),
    (lambda m, x: an.to_inference_data(m, x, units="radians"), "units must be"),
    (lambda m, x: an.to_inference_data(m, x, posterior_predictive="median"), "posterior_predictive must be"),
    (lambda m, x: an.to_inference_data(m, x, seed=1.5), "seed must be an integer"),
    (lambda m, x: an.intervention_effect(m, x, {"e": 1.0}), "unknown concept 'e'"),
    (lambda m, x: an.intervention_effect(m, x, {"a": float("nan")}), "not finite"),
    (lambda m, x: an.intervention_effect(m, x, {"a": torch.zeros(2)}), r"shape \[3\]"),
    (lambda m, x: an.intervention_effect(m, x, {"a": 1.0}, num_samples=0), "num_samples must be"),
])
def test_bad_inputs_fail_with_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(chain_model(), images())


# ------------------------------------------------------------------------------------------------ interventions
def test_intervention_effect_sets_the_value_and_keeps_non_descendants():
    model, x = chain_model(), images()
    eff = an.intervention_effect(model, x, {"b": -1.5}, num_samples=20, num_chains=2, seed=0, posterior_predictive=True)
    cf, fa = an.get_group(eff, "posterior"), an.get_group(eff, "factual")
    assert cf["concepts"].dims == ("chain", "draw", "image", "concept") and cf["concepts"].shape == (2, 20, 3, 4)
    np.testing.assert_allclose(cf["concepts"].sel(concept="b").values, -1.5, rtol=0, atol=1e-5)  # natural units
    for c in ("a", "d"):  # non-descendants of b: unchanged draw by draw, so the same distribution
        np.testing.assert_array_equal(cf["concepts"].sel(concept=c).values, fa["concepts"].sel(concept=c).values)
        assert (cf["effect"].sel(concept=c).values == 0).all()
    assert np.abs(cf["effect"].sel(concept="c").values).max() > 1e-4  # a descendant moves
    assert fa["concepts"].sel(concept="b").std() > 0  # the factual b varies over the draws
    np.testing.assert_allclose(cf["effect"].values, cf["concepts"].values - fa["concepts"].values, atol=1e-5)
    do = an.get_group(eff, "constant_data")["do"]
    assert do.dims == ("image", "intervened") and list(do["intervened"].values) == ["b"]
    np.testing.assert_allclose(do.values, -1.5)
    pp = an.get_group(eff, "posterior_predictive")
    assert pp["x"].shape == pp["x_factual"].shape == (2, 20, 3, 10)
    assert cf.attrs["do"] == "b=-1.5"
    # the factual distribution is the posterior of to_inference_data (same guide, independent draws)
    post = an.to_inference_data(model, x, num_samples=400, seed=1)
    many = an.intervention_effect(model, x, {"b": -1.5}, num_samples=400, seed=2)
    f_mean = an.get_group(many, "factual")["concepts"].mean(("chain", "draw"))
    p_mean = an.get_group(post, "posterior")["concepts"].mean(("chain", "draw"))
    p_sd = an.get_group(post, "posterior")["concepts"].std(("chain", "draw"))
    assert (np.abs(f_mean - p_mean) < 5 * p_sd / math.sqrt(200)).all()
    # ArviZ works on it; factual vs counterfactual side by side
    assert len(an.summary(eff, var_names=["effect"], coords={"image": [0]})) == 4
    an.plot_forest({"factual": fa, "do(b=-1.5)": cf}, var_names=["concepts"], coords={"image": [0]})


def test_intervention_effect_per_image_values_and_normalised_units():
    model, x = chain_model(), images()
    v = torch.tensor([-0.5, 0.0, 0.5])
    eff = an.intervention_effect(model, x, {"a": v}, num_samples=3, units="normalised", seed=0)
    cf = an.get_group(eff, "posterior")["concepts"].sel(concept="a").values  # [1, 3, N]
    np.testing.assert_allclose(cf, np.broadcast_to(v.numpy(), cf.shape), atol=1e-6)
    assert an.get_group(eff, "posterior").attrs["units"] == "normalised"


# ------------------------------------------------------------------------------------------------ Bayesian graph
def tiny_scm(n, seed):
    """a, b, d ~ U(-1, 1) independent; c = 0.6 tanh(1.5 a) + 0.4 b + 0.05 noise.  True edges: a -> c, b -> c."""
    g = torch.Generator().manual_seed(seed)
    a, b, d = (torch.rand(n, generator=g) * 2 - 1 for _ in range(3))
    c = 0.6 * torch.tanh(1.5 * a) + 0.4 * b + 0.05 * torch.randn(n, generator=g)
    return torch.stack([a, b, c, d], dim=1)


@pytest.fixture(scope="module")
def fitted_scm_model():
    """A learned-graph model whose A and mechanisms were fitted on labels of the tiny SCM in the order
    a, b, d, c (the warm start of training; A is dense in that order: 6 candidate edges)."""
    pyro.set_rng_seed(0)
    model = CausalVAE(CONCEPTS, (10,), style_dim=2, hidden=16, mechanism_hidden=8)
    warm_start_graph(model, tiny_scm(300, seed=0), order=[0, 1, 3, 2], steps=300, seed=0)
    return model


def test_graph_posterior_finds_the_true_edges(fitted_scm_model):
    model = fitted_scm_model
    A_before = model.A_raw.detach().clone()
    V_before = model.mechanisms.V.detach().clone()
    edges = candidate_edges(model)
    assert edges == [("a", "b"), ("a", "d"), ("b", "d"), ("a", "c"), ("b", "c"), ("d", "c")]
    # held-out labels (a fresh sample of the SCM), in natural units (= normalised here: loc 0, scale 1)
    post = fit_graph_posterior(model, tiny_scm(300, seed=1), num_steps=400, seed=0)
    assert isinstance(post, GraphPosterior) and post.edges == edges
    p = post.edge_probability(0.1)
    assert p[("a", "c")] > 0.99 and p[("b", "c")] > 0.99
    for e in edges:
        if e not in (("a", "c"), ("b", "c")):
            assert p[e] < 0.3, (e, p[e])
    assert set(post.graph(threshold=0.1).edges()) == {("a", "c"), ("b", "c")}
    assert post.probability_matrix(0.1)[0, 2] == pytest.approx(p[("a", "c")])
    ci = post.interval(0.94)
    assert (ci[:, 0] < post.mean).all() and (post.mean < ci[:, 1]).all()
    assert ci[3, 0] > 0.3  # a -> c is clearly away from 0
    # the model is untouched, and nothing went into Pyro's global param store
    assert torch.equal(model.A_raw.detach(), A_before) and torch.equal(model.mechanisms.V.detach(), V_before)
    assert list(pyro.get_param_store().keys()) == []
    # ArviZ
    idata = post.to_inference_data(num_draws=4000, seed=0)
    A = an.get_group(idata, "posterior")["A"]
    assert A.dims == ("chain", "draw", "edge") and A.shape == (1, 4000, 6)
    assert list(A["edge"].values) == ["a -> b", "a -> d", "b -> d", "a -> c", "b -> c", "d -> c"]
    assert an.get_group(idata, "prior")["A"].shape == (1, 4000, 6)
    np.testing.assert_allclose(an.get_group(idata, "constant_data")["A_point"].values, post.point.numpy())
    mc = (np.abs(A.values) > 0.1).mean(axis=(0, 1))
    np.testing.assert_allclose(mc, [p[e] for e in edges], atol=0.03)  # exact tail = Monte Carlo estimate
    s = an.summary(idata, var_names=["A"])
    assert len(s) == 6 and any("a -> c" in r for r in s.index)
    assert set(post.summary().index) == set(post.edge_names)
    post.plot_forest()
    az.plot_forest(idata, var_names=["A"], combined=True)


def test_graph_posterior_is_deterministic_for_a_seed(fitted_scm_model):
    u = tiny_scm(100, seed=2)
    a = fit_graph_posterior(fitted_scm_model, u, num_steps=30, seed=4, batch_size=32)
    b = fit_graph_posterior(fitted_scm_model, u, num_steps=30, seed=4, batch_size=32)
    c = fit_graph_posterior(fitted_scm_model, u, num_steps=30, seed=5, batch_size=32)
    assert torch.equal(a.loc, b.loc) and torch.equal(a.scale, b.scale) and a.losses == b.losses
    assert not torch.equal(a.loc, c.loc)
    assert len(a.losses) == 30 and all(math.isfinite(v) for v in a.losses)


def test_graph_posterior_on_a_known_graph_with_an_extra_candidate():
    model = chain_model()  # known graph a -> b -> c, d unrelated; order a, b, c, d
    assert candidate_edges(model) == [("a", "b"), ("b", "c")]
    u = labels(40)
    u[0, 1] = float("nan")  # skipped where missing
    post = fit_graph_posterior(model, u, num_steps=5, edges=[("a", "b"), ("c", "d")], noise_scale="residual",
                               prior="normal", seed=0)
    assert post.edge_names == ["a -> b", "c -> d"]
    assert post.point[1] == 0  # not in the known graph: trained weight 0
    assert post.noise_scale.shape == (4,) and (post.noise_scale > 0).all()
    assert post.prior == "normal"


@pytest.mark.parametrize("kwargs, match", [
    (dict(edges=[("c", "a")]), "against the model's causal order"),
    (dict(edges=[("a", "e")]), "pair of concepts"),
    (dict(edges=[]), "edges is empty"),
    (dict(edges=[("a", "b"), ("a", "b")]), "duplicates"),
    (dict(prior="horseshoe"), "prior must be"),
    (dict(prior_scale=0.0), "prior_scale must be a positive"),
    (dict(num_steps=0), "num_steps must be an integer >= 1"),
    (dict(noise_scale="fit"), "noise_scale must be"),
    (dict(noise_scale=[1.0, 2.0]), "noise_scale must be"),
    (dict(units="kelvin"), "units must be"),
])
def test_graph_posterior_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_graph_posterior(chain_model(), labels(10), **kwargs)


def test_graph_posterior_bad_data():
    model = chain_model()
    with pytest.raises(ValueError, match=r"labels must have shape \[N, 4\]"):
        fit_graph_posterior(model, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="labels has non-finite values"):
        fit_graph_posterior(model, torch.full((5, 4), float("inf")))
    with pytest.raises(ValueError, match="labels tensor"):
        fit_graph_posterior(model, "labels.csv")


def test_graph_posterior_needs_candidate_edges():
    model = CausalVAE(("a", "b"), (10,), style_dim=2, hidden=16, mechanism_hidden=8, graph=[])
    with pytest.raises(ValueError, match="allows no edge"):
        fit_graph_posterior(model, torch.zeros(5, 2))
    post = fit_graph_posterior(model, torch.rand(20, 2), edges=[("a", "b")], num_steps=3, progress=True)
    assert post.edge_names == ["a -> b"] and len(post.losses) == 3
