"""Causal order from labels (pyro_causalvae.discovery): HSIC on known cases, order search, warm start."""

import pyro
import pytest
import torch

from pyro_causalvae import CausalVAE
from pyro_causalvae.datasets import Flow, Pendulum
from pyro_causalvae.discovery import (
    choose_order_and_warm_start,
    gram,
    hsic_unbiased,
    median_bandwidth,
    order_scores,
    order_search,
    redundant_edges,
    warm_start_graph,
)
from pyro_causalvae.metrics import shd


def _hsic(x, y):
    x, y = x[:, None].double(), y[:, None].double()
    return float(hsic_unbiased(gram(x, median_bandwidth(x)), gram(y, median_bandwidth(y))))


def test_hsic_is_near_zero_for_independent_and_positive_for_dependent():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, generator=g) * 2 - 1
    noise = torch.rand(400, generator=g) * 2 - 1
    assert abs(_hsic(x, noise)) < 2e-3
    assert _hsic(x, x**2) > 10 * abs(_hsic(x, noise))  # uncorrelated but dependent
    assert _hsic(x, x) > _hsic(x, x + noise)


def _anm(n=1200, seed=0):
    # x --> y, y = x^3 + uniform noise: the additive-noise model is identifiable
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g) * 2 - 1
    y = x**3 + 0.2 * (torch.rand(n, generator=g) * 2 - 1)
    return x, y


@pytest.mark.parametrize("swap", [False, True])
def test_order_search_finds_the_cause_of_an_additive_noise_model(swap):
    x, y = _anm()
    labels = torch.stack([y, x] if swap else [x, y], 1)
    order, _ = order_search(labels, n=400)
    assert order == ([1, 0] if swap else [0, 1])


def test_required_edges_constrain_the_order_and_cycles_are_refused():
    x, y = _anm()
    labels = torch.stack([x, y], 1)
    assert order_search(labels, required=[(1, 0)], n=200)[0] == [1, 0]
    with pytest.raises(ValueError, match="no causal order"):
        order_search(labels, required=[(1, 0), (0, 1)], n=200)
    with pytest.raises(ValueError, match=r"shape \[N, K\]"):
        order_search(torch.zeros(5))


def test_greedy_search_beyond_exact_max_agrees_on_a_simple_case():
    x, y = _anm()
    assert order_search(torch.stack([y, x], 1), n=400, exact_max=1)[0] == [1, 0]


@pytest.fixture(scope="module")
def pendulum_labels():
    return Pendulum(split="train", size=16)


def test_pendulum_order_puts_the_independent_angles_first(pendulum_labels):
    order, _ = order_search(pendulum_labels.labels_normalised, n=500)
    assert set(order[:2]) == {0, 1}  # pendulum_angle, light_angle


def test_warm_start_recovers_the_flow_graph():
    ds = Flow(split="train", size=16)
    pyro.set_rng_seed(0)
    model = CausalVAE(ds.concepts, ds.image_shape, style_dim=1)
    order, _ = order_search(ds.labels_normalised, n=500)
    warm_start_graph(model, ds.labels_normalised, order, steps=1500)
    assert shd(model.graph(), ds.graph) == 0
    assert model.acyclicity().item() == pytest.approx(0.0, abs=1e-8)
    # the structural equations follow the found order; the 6 entries of A against it (of 12 off-diagonal
    # ones) are penalised by the order prior from now on
    assert model.order == order and model.order_penalty.sum().item() == 6


def test_order_scores_rank_every_admitted_order():
    x, y = _anm()
    z = torch.rand(len(x), generator=torch.Generator().manual_seed(3))  # an independent third concept
    labels = torch.stack([y, z, x], 1)
    ranked = order_scores(labels, n=300)
    assert len(ranked) == 6 and [s for s, _ in ranked] == sorted(s for s, _ in ranked)
    best = ranked[0][1]
    assert best.index(2) < best.index(0)  # x before y
    assert order_search(labels, n=300)[0] == best  # the search returns the best-scored order
    assert all(o.index(0) < o.index(1) for _, o in order_scores(labels, required=[(0, 1)], n=300))


def test_near_ties_are_broken_by_the_sparsest_graph():
    # Pendulum with this row sample: independence alone prefers light < position < angle < length
    # (position is nearly additive in the two angles); that order needs 5 edges, the true one 4.
    ds = Pendulum(split="train", size=16)
    pyro.set_rng_seed(1)
    model = CausalVAE(ds.concepts, ds.image_shape, style_dim=1)
    order, _, candidates = choose_order_and_warm_start(model, ds.labels_normalised, seed=1, steps=1500)
    assert candidates[0]["order"][:2] == [1, 3]  # the best-scoring order is a wrong one...
    assert set(order[:2]) == {0, 1} and shd(model.graph(), ds.graph) == 0  # ...and is not chosen
    assert min(c["edges"] for c in candidates) == 4 < candidates[0]["edges"]


def test_redundant_edges_drops_a_parent_that_adds_nothing_beyond_the_others():
    #   a --> b --> c <-- h      plus the spurious a --> c (b carries a's information, and more)
    g = torch.Generator().manual_seed(0)
    a, n, h = (torch.rand(1200, generator=g) for _ in range(3))
    b = a**3 + n
    c = (b * (h + 0.5)).sqrt()
    labels = torch.stack([a, b, h, c], 1)
    edges = [(0, 1), (1, 3), (2, 3), (0, 3)]
    removed = redundant_edges(labels, edges)
    assert [r["edge"] for r in removed] == [(0, 3)]
    assert removed[0]["gain"] < 0.01
    assert redundant_edges(labels, edges, keep=[(0, 3)]) == []  # a required edge stays
    assert redundant_edges(labels, [(0, 1), (1, 3), (2, 3)]) == []  # every true parent is needed
    # b, not a, is dropped if the graph had only the spurious a --> c next to the right one
    assert [r["edge"] for r in redundant_edges(labels, [(0, 3), (1, 3)])] == [(0, 3)]


def test_prune_removes_an_edge_from_the_graph_the_equations_and_the_state_dict():
    model = CausalVAE(("a", "b", "c"), (6,), style_dim=1, hidden=8, mechanism_hidden=4)
    model.init_from_order([0, 1, 2])
    with torch.no_grad():
        model.A_raw.copy_(torch.tensor([[0.0, 0.5, 0.3], [0.0, 0.0, 0.6], [0.0, 0.0, 0.0]]))
    assert set(model.graph().edges()) == {("a", "b"), ("a", "c"), ("b", "c")}
    model.prune([(0, 2)])
    assert set(model.graph().edges()) == {("a", "b"), ("b", "c")}
    assert 0 not in model.parents()[2]
    again = CausalVAE(("a", "b", "c"), (6,), style_dim=1, hidden=8, mechanism_hidden=4)
    again.load_state_dict(model.state_dict())
    assert again.pruned == [(0, 2)] and set(again.graph().edges()) == {("a", "b"), ("b", "c")}
    known = CausalVAE(("a", "b"), (6,), style_dim=1, graph=[("a", "b")], hidden=8, mechanism_hidden=4)
    with pytest.raises(ValueError, match="learned graph only"):
        known.prune([(0, 1)])
