"""Ground-truth SCMs of the synthetic worlds: equations, abduction, counterfactuals, checks."""

import math

import networkx as nx
import pytest
import torch
from torch.testing import assert_close

from pyro_causalvae.datasets import SCM, FlowSCM, PendulumSCM
from pyro_causalvae.datasets.flow import flow_grid
from pyro_causalvae.datasets.pendulum import pendulum_grid

from truth import FLOW_EDGES, PENDULUM_EDGES


def ref_pendulum(theta: float, phi: float) -> tuple[float, float]:
    """The reference equations, written independently in float64 (tan form of the projection)."""

    def proj(x, y, b):
        return (b - (y - x * math.tan(phi))) / math.tan(phi)

    p0 = proj(10.0, 10.5, -0.5)
    p1 = proj(10 + 9.5 * math.sin(theta), 10.5 - 9.5 * math.cos(theta), -0.5)
    return max(3.0, abs(p0 - p1)), (p0 + p1) / 2


def ref_flow(r: float, h_raw: float, hole: float) -> list[float]:
    b = r / 30
    h = b**3 + h_raw / 10
    hp = hole / 3
    return [b, h, hp, math.sqrt(2 * 0.98 * h * (hp - 0.5))]


# --------------------------------------------------------------------------- structure
def test_concepts_and_graphs():
    p, f = PendulumSCM(), FlowSCM()
    assert p.concepts == ("pendulum_angle", "light_angle", "shadow_length", "shadow_position")
    assert f.concepts == ("ball_size", "water_height", "hole_position", "water_flow")
    assert set(p.graph.edges()) == PENDULUM_EDGES and list(p.graph.nodes()) == list(p.concepts)
    assert set(f.graph.edges()) == FLOW_EDGES and list(f.graph.nodes()) == list(f.concepts)
    for scm in (p, f):
        assert isinstance(scm, SCM) and isinstance(scm.graph, nx.DiGraph)
        assert list(nx.topological_sort(scm.graph))  # acyclic
        order = {c: i for i, c in enumerate(scm.concepts)}
        assert all(order[u] < order[v] for u, v in scm.graph.edges())
        assert scm.label_loc.shape == (4,) and scm.label_scale.dtype == torch.float32
        assert (scm.label_scale > 0).all()
    assert p.roots == ("pendulum_angle", "light_angle")
    assert f.roots == ("ball_size", "hole_position")


def test_label_normalisation_constants():
    p, f = PendulumSCM(), FlowSCM()
    assert_close(
        p.label_loc[0], torch.tensor(1.5 * math.pi / 200 / 1)
    )  # midpoint of [-40, 43] pi / 200
    assert_close(p.label_scale[1], torch.tensor(43.5 * math.pi / 200))
    assert_close(p.label_loc[2:], torch.tensor([7.8, 10.85]))
    assert_close(f.label_loc[0], torch.tensor((5 / 30 + 34 / 30) / 2))
    assert_close(f.label_scale[2], torch.tensor((14 / 3 - 2) / 2))
    # constants, not data-dependent: the official grids normalise into about [-1, 1]
    for scm in (p, f):
        z = scm.normalise(scm.forward(scm.grid_exogenous()))
        assert z.abs().max() <= 1.0 + 1e-5
        assert z.abs().max(0).values.min() > 0.95
        assert_close(scm.denormalise(z), scm.forward(scm.grid_exogenous()))


# --------------------------------------------------------------------------- structural equations
def test_pendulum_known_point():
    p = PendulumSCM()
    pa = {"pendulum_angle": torch.tensor([0.0]), "light_angle": torch.tensor([math.pi / 4])}
    # pivot -> 10 - 11 = -1; tip (10, 1) -> 10 - 1.5 = 8.5: position 3.75, length 9.5
    assert_close(p.mechanism("shadow_position", pa), torch.tensor([3.75]))
    assert_close(p.mechanism("shadow_length", pa), torch.tensor([9.5]))
    # light straight above (phi = pi / 2): the shadow is the rod's vertical projection
    x = p.forward(torch.tensor([[0.3, math.pi / 2, 0.0, 0.0]]))
    d = 9.5 * math.sin(0.3)
    assert_close(x[0, 2:], torch.tensor([3.0, 10 + d / 2]))
    # the floor of 3 on the shadow's length: the rod parallel to the light
    th = 0.6
    x = p.forward(torch.tensor([[th, th + math.pi / 2, 0.0, 0.0]]))
    assert_close(x[0, 2], torch.tensor(3.0))


def test_pendulum_grid_matches_reference():
    p = PendulumSCM()
    grid = pendulum_grid()
    assert grid.shape == (7308, 2) and 100 not in grid[:, 1].tolist()
    assert (
        grid[:, 0].min() == -40
        and grid[:, 0].max() == 43
        and grid[:, 1].min() == 60
        and grid[:, 1].max() == 147
    )
    x = p.forward(p.grid_exogenous())
    rows = torch.randint(0, 7308, (50,), generator=torch.Generator().manual_seed(0))
    for k in rows.tolist():
        i, j = grid[k].tolist()
        length, position = ref_pendulum(i * math.pi / 200, j * math.pi / 200)
        assert_close(x[k], torch.tensor([i * math.pi / 200, j * math.pi / 200, length, position]))
    assert 2.0 <= float(x[:, 3].min()) < 2.1 and 19.5 < float(x[:, 3].max()) <= 19.7
    assert float(x[:, 2].min()) == 3.0 and 12.4 < float(x[:, 2].max()) <= 12.6


def test_flow_known_point_and_grid():
    f = FlowSCM()
    # r = 30, h_raw = 10, hole = 6: ball 1, height 1 + 1 = 2, hole 2, flow sqrt(1.96 * 2 * 1.5)
    x = f.forward(torch.tensor([[1.0, 1.0, 2.0, 0.0]]))
    assert_close(x, torch.tensor([[1.0, 2.0, 2.0, math.sqrt(5.88)]]))
    pa = {"water_height": torch.tensor([2.0]), "hole_position": torch.tensor([2.0])}
    assert_close(f.mechanism("water_flow", pa), torch.tensor([math.sqrt(5.88)]))
    assert_close(
        f.mechanism("water_height", {"ball_size": torch.tensor([0.5])}), torch.tensor([0.125])
    )
    grid = flow_grid()
    assert grid.shape == (8100, 3)
    x = f.forward(f.grid_exogenous())
    for k in (0, 1, 17, 4049, 8099):
        assert_close(x[k], torch.tensor(ref_flow(*grid[k].tolist()), dtype=torch.float32))
    # float labels, never truncated: water_height takes many values
    assert x[:, 1].unique().numel() > 500


def test_mechanism_checks():
    p = PendulumSCM()
    with pytest.raises(ValueError, match="root"):
        p.mechanism("pendulum_angle", {})
    with pytest.raises(ValueError, match="unknown concept 'mass'"):
        p.mechanism("mass", {})
    with pytest.raises(ValueError, match="needs the parents"):
        p.mechanism("shadow_length", {"pendulum_angle": torch.zeros(1)})


# --------------------------------------------------------------------------- sampling and abduction
@pytest.mark.parametrize("cls", [PendulumSCM, FlowSCM])
def test_sample_deterministic_and_in_range(cls):
    scm = cls()
    a, b, c = scm.sample(500, seed=1), scm.sample(500, seed=1), scm.sample(500, seed=2)
    assert a.shape == (500, 4) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    z = scm.normalise(a)
    assert z.abs().max() <= 1.0 + 1e-5
    # noise 0: children are their mechanisms exactly, roots keep their value
    u = scm.abduct(a)
    child = ~scm._root_mask
    assert torch.equal(u[:, ~child], a[:, ~child])
    if cls is PendulumSCM:
        assert torch.equal(u[:, child], torch.zeros_like(u[:, child]))
    else:  # water_height's exogenous part is h_raw / 10 in [1, 3.9]
        assert float(u[:, 1].min()) >= 1.0 and float(u[:, 1].max()) <= 3.9 + 1e-6
        assert torch.equal(u[:, 3], torch.zeros(500))


@pytest.mark.parametrize("cls", [PendulumSCM, FlowSCM])
def test_sample_noise(cls):
    scm = cls(noise=0.1)
    x = scm.sample(4000, seed=0)
    resid = scm.abduct(x) - cls().sample_exogenous(4000, torch.Generator().manual_seed(0))
    child = ~scm._root_mask
    assert_close(resid[:, ~child], torch.zeros(4000, 2))  # roots carry no observation noise
    std = resid[:, child].std(0) / scm.label_scale[child]
    assert_close(std, torch.full((2,), 0.1), atol=0.01, rtol=0)


# --------------------------------------------------------------------------- counterfactuals
def changed(a: torch.Tensor, b: torch.Tensor) -> set[int]:
    return {k for k in range(a.shape[1]) if not torch.equal(a[:, k], b[:, k])}


@pytest.mark.parametrize("cls", [PendulumSCM, FlowSCM])
@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_counterfactual_moves_exactly_the_descendants(cls, noise):
    scm = cls(noise=noise)
    x = scm.sample(64, seed=3)
    for k, name in enumerate(scm.concepts):
        value = x[:, k] + 0.1 * scm.label_scale[k]
        cf = scm.counterfactual(x, {name: value})
        expected = {k} | {scm.concepts.index(d) for d in nx.descendants(scm.graph, name)}
        assert changed(x, cf) == expected, name
        assert torch.equal(cf[:, k], value)


def test_pendulum_do_light_angle():
    p = PendulumSCM()
    x = p.sample(32, seed=0)
    cf = p.counterfactual(x, {"light_angle": 1.2})
    assert torch.equal(cf[:, 0], x[:, 0])  # pendulum_angle bit-identical
    assert (cf[:, 1] == 1.2).all()
    for k in range(32):
        length, position = ref_pendulum(float(x[k, 0]), 1.2)
        assert_close(cf[k, 2:], torch.tensor([length, position]))
    assert not torch.equal(cf[:, 3], x[:, 3])


def test_flow_do_water_height_and_multi_hop():
    f = FlowSCM()
    x = f.forward(torch.tensor([[1.0, 1.0, 2.0, 0.0], [0.5, 2.0, 3.0, 0.0]]))
    cf = f.counterfactual(x, {"water_height": torch.tensor([3.0, 4.0])})
    assert torch.equal(cf[:, [0, 2]], x[:, [0, 2]])
    assert_close(cf[:, 1], torch.tensor([3.0, 4.0]))
    assert_close(cf[:, 3], torch.sqrt(1.96 * torch.tensor([3.0, 4.0]) * torch.tensor([1.5, 2.5])))
    # do(ball_size) reaches water_flow through water_height, holding h_raw / 10
    cf = f.counterfactual(x, {"ball_size": 0.8})
    h = torch.tensor([0.8**3 + 1.0, 0.8**3 + 2.0])
    assert_close(cf[:, 1], h)
    assert_close(cf[:, 3], torch.sqrt(1.96 * h * torch.tensor([1.5, 2.5])))
    assert torch.equal(cf[:, 2], x[:, 2])
    # several interventions: the do'ed value of a descendant wins
    cf = f.counterfactual(x, {"ball_size": 0.8, "water_height": 2.5})
    assert (cf[:, 1] == 2.5).all()
    assert_close(cf[:, 3], torch.sqrt(1.96 * 2.5 * torch.tensor([1.5, 2.5])))


@pytest.mark.parametrize("cls", [PendulumSCM, FlowSCM])
@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_counterfactual_of_the_factual_is_the_factual(cls, noise):
    scm = cls(noise=noise)
    x = scm.sample(64, seed=5)
    for k, name in enumerate(scm.concepts):
        assert_close(scm.counterfactual(x, {name: x[:, k]}), x, rtol=0, atol=0)
    assert_close(scm.counterfactual(x, {scm.concepts[0]: float(x[0, 0])})[0], x[0], rtol=0, atol=0)


def test_counterfactual_holds_the_abducted_noise():
    f = FlowSCM(noise=0.2)
    x = f.sample(64, seed=7)
    u = f.abduct(x)
    cf = f.counterfactual(x, {"ball_size": 0.5})
    assert_close(cf[:, 1], 0.5**3 + u[:, 1])
    u_cf = f.abduct(cf)
    assert_close(u_cf[:, 1:], u[:, 1:])  # every noise but the intervened root's is preserved
    p = PendulumSCM(noise=0.2)
    x = p.sample(64, seed=7)
    u = p.abduct(x)
    assert u[:, 2:].abs().min() > 0  # the noise is really there
    cf = p.counterfactual(x, {"pendulum_angle": 0.1})
    assert_close(p.abduct(cf)[:, 1:], u[:, 1:])
    pa = {"pendulum_angle": cf[:, 0], "light_angle": cf[:, 1]}
    assert_close(cf[:, 3], p.mechanism("shadow_position", pa) + u[:, 3])


# --------------------------------------------------------------------------- input checks
@pytest.mark.parametrize("cls", [PendulumSCM, FlowSCM])
def test_input_checks(cls):
    scm = cls()
    x = scm.sample(3, seed=0)
    for method in (
        scm.abduct,
        scm.normalise,
        scm.render,
        lambda t: scm.counterfactual(t, {scm.concepts[0]: 0.5}),
    ):
        with pytest.raises(ValueError, match="3 columns but .* has 4 concepts"):
            method(x[:, :3])
        with pytest.raises(ValueError, match=r"shape \[n, 4\]"):
            method(x[0])
        bad = x.clone()
        bad[1, 2] = float("nan")
        with pytest.raises(
            ValueError, match="labels has non-finite values.*NaN at index \\(1, 2\\)"
        ):
            method(bad)
        bad[1, 2] = float("inf")
        with pytest.raises(ValueError, match="non-finite.*inf"):
            method(bad)
        with pytest.raises(ValueError, match="empty"):
            method(x[:0])
    with pytest.raises(ValueError, match="unknown concept 'colour' in do"):
        scm.counterfactual(x, {"colour": 1.0})
    with pytest.raises(ValueError, match="do is empty"):
        scm.counterfactual(x, {})
    with pytest.raises(ValueError, match="must be a number or have shape \\[3\\]"):
        scm.counterfactual(x, {scm.concepts[0]: torch.ones(5)})
    with pytest.raises(ValueError, match="not finite"):
        scm.counterfactual(x, {scm.concepts[0]: float("nan")})
    for n in (0, -2):
        with pytest.raises(ValueError, match="n must be >= 1"):
            scm.sample(n)
    with pytest.raises(ValueError, match="n must be an integer"):
        scm.sample(2.5)
    with pytest.raises(ValueError, match="seed must be an integer"):
        scm.sample(2, seed="a")
    for size in (8, 15, 0, 32.0):
        with pytest.raises(ValueError, match="size must be an integer >= 16"):
            scm.render(x, size=size)
    for noise in (-0.1, float("nan"), "big"):
        with pytest.raises(ValueError, match="noise must be"):
            cls(noise=noise)
    with pytest.raises(ValueError, match="normalised labels must have shape"):
        scm.denormalise(torch.zeros(2, 5))


def test_pendulum_light_angle_domain():
    p = PendulumSCM()
    x = p.sample(4, seed=0)
    with pytest.raises(ValueError, match="light_angle must lie in"):
        p.counterfactual(x, {"light_angle": 0.0})
    bad = x.clone()
    bad[2, 1] = -1.0
    with pytest.raises(ValueError, match="light_angle must lie in .* row 2"):
        p.render(bad)
    # light straight above is fine (the projection uses cot, finite at pi / 2)
    assert torch.isfinite(p.counterfactual(x, {"light_angle": math.pi / 2})).all()
