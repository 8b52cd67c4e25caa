"""Neural networks of the CausalVAE: the image encoder and decoder (the mechanisms g_i are in
:mod:`pyro_causalvae.equations`).

The official code uses a 274 M-parameter MLP on flattened 96x96 images (14 images/s on 2 CPU cores).
Here the image networks are small convolutional nets whose first layer is a 4x4 "patchify" convolution
(stride 4) and whose last layer is its transpose, which keeps the expensive full-resolution work to a
minimum: about 1.4 M parameters and several hundred training images/s on 2 CPU cores at 96x96.
Flat (vector) inputs use MLPs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def _mlp(sizes: Sequence[int], act=nn.SiLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _conv_plan(size: int) -> tuple[int, int]:
    """For an image of side ``size``: (number of stride-2 stages after the patchify layer, final side)."""
    side = size // 4
    stages = 0
    while side > 8 and side % 2 == 0:
        side //= 2
        stages += 1
    return stages, side


def check_image_size(image_shape: Sequence[int]) -> None:
    """Raise ``ValueError`` if ``image_shape`` (C, H, W) is not supported by the conv nets."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = image_shape
    if c not in (1, 3, 4):
        raise ValueError(f"images must have 1, 3 or 4 channels, got {c}")
    if h != w or h % 4 != 0 or h < 16:
        raise ValueError(f"images must be square with a side that is a multiple of 4 and >= 16, got {h}x{w}")


class ConvEncoder(nn.Module):
    """Image -> parameters of the exogenous posterior.

    :param image_shape: ``(C, H, W)``, square, side a multiple of 4 (e.g. 64, 96, 128).
    :param out_dim: size of the output vector.
    :param channels: channels after the patchify layer and after each stride-2 stage.
    :param hidden: width of the final MLP layer.

    ``forward(x)``: ``x`` of shape ``[N, C, H, W]`` in [0, 1] -> ``[N, out_dim]``.
    """

    def __init__(self, image_shape: Sequence[int], out_dim: int, channels: int = 64, hidden: int = 256):
        super().__init__()
        check_image_size(image_shape)
        c, h, _ = image_shape
        stages, side = _conv_plan(h)
        layers: list[nn.Module] = [nn.Conv2d(c, channels // 2, 4, 4), nn.SiLU()]
        ch = channels // 2
        for _ in range(stages):
            layers += [nn.Conv2d(ch, channels, 4, 2, 1), nn.SiLU()]
            ch = channels
        layers += [nn.Conv2d(ch, channels, 3, 1, 1), nn.SiLU(), nn.Flatten()]
        self.conv = nn.Sequential(*layers)
        self.head = _mlp([channels * side * side, hidden, out_dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x * 2.0 - 1.0))


class ConvDecoder(nn.Module):
    """Latent concepts -> image means (in [0, 1] through a sigmoid).

    :param in_dim: size of the latent vector (concepts and style).
    :param image_shape: ``(C, H, W)`` of the output.

    ``forward(z)``: ``z`` of shape ``[..., in_dim]`` -> ``[..., C, H, W]``.
    """

    def __init__(self, in_dim: int, image_shape: Sequence[int], channels: int = 64, hidden: int = 256):
        super().__init__()
        check_image_size(image_shape)
        c, h, _ = image_shape
        stages, side = _conv_plan(h)
        self.side, self.channels, self.image_shape = side, channels, tuple(image_shape)
        self.head = _mlp([in_dim, hidden, channels * side * side])
        layers: list[nn.Module] = [nn.SiLU(), nn.Conv2d(channels, channels, 3, 1, 1), nn.SiLU()]
        for s in range(stages):
            out = channels if s < stages - 1 else channels // 2
            layers += [nn.ConvTranspose2d(channels, out, 4, 2, 1), nn.SiLU()]
        last = channels if stages == 0 else channels // 2
        layers += [nn.ConvTranspose2d(last, c, 4, 4)]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.head(z.reshape(-1, z.shape[-1])).reshape(-1, self.channels, self.side, self.side)
        return torch.sigmoid(self.deconv(h)).reshape(*batch, *self.image_shape)


class CompositeConvDecoder(nn.Module):
    """One small decoder per group of concepts (an object in the picture; by default each concept alone)
    and one for the style: each object is drawn from its own concepts only.

    Each group has its own MLP head; the conv layers that turn a group's feature map into its output are
    shared by the groups and run on them as one batch (as the spatial-broadcast decoders of slot models
    share theirs). Two ways to compose the groups:

    - ``compose="masks"`` (``CausalVAE(decoder="layered")``, the default there): each group paints a colour
      layer and a mask logit per pixel; a softmax over the groups' masks and a learned background layer
      gives each pixel's owner, and the image is the owners' colours. A change of one group's concepts can
      change only the pixels its layer owns (or takes). Measured: it lets an intervention on an effect
      (Pendulum's shadow) change that effect's pixels (see docs/method.md, "Counterfactual images").
    - ``compose="sum"`` (``decoder="composite"``): the groups' pixel logits are summed (the official code's
      bias: one decoder per concept, logits averaged); the last, linear layer runs once on the sum of the
      groups' features, which sums their logits exactly. Measured: training spreads an object over several
      groups.

    Concepts that describe one object together (Pendulum's shadow has a length and a position) share a
    group, whose decoder then reads all of them: ``groups=[[0], [1], [2, 3]]``.

    :param n_concepts: ``K``: the first ``K`` inputs are the concepts.
    :param style_dim: ``S``: the last ``S`` inputs form one more group (none if 0).
    :param image_shape: ``(C, H, W)`` of the output.
    :param channels: channels of each group's decoder (default half the joint decoder's).
    :param hidden: width of each group's MLP head.
    :param groups: a partition of the concept indices ``0 .. K-1`` into groups (default: each concept
        alone), in any order.
    :param compose: ``"masks"`` or ``"sum"`` (above).

    ``forward(z)``: ``z`` of shape ``[..., K + S]`` -> ``[..., C, H, W]`` in [0, 1].
    """

    def __init__(self, n_concepts: int, style_dim: int, image_shape: Sequence[int], channels: int = 32, hidden: int = 64,
                 groups: Sequence[Sequence[int]] | None = None, compose: str = "sum"):
        super().__init__()
        check_image_size(image_shape)
        c, h, _ = image_shape
        stages, side = _conv_plan(h)
        self.K, self.S = n_concepts, style_dim
        groups = [[k] for k in range(n_concepts)] if groups is None else [list(map(int, g)) for g in groups]
        flat = sorted(k for g in groups for k in g)
        if flat != list(range(n_concepts)) or any(not g for g in groups):
            raise ValueError(f"groups must partition the concept indices 0..{n_concepts - 1} into non-empty groups, "
                             f"got {groups}")
        if compose not in ("sum", "masks"):
            raise ValueError(f"compose must be 'sum' or 'masks', got {compose!r}")
        self.groups, self.compose = groups, compose
        G = len(groups) + (1 if style_dim else 0)
        self.G, self.side, self.channels, self.image_shape = G, side, channels, tuple(image_shape)
        width = max(1, style_dim, *map(len, groups))  # inputs per group: its concepts (zero-padded), or the style
        # index [len(groups), width] into the concepts with a zero column appended at index K (the padding)
        index = torch.full((len(groups), width), n_concepts, dtype=torch.long)
        for i, g in enumerate(groups):
            index[i, : len(g)] = torch.tensor(g)
        self.register_buffer("group_index", index, persistent=False)
        self.W1 = nn.Parameter(torch.randn(G, width, hidden) / math.sqrt(width))
        self.b1 = nn.Parameter(torch.zeros(G, hidden))
        self.W2 = nn.Parameter(torch.randn(G, hidden, channels * side * side) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(G, channels * side * side))
        layers: list[nn.Module] = [nn.SiLU(), nn.Conv2d(channels, channels, 3, 1, 1), nn.SiLU()]
        for s in range(stages):
            out = channels if s < stages - 1 else channels // 2
            layers += [nn.ConvTranspose2d(channels, out, 4, 2, 1), nn.SiLU()]
        last = channels if stages == 0 else channels // 2
        self.deconv = nn.Sequential(*layers)  # shared by the groups
        # The last layer is linear, so summing the groups' features before it sums their logits exactly,
        # and the full-resolution layer runs once, not once per group.
        if compose == "sum":
            self.out = nn.ConvTranspose2d(last, c, 4, 4)
        else:
            # Each group's colours and mask logit at full resolution: a 1x1 convolution to the 4 x 4 pixels of
            # each feature cell (the map of a 4x4 stride-4 transposed convolution), kept in that layout while
            # the layers are mixed (see _cells).
            self.out = nn.Conv2d(last, (c + 1) * 16, 1)
            # the background: a constant colour and mask logit per pixel
            self.background = nn.Parameter(torch.zeros(c + 1, h, h))

    def _group_inputs(self, z: torch.Tensor) -> torch.Tensor:
        """``[M, K + S]`` -> ``[M, G, width]``: each group's concepts (zero-padded), the style in the last."""
        padded = F.pad(z[:, : self.K], (0, 1))  # [M, K + 1]: column K is the padding's zero
        concepts = padded[:, self.group_index]  # [M, G_c, width]
        if not self.S:
            return concepts
        style = F.pad(z[:, None, self.K :], (0, self.W1.shape[1] - self.S))  # [M, 1, width]
        return torch.cat([concepts, style], 1)

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        """``[M, K + S]`` -> each group's last features ``[M, G, c, h, w]``."""
        g = self._group_inputs(z)  # [M, G, width]
        h = F.silu(torch.einsum("mgw,gwh->mgh", g, self.W1) + self.b1)
        h = torch.einsum("mgh,ghf->mgf", h, self.W2) + self.b2  # [M, G, channels * side^2]
        f = self.deconv(h.reshape(-1, self.channels, self.side, self.side))  # the groups as one batch
        return f.reshape(-1, self.G, *f.shape[1:])

    def _cells(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``"masks"``: ``[M, K + S]`` -> each group's colour logits ``[M, G, C, 16, h, w]`` and mask logit
        ``[M, G, 1, 16, h, w]`` per 4 x 4 cell of pixels, and the background's ``[C, 16, h, w]`` and
        ``[1, 16, h, w]`` (``pixel_shuffle`` order: the layers are mixed in this layout, and only the mixed
        image is shuffled to ``[M, C, H, W]``). Colours and masks come from the two row blocks of the one
        1x1 convolution ``out``, run apart so that neither is a slice of a larger output (whose backward
        pass would fill and copy a tensor of the whole output's size)."""
        f = self._features(z)  # [M, G, c, h, w]
        M, h, w = f.shape[0], f.shape[-2], f.shape[-1]
        n = self.image_shape[0] * 16
        f = f.flatten(0, 1).flatten(2)  # [M * G, c, h * w]
        weight, bias = self.out.weight.flatten(1), self.out.bias  # [(C + 1) * 16, c], [(C + 1) * 16]

        def conv1x1(rows: slice) -> torch.Tensor:  # a batched matrix product: twice as fast as conv2d here
            out = bias[rows, None].expand(f.shape[0], -1, f.shape[-1])
            return torch.baddbmm(out, weight[rows].expand(f.shape[0], -1, -1), f)  # [M * G, rows, h * w]

        colour = conv1x1(slice(None, n)).reshape(M, self.G, -1, 16, h, w)
        mask = conv1x1(slice(n, None)).reshape(M, self.G, 1, 16, h, w)
        bg = F.pixel_unshuffle(self.background, 4).reshape(-1, 16, h, w)
        return colour, mask, bg[:-1], bg[-1:]

    def _painted(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``"masks"``: ``[M, K + S]`` -> each layer's colour ``[M, G + 1, C, H, W]`` and its pixel weights
        ``[M, G + 1, 1, H, W]`` (softmax over the layers; the last layer is the background)."""
        colour, mask, bg_colour, bg_mask = self._cells(z)
        out = torch.cat([colour, mask], 2)
        bg = torch.cat([bg_colour, bg_mask])
        out = torch.cat([out, bg.expand(out.shape[0], 1, *bg.shape)], 1).flatten(2, 3)  # [M, G + 1, (C + 1) * 16, h, w]
        out = F.pixel_shuffle(out, 4)  # [M, G + 1, C + 1, H, W]
        return torch.sigmoid(out[:, :, :-1]), torch.softmax(out[:, :, -1:], 1)

    def _mixed(self, z: torch.Tensor) -> torch.Tensor:
        """``"masks"``: the image ``[M, C, H, W]``, the same values as ``(colour * weight).sum(1)`` of
        :meth:`_painted`, mixed per cell of pixels with the softmax written out (the background is not copied
        ``M`` times, the layers are not shuffled)."""
        colour, mask, bg_colour, bg_mask = self._cells(z)  # [M, G, C, 16, h, w], [M, G, 1, 16, h, w], ...
        top = torch.maximum(mask.amax(1), bg_mask).detach()  # [M, 1, 16, h, w]: a constant shift, for stability
        e, e_bg = torch.exp(mask - top[:, None]), torch.exp(bg_mask - top)
        painted = (torch.sigmoid(colour) * e).sum(1) + torch.sigmoid(bg_colour) * e_bg  # [M, C, 16, h, w]
        image = painted / (e.sum(1) + e_bg)
        return F.pixel_shuffle(image.flatten(1, 2), 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(-1, z.shape[-1])
        if self.compose == "masks":
            image = self._mixed(flat)
        else:
            image = torch.sigmoid(self.out(self._features(flat).sum(1)))
        return image.reshape(*z.shape[:-1], *self.image_shape)

    @torch.no_grad()
    def layers(self, z: torch.Tensor) -> torch.Tensor:
        """What each group of concepts draws, ``[..., G, C, H, W]``, in the order of ``groups`` (the last
        group is the style). ``"sum"``: each group's share of the logits (their sum plus the output bias is
        the image's logits); ``"masks"``: each group's colour times its pixel weight (their sum plus the
        background's share is the image)."""
        flat = z.reshape(-1, z.shape[-1])
        if self.compose == "masks":
            colour, weight = self._painted(flat)
            layers = (colour * weight)[:, :-1]
        else:
            f = self._features(flat)
            layers = F.conv_transpose2d(f.flatten(0, 1), self.out.weight, None, self.out.stride)
        return layers.reshape(*z.shape[:-1], self.G, *self.image_shape)


class MLPEncoder(nn.Module):
    """Flat input ``[N, D]`` -> ``[N, out_dim]`` (for small, non-image observations)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.net = _mlp([in_dim, *hidden, out_dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1))


class MLPDecoder(nn.Module):
    """``[..., in_dim]`` -> means of a flat observation ``[..., D]`` (identity output)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.net = _mlp([in_dim, *hidden, out_dim])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
