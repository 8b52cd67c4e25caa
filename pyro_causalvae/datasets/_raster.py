"""Vectorised anti-aliased rasterisation in torch (float32, batched over images).

Every primitive is drawn from its signed distance ``sd`` (negative inside, in scene units) with a
one-pixel linear ramp, ``coverage = clamp(0.5 - sd / pixel_size, 0, 1)``, and composited over the
canvas as a coloured layer (``canvas = lerp(canvas, colour, alpha * coverage)``).

Scene coordinates have ``y`` pointing up: the scene rectangle ``xlim x ylim`` is mapped onto the
whole square image, pixel ``(row, col)`` having its centre at ``x = xlim[0] + (col + 0.5) * pw`` and
``y = ylim[1] - (row + 0.5) * ph``. When ``pw != ph`` the ramp uses their geometric mean.

Per-image parameters are tensors of shape ``[n]`` (or numbers, shared by all images). The coverage
functions take pixel-centre coordinates ``xs`` of shape ``[w]`` and ``ys`` of shape ``[h]`` and
return a coverage of shape ``[n, h, w]``. :class:`Canvas` draws each primitive only on the pixel
window that can be covered in some image of the batch, and :func:`render_in_chunks` keeps memory
bounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "Canvas",
    "capsule_coverage",
    "composite_",
    "curve_coverage",
    "disc_coverage",
    "pixel_centres",
    "polyline_coverage",
    "rect_coverage",
    "render_in_chunks",
    "to_uint8",
]

Param = torch.Tensor | float


def _p(v: Param) -> torch.Tensor:
    """A per-image parameter [n] (or a number) as a float32 tensor of shape [n or 1, 1, 1]."""
    return torch.as_tensor(v, dtype=torch.float32).reshape(-1, 1, 1)


def _ramp_(sd: torch.Tensor, pixel_size: float, offset: Param = 0.0) -> torch.Tensor:
    """In place: ``clamp(0.5 - (sd - offset) / pixel_size, 0, 1)``."""
    k = (
        0.5 + _p(offset) / pixel_size
        if isinstance(offset, torch.Tensor)
        else 0.5 + offset / pixel_size
    )
    return sd.mul_(-1.0 / pixel_size).add_(k).clamp_(0.0, 1.0)


def pixel_centres(size: int, xlim: Sequence[float], ylim: Sequence[float]):
    """Pixel-centre coordinates of a ``size x size`` image of the scene ``xlim x ylim``.

    :returns: ``(xs, ys, pixel_size)``: ``xs`` of shape ``[size]`` (increasing), ``ys`` of shape
        ``[size]`` (decreasing: row 0 is the top), and the ramp width in scene units.
    """
    pw = (xlim[1] - xlim[0]) / size
    ph = (ylim[1] - ylim[0]) / size
    idx = torch.arange(size, dtype=torch.float64) + 0.5
    xs = (xlim[0] + idx * pw).float()
    ys = (ylim[1] - idx * ph).float()
    return xs, ys, math.sqrt(pw * ph)


def disc_coverage(xs, ys, cx: Param, cy: Param, r: Param, pixel_size: float) -> torch.Tensor:
    """Coverage of discs of centre ``(cx, cy)`` and radius ``r``, of shape ``[n, h, w]``."""
    dx = xs.view(1, 1, -1) - _p(cx)
    dy = ys.view(1, -1, 1) - _p(cy)
    return _ramp_(torch.hypot(dx, dy), pixel_size, r if isinstance(r, torch.Tensor) else float(r))


def _segment_distance(xs, ys, ax, ay, bx, by) -> torch.Tensor:
    """Distance [n, h, w] from pixel centres to the segments ``a -> b``."""
    ax, ay = _p(ax), _p(ay)
    bax, bay = _p(bx) - ax, _p(by) - ay
    inv = 1.0 / (bax * bax + bay * bay).clamp_min(1e-12)
    pax = xs.view(1, 1, -1) - ax
    pay = ys.view(1, -1, 1) - ay
    t = (pax * (bax * inv)) + (pay * (bay * inv))  # [n, h, w]
    t.clamp_(0.0, 1.0)
    qx = torch.addcmul(pax, t, bax, value=-1.0)
    qy = torch.addcmul(pay, t, bay, value=-1.0)
    return torch.hypot(qx, qy, out=qx)


def capsule_coverage(
    xs, ys, ax: Param, ay: Param, bx: Param, by: Param, r: Param, pixel_size: float
):
    """Coverage [n, h, w] of capsules (segments ``a -> b`` thickened by radius ``r``)."""
    d = _segment_distance(xs, ys, ax, ay, bx, by)
    return _ramp_(d, pixel_size, r if isinstance(r, torch.Tensor) else float(r))


def rect_coverage(xs, ys, x0: Param, y0: Param, x1: Param, y1: Param, pixel_size: float):
    """Coverage of axis-aligned rectangles with corners ``(x0, y0)``, ``(x1, y1)`` (any order)."""
    x0, x1, y0, y1 = _p(x0), _p(x1), _p(y0), _p(y1)
    qx = (xs.view(1, 1, -1) - (x0 + x1) / 2).abs_() - (x1 - x0).abs() / 2  # [n, 1, w]
    qy = (ys.view(1, -1, 1) - (y0 + y1) / 2).abs_() - (y1 - y0).abs() / 2  # [n, h, 1]
    inside = torch.maximum(qx, qy).clamp_max_(0.0)
    sd = torch.hypot(qx.clamp_min(0.0), qy.clamp_min(0.0)).add_(inside)
    return _ramp_(sd, pixel_size)


def curve_coverage(
    xs,
    ys,
    f: torch.Tensor,
    df: torch.Tensor,
    half_width: Param,
    pixel_size: float,
    x_min: Param | None = None,
    x_max: Param | None = None,
    y_min: Param | None = None,
    y_max: Param | None = None,
) -> torch.Tensor:
    """Coverage of thick curves ``y = f(x)``, of shape ``[n, h, w]``.

    The distance to the curve is the first-order estimate ``|y - f(x)| / sqrt(1 + f'(x)^2)``; the
    curve is clipped (with an anti-aliased cut) to ``x_min <= x <= x_max`` and
    ``y_min <= y <= y_max`` where given.

    :param f: the curve at ``xs``, of shape ``[n, w]``.
    :param df: its slope ``f'`` at ``xs``, of shape ``[n, w]``.
    :param half_width: half the stroke width, in scene units.
    """
    X = xs.view(1, 1, -1)
    Y = ys.view(1, -1, 1)
    f = f.unsqueeze(1)
    inv_norm = torch.rsqrt(1.0 + df * df).unsqueeze(1)
    sd = (Y - f).abs_().mul_(inv_norm).sub_(_p(half_width))
    if x_min is not None:
        torch.maximum(sd, _p(x_min) - X, out=sd)
    if x_max is not None:
        torch.maximum(sd, X - _p(x_max), out=sd)
    if y_min is not None:
        torch.maximum(sd, _p(y_min) - Y, out=sd)
    if y_max is not None:
        torch.maximum(sd, Y - _p(y_max), out=sd)
    return _ramp_(sd, pixel_size)


def polyline_coverage(xs, ys, px: torch.Tensor, py: torch.Tensor, r: Param, pixel_size: float):
    """Coverage [n, h, w] of thick polylines through the points ``(px[:, k], py[:, k])``.

    :param px: vertices' x, of shape ``[n, M]`` (``M >= 2``).
    :param py: vertices' y, of shape ``[n, M]``.
    :param r: half the stroke width.
    """
    d = None
    for k in range(px.shape[1] - 1):
        dk = _segment_distance(xs, ys, px[:, k], py[:, k], px[:, k + 1], py[:, k + 1])
        d = dk if d is None else torch.minimum(d, dk, out=d)
    return _ramp_(d, pixel_size, r if isinstance(r, torch.Tensor) else float(r))


def _colour(colour, n: int) -> torch.Tensor:
    c = torch.as_tensor(colour, dtype=torch.float32)
    return c.view(1, 3, 1, 1) if c.dim() == 1 else c.view(n, 3, 1, 1)


def composite_(
    canvas: torch.Tensor, coverage: torch.Tensor, colour, alpha: float = 1.0
) -> torch.Tensor:
    """Alpha-composite a coloured layer over ``canvas`` in place.

    :param canvas: float images of shape ``[n, 3, h, w]`` (may be a strided view).
    :param coverage: of shape ``[n, h, w]``, in ``[0, 1]``.
    :param colour: RGB in ``[0, 1]``: 3 numbers, or a tensor of shape ``[n, 3]``.
    :param float alpha: the layer's opacity.
    """
    w = coverage.unsqueeze(1)
    if alpha != 1.0:
        w = w * alpha
    return canvas.lerp_(_colour(colour, canvas.shape[0]), w)


class Canvas:
    """A batch of float RGB images of a scene ``xlim x ylim`` (``y`` up), painted layer by layer.

    :param int n: number of images.
    :param int size: image side in pixels.
    :param xlim: the scene's ``(x_left, x_right)``.
    :param ylim: the scene's ``(y_bottom, y_top)``.
    :param background: RGB background colour in ``[0, 1]``.
    """

    def __init__(self, n: int, size: int, xlim, ylim, background=(1.0, 1.0, 1.0)):
        self.n, self.size = n, size
        self.xlim, self.ylim = tuple(map(float, xlim)), tuple(map(float, ylim))
        self.pw = (self.xlim[1] - self.xlim[0]) / size
        self.ph = (self.ylim[1] - self.ylim[0]) / size
        self.xs, self.ys, self.pixel_size = pixel_centres(size, self.xlim, self.ylim)
        self.rgb = torch.empty(n, 3, size, size)
        self.rgb.copy_(
            torch.as_tensor(background, dtype=torch.float32).view(1, 3, 1, 1).expand_as(self.rgb)
        )

    def window(self, x_lo: Param, x_hi: Param, y_lo: Param, y_hi: Param):
        """Pixel window ``(rows, cols)`` (slices) covering the union of scene boxes, or ``None``."""
        m = max(self.pw, self.ph)
        x_lo, x_hi = float(torch.as_tensor(x_lo).min()) - m, float(torch.as_tensor(x_hi).max()) + m
        y_lo, y_hi = float(torch.as_tensor(y_lo).min()) - m, float(torch.as_tensor(y_hi).max()) + m
        c0 = max(0, math.ceil((x_lo - self.xlim[0]) / self.pw - 0.5))
        c1 = min(self.size, math.floor((x_hi - self.xlim[0]) / self.pw - 0.5) + 1)
        r0 = max(0, math.ceil((self.ylim[1] - y_hi) / self.ph - 0.5))
        r1 = min(self.size, math.floor((self.ylim[1] - y_lo) / self.ph - 0.5) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def _paint(self, win, coverage_fn: Callable, colour, alpha: float):
        if win is None:
            return
        rows, cols = win
        cov = coverage_fn(self.xs[cols], self.ys[rows])
        dst = self.rgb[:, :, rows, cols]
        composite_(dst, cov.expand(self.n, -1, -1), colour, alpha)

    def disc(self, cx: Param, cy: Param, r: Param, colour, alpha: float = 1.0) -> None:
        """Paint discs of centre ``(cx, cy)`` and radius ``r`` (each a number or a tensor [n])."""
        cx, cy, r = (torch.as_tensor(v, dtype=torch.float32) for v in (cx, cy, r))
        win = self.window(cx - r, cx + r, cy - r, cy + r)
        self._paint(
            win, lambda xs, ys: disc_coverage(xs, ys, cx, cy, r, self.pixel_size), colour, alpha
        )

    def capsule(
        self, ax: Param, ay: Param, bx: Param, by: Param, r: Param, colour, alpha=1.0
    ) -> None:
        """Paint thick segments ``a -> b`` with round caps of radius ``r``."""
        ax, ay, bx, by, r = (torch.as_tensor(v, dtype=torch.float32) for v in (ax, ay, bx, by, r))
        win = self.window(
            torch.minimum(ax, bx) - r,
            torch.maximum(ax, bx) + r,
            torch.minimum(ay, by) - r,
            torch.maximum(ay, by) + r,
        )
        self._paint(
            win,
            lambda xs, ys: capsule_coverage(xs, ys, ax, ay, bx, by, r, self.pixel_size),
            colour,
            alpha,
        )

    def rect(self, x0: Param, y0: Param, x1: Param, y1: Param, colour, alpha: float = 1.0) -> None:
        """Paint axis-aligned rectangles with corners ``(x0, y0)`` and ``(x1, y1)``."""
        x0, y0, x1, y1 = (torch.as_tensor(v, dtype=torch.float32) for v in (x0, y0, x1, y1))
        win = self.window(
            torch.minimum(x0, x1),
            torch.maximum(x0, x1),
            torch.minimum(y0, y1),
            torch.maximum(y0, y1),
        )
        self._paint(
            win,
            lambda xs, ys: rect_coverage(xs, ys, x0, y0, x1, y1, self.pixel_size),
            colour,
            alpha,
        )

    def curve(
        self,
        fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        half_width: float,
        colour,
        x_min: Param,
        x_max: Param,
        y_min: Param | None = None,
        alpha: float = 1.0,
    ) -> None:
        """Paint thick curves ``y = f(x)`` for ``x_min <= x <= x_max`` (and ``y >= y_min``).

        :param fn: maps ``xs`` of shape ``[w]`` to ``(f, df)``, the curves and their slopes, each
            ``[n, w]``.
        """
        x_min, x_max = (
            torch.as_tensor(x_min, dtype=torch.float32),
            torch.as_tensor(x_max, dtype=torch.float32),
        )
        cwin = self.window(x_min - half_width, x_max + half_width, self.ylim[0], self.ylim[1])
        if cwin is None:
            return
        cols = cwin[1]
        xs = self.xs[cols]
        f, df = fn(xs)
        # rows the stroke can reach: |y - f| < (half_width + pixel) * sqrt(1 + f'^2), in x range
        reach = (half_width + self.pixel_size) * torch.sqrt(1.0 + df * df)
        inside = (xs.view(1, -1) >= x_min.view(-1, 1) - half_width) & (
            xs.view(1, -1) <= x_max.view(-1, 1) + half_width
        )
        if not inside.any():
            return
        lo = torch.where(inside, f - reach, torch.inf).min()
        hi = torch.where(inside, f + reach, -torch.inf).max()
        if y_min is not None:
            lo = torch.maximum(lo, torch.as_tensor(y_min, dtype=torch.float32).min() - half_width)
        win = self.window(x_min - half_width, x_max + half_width, lo, hi)
        if win is None:
            return
        rows, wcols = win
        sel = slice(wcols.start - cols.start, wcols.stop - cols.start)
        self._paint(
            win,
            lambda xs_, ys_: curve_coverage(
                xs_, ys_, f[:, sel], df[:, sel], half_width, self.pixel_size, x_min, x_max, y_min
            ),
            colour,
            alpha,
        )

    def polyline(
        self, px: torch.Tensor, py: torch.Tensor, r: float, colour, alpha: float = 1.0
    ) -> None:
        """Paint thick polylines through ``(px[:, k], py[:, k])`` (each of shape ``[n, M]``)."""
        win = self.window(px.min() - r, px.max() + r, py.min() - r, py.max() + r)
        self._paint(
            win, lambda xs, ys: polyline_coverage(xs, ys, px, py, r, self.pixel_size), colour, alpha
        )


def _to_uint8_(images: torch.Tensor) -> torch.Tensor:
    # float -> int16 -> uint8 is several times faster than a direct float -> uint8 cast on CPU
    return images.mul_(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.int16).to(torch.uint8)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in ``[0, 1]`` to uint8 (rounded to nearest; ``images`` is left unchanged)."""
    return _to_uint8_(images.clone())


def render_in_chunks(
    n: int,
    size: int,
    draw: Callable[[int, int], torch.Tensor],
    chunk: int = 64,
) -> torch.Tensor:
    """Render ``n`` images chunk by chunk so that memory stays bounded.

    The result does not depend on ``chunk``.

    :param draw: ``draw(start, stop)`` returns float images ``[stop - start, 3, size, size]`` in
        ``[0, 1]`` (then converted in place); it must be deterministic (draw any randomness
        beforehand).
    :param int chunk: images per chunk.
    :returns: uint8 images of shape ``[n, 3, size, size]``.
    """
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        out[a:b] = _to_uint8_(draw(a, b))
    return out
