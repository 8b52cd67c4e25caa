"""The structural equations fitted to the labels before SVI (``pyro_causalvae.warm_start``), on a known case:

    a --> b        a ~ N(0, 1),   b = 2 a + 0.1 eps,   eps ~ N(0, 1)     (labels already in normalised units)

Before the fit the child's noise scale is its initial 0.47; after it, the model's own prior samples follow
the simulator: sd(a) = 1, and the residual b - 2a has sd 0.1.
"""

import pyro
import torch

from pyro_causalvae import CausalVAE
from pyro_causalvae.warm_start import fit_structural_equations


def labels(n: int = 2000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, generator=g)
    return torch.stack([a, 2 * a + 0.1 * torch.randn(n, generator=g)], 1)


def prior_concepts(model: CausalVAE, n: int = 20000) -> torch.Tensor:
    with torch.no_grad():
        return model.concept_model(size=n)


def test_the_fit_recovers_a_linear_gaussian_mechanism_and_its_noise():
    u = labels()
    pyro.set_rng_seed(0)
    # the default MLP mechanism (a "linear" one is g_b = A[a, b] a + const: its slope is A's, held by the fit)
    model = CausalVAE(["a", "b"], (3, 16, 16), graph=[("a", "b")], channels=8, hidden=16)
    c = prior_concepts(model)
    assert float((c[:, 1] - 2 * c[:, 0]).std()) > 0.3  # the untrained equations are far off: the test can fail
    found = fit_structural_equations(model, u, steps=1500, seed=0)
    assert found["steps"] == 1500 and found["rows"] == 2000
    assert found["nll_after"] < found["nll_before"] - 1.0
    c = prior_concepts(model)
    assert abs(float(c[:, 0].std()) - 1.0) < 0.1
    assert abs(float((c[:, 1] - 2 * c[:, 0]).mean())) < 0.05
    assert abs(float((c[:, 1] - 2 * c[:, 0]).std()) - 0.1) < 0.03


def test_rows_with_a_missing_label_are_skipped_and_zero_steps_change_nothing():
    u = labels(100)
    u[::2, 1] = float("nan")
    model = CausalVAE(["a", "b"], (3, 16, 16), graph=[("a", "b")], channels=8, hidden=16)
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    assert fit_structural_equations(model, u, steps=0) == {"rows": 50, "steps": 0}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert fit_structural_equations(model, u, steps=5)["rows"] == 50


def test_edges_are_rescaled_to_a_strongest_of_one_and_the_graph_is_kept():
    """Small edge weights mean small mechanism inputs (a worse fit): the fit first scales each concept's
    incoming edges so that the strongest is 1; ratios, non-edges and the graph stay.

        a --> c <-- b        (A: a->c 0.1, b->c -0.05, a->b 0.004: below the edge rule)
    """
    from pyro_causalvae.warm_start import unit_edge_scale

    model = CausalVAE(["a", "b", "c"], (3, 16, 16), channels=8, hidden=16)  # a learned graph
    model.init_from_order([0, 1, 2])
    with torch.no_grad():
        model.A_raw.zero_()
        model.A_raw[0, 2], model.A_raw[1, 2], model.A_raw[0, 1] = 0.1, -0.05, 0.004
    graph = sorted(model.graph().edges())
    assert graph == [("a", "c"), ("b", "c")]
    unit_edge_scale(model)
    A = model.adjacency.detach()
    assert torch.allclose(A[:, 2], torch.tensor([1.0, -0.5, 0.0]))
    assert float(A[0, 1]) == float(torch.tensor(0.004))  # not an edge: unchanged
    assert sorted(model.graph().edges()) == graph
    linear = CausalVAE(["a", "b"], (3, 16, 16), graph=[("a", "b")], mechanism="linear", channels=8, hidden=16)
    with torch.no_grad():
        linear.A_raw[0, 1] = 0.3
    fit_structural_equations(linear, labels(50), steps=2)
    assert float(linear.A_raw[0, 1].detach()) == float(torch.tensor(0.3))  # a linear mechanism's slopes are A's own: never rescaled


def uniform_child_labels(n: int = 4000) -> torch.Tensor:
    """a --> b with a uniform noise: a ~ U(-1, 1), b = a + U(-0.5, 0.5) (Flow's water height is such a child)."""
    g = torch.Generator().manual_seed(1)
    a = torch.rand(n, generator=g) * 2 - 1
    return torch.stack([a, a + torch.rand(n, generator=g) - 0.5], 1)


def _fitted(noise: str, u: torch.Tensor) -> CausalVAE:
    pyro.set_rng_seed(0)
    model = CausalVAE(["a", "b"], (3, 16, 16), graph=[("a", "b")], channels=8, hidden=16, noise=noise)
    fit_structural_equations(model, u, steps=500, seed=0)
    return model.eval()


def test_spline_all_fits_the_childs_noise_shape_after_its_mechanism():
    """``noise="spline-all"``: the first stage is the ``"spline"`` fit (the children's noise Gaussian), so the
    mechanisms come out identical; the second stage fits the child's noise shape with the mechanisms held.
    A uniform noise then gets a flat density across its width, which a Gaussian cannot have."""
    u = uniform_child_labels()
    gauss, shaped = _fitted("spline", u), _fitted("spline-all", u)
    for p, q in zip(gauss.mechanisms.parameters(), shaped.mechanisms.parameters()):
        assert torch.equal(p, q)

    def log_density_drop(model: CausalVAE) -> float:
        """log p(b | a) at the noise's centre minus at 0.4 from it (0 for the true uniform noise)."""
        a = torch.zeros(2, 1)
        g = model.mechanisms(torch.cat([a, a], 1), model.scm_adjacency())[:, 1:]  # [2, 1]: g_b(a = 0)
        c = torch.cat([a, g + torch.tensor([[0.0], [0.4]])], 1)
        with torch.no_grad():
            lp = model.concept_log_prob(c)[:, 1]
        return float(lp[0] - lp[1])

    assert log_density_drop(gauss) > 0.7  # the Gaussian of sd 0.29: 0.4^2 / (2 * 0.083) = 0.96
    assert abs(log_density_drop(shaped)) < 0.35
    with torch.no_grad():  # the prior's noise of b: draws minus the mechanism of the drawn a
        c = shaped.concept_model(size=20000)
        residual = c[:, 1] - shaped.mechanisms(c, shaped.scm_adjacency())[:, 1]
    assert float(residual.abs().quantile(0.999)) < 0.8  # uniform: 0.5 (0.62 after 800 steps); a Gaussian of this sd: 0.95
    assert abs(float(residual.std()) - 1 / 12**0.5) < 0.03
