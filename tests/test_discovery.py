"""The graph from the labels (pyro_causalvae.discovery, .independence): HSIC and regressions on known
cases, the order search, the tie-break, the scalable search on a planted graph, the warm start."""

import pyro
import pytest
import torch

from pyro_causalvae import CausalVAE
from pyro_causalvae.datasets import Flow, Pendulum
from pyro_causalvae.discovery import (
    choose_order_and_warm_start,
    label_graph,
    order_search,
    redundant_edges,
    search_orders,
    select_parents,
    selection_threshold,
    torch_threads,
    warm_start_graph,
)
from pyro_causalvae.independence import KernelTable, sample_rows, standardise
from pyro_causalvae.metrics import shd

torch.set_num_threads(1)


def _table(*cols, rows=400):
    return KernelTable(standardise(torch.stack(cols, 1)), rows=rows)


def test_hsic_is_near_zero_for_independent_and_positive_for_dependent():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(800, generator=g) * 2 - 1
    noise = torch.rand(800, generator=g) * 2 - 1
    t = _table(x, noise, x**2, x + noise)
    h = t.regress(0, [])[1]  # HSIC of (x - mean) against each column
    assert abs(float(h[1])) < 2e-3
    assert float(h[2]) > 10 * abs(float(h[1]))  # uncorrelated but dependent
    assert float(h[0]) > float(h[3]) > 10 * abs(float(h[1]))


def test_regression_residual_is_small_for_a_deterministic_child_and_its_hsic_about_zero():
    g = torch.Generator().manual_seed(1)
    a, b = (torch.rand(1000, generator=g) * 2 - 1 for _ in range(2))
    t = _table(a, b, torch.sin(2 * a) * b)
    mse, h = t.regress(2, [0, 1])
    assert mse < 1e-2 * float(t.var[2])
    assert float(h[:2].abs().max()) < 1e-4
    assert t.regress(2, [1, 0]) is t.regress(2, [0, 1])  # cached by the parent set


def test_sample_rows_rule():
    assert [sample_rows(n) for n in (100, 1000, 10_000, 50_000)] == [50, 500, 1000, 2237]
    assert sample_rows(50_000, cap=300) == 300


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
    order, _ = order_search(labels, rows=400)
    assert order == ([1, 0] if swap else [0, 1])


def test_required_edges_constrain_the_order_and_bad_input_is_refused():
    x, y = _anm()
    labels = torch.stack([x, y], 1)
    assert order_search(labels, required=[(1, 0)], rows=200)[0] == [1, 0]
    with pytest.raises(ValueError, match="no causal order"):
        order_search(labels, required=[(1, 0), (0, 1)], rows=200)
    with pytest.raises(ValueError, match=r"shape \[N, K\]"):
        order_search(torch.zeros(5))
    with pytest.raises(ValueError, match="16 fully labelled rows"):
        order_search(torch.zeros(10, 2))
    with pytest.raises(ValueError, match="beam"):
        search_orders(labels, beam=0)
    with pytest.raises(ValueError, match="required edge"):
        order_search(labels, required=[(0, 5)])


def _planted(K, n, seed, chain=False):
    """A planted additive graph with strong, clearly nonlinear mechanisms and uniform noise."""
    g = torch.Generator().manual_seed(seed)
    X = torch.zeros(n, K)
    edges = []
    for i in range(K):
        parents = [i - 1] if chain and i else ([j for j in (i - 1, i - 3) if j >= 0] if i % 2 else [])
        f = sum(torch.tanh(2 * X[:, j]) + 0.6 * X[:, j] ** 2 for j in parents) if parents else 0.0
        X[:, i] = f + (0.35 if parents else 1.0) * (torch.rand(n, generator=g) * 2 - 1)
        X[:, i] = (X[:, i] - X[:, i].mean()) / X[:, i].std()
        edges += [(j, i) for j in parents]
    perm = torch.randperm(K, generator=g)  # hide the order in the column layout
    inv = torch.argsort(perm)
    return X[:, perm], {(int(inv[j]), int(inv[i])) for j, i in edges}


def test_three_node_chain_and_collider():
    X, edges = _planted(3, 1500, 0, chain=True)  # a -> b -> c
    assert set(label_graph(X, rows=600).edges) == edges
    g = torch.Generator().manual_seed(2)
    a, b = (torch.rand(1500, generator=g) * 2 - 1 for _ in range(2))
    c = torch.tanh(2 * a) + b**2 + 0.2 * (torch.rand(1500, generator=g) * 2 - 1)  # a -> c <- b
    assert set(label_graph(torch.stack([c, a, b], 1), rows=600).edges) == {(1, 0), (2, 0)}


def test_the_beam_search_recovers_a_planted_graph_of_12_concepts():
    X, edges = _planted(12, 1000, 3)
    found = label_graph(X, rows=500)
    assert len(edges) >= 10 and set(found.edges) == edges
    # polynomial work: an exact search would regress each concept on each of the 2^11 subsets of the others
    assert found.regressions < 1000 < 12 * 2**11


def test_torch_threads_are_set_and_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        with torch_threads(0):
            pass


@pytest.fixture(scope="module")
def pendulum_labels():
    return Pendulum(split="train", size=16)


def test_pendulum_order_puts_the_independent_angles_first(pendulum_labels):
    found = label_graph(pendulum_labels.labels_normalised, rows=600)
    assert set(found.order[:2]) == {0, 1}  # pendulum_angle, light_angle


def test_warm_start_recovers_the_flow_graph():
    ds = Flow(split="train", size=16)
    pyro.set_rng_seed(0)
    model = CausalVAE(ds.concepts, ds.image_shape, style_dim=1)
    order, _ = order_search(ds.labels_normalised, rows=500)
    warm_start_graph(model, ds.labels_normalised, order, steps=1500)
    assert shd(model.graph(), ds.graph) == 0
    assert model.acyclicity().item() == pytest.approx(0.0, abs=1e-8)
    # the structural equations follow the found order; the 6 entries of A against it (of 12 off-diagonal
    # ones) are penalised by the order prior from now on
    assert model.order == order and model.order_penalty.sum().item() == 6


def test_near_ties_are_broken_by_the_fewest_edges_and_every_phase_is_logged(pendulum_labels):
    # Pendulum with this row sample: independence alone prefers light < position < length < angle
    # (position is nearly additive in the two angles); that order needs 5 edges, the true one 4.
    ds = pendulum_labels
    pyro.set_rng_seed(1)
    model = CausalVAE(ds.concepts, ds.image_shape, style_dim=1)
    lines = []
    order, _, candidates = choose_order_and_warm_start(model, ds.labels_normalised, seed=1, steps=1500, log=lines.append)
    assert candidates[0]["order"][0] == 1 and candidates[0]["order"][-1] == 0  # the best-scoring order is wrong...
    assert set(order[:2]) == {0, 1} and shd(model.graph(), ds.graph) == 0  # ...and is not chosen
    assert min(c["edges"] for c in candidates) == 4 < candidates[0]["edges"]
    assert [ln.split(" ")[2] for ln in lines] == ["order", "warm"] and all(" s (" in ln for ln in lines)
    assert "threads 1" in lines[0]


def test_few_rows_raise_the_selection_threshold_to_the_chance_level():
    #   a    b      two independent roots: any gain of one as the other's parent is chance
    assert selection_threshold(0.01, 1000) == 0.01 and selection_threshold(0.01, 250) == pytest.approx(0.02)
    spurious_fixed, spurious_raised = 0, 0
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        t = KernelTable(standardise(torch.rand(548, 2, generator=g, dtype=torch.float64)), seed=seed)  # 274 per half
        fixed = select_parents(t, 1, [0], min_gain=0.01)[0]
        raised = select_parents(t, 1, [0], min_gain=selection_threshold(0.01, t.n))[0]
        spurious_fixed += fixed == (0,)
        spurious_raised += raised == (0,)
    # measured: 3 of 40 draws clear the fixed 1 %, 1 of 40 (a gain of 0.0216) the raised 1.8 %
    assert spurious_fixed >= 3 and spurious_raised <= spurious_fixed // 3


def test_near_ties_survive_the_beam_and_few_labels_still_give_the_pendulum_graph(pendulum_labels):
    # 548 labelled rows (a 10 % semi-supervised run, benchmarks/semi_supervised.py's subset of seed 2). The
    # true order (4 edges) scores 0.16 / rows above light- and position-first orders (5 edges); with at most
    # 2 partial orders per remaining set the beam had merged it away, and a chance gain of 1.4 % had given
    # light_angle the parent pendulum_angle.
    ds = pendulum_labels
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(10_002))[:548].sort().values
    u = ds.labels_normalised[idx]
    found = label_graph(u, seed=2)
    assert sorted(found.edges) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert found.order != found.candidates[0].order  # a near-tie with fewer edges beat the best score
    narrow = search_orders(u, seed=2, tolerance=0.0)  # the per-subset merge alone drops the true orders
    assert all(set(c.order[:2]) != {0, 1} for c in narrow)


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
