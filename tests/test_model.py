"""The CausalVAE Pyro program: sites, handlers (do / condition / replay / Predictive), the loss, the graph.

Tiny models on flat observations (MLP encoder / decoder) keep these fast.
"""

import re

import networkx as nx
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.reparam import TransformReparam
from torch.testing import assert_close

from pyro_causalvae import CausalVAE
from pyro_causalvae.dag import AugmentedLagrangian, acyclicity, causal_order
from pyro_causalvae.loss import LossWeights, loss_terms, minimality_term, pyro_elbo_loss, rereading_term, total_loss
from pyro_causalvae.nets import CompositeConvDecoder
from pyro_causalvae.queries import posterior_mean, prediction

# Chain with an unrelated root:
#
#     a --> b --> c        d
#
CHAIN = [("a", "b"), ("b", "c")]
CONCEPTS = ("a", "b", "c", "d")


def chain_model(**kw):
    kw.setdefault("graph", CHAIN)
    return CausalVAE(CONCEPTS, (10,), style_dim=2, hidden=16, mechanism_hidden=8, **kw)


def data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 10, generator=g), torch.rand(n, 4, generator=g) * 2 - 1


def test_trace_has_one_site_per_concept_in_topological_order():
    model = chain_model()
    x, u = data()
    tr = poutine.trace(model.model).get_trace(x, u)
    sites = [n for n, s in tr.nodes.items() if s["type"] == "sample"]
    concept_sites = [s for s in sites if s in CONCEPTS]
    assert set(concept_sites) == set(CONCEPTS)
    order = {c: concept_sites.index(c) for c in CONCEPTS}
    assert order["a"] < order["b"] < order["c"]
    for i, c in enumerate(CONCEPTS):
        site = tr.nodes[c]
        assert site["value"].shape == (6,) and site["cond_indep_stack"][0].name == "data"
        # the labels are the observations of the concept sites, with the structural equation's density
        assert site["is_observed"] and torch.equal(site["value"], u[:, i])
        assert isinstance(site["fn"], pyro.distributions.TransformedDistribution)
    assert tr.nodes["x"]["is_observed"] and tr.nodes["style"]["value"].shape == (6, 2)
    assert "labels" not in tr.nodes and not any(n.endswith("_noise") for n in tr.nodes)


def _counterfactual(model, x, do, hold=True):
    """The counterfactual with plain Pyro handlers: abduction (the guide, then the noise through
    TransformReparam), action (do), prediction (condition the reparametrised, intervened model on the
    noise); ``hold`` also holds the non-descendants at their factual values, as queries.prediction does."""
    guide_tr = poutine.trace(posterior_mean(model.guide)).get_trace(x)
    config = {c: TransformReparam() for c in CONCEPTS}
    factual = poutine.trace(poutine.reparam(poutine.replay(model.model, trace=guide_tr), config=config)).get_trace(None, None, 6)
    noise = {n: s["value"] for n, s in factual.nodes.items() if n.endswith("_base") or n == "style"}
    if hold:
        return factual, poutine.trace(prediction(model, do, noise, factual)).get_trace(None, None, 6)
    intervened = poutine.reparam(poutine.do(model.model, data=do), config=config)
    cf = poutine.trace(poutine.condition(intervened, data=noise)).get_trace(None, None, 6)
    return factual, cf


def _value(tr, c):
    """The value the model used for concept c (the intervened copy under do)."""
    return tr.nodes["_RETURN"]["value"][..., CONCEPTS.index(c)]


def test_do_reaches_grandchild_and_never_a_non_descendant():
    model = chain_model()
    x, _ = data()
    factual, cf = _counterfactual(model, x, {"a": torch.tensor(2.0)})
    assert_close(_value(cf, "a"), torch.full((6,), 2.0))
    moved = {c: (_value(cf, c) - _value(factual, c)).abs().max().item() for c in "bcd"}
    assert moved["b"] > 1e-3
    assert moved["c"] > 1e-4  # multi-hop: a -> b -> c
    assert moved["d"] == 0.0  # not a descendant: bit-identical
    # the decoder sees the intervened concepts
    assert not torch.allclose(cf.nodes["x"]["value"], factual.nodes["x"]["value"])


def test_noise_alone_gives_the_same_counterfactual_to_rounding():
    model = chain_model()
    x, _ = data()
    factual, held = _counterfactual(model, x, {"a": torch.tensor(2.0)})
    _, plain = _counterfactual(model, x, {"a": torch.tensor(2.0)}, hold=False)
    assert_close(plain.nodes["_RETURN"]["value"], held.nodes["_RETURN"]["value"], rtol=0, atol=1e-5)
    _, null = _counterfactual(model, x, {}, hold=False)  # no intervention: the factual, to rounding
    assert_close(null.nodes["_RETURN"]["value"], factual.nodes["_RETURN"]["value"], rtol=0, atol=1e-5)


def test_do_on_middle_node_leaves_its_ancestors():
    model = chain_model()
    x, _ = data()
    factual, cf = _counterfactual(model, x, {"b": torch.tensor(-1.0)})
    assert torch.equal(_value(cf, "a"), _value(factual, "a"))
    assert torch.equal(_value(cf, "d"), _value(factual, "d"))
    assert (_value(cf, "c") - _value(factual, "c")).abs().max() > 1e-4


def test_do_accepts_per_image_values():
    model = chain_model()
    x, _ = data()
    v = torch.linspace(-1, 1, 6)
    pyro.set_rng_seed(1)
    _, cf = _counterfactual(model, x, {"a": v})
    assert_close(_value(cf, "a"), v)


def test_predictive_and_render_model():
    model = chain_model()
    x, u = data()
    pred = pyro.infer.Predictive(model.model, guide=model.guide, num_samples=3, return_sites=["c", "style"])
    out = pred(x)
    assert out["c"].shape == (3, 6) and out["style"].shape == (3, 6, 2)
    prior = pyro.infer.Predictive(model.model, num_samples=2, return_sites=["x", "a"])(None, None, 5)
    assert prior["x"].shape == (2, 5, 10) and prior["a"].shape == (2, 5)
    source = pyro.render_model(model.model, model_args=(None, None, 6)).source
    edges = {tuple(line.strip().split(" -> ")) for line in source.splitlines() if " -> " in line}
    # value provenance follows the graph: a -> b -> c, d alone
    assert {("a", "b"), ("b", "c")} <= edges
    assert not {("a", "d"), ("b", "d"), ("c", "d"), ("d", "c"), ("a", "c")} & edges


def _learned_chain_model(**kw):
    """A learned graph in training mode: A holds the chain's edges, one entry the edge rule cuts (a -> c,
    read with a straight-through gradient only) and one against the causal order (c -> a)."""
    model = CausalVAE(CONCEPTS, (10,), hidden=16, mechanism_hidden=8, **kw)
    model.init_from_order([0, 1, 2, 3])
    with torch.no_grad():
        model.A_raw.zero_()
        model.A_raw[0, 1], model.A_raw[1, 2], model.A_raw[0, 2], model.A_raw[2, 0] = 0.9, -0.7, 0.01, 0.5
    return model.train()


@pytest.mark.parametrize("make", [
    lambda: chain_model(),
    lambda: chain_model(noise="normal", mechanism="linear"),
    lambda: _learned_chain_model(),
    lambda: _learned_chain_model(style_dim=1, noise="normal"),
    lambda: chain_model(noise="spline-all"),
    lambda: _learned_chain_model(noise="spline-all"),
], ids=["known-spline-style", "known-linear-normal", "learned-training", "learned-style", "known-spline-all",
        "learned-spline-all"])
def test_elbo_terms_equal_pyro_trace_elbo(make):
    """The loss's batched tensor form of the ELBO equals Pyro's TraceMeanField_ELBO on the model and the
    guide (the same draws): values, and the gradient of every parameter."""
    model = make()
    x, u = data()
    with torch.no_grad():  # the splines away from the identity
        for name, prm in model.named_parameters():
            if name.startswith("noise_splines"):
                prm.add_(0.3 * torch.randn_like(prm))
    assert model.graph().has_edge("a", "b") and not model.graph().has_edge("a", "c")
    params = [p for p in model.parameters()]
    for labels in (u, None, _with_missing(u)):
        pyro.set_rng_seed(3)
        terms = loss_terms(model, x, labels)
        ours = terms["recon"] + terms["kl"] + terms["labels"]
        grads = torch.autograd.grad(ours, params, allow_unused=True)
        pyro.set_rng_seed(3)
        expected = pyro_elbo_loss(model, x, labels)
        ref = torch.autograd.grad(expected, params, allow_unused=True)
        assert_close(ours, expected, rtol=1e-5, atol=1e-3)
        for (name, _), g, r in zip(model.named_parameters(), grads, ref):
            g = torch.zeros_like(_) if g is None else g
            r = torch.zeros_like(_) if r is None else r
            assert_close(g, r, rtol=1e-4, atol=1e-5, msg=lambda m: f"gradient of {name}: {m}")
        if model.spec.learned:  # the cut edge a -> c keeps its straight-through gradient
            i, j = CONCEPTS.index("a"), CONCEPTS.index("c")
            assert grads[params.index(model.A_raw)][i, j] != 0


def _with_missing(u):
    u = u.clone()
    u[0, 1] = float("nan")  # b: labelled for some images only
    u[:, 3] = float("nan")  # d: no label in the batch
    return u


def test_unlabelled_and_partly_labelled_images_train():
    model = chain_model()
    x, u = data()
    t = loss_terms(model, x, None)
    assert t["labels"] == 0 and t["encoder"] == 0
    t = loss_terms(model, x, _with_missing(u))
    assert torch.isfinite(total_loss(t, LossWeights())) and t["labels"] != 0


def test_pyro_svi_registers_parameters_and_learns():
    model = chain_model()
    x, u = data(64)
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
    losses = [svi.step(x, u) for _ in range(60)]
    assert len(list(pyro.get_param_store().keys())) > 10
    assert sum(losses[-10:]) < sum(losses[:10])


def test_conv_networks_shapes():
    model = CausalVAE(("p", "q"), (3, 32, 32), style_dim=3, channels=8, hidden=16)
    x = torch.rand(4, 3, 32, 32)
    tr = poutine.trace(model.model).get_trace(x)
    assert tr.nodes["x"]["fn"].mean.shape == (4, 3, 32, 32)
    assert model.encode(x).shape == (4, 2)
    assert model.reconstruct(x).shape == x.shape


# ----------------------------------------------------------------------------- the graph


def test_known_graph_fixes_support_and_graph_returns_names():
    model = chain_model()
    assert set(model.graph(threshold=0.0).edges()) == set(CHAIN)
    A = model.adjacency.detach()
    assert A[0, 2] == 0 and A[1, 0] == 0 and A.diagonal().abs().sum() == 0
    assert model.acyclicity().item() == pytest.approx(0.0, abs=1e-6)


def test_learned_graph_threshold_required_and_forbidden():
    model = chain_model(graph="learn", required=[("d", "a")], forbidden=[("a", "b")])
    with torch.no_grad():
        model.A_raw.fill_(0.1)
        model.A_raw[2, 3] = 0.9
    g = model.graph(threshold=0.3)
    assert set(g.edges()) == {("c", "d"), ("d", "a")}  # required edge kept below the threshold
    assert model.adjacency[0, 1] == 0  # forbidden
    assert isinstance(g, nx.DiGraph) and g.edges["c", "d"]["weight"] == pytest.approx(0.9)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(graph=[("a", "b"), ("b", "a")]), "cycle"),
        (dict(graph=[("a", "zz")]), "not concepts"),
        (dict(graph="learn", required=[("a", "b")], forbidden=[("a", "b")]), "both required and forbidden"),
        (dict(graph="sideways"), "graph must be"),
    ],
)
def test_bad_graph_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        chain_model(**kw)


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(concepts=("a", "a")), "duplicate"),
        (dict(image_shape=(3, 30, 30)), "multiple of 4"),
        (dict(image_shape=(5, 32, 32)), "channels"),
        (dict(style_dim=-1), "style_dim"),
        (dict(pixel_scale=-1.0), "pixel_scale"),
        (dict(label_scale=[1.0, 0.0]), "label_scale must be positive"),
    ],
)
def test_bad_model_arguments(args, match):
    kw = dict(concepts=("a", "b"), image_shape=(3, 32, 32))
    kw.update(args)
    with pytest.raises(ValueError, match=match):
        CausalVAE(**kw)


def test_acyclicity_zero_iff_dag():
    dag = torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    cyc = dag.clone()
    cyc[2, 0] = 0.7
    assert acyclicity(dag).item() == pytest.approx(0.0, abs=1e-6)
    assert acyclicity(cyc).item() > 1e-3
    assert causal_order(dag) == [0, 1, 2]


def test_augmented_lagrangian_updates():
    al = AugmentedLagrangian(rho=1.0, rho_factor=10.0)
    al.update(torch.tensor(0.5))  # lam += rho * h; first step: no previous h, rho kept
    assert al.lam.item() == pytest.approx(0.5) and al.rho.item() == pytest.approx(1.0)
    al.update(torch.tensor(0.1))  # 0.1 < 0.25 * 0.5: enough progress, rho kept
    assert al.rho.item() == pytest.approx(1.0) and al.lam.item() == pytest.approx(0.6)
    al.update(torch.tensor(0.09))  # 0.09 > 0.25 * 0.1: not enough progress, rho grows
    assert al.rho.item() == pytest.approx(10.0) and al.lam.item() == pytest.approx(0.69)
    al.update(torch.tensor(0.0))  # acyclic: rho never grows below h_tol
    assert al.rho.item() == pytest.approx(10.0)
    assert al.penalty(torch.tensor(2.0)).item() == pytest.approx(al.lam.item() * 2 + 0.5 * 10.0 * 4)


def test_config_round_trip():
    model = chain_model(label_loc=[1.0, 2.0, 3.0, 4.0], label_scale=[1.0, 1.0, 2.0, 2.0])
    clone = CausalVAE.from_config(model.config())
    clone.load_state_dict(model.state_dict())
    assert set(clone.graph(0.0).edges()) == set(CHAIN)
    assert_close(clone.denormalise(torch.zeros(4)), torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_noise_spline_settings_round_trip_and_old_configs_keep_their_splines():
    model = chain_model(noise_bins=12, noise_bound=4.0)
    assert model.noise_splines.unnormalized_widths.shape == (4, 12) and model.noise_splines.bound == 4.0
    clone = CausalVAE.from_config(model.config())
    clone.load_state_dict(model.state_dict())
    assert clone.noise_splines.bound == 4.0 and clone.config()["noise_bins"] == 12
    # a run saved before these were settings: 8 bins on [-3, 3], whatever today's defaults are
    old = chain_model(noise_bins=8, noise_bound=3.0)
    cfg = old.config()
    del cfg["noise_bins"], cfg["noise_bound"]
    again = CausalVAE.from_config(cfg)
    again.load_state_dict(old.state_dict())
    assert again.noise_splines.bound == 3.0 and again.noise_splines.unnormalized_widths.shape[-1] == 8
    assert chain_model().noise_splines.bound == 5.0  # today's default differs, so the fallback matters


@pytest.mark.parametrize("kw, match", [
    (dict(noise_bins=1), "noise_bins must be at least 2"),
    (dict(noise_bins=2.5), "noise_bins"),
    (dict(noise_bound=0.0), "noise_bound"),
    (dict(noise_bound=float("inf")), "noise_bound"),
])
def test_bad_noise_spline_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        chain_model(**kw)


def test_structural_forward_is_the_model_without_pyro():
    model = chain_model()
    config = {c: TransformReparam() for c in CONCEPTS}
    tr = poutine.trace(poutine.reparam(model.model, config=config)).get_trace(None, None, 6)
    eps = torch.stack([tr.nodes[f"{c}_base"]["value"] for c in CONCEPTS], dim=-1)
    assert_close(model.structural_forward(eps), tr.nodes["_RETURN"]["value"])


def test_concept_model_is_the_model_without_images():
    model = chain_model()
    u = torch.randn(6, 4)
    u[:3, 1] = float("nan")
    pyro.set_rng_seed(0)
    full = poutine.trace(model.model).get_trace(None, u, 6)
    pyro.set_rng_seed(0)
    alone = poutine.trace(model.concept_model).get_trace(u, 6)
    for c in ("a", "b", "b_unobserved", "c", "d"):
        assert torch.equal(full.nodes[c]["value"], alone.nodes[c]["value"]), c
        assert_close(full.nodes[c]["fn"].log_prob(full.nodes[c]["value"]), alone.nodes[c]["fn"].log_prob(alone.nodes[c]["value"]))
    assert "x" not in alone.nodes and "style" not in alone.nodes


def test_composite_decoder_draws_each_concept_from_its_own_value():
    model = CausalVAE(("p", "q", "r"), (3, 16, 16), style_dim=2, decoder="composite", channels=8, hidden=16)
    z = torch.randn(4, 5)
    layers = model.decoder.layers(z)  # [4, G = 3 concepts + style, 3, 16, 16]
    assert layers.shape == (4, 4, 3, 16, 16)
    assert_close(torch.sigmoid(layers.sum(1) + model.decoder.out.bias[:, None, None]), model.decoder(z))
    moved = z.clone()
    moved[:, 1] += 1.0  # change q only
    diff = (model.decoder.layers(moved) - layers).abs().amax((0, 2, 3, 4))
    assert diff[1] > 0 and torch.equal(diff[[0, 2, 3]], torch.zeros(3))
    assert model.config()["decoder"] == "composite"
    assert isinstance(CausalVAE.from_config(model.config()).decoder, CompositeConvDecoder)


def test_layered_decoder_mixes_layers_that_each_follow_their_own_group():
    model = CausalVAE(("p", "q", "r"), (3, 16, 16), decoder="layered", decoder_groups=[["q", "r"]], channels=8, hidden=16)
    dec = model.decoder
    z = torch.randn(4, 3)
    colour, weight = dec._painted(z)  # [4, G + 1 = 3, 3, 16, 16], [4, 3, 1, 16, 16] (the last: the background)
    assert_close(weight.sum(1), torch.ones(4, 1, 16, 16))
    layers = dec.layers(z)  # [4, G = 2, 3, 16, 16]: groups (q, r) and (p)
    assert_close(layers.sum(1) + (colour * weight)[:, -1], dec(z))
    image = dec(z).detach()
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    moved = z.clone()
    moved[:, 0] += 1.0  # p: only its layer's colour and mask move; the others keep their colours and mask ratios
    colour2, weight2 = dec._painted(moved)
    assert (colour2[:, 1] - colour[:, 1]).abs().amax() > 0
    assert torch.equal(colour2[:, [0, 2]], colour[:, [0, 2]])
    assert_close(weight2[:, 0] / weight2[:, 2], weight[:, 0] / weight[:, 2])
    assert model.config()["decoder"] == "layered" and CausalVAE.from_config(model.config()).decoder.compose == "masks"


def test_composite_decoder_groups_draw_an_object_from_its_concepts_only():
    # one object described by two concepts (q, r), one by p, and the style
    model = CausalVAE(("p", "q", "r"), (3, 16, 16), style_dim=3, decoder="composite", decoder_groups=[["q", "r"], ["p"]],
                      channels=8, hidden=16)
    z = torch.randn(4, 6)
    layers = model.decoder.layers(z)  # [4, G = 2 groups + style, 3, 16, 16]
    assert layers.shape == (4, 3, 3, 16, 16)
    assert_close(torch.sigmoid(layers.sum(1) + model.decoder.out.bias[:, None, None]), model.decoder(z))
    for k, group in ((0, 1), (1, 0), (2, 0), (4, 2)):  # p -> group 1, q and r -> group 0, a style dim -> the style's
        moved = z.clone()
        moved[:, k] += 1.0
        diff = (model.decoder.layers(moved) - layers).abs().amax((0, 2, 3, 4))
        others = [g for g in range(3) if g != group]
        assert diff[group] > 0 and torch.equal(diff[others], torch.zeros(2)), (k, diff)
    again = CausalVAE.from_config(model.config())
    assert model.config()["decoder_groups"] == [["q", "r"], ["p"]] and again.decoder.groups == [[1, 2], [0]]
    partial = CausalVAE(("p", "q", "r"), (3, 16, 16), decoder="layered", decoder_groups=[["r", "p"]])
    assert partial.config()["decoder_groups"] == [["r", "p"], ["q"]] and partial.decoder.groups == [[2, 0], [1]]
    for bad, says in (([["p", "q"], ["q", "r"]], "more than once ['q']"),
                      ([["p"], ["q", "r", "s"]], "unknown ['s']"), ("pqr", "list of non-empty lists")):
        with pytest.raises(ValueError, match=re.escape(says)):
            CausalVAE(("p", "q", "r"), (3, 16, 16), decoder="composite", decoder_groups=bad)
    with pytest.raises(ValueError, match="decoder=.composite. or .layered."):
        CausalVAE(("p", "q", "r"), (3, 16, 16), decoder="joint", decoder_groups=[["p"], ["q", "r"]])
    with pytest.raises(ValueError, match="decoder='composite' or 'layered' and images"):
        CausalVAE(("p", "q", "r"), (8,), decoder_groups=[["p"], ["q", "r"]])
    with pytest.raises(ValueError, match="partition the concept indices 0..2"):
        CompositeConvDecoder(3, 0, (3, 16, 16), groups=[[0], [1]])
    with pytest.raises(ValueError, match="compose must be 'sum' or 'masks'"):
        CompositeConvDecoder(3, 0, (3, 16, 16), compose="max")


def test_batched_log_prob_keeps_children_out_of_the_root_splines():
    """Only the roots' columns enter the spline: a child's column evaluated in a spline and then discarded
    would still turn the gradient into NaN where the spline's inverse is singular (it made training diverge
    on Pendulum with 10 % labels). Here the children's spline parameters are NaN: nothing may notice."""
    from pyro_causalvae.equations import NoiseSplines, additive_noise_log_prob

    w, h, d = (p.detach().clone() for p in NoiseSplines(3)())
    for p in (w, h, d):
        p[1:] = float("nan")
    loc = torch.zeros(5, 3, requires_grad=True)
    c = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    lp = additive_noise_log_prob(c, loc, torch.ones(3), (w, h, d), shaped=[0])
    (g,) = torch.autograd.grad(lp.sum(), loc)
    assert torch.isfinite(lp).all() and torch.isfinite(g).all()
    assert_close(lp[:, 1:], torch.distributions.Normal(0.0, 1.0).log_prob(c[:, 1:]))


def test_hidden_labels_train_the_encoder_but_not_the_structural_equations():
    """Label dropout: a labelled row whose labels the ELBO hides passes gradient to the encoder (through
    its drawn concepts) but none to the structural equations (mechanisms, noise scales, A); an unlabelled
    row still trains them."""
    model = chain_model().train()
    x, u = data()
    eqs = [model.mechanisms.W3, model.noise_scale_raw]
    u_one = u.clone()
    u_one[1:] = float("nan")  # image 0 labelled (and hidden below), the others unlabelled
    hide = torch.zeros(6, dtype=torch.bool)
    hide[0] = True

    def grads(hide_rows, labels):
        pyro.set_rng_seed(0)
        t = loss_terms(model, x, labels, hide_rows)
        return torch.autograd.grad(t["kl"] + t["labels"], eqs + [model.encoder.net[0].weight], allow_unused=True)

    g_hidden = grads(hide, u_one)  # the unlabelled images 1-5 train the equations
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in g_hidden)
    everything_held = grads(torch.ones(6, dtype=torch.bool), u.clone())  # every row labelled and hidden
    for g in everything_held[:2]:
        assert g is None or g.abs().sum() == 0
    assert everything_held[-1].abs().sum() > 0
    none_held = grads(torch.ones(6, dtype=torch.bool), None)  # unlabelled images: nothing is held
    assert none_held[0].abs().sum() > 0 and none_held[1].abs().sum() > 0


def test_minimality_term_reads_back_only_what_an_intervention_must_not_change():
    # a -> b -> c: do(a) may move everything, do(c) must keep a and b
    model = CausalVAE(("a", "b", "c"), (3, 16, 16), graph=[("a", "b"), ("b", "c")], channels=8, hidden=16)
    x, u = torch.rand(8, 3, 16, 16), torch.rand(8, 3) * 2 - 1
    post = model.posterior(x)
    v = torch.zeros(8)
    assert float(minimality_term(model, x, u, post, share=1.0, k=torch.zeros(8, dtype=torch.long), v=v).detach()) == 0.0
    term = minimality_term(model, x, u, post, share=1.0, k=torch.full((8,), 2), v=v)
    with torch.no_grad():
        read = model.posterior(model.decode(u.clone().index_fill_(1, torch.tensor([2]), 0.0))).loc
    assert_close(term, ((read - u)[:, :2] ** 2).sum(-1).mean() / (2 * 0.05**2))
    term.backward()  # trains the decoder only: the encoder reads with its weights held
    assert all(p.grad is None or not p.grad.any() for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    assert minimality_term(model, x, u, post, share=0.25).shape == ()  # 2 of the 8 images, random k and v


def test_rereading_term_trains_the_encoder_on_the_decoders_counterfactuals():
    # a -> b -> c: each image under do(c_k = another image's value), decoded with the decoder held, read back
    model = CausalVAE(("a", "b", "c"), (3, 16, 16), graph=[("a", "b"), ("b", "c")], channels=8, hidden=16)
    x, u = torch.rand(8, 3, 16, 16), torch.rand(8, 3) * 2 - 1
    u[4:, 1] = float("nan")  # half the images miss b's label: the encoder's reading stands in for it
    post = model.posterior(x)
    pyro.set_rng_seed(3)
    term = rereading_term(model, u, post, share=1.0)
    pyro.set_rng_seed(3)
    k, other = torch.randint(0, 3, (8,)), torch.randint(0, 8, (8,))
    with torch.no_grad():
        c = torch.where(torch.isnan(u), post.loc, u)
        target = model.counterfactual_concepts(c, k, c[other, k])
        read = model.posterior(model.decode(target)).loc
    assert (target != c).any(-1).sum() >= 4  # the interventions change the concepts
    assert_close(term, ((read - target) ** 2).sum(-1).mean() / (2 * 0.05**2))
    term.backward()  # trains the encoder only: the decoder's images are fixed inputs
    assert all(p.grad is None or not p.grad.any() for p in model.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert rereading_term(model, None, model.posterior(x), share=0.25).shape == ()  # unlabelled batch, 2 images


@pytest.mark.parametrize("scale", [0.1, torch.tensor([0.05, 0.2, 1.5])[:, None, None], torch.tensor([0.3]),
                                   torch.rand(3, 8, 8) + 0.1], ids=["float", "per-channel", "one", "per-pixel"])
def test_normal_nll_equals_pyro_normal_log_prob(scale):
    """The loss's image term (one residual, its squared norm per entry of the scale) is Pyro's Normal
    log-density: values and gradients, for a fixed scale and scales per channel, for all, per pixel."""
    from pyro_causalvae.loss import normal_nll

    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 8, 8, generator=g)
    loc = torch.rand(5, 3, 8, 8, generator=g).requires_grad_()
    s = scale.clone().requires_grad_() if isinstance(scale, torch.Tensor) else scale
    ours = normal_nll(x, loc, s)
    expected = -pyro.distributions.Normal(loc, s).to_event(3).log_prob(x).sum()
    assert_close(ours, expected)
    wrt = [loc] + ([s] if isinstance(s, torch.Tensor) else [])
    for a, b in zip(torch.autograd.grad(ours, wrt), torch.autograd.grad(expected, wrt)):
        assert_close(a, b)


def test_encoder_beta_weights_each_reading_by_its_scale_so_an_unread_concept_keeps_its_gradient():
    """beta-NLL (Seitzer et al. 2022) on the encoder term: each labelled reading's -log q is weighted by
    stop_grad(scale)^(2 beta); the gradient on its mean is then error / scale^(2 - 2 beta), so beta = 1 gives
    every concept the squared error's gradient whatever its scale, and beta = 0 is the plain -log q."""
    model = chain_model()
    x, u = data()
    u = _with_missing(u)
    observed = ~torch.isnan(u)
    post = model.posterior(x)
    loc = post.loc.detach().requires_grad_(True)
    scale = post.scale.detach() * torch.linspace(0.5, 20.0, 4)  # very different scales per concept
    model.posterior = lambda _x: post._replace(loc=loc, scale=scale)
    n_labelled = observed.any(-1).sum()
    for beta in (0.0, 0.5, 1.0):
        t = loss_terms(model, x, u, encoder_beta=beta)
        (g,) = torch.autograd.grad(t["encoder"], loc)
        expected = (loc - u.nan_to_num(0.0)) * observed / scale ** (2 - 2 * beta) / n_labelled
        assert_close(g, expected.detach(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="encoder_beta must be in"):
        LossWeights(encoder_beta=1.5)


def test_detached_draws_keep_the_values_and_cut_only_the_reconstruction_path_to_the_encoder():
    """loss_terms(detach_draws=True) (fit's reading warm-up): every term has the same value; the reconstruction
    passes no gradient to the encoder's readings of the inferred concepts, but still trains the decoder."""
    model = chain_model()
    x, u = data()
    u = _with_missing(u)
    post = model.posterior(x)
    loc = post.loc.detach().requires_grad_(True)
    model.posterior = lambda _x: post._replace(loc=loc, scale=post.scale.detach())
    out = {}
    for detach in (False, True):
        pyro.set_rng_seed(0)
        t = loss_terms(model, x, u, detach_draws=detach)
        g_loc, *g_dec = torch.autograd.grad(t["recon"], [loc] + list(model.decoder.parameters()), allow_unused=True)
        out[detach] = (t, g_loc, g_dec)
    (t0, g0, d0), (t1, g1, d1) = out[False], out[True]
    for k in t0:
        assert_close(t0[k], t1[k])
    missing = torch.isnan(u)
    assert g0[missing].abs().sum() > 0  # without the detach, the reconstruction trains the missing readings
    assert g1 is None or g1.abs().sum() == 0
    assert all(torch.equal(a, b) for a, b in zip(d0, d1) if a is not None)  # the decoder learns as before
