"""The Pendulum world of CausalVAE (Yang et al., CVPR 2021): a pendulum lit by the sun casts a
shadow.

Concepts (natural units), in topological order:

- ``pendulum_angle`` ``theta`` (radians): the official grid is ``i * pi / 200``,
  ``i`` in ``[-40, 43]``;
- ``light_angle`` ``phi`` (radians): the official grid is ``j * pi / 200``,
  ``j`` in ``[60, 147]`` except 100;
- ``shadow_length`` and ``shadow_position`` (scene x units) of the shadow on the ground
  ``y = -0.5``.

True graph: ``pendulum_angle -> {shadow_length, shadow_position} <- light_angle``.

With ``proj(x, y, b) = (b - (y - x tan(phi))) / tan(phi)`` the projection of ``(x, y)`` along the
light onto the height ``b``, the shadow is spanned by ``p0 = proj(10, 10.5, -0.5)`` (the pivot) and
``p1 = proj(10 + 9.5 sin(theta), 10.5 - 9.5 cos(theta), -0.5)`` (radius 9.5 along the rod):
``shadow_position = (p0 + p1) / 2`` and ``shadow_length = max(3, |p1 - p0|)``.
"""

from __future__ import annotations

import math

import torch

from . import _raster
from .scm import SCM, SyntheticDataset, _check_int, _check_noise, _check_size, _check_split, _grid_split

__all__ = ["Pendulum", "PendulumSCM", "pendulum_grid"]

PIVOT = (10.0, 10.5)
ROD_LENGTH = 8.0
BALL_RADIUS = 1.5
SHADOW_RADIUS = 9.5
GROUND_Y = -0.5
SUN_Y = 20.5
SUN_RADIUS = 3.0
XLIM = (0.0, 20.0)
YLIM = (-1.0, 21.0)

THETA_RANGE = (-40 * math.pi / 200, 43 * math.pi / 200)
PHI_RANGE = (60 * math.pi / 200, 147 * math.pi / 200)

N_TRAIN, N_TEST = 5482, 1826


def _proj(x: torch.Tensor, y: torch.Tensor, b: float, phi: torch.Tensor) -> torch.Tensor:
    # (b - (y - x tan(phi))) / tan(phi) == x + (b - y) cot(phi), finite at phi = pi / 2
    return x + (b - y) * (torch.cos(phi) / torch.sin(phi))


def pendulum_grid() -> torch.Tensor:
    """The official label grid: ``(i, j)``, ``i`` in ``[-40, 43]``, ``j`` in ``[60, 147]`` but 100.

    :returns: an int64 tensor of shape ``[7308, 2]``, ``theta = i * pi / 200`` and
        ``phi = j * pi / 200``.
    """
    i = torch.arange(-40, 44)
    j = torch.tensor([j for j in range(60, 148) if j != 100])
    ii, jj = torch.meshgrid(i, j, indexing="ij")
    return torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=1)


class PendulumSCM(SCM):
    """Ground-truth SCM of the Pendulum world (see the module docstring for the equations).

    ``label_loc`` / ``label_scale`` are the midpoints / half-widths of the concepts' ranges:
    ``pendulum_angle`` in ``[-40 pi/200, 43 pi/200]``, ``light_angle`` in
    ``[60 pi/200, 147 pi/200]``, ``shadow_length`` in ``[3, 12.6]`` and ``shadow_position`` in
    ``[2, 19.7]`` (the shadow's ranges over the continuous angle ranges are ``[3, 12.58]`` and
    ``[2.01, 19.61]``).

    :param float noise: std of additive noise on ``shadow_length`` and ``shadow_position``, in units
        of their ``label_scale`` (``0``: deterministic, the paper's setting).
    """

    concepts = ("pendulum_angle", "light_angle", "shadow_length", "shadow_position")
    edges = (
        ("pendulum_angle", "shadow_length"),
        ("pendulum_angle", "shadow_position"),
        ("light_angle", "shadow_length"),
        ("light_angle", "shadow_position"),
    )
    objects = (("shadow_length", "shadow_position"),)  # the shadow
    label_range = {
        "pendulum_angle": THETA_RANGE,
        "light_angle": PHI_RANGE,
        "shadow_length": (3.0, 12.6),
        "shadow_position": (2.0, 19.7),
    }
    xlim, ylim = XLIM, YLIM
    colours = {
        "background": (0.97, 0.97, 0.94),
        "sun": (1.0, 0.62, 0.1),
        "rod": (0.15, 0.15, 0.2),
        "ball": (0.75, 0.1, 0.12),
        "shadow": (0.45, 0.45, 0.47),
    }

    def _check_domain(self, labels: torch.Tensor, what: str) -> None:
        phi = labels[:, 1]
        bad = (phi <= 0.01) | (phi >= math.pi - 0.01)
        if bad.any():
            k = int(bad.nonzero()[0])
            raise ValueError(
                f"{what}: light_angle must lie in (0.01, pi - 0.01) radians "
                "(the light must come from above), "
                f"got {float(phi[k])} at row {k}"
            )

    def readable(self, labels: torch.Tensor) -> torch.Tensor:
        """Rows whose whole shadow lies inside the scene's ``x`` range ``[0, 20]``: a shadow that runs
        off the image edge hides its length and position. ``[n, 4]`` -> bool ``[n]``."""
        x = self._check_labels(labels)
        half = x[:, 2].abs() / 2
        return (x[:, 3] - half >= self.xlim[0]) & (x[:, 3] + half <= self.xlim[1])

    def _shadow_ends(self, theta: torch.Tensor, phi: torch.Tensor):
        p0 = _proj(
            torch.full_like(theta, PIVOT[0]), torch.full_like(theta, PIVOT[1]), GROUND_Y, phi
        )
        tip_x = PIVOT[0] + SHADOW_RADIUS * torch.sin(theta)
        tip_y = PIVOT[1] - SHADOW_RADIUS * torch.cos(theta)
        return p0, _proj(tip_x, tip_y, GROUND_Y, phi)

    def _mechanism(self, name: str, parents: dict[str, torch.Tensor]) -> torch.Tensor:
        p0, p1 = self._shadow_ends(parents["pendulum_angle"], parents["light_angle"])
        if name == "shadow_length":
            return (p1 - p0).abs().clamp_min(3.0)
        return (p0 + p1) / 2

    def sample_exogenous(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Angles drawn uniformly from their continuous ranges; the shadow's exogenous terms are 0.

        :returns: a tensor of shape ``[n, 4]``.
        """
        u = torch.zeros(n, 4)
        r = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        u[:, 0] = (THETA_RANGE[0] + r[:, 0] * (THETA_RANGE[1] - THETA_RANGE[0])).float()
        u[:, 1] = (PHI_RANGE[0] + r[:, 1] * (PHI_RANGE[1] - PHI_RANGE[0])).float()
        return u

    @staticmethod
    def grid_exogenous() -> torch.Tensor:
        """Exogenous values [7308, 4] of the official grid (:func:`pendulum_grid`)."""
        g = pendulum_grid().double() * (math.pi / 200)
        u = torch.zeros(g.shape[0], 4)
        u[:, :2] = g.float()
        return u

    def _draw(self, labels: torch.Tensor, size: int, jitter) -> torch.Tensor:
        c = self.colours
        theta, phi, length, position = labels.unbind(1)
        cv = _raster.Canvas(labels.shape[0], size, self.xlim, self.ylim, c["background"])
        px, py = PIVOT
        sun_x = _proj(torch.full_like(phi, px), torch.full_like(phi, py), SUN_Y, phi)
        cv.disc(sun_x, SUN_Y, SUN_RADIUS, c["sun"])
        bx = px + ROD_LENGTH * torch.sin(theta)
        by = py - ROD_LENGTH * torch.cos(theta)
        cv.capsule(px, py, bx, by, 0.35, c["rod"])
        cv.disc(bx, by, BALL_RADIUS, c["ball"])
        half = length.abs() / 2
        cv.rect(position - half, GROUND_Y - 0.45, position + half, GROUND_Y + 0.45, c["shadow"])
        return cv.rgb

    def render(self, labels: torch.Tensor, size: int = 96, seed: int | None = None) -> torch.Tensor:
        """Render pendulum scenes: sun, rod, ball and shadow, anti-aliased, on a light background.

        The scene ``x in [0, 20]``, ``y in [-1, 21]`` fills the square image (``y`` up). The scene
        has no rendering randomness: ``seed`` is validated and otherwise unused.

        :param labels: labels in natural units, of shape ``[n, 4]``.
        :param int size: image side in pixels (``>= 16``).
        :param seed: accepted for API uniformity (an integer or ``None``).
        :returns: a uint8 tensor of shape ``[n, 3, size, size]``.
        """
        return super().render(labels, size=size, seed=seed)


class Pendulum(SyntheticDataset):
    """The Pendulum dataset: the paper's full 84 x 87 = 7,308 label grid, rendered by
    :class:`PendulumSCM`.

    The grid is shuffled by a ``torch.Generator`` seeded with ``seed``; the first 5,482 tuples are
    the training split, the remaining 1,826 the test split. All the split's images are rendered at
    construction.

    :param str split: ``"train"``, ``"test"`` or ``"all"``.
    :param int size: image side in pixels (``>= 16``).
    :param int seed: seed of the shuffle (and of the label noise).
    :param float noise: std of the additive noise on the shadow's labels, in units of
        ``label_scale``; the images show the noisy shadow.
    """

    def __init__(self, split: str = "train", size: int = 96, seed: int = 0, noise: float = 0.0):
        split = _check_split(split)
        size = _check_size(size)
        seed = _check_int(seed, "seed")
        noise = _check_noise(noise)
        scm = PendulumSCM(noise=noise)
        labels = _grid_split(scm, scm.grid_exogenous(), N_TRAIN, split, seed)
        images = scm.render(labels, size=size)
        self._init_from_scm(scm, labels, images, name="pendulum", split=split, size=size, seed=seed)
