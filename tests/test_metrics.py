"""Metrics on known cases: graph recovery, R^2, counterfactual scores."""

import networkx as nx
import numpy as np
import pytest

from pyro_causalvae.metrics import edge_precision_recall, intervention_scores, pixel_errors, r2_score, shd

#   a --> b --> c        d
TRUE = nx.DiGraph([("a", "b"), ("b", "c")])
TRUE.add_node("d")


def graph(edges):
    g = nx.DiGraph(edges)
    g.add_nodes_from("abcd")
    return g


@pytest.mark.parametrize(
    "edges, expected_shd, precision, recall",
    [
        ([("a", "b"), ("b", "c")], 0, 1.0, 1.0),
        ([("b", "a"), ("b", "c")], 1, 0.5, 0.5),  # one reversal counts once
        ([("a", "b")], 1, 1.0, 0.5),  # one missing
        ([("a", "b"), ("b", "c"), ("c", "d")], 1, 2 / 3, 1.0),  # one extra
        ([], 2, 1.0, 0.0),
    ],
)
def test_shd_precision_recall(edges, expected_shd, precision, recall):
    g = graph(edges)
    assert shd(g, TRUE) == expected_shd
    assert edge_precision_recall(g, TRUE) == pytest.approx((precision, recall))


def test_graph_metrics_need_the_same_nodes():
    with pytest.raises(ValueError, match="different nodes"):
        shd(nx.DiGraph([("a", "x")]), TRUE)


def test_r2_known_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2_score(y, y) == 1.0
    assert r2_score(y, np.full(4, y.mean())) == 0.0
    assert np.isnan(r2_score(np.ones(3), np.zeros(3)))


def _labels(n=50, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, (n, 4))
    u[:, 1] = np.tanh(u[:, 0]) + 0.1 * rng.normal(size=n)  # b <- a
    u[:, 2] = u[:, 1] ** 2 - 0.5  # c <- b
    return u


def test_intervention_scores_perfect_and_leaky_judges():
    u = _labels()
    v = np.full(len(u), 0.8)
    cf = u.copy()
    cf[:, 0] = v
    noise_b = u[:, 1] - np.tanh(u[:, 0])
    cf[:, 1] = np.tanh(cf[:, 0]) + noise_b
    cf[:, 2] = cf[:, 1] ** 2 - 0.5
    perfect = intervention_scores("abcd", TRUE, "a", v, u, cf, u, cf)
    assert perfect["achieved"] == pytest.approx(1.0) and perfect["effectiveness"]["mae"] == pytest.approx(0.0)
    assert perfect["descendants"]["b"]["r2"] == pytest.approx(1.0) and perfect["descendants"]["c"]["mae"] == pytest.approx(0.0)
    assert perfect["leakage"] == {"d": 0.0}
    leaky = cf.copy()
    leaky[:, 3] += 0.3
    leaky[:, 0] = u[:, 0] + 0.5 * (v - u[:, 0])  # moved only half-way
    scores = intervention_scores("abcd", TRUE, "a", v, u, cf, u, leaky)
    assert scores["leakage"]["d"] == pytest.approx(0.3)
    assert scores["achieved"] == pytest.approx(0.5)
    # intervening on c: nothing descends from it, a, b and d must not move
    assert set(intervention_scores("abcd", TRUE, "c", v, u, cf, u, cf)["leakage"]) == {"a", "b", "d"}


def test_intervention_scores_bad_input():
    u = _labels()
    with pytest.raises(ValueError, match="unknown concept"):
        intervention_scores("abcd", TRUE, "zz", 0.0, u, u, u, u)
    with pytest.raises(ValueError, match=r"shape \[n, 4\]"):
        intervention_scores("abcd", TRUE, "a", 0.0, u, u[:, :3], u, u)


def test_pixel_errors():
    x = np.zeros((2, 1, 2, 2))
    out = pixel_errors(x, x + 0.1, x + 0.5, x + 0.2)
    assert out == pytest.approx({"cf_mse": 0.09, "unchanged_mse": 0.04, "recon_mse": 0.01, "cf_l1": 0.3, "recon_l1": 0.1})
