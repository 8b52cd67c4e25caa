"""The CausalVAE Pyro program: sites, handlers (do / condition / replay / Predictive), the loss, the graph.

Tiny models on flat observations (MLP encoder / decoder) keep these fast.
"""

import networkx as nx
import pyro
import pyro.poutine as poutine
import pytest
import torch
from torch.testing import assert_close

from pyro_causalvae import CausalVAE
from pyro_causalvae.dag import AugmentedLagrangian, acyclicity, causal_order
from pyro_causalvae.loss import LossWeights, loss_terms, pyro_elbo_loss, total_loss

# Chain with an unrelated root:
#
#     a --> b --> c        d
#
CHAIN = [("a", "b"), ("b", "c")]
CONCEPTS = ("a", "b", "c", "d")


def chain_model(**kw):
    kw.setdefault("graph", CHAIN)
    return CausalVAE(CONCEPTS, (10,), concept_dim=2, hidden=16, mechanism_hidden=8, **kw)


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
    for c in CONCEPTS:
        assert f"{c}_noise" in sites
        assert tr.nodes[c]["value"].shape == (6, 2)
        assert tr.nodes[c]["cond_indep_stack"][0].name == "data"
    assert tr.nodes["x"]["is_observed"] and tr.nodes["labels"]["is_observed"]
    assert_close(tr.nodes["labels"]["value"], u[..., None].expand(6, 4, 2))


def _counterfactual(model, x, do):
    guide_tr = poutine.trace(model.guide).get_trace(x)
    factual = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x)
    cf = poutine.trace(poutine.replay(poutine.do(model.model, data=do), trace=guide_tr)).get_trace(x)
    return factual, cf


def test_do_reaches_grandchild_and_never_a_non_descendant():
    model = chain_model()
    x, _ = data()
    factual, cf = _counterfactual(model, x, {"a": torch.tensor(2.0)})
    # the model returns the concept blocks [N, K, d] it used: a is the intervened value
    assert_close(cf.nodes["_RETURN"]["value"][:, 0], torch.full((6, 2), 2.0))
    moved = {c: (cf.nodes[c]["value"] - factual.nodes[c]["value"]).abs().max().item() for c in "bcd"}
    assert moved["b"] > 1e-3
    assert moved["c"] > 1e-4  # multi-hop: a -> b -> c
    assert moved["d"] == 0.0  # not a descendant: bit-identical
    # the decoder sees the intervened concepts
    assert not torch.allclose(cf.nodes["x"]["fn"].mean, factual.nodes["x"]["fn"].mean)


def test_do_on_middle_node_leaves_its_ancestors():
    model = chain_model()
    x, _ = data()
    factual, cf = _counterfactual(model, x, {"b": torch.tensor(-1.0)})
    assert torch.equal(cf.nodes["a"]["value"], factual.nodes["a"]["value"])
    assert torch.equal(cf.nodes["d"]["value"], factual.nodes["d"]["value"])
    assert (cf.nodes["c"]["value"] - factual.nodes["c"]["value"]).abs().max() > 1e-4


def test_do_accepts_per_image_values():
    model = chain_model()
    x, _ = data()
    v = torch.linspace(-1, 1, 6)
    pyro.set_rng_seed(1)
    _, cf = _counterfactual(model, x, {"a": v})
    pyro.set_rng_seed(1)
    _, cf0 = _counterfactual(model, x, {"a": v[:, None].expand(6, 2).clone()})
    assert_close(cf.nodes["c"]["value"], cf0.nodes["c"]["value"])


def test_condition_and_predictive_and_render_model():
    model = chain_model()
    x, u = data()
    cond = poutine.condition(model.model, data={"b": torch.zeros(6, 2)})
    tr = poutine.trace(cond).get_trace(x)
    assert torch.equal(tr.nodes["b"]["value"], torch.zeros(6, 2))
    pred = pyro.infer.Predictive(model.model, guide=model.guide, num_samples=3, return_sites=["c", "labels"])
    out = pred(x)
    assert out["c"].shape == (3, 6, 2) and out["labels"].shape == (3, 6, 4, 2)
    prior = pyro.infer.Predictive(model.model, num_samples=2, return_sites=["x", "a"])(None, None, 5)
    assert prior["x"].shape == (2, 5, 10)
    source = pyro.render_model(model.model, model_args=(x, u)).source
    edges = {tuple(line.strip().split(" -> ")) for line in source.splitlines() if " -> " in line}
    # value provenance follows the graph: c depends on a's and b's noise (a -> b -> c), d on its own only
    assert {("a_noise", "c"), ("b_noise", "c"), ("c_noise", "c"), ("d_noise", "d")} <= edges
    assert not {("a_noise", "d"), ("b_noise", "d"), ("c_noise", "d"), ("d_noise", "c")} & edges


def test_elbo_terms_equal_pyro_trace_mean_field_elbo():
    model = chain_model()
    x, u = data()
    pyro.set_rng_seed(3)
    terms = loss_terms(model, x, u)
    pyro.set_rng_seed(3)
    expected = pyro_elbo_loss(model, x, u)
    assert_close(terms["recon"] + terms["kl"] + terms["labels"], expected, rtol=1e-5, atol=1e-4)


def test_unlabelled_and_partly_labelled_images_train():
    model = chain_model()
    x, u = data()
    t = loss_terms(model, x, None)
    assert t["labels"] == 0 and t["label_loss"] == 0
    u = u.clone()
    u[0, 1] = float("nan")
    t = loss_terms(model, x, u)
    assert torch.isfinite(total_loss(t, LossWeights()))


def test_pyro_svi_registers_parameters_and_learns():
    model = chain_model()
    x, u = data(64)
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.TraceMeanField_ELBO())
    losses = [svi.step(x, u) for _ in range(60)]
    assert len(list(pyro.get_param_store().keys())) > 10
    assert sum(losses[-10:]) < sum(losses[:10])


def test_conv_networks_shapes():
    model = CausalVAE(("p", "q"), (3, 32, 32), concept_dim=3, channels=8, hidden=16)
    x = torch.rand(4, 3, 32, 32)
    tr = poutine.trace(model.model).get_trace(x)
    assert tr.nodes["x"]["fn"].mean.shape == (4, 3, 32, 32)
    assert model.encode(x).shape == (4, 2, 3)
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
        (dict(concept_dim=0), "concept_dim"),
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


def test_structural_forward_is_the_model_without_pyro():
    model = chain_model()
    x, _ = data()
    tr = poutine.trace(model.model).get_trace(x)
    eps = torch.stack([tr.nodes[f"{c}_noise"]["value"] for c in CONCEPTS], dim=-2)
    assert_close(model.structural_forward(eps), tr.nodes["_RETURN"]["value"])
