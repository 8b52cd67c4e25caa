"""The Flow world of CausalVAE (Yang et al., CVPR 2021): a ball in a water tank, water jetting from
a hole.

Concepts (natural units), in topological order:

- ``ball_size`` ``= r / 30`` (the official grid has ``r`` in ``[5, 34]``);
- ``water_height`` ``= ball_size ** 3 + h_raw / 10`` (``h_raw`` in ``[10, 39]``; ``h_raw / 10`` is
  its exogenous part): the ball displaces water;
- ``hole_position`` ``= hole / 3`` (``hole`` in ``[6, 14]``): the hole's height above the tank's
  bottom;
- ``water_flow`` ``= sqrt(2 * 0.98 * water_height * (hole_position - 0.5))`` (Torricelli-like).

True graph: ``ball_size -> water_height -> water_flow <- hole_position``.

Unlike the official generator, labels are floats (never truncated to integers) and every render of
the 8,100-tuple grid is kept, with disjoint train / test splits.
"""

from __future__ import annotations

import torch

from . import _raster
from .scm import SCM, SyntheticDataset, _check_int, _check_noise, _check_size, _check_split, _grid_split

__all__ = ["Flow", "FlowSCM", "flow_grid"]

GRAVITY = 0.98
N_TRAIN, N_TEST = 6480, 1620

# scene layout, in label units (x and y share the unit; the scene is 10 x 10)
XLIM = (0.0, 10.0)
YLIM = (0.0, 10.0)
GROUND = 1.0  # tank bottom (inner) and ground level
TANK_X0, TANK_X1 = 0.8, 4.2  # inner walls
WALL = 0.2
TANK_TOP = 7.2
BALL_X = 2.5
HOLE_R = 0.2
JET_REACH = 0.8  # horizontal reach of the jet per unit of water_flow
JET_HALF_WIDTH = 0.12


def flow_grid() -> torch.Tensor:
    """The official label grid: ``(r, h_raw, hole)`` with ``r`` in ``[5, 34]``,
    ``h_raw`` in ``[10, 39]`` and ``hole`` in ``[6, 14]``.

    :returns: an int64 tensor of shape ``[8100, 3]``.
    """
    r, h, hole = torch.meshgrid(
        torch.arange(5, 35), torch.arange(10, 40), torch.arange(6, 15), indexing="ij"
    )
    return torch.stack([r.reshape(-1), h.reshape(-1), hole.reshape(-1)], dim=1)


class FlowSCM(SCM):
    """Ground-truth SCM of the Flow world (see the module docstring for the equations).

    ``label_loc`` / ``label_scale`` are the midpoints / half-widths of the concepts' ranges:
    ``ball_size`` in ``[1/6, 34/30]``, ``water_height`` in ``[1.0, 5.36]``, ``hole_position`` in
    ``[2, 14/3]`` and ``water_flow`` in ``[1.7, 6.62]`` (the exact ranges over the continuous
    exogenous ranges are ``[1.0046, 5.3557]`` and ``[1.7186, 6.6135]``).

    The mechanism of ``water_flow`` clamps ``2 * 0.98 * h * (hole - 0.5)`` at 0 before the square
    root, so that interventions outside the data range stay finite.

    :param float noise: std of additive noise on ``water_height`` and ``water_flow``, in units of
        their ``label_scale`` (``0``: deterministic, the paper's setting).
    """

    concepts = ("ball_size", "water_height", "hole_position", "water_flow")
    edges = (
        ("ball_size", "water_height"),
        ("water_height", "water_flow"),
        ("hole_position", "water_flow"),
    )
    objects = (("hole_position", "water_flow"),)  # the jet starts at the hole
    label_range = {
        "ball_size": (5 / 30, 34 / 30),
        "water_height": (1.0, 5.36),
        "hole_position": (2.0, 14 / 3),
        "water_flow": (1.7, 6.62),
    }
    xlim, ylim = XLIM, YLIM
    colours = {
        "background": (0.96, 0.97, 0.99),
        "ground": (0.82, 0.74, 0.56),
        "ball": (0.93, 0.38, 0.08),
        "water": (0.2, 0.5, 0.95),
        "wall": (0.35, 0.35, 0.4),
        "hole": (0.02, 0.02, 0.02),
        "jet": (0.1, 0.38, 0.88),
    }
    water_alpha = 0.55

    def _mechanism(self, name: str, parents: dict[str, torch.Tensor]) -> torch.Tensor:
        if name == "water_height":
            return parents["ball_size"] ** 3
        h, hole = parents["water_height"], parents["hole_position"]
        return torch.sqrt((2 * GRAVITY * h * (hole - 0.5)).clamp_min(0.0))

    def sample_exogenous(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``r``, ``h_raw``, ``hole`` uniformly from ``[5, 34]``, ``[10, 39]``, ``[6, 14]``.

        :returns: a tensor of shape ``[n, 4]``: ``(r / 30, h_raw / 10, hole / 3, 0)``.
        """
        r = torch.rand(n, 3, generator=generator)
        u = torch.zeros(n, 4)
        u[:, 0] = (5 + 29 * r[:, 0]) / 30
        u[:, 1] = (10 + 29 * r[:, 1]) / 10
        u[:, 2] = (6 + 8 * r[:, 2]) / 3
        return u

    @staticmethod
    def grid_exogenous() -> torch.Tensor:
        """Exogenous values [8100, 4] of the official grid (:func:`flow_grid`)."""
        g = flow_grid().double()
        u = torch.zeros(g.shape[0], 4, dtype=torch.float64)
        u[:, 0] = g[:, 0] / 30
        u[:, 1] = g[:, 1] / 10
        u[:, 2] = g[:, 2] / 3
        return u.float()

    def _render_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        # the official generator's jet jitter: 0.98 + 0.01 * max(|N(0, 1)|, 1) in the drawing only
        return 0.01 * torch.randn(n, generator=generator).abs().clamp_min(1.0)

    def _draw(self, labels: torch.Tensor, size: int, jitter) -> torch.Tensor:
        c = self.colours
        ball, height, hole, flow = labels.unbind(1)
        n = labels.shape[0]
        cv = _raster.Canvas(n, size, self.xlim, self.ylim, c["background"])
        cv.rect(self.xlim[0], self.ylim[0], self.xlim[1], GROUND, c["ground"])
        # the ball rests on the bottom; the water (translucent) covers it
        r = ball.abs()
        cv.disc(BALL_X, GROUND + r, r, c["ball"])
        top = GROUND + height.clamp_min(0.0)
        cv.rect(TANK_X0, GROUND, TANK_X1, top, c["water"], alpha=self.water_alpha)
        # tank walls
        cv.rect(TANK_X0 - WALL, GROUND - WALL, TANK_X0, TANK_TOP, c["wall"])
        cv.rect(TANK_X1, GROUND - WALL, TANK_X1 + WALL, TANK_TOP, c["wall"])
        cv.rect(TANK_X0 - WALL, GROUND - WALL, TANK_X1 + WALL, GROUND, c["wall"])
        # the jet: a parabola from the hole down to the ground, reaching JET_REACH * flow
        x0 = TANK_X1 + WALL
        yh = GROUND + hole
        drawn = (
            flow.abs() if jitter is None else flow.abs() * torch.sqrt((GRAVITY + jitter) / GRAVITY)
        )
        reach = (JET_REACH * drawn).clamp_min(1e-3)
        drop = (yh - GROUND).clamp_min(0.0)
        a = (drop / reach**2).view(-1, 1)

        def jet(xs):
            dx = (xs.view(1, -1) - x0).clamp_min(0.0)
            return yh.view(-1, 1) - a * dx * dx, -2.0 * a * dx

        cv.curve(
            jet,
            JET_HALF_WIDTH,
            c["jet"],
            x_min=torch.full_like(reach, TANK_X1 + WALL / 2),
            x_max=x0 + reach,
            y_min=GROUND,
        )
        cv.disc(TANK_X1 + WALL / 2, yh, HOLE_R, c["hole"])
        return cv.rgb

    def render(self, labels: torch.Tensor, size: int = 96, seed: int | None = None) -> torch.Tensor:
        """Render flow scenes: tank, ball, water, hole and jet, anti-aliased, on a light background.

        The ball (radius ``ball_size``) rests on the tank's bottom under the translucent water,
        whose level is ``water_height`` above the bottom; the hole sits on the right wall at
        ``hole_position`` above the bottom; the jet is a parabola from the hole to the ground whose
        horizontal reach is ``0.8 * water_flow``. The scene is ``10 x 10`` label units.

        :param labels: labels in natural units, of shape ``[n, 4]``.
        :param int size: image side in pixels (``>= 16``).
        :param seed: ``None`` (default) draws deterministically; an integer adds the official
            generator's jitter ``eps = 0.01 * max(|N(0, 1)|, 1)`` (seeded) to the gravity ``0.98``
            of the drawn jet only, so the jet reaches
            ``0.8 * water_flow * sqrt((0.98 + eps) / 0.98)``.
        :returns: a uint8 tensor of shape ``[n, 3, size, size]``.
        """
        return super().render(labels, size=size, seed=seed)


class Flow(SyntheticDataset):
    """The Flow dataset: the 30 x 30 x 9 = 8,100-tuple label grid, rendered by :class:`FlowSCM`.

    The grid is shuffled by a ``torch.Generator`` seeded with ``seed``; the first 6,480 tuples are
    the training split and the remaining 1,620 (1 in 5) the test split. Labels are floats (never
    truncated) and the splits are disjoint. All the split's images are rendered at construction.

    :param str split: ``"train"``, ``"test"`` or ``"all"``.
    :param int size: image side in pixels (``>= 16``).
    :param int seed: seed of the shuffle (and of the label noise and the jet jitter).
    :param float noise: std of the additive noise on ``water_height`` and ``water_flow``, in units
        of ``label_scale``; the images show the noisy values.
    :param bool jitter: add the official generator's jet jitter to the drawings (seeded with
        ``seed``); default ``False`` (deterministic drawings that show the labels exactly).
    """

    def __init__(
        self,
        split: str = "train",
        size: int = 96,
        seed: int = 0,
        noise: float = 0.0,
        jitter: bool = False,
    ):
        split = _check_split(split)
        size = _check_size(size)
        seed = _check_int(seed, "seed")
        noise = _check_noise(noise)
        if not isinstance(jitter, bool):
            raise ValueError(f"jitter must be True or False, got {jitter!r}")
        scm = FlowSCM(noise=noise)
        labels = _grid_split(scm, scm.grid_exogenous(), N_TRAIN, split, seed)
        images = scm.render(labels, size=size, seed=seed if jitter else None)
        self._init_from_scm(scm, labels, images, name="flow", split=split, size=size, seed=seed)
        self.jitter = jitter
