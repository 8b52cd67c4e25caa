"""Rendering of the synthetic worlds (raster primitives, images) and the Pendulum / Flow data."""

import math

import pytest
import torch
from torch.testing import assert_close

from pyro_causalvae.datasets import (
    ConceptImageDataset,
    Flow,
    FlowSCM,
    Pendulum,
    PendulumSCM,
    _raster,
)

from truth import FLOW_EDGES, PENDULUM_EDGES


# --------------------------------------------------------------------------- raster primitives
def grid(size=200, lim=(0.0, 10.0)):
    return _raster.pixel_centres(size, lim, lim)


def test_pixel_centres():
    xs, ys, ps = _raster.pixel_centres(4, (0.0, 8.0), (-1.0, 3.0))
    assert_close(xs, torch.tensor([1.0, 3.0, 5.0, 7.0]))
    assert_close(ys, torch.tensor([2.5, 1.5, 0.5, -0.5]))  # row 0 is the top, y points up
    assert ps == pytest.approx(math.sqrt(2.0))


def test_coverage_areas():
    xs, ys, ps = grid()
    area = ps * ps
    cov = _raster.disc_coverage(
        xs, ys, torch.tensor([5.0, 3.0]), torch.tensor([5.0, 4.0]), torch.tensor([2.0, 1.0]), ps
    )
    assert cov.shape == (2, 200, 200) and cov.dtype == torch.float32
    assert_close(cov.sum((1, 2)) * area, torch.tensor([4 * math.pi, math.pi]), rtol=5e-3, atol=0)
    assert cov.min() == 0 and cov.max() == 1
    assert ((cov > 0) & (cov < 1)).any()  # anti-aliased edge
    cov = _raster.rect_coverage(xs, ys, 2.0, 1.0, 7.0, 4.0, ps)
    assert_close(cov.sum() * area, torch.tensor(15.0), rtol=2e-3, atol=0)
    assert torch.equal(
        cov, _raster.rect_coverage(xs, ys, 7.0, 4.0, 2.0, 1.0, ps)
    )  # corners in any order
    cov = _raster.capsule_coverage(xs, ys, 2.0, 2.0, 8.0, 6.0, 0.5, ps)
    expected = 2 * 0.5 * math.hypot(6.0, 4.0) + math.pi * 0.25
    assert_close(cov.sum() * area, torch.tensor(expected), rtol=5e-3, atol=0)
    # a polyline of one segment is that capsule
    pl = _raster.polyline_coverage(
        xs, ys, torch.tensor([[2.0, 8.0]]), torch.tensor([[2.0, 6.0]]), 0.5, ps
    )
    assert_close(pl, cov.expand(1, -1, -1))
    # a polyline bending at a right angle: two bars (overlapping by 0.5 x 0.5), two end caps (half
    # discs) and the corner's quarter disc
    pl = _raster.polyline_coverage(
        xs, ys, torch.tensor([[1.0, 5.0, 5.0]]), torch.tensor([[2.0, 2.0, 8.0]]), 0.5, ps
    )
    assert_close(
        pl.sum() * area, torch.tensor(4 + 6 - 0.25 + 5 * math.pi * 0.25 / 4), rtol=5e-3, atol=0
    )


def test_curve_coverage():
    xs, ys, ps = grid()
    n = xs.numel()
    # a horizontal line y = 5, 0.3 thick, clipped to 2 <= x <= 8: a 6 x 0.3 bar
    f, df = torch.full((1, n), 5.0), torch.zeros(1, n)
    cov = _raster.curve_coverage(xs, ys, f, df, 0.15, ps, x_min=2.0, x_max=8.0)
    assert_close(cov.sum() * ps * ps, torch.tensor(1.8), rtol=5e-3, atol=0)
    # a slanted line y = 0.5 x + 2: the stroke's width is measured across it, not vertically, so the
    # parallelogram over 1 <= x <= 9 has a vertical thickness 0.3 * sqrt(1 + 0.5^2)
    f, df = (0.5 * xs + 2.0).view(1, -1), torch.full((1, n), 0.5)
    cov = _raster.curve_coverage(
        xs, ys, f, df, 0.15, ps, x_min=1.0, x_max=9.0, y_min=0.0, y_max=10.0
    )
    assert_close(cov.sum() * ps * ps, torch.tensor(8 * 0.3 * math.sqrt(1.25)), rtol=5e-3, atol=0)
    # a parabola (the Flow jet's shape) against a fine polyline of the same curve
    a = torch.tensor([[0.3]])
    f, df = 8.0 - a * (xs.view(1, -1) - 2.0) ** 2, -2 * a * (xs.view(1, -1) - 2.0)
    cov = _raster.curve_coverage(xs, ys, f, df, 0.15, ps, x_min=2.0, x_max=6.0)
    px = torch.linspace(2.0, 6.0, 81).view(1, -1)
    ref = _raster.polyline_coverage(xs, ys, px, 8.0 - 0.3 * (px - 2.0) ** 2, 0.15, ps)
    inner = ref[:, :, 50:115]  # away from the round caps of the polyline
    assert (cov[:, :, 50:115] - inner).abs().max() < 0.1
    assert_close(cov[:, :, 50:115].sum(), inner.sum(), rtol=1e-2, atol=0)


def test_composite_and_canvas():
    img = torch.full((2, 3, 4, 4), 0.5)
    cov = torch.zeros(2, 4, 4)
    cov[0, 1, 2] = 1.0
    cov[1, 0, 0] = 0.25
    _raster.composite_(img, cov, (1.0, 0.0, 0.0))
    assert_close(img[0, :, 1, 2], torch.tensor([1.0, 0.0, 0.0]))
    assert_close(img[1, :, 0, 0], torch.tensor([0.625, 0.375, 0.375]))
    assert (img[0, :, 0, 0] == 0.5).all()
    # windowed painting on a canvas equals full-frame compositing, for every primitive
    cx, cy, r = torch.tensor([3.0, 6.0]), torch.tensor([3.0, 7.0]), torch.tensor([1.0, 2.0])
    px, py = (
        torch.tensor([[1.0, 4.0, 6.0], [2.0, 2.5, 9.0]]),
        torch.tensor([[1.0, 5.0, 2.0], [8.0, 3.0, 3.0]]),
    )

    def parabola(xs):
        dx = xs.view(1, -1) - torch.tensor([[2.0], [4.0]])
        return 8.0 - 0.4 * dx * dx, -0.8 * dx

    cv = _raster.Canvas(2, 48, (0.0, 10.0), (0.0, 10.0), (1.0, 1.0, 1.0))
    full = torch.ones(2, 3, 48, 48)
    xs, ys, ps = cv.xs, cv.ys, cv.pixel_size
    blue, red, grey = (0.0, 0.0, 1.0), torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.0, 0.0]]), (0.5,) * 3
    cv.disc(cx, cy, r, blue)
    _raster.composite_(full, _raster.disc_coverage(xs, ys, cx, cy, r, ps), blue)
    cv.capsule(cx, cy, cy, cx, 0.3, red, alpha=0.5)
    _raster.composite_(full, _raster.capsule_coverage(xs, ys, cx, cy, cy, cx, 0.3, ps), red, 0.5)
    cv.rect(cx, cy, cx + 2.5, cy - 1.5, grey)
    _raster.composite_(full, _raster.rect_coverage(xs, ys, cx, cy, cx + 2.5, cy - 1.5, ps), grey)
    cv.polyline(px, py, 0.2, blue)
    _raster.composite_(full, _raster.polyline_coverage(xs, ys, px, py, 0.2, ps), blue)
    x0, x1 = torch.tensor([2.0, 4.0]), torch.tensor([6.0, 7.0])
    cv.curve(parabola, 0.2, grey, x_min=x0, x_max=x1, y_min=1.0)
    f, df = parabola(xs)
    cov = _raster.curve_coverage(xs, ys, f, df, 0.2, ps, x_min=x0, x_max=x1, y_min=1.0)
    _raster.composite_(full, cov, grey)
    assert_close(cv.rgb, full)
    assert cv.window(20.0, 30.0, 0.0, 1.0) is None  # off-screen: nothing to paint
    u8 = _raster.to_uint8(torch.tensor([0.0, 0.5, 1.0, 0.999]))
    assert u8.dtype == torch.uint8 and u8.tolist() == [0, 128, 255, 255]


@pytest.mark.parametrize("cls", [PendulumSCM, FlowSCM])
def test_render_does_not_depend_on_chunking(cls):
    scm = cls()
    x = scm.sample(10, seed=0)
    a = scm.render(x, size=32, seed=0)
    scm.render_chunk = 3
    assert torch.equal(scm.render(x, size=32, seed=0), a)
    jitter = scm._render_noise(10, torch.Generator().manual_seed(0))

    def draw(i, j):
        return scm._draw(x[i:j], 32, None if jitter is None else jitter[i:j])

    assert torch.equal(_raster.render_in_chunks(10, 32, draw, chunk=2), a)


# --------------------------------------------------------------------------- rendered images
@pytest.mark.parametrize("cls", [PendulumSCM, FlowSCM])
@pytest.mark.parametrize("size", [64, 96, 128])
def test_render_shapes(cls, size):
    scm = cls()
    img = scm.render(scm.sample(2, seed=0), size=size)
    assert img.shape == (2, 3, size, size) and img.dtype == torch.uint8
    assert img.float().std() > 10  # not blank
    n_colours = torch.unique(img[0].reshape(3, -1), dim=1).shape[1]
    assert n_colours > 10  # anti-aliased edges blend the layers' colours


@pytest.mark.parametrize("cls", [PendulumSCM, FlowSCM])
def test_render_deterministic_and_label_dependent(cls):
    scm = cls()
    x = scm.sample(4, seed=0)
    a, b = scm.render(x, size=48, seed=3), scm.render(x, size=48, seed=3)
    assert torch.equal(a, b)
    assert torch.equal(scm.render(x, size=48), scm.render(x, size=48))
    other = scm.render(scm.sample(4, seed=1), size=48)
    assert all(not torch.equal(a[k], other[k]) for k in range(4))
    with pytest.raises(ValueError, match="seed must be an integer"):
        scm.render(x, seed=1.5)


def test_flow_jet_jitter_is_seeded():
    f = FlowSCM()
    x = f.sample(4, seed=0)
    plain = f.render(x, size=64)
    j1, j1b, j2 = (
        f.render(x, size=64, seed=1),
        f.render(x, size=64, seed=1),
        f.render(x, size=64, seed=2),
    )
    assert torch.equal(j1, j1b) and not torch.equal(j1, j2) and not torch.equal(j1, plain)


def test_pendulum_shadow_follows_light_and_pendulum():
    p = PendulumSCM()
    x = p.forward(torch.tensor([[0.0, math.pi / 4, 0.0, 0.0]]))
    ground = slice(88, 96)  # rows of the ground line y = -0.5 at 96 px

    def shadow_columns(labels):
        img = p.render(labels, size=96)[0].float()
        dark = img[:, ground].mean(0).min(0).values < 160
        return dark.nonzero().flatten()

    cols = shadow_columns(x)
    # shadow from x = -1 to 8.5: columns 0 .. 8.5 / 20 * 96 = 40.8
    assert cols.min() == 0 and 39 <= cols.max() <= 42
    moved = shadow_columns(p.counterfactual(x, {"light_angle": math.pi / 2}))
    # light from straight above: a 3-wide shadow centred at x = 10
    assert 40 <= moved.min() <= 42 and 53 <= moved.max() <= 56
    swung = shadow_columns(p.counterfactual(x, {"pendulum_angle": 0.5, "light_angle": math.pi / 2}))
    assert swung.float().mean() > moved.float().mean() + 5


def test_flow_jet_reach_follows_flow():
    f = FlowSCM()
    x = f.forward(torch.tensor([[0.5, 1.5, 3.0, 0.0]]))
    more = f.counterfactual(x, {"water_height": 5.0})
    assert more[0, 3] > x[0, 3]

    def jet_end(labels):
        img = f.render(labels, size=96)[0].float()
        # bluest pixels right of the tank, just above the ground (y = 1 -> row 86)
        band = img[:, 80:86, 46:]
        blue = (band[2] - band[0] > 80).any(0)
        return int(blue.nonzero().max()) + 46

    # reach = 0.8 * flow from x = 4.4; 9.6 px per unit
    for labels in (x, more):
        expected = (4.4 + 0.8 * float(labels[0, 3])) * 9.6
        assert abs(jet_end(labels) - expected) < 3
    assert jet_end(more) > jet_end(x) + 10


# --------------------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def pendulums():
    return {s: Pendulum(split=s, size=16, seed=0) for s in ("train", "test", "all")}


@pytest.fixture(scope="module")
def flows():
    return {s: Flow(split=s, size=16, seed=0) for s in ("train", "test", "all")}


def rows(labels):
    return {tuple(r) for r in labels.tolist()}


def test_pendulum_dataset(pendulums):
    tr, te, al = pendulums["train"], pendulums["test"], pendulums["all"]
    assert (len(tr), len(te), len(al)) == (5482, 1826, 7308)
    assert isinstance(tr, ConceptImageDataset) and tr.name == "pendulum"
    assert tr.images.shape == (5482, 3, 16, 16) and tr.images.dtype == torch.uint8
    assert tr.labels.shape == (5482, 4) and tr.labels.dtype == torch.float32
    assert set(tr.graph.edges()) == PENDULUM_EDGES and tr.concepts == PendulumSCM.concepts
    assert (tr.split, tr.size, tr.seed, tr.noise) == ("train", 16, 0, 0.0)
    assert isinstance(tr.scm, PendulumSCM)
    assert_close(tr.label_loc, tr.scm.label_loc) and assert_close(
        tr.label_scale, tr.scm.label_scale
    )
    assert rows(tr.labels).isdisjoint(rows(te.labels))
    assert rows(tr.labels) | rows(te.labels) == rows(al.labels) and len(rows(al.labels)) == 7308
    assert torch.equal(al.labels[:5482], tr.labels) and torch.equal(al.images[5482:], te.images)
    assert torch.equal(tr.images[:5], tr.scm.render(tr.labels[:5], size=16))
    image, label = tr[0]
    assert image.shape == (3, 16, 16) and label.abs().max() <= 1.0


def test_flow_dataset(flows):
    tr, te, al = flows["train"], flows["test"], flows["all"]
    assert (len(tr), len(te), len(al)) == (6480, 1620, 8100)
    assert (
        tr.name == "flow"
        and set(tr.graph.edges()) == FLOW_EDGES
        and tr.concepts == FlowSCM.concepts
    )
    assert tr.images.shape == (6480, 3, 16, 16)
    assert rows(tr.labels).isdisjoint(rows(te.labels)) and len(rows(al.labels)) == 8100
    assert torch.equal(te.images[:5], te.scm.render(te.labels[:5], size=16))
    assert tr.labels[:, 1].unique().numel() > 500  # float labels, not truncated


def test_dataset_seed_and_noise(pendulums):
    a = Pendulum(split="test", size=16, seed=0)
    assert torch.equal(a.images, pendulums["test"].images) and torch.equal(
        a.labels, pendulums["test"].labels
    )
    b = Pendulum(split="test", size=16, seed=1)
    assert not torch.equal(a.labels, b.labels) and not torch.equal(a.images, b.images)
    noisy = Pendulum(split="test", size=16, seed=0, noise=0.1)
    assert noisy.noise == 0.1 and noisy.scm.noise == 0.1
    assert torch.equal(noisy.labels[:, :2], a.labels[:, :2])  # same shuffle, roots noise-free
    resid = (noisy.scm.abduct(noisy.labels)[:, 2:] / noisy.scm.label_scale[2:]).std(0)
    assert_close(resid, torch.full((2,), 0.1), atol=0.02, rtol=0)
    assert torch.equal(
        noisy.images[:4], noisy.scm.render(noisy.labels[:4], size=16)
    )  # images show the noise
    f = Flow(split="test", size=16, seed=0, noise=0.1)
    assert (f.scm.abduct(f.labels)[:, 3]).abs().mean() > 0


@pytest.mark.parametrize("cls", [Pendulum, Flow])
def test_dataset_checks(cls):
    with pytest.raises(ValueError, match="split must be 'train', 'test' or 'all'"):
        cls(split="val")
    with pytest.raises(ValueError, match="size must be an integer >= 16"):
        cls(size=8)
    with pytest.raises(ValueError, match="seed must be an integer"):
        cls(seed=None)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        cls(noise=-1.0)
