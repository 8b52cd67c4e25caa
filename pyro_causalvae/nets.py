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
    """One small decoder per concept (and one for the style), whose pixel logits are summed: each concept
    is drawn from its own value only.

    The official code's bias (one decoder per concept, logits averaged), with conv decoders: additive
    logits can place a thing whose extent depends on two concepts (Pendulum's shadow spans ``[position -
    length / 2, position + length / 2]``, i.e. ``length - 2 |x - position| > 0``: a sum of a function of
    each), and additive decoders extrapolate to unseen combinations of their inputs (Lachapelle et al.,
    NeurIPS 2023). Measured here it does not stop an effect from being drawn by its causes' groups
    together (see docs/method.md, "Counterfactual images"). Each group has its own MLP head; the conv
    layers that turn a group's feature map into its logits are shared by the groups and run on them as
    one batch (as the spatial-broadcast decoders of slot models share theirs), and the last, linear layer
    runs once on the sum of the groups' features (which sums their logits exactly).

    :param n_concepts: ``K``: the first ``K`` inputs are the concepts, one group each.
    :param style_dim: ``S``: the last ``S`` inputs form one more group (none if 0).
    :param image_shape: ``(C, H, W)`` of the output.
    :param channels: channels of each group's decoder (default half the joint decoder's).
    :param hidden: width of each group's MLP head.

    ``forward(z)``: ``z`` of shape ``[..., K + S]`` -> ``[..., C, H, W]`` in [0, 1].
    """

    def __init__(self, n_concepts: int, style_dim: int, image_shape: Sequence[int], channels: int = 32, hidden: int = 64):
        super().__init__()
        check_image_size(image_shape)
        c, h, _ = image_shape
        stages, side = _conv_plan(h)
        self.K, self.S = n_concepts, style_dim
        G = n_concepts + (1 if style_dim else 0)
        self.G, self.side, self.channels, self.image_shape = G, side, channels, tuple(image_shape)
        width = max(1, style_dim)  # inputs per group: a concept's value (zero-padded), or the style
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
        self.out = nn.ConvTranspose2d(last, c, 4, 4)

    def _group_inputs(self, z: torch.Tensor) -> torch.Tensor:
        """``[M, K + S]`` -> ``[M, G, width]``: each concept alone in its group, the style in the last."""
        concepts = F.pad(z[:, : self.K, None], (0, self.W1.shape[1] - 1))  # [M, K, width]
        if not self.S:
            return concepts
        return torch.cat([concepts, z[:, None, self.K :]], 1)

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        """``[M, K + S]`` -> each group's last features ``[M, G, c, h, w]``."""
        g = self._group_inputs(z)  # [M, G, width]
        h = F.silu(torch.einsum("mgw,gwh->mgh", g, self.W1) + self.b1)
        h = torch.einsum("mgh,ghf->mgf", h, self.W2) + self.b2  # [M, G, channels * side^2]
        f = self.deconv(h.reshape(-1, self.channels, self.side, self.side))  # the groups as one batch
        return f.reshape(-1, self.G, *f.shape[1:])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.out(self._features(z.reshape(-1, z.shape[-1])).sum(1))
        return torch.sigmoid(logits).reshape(*z.shape[:-1], *self.image_shape)

    @torch.no_grad()
    def layers(self, z: torch.Tensor) -> torch.Tensor:
        """Each group's share of the logits ``[..., G, C, H, W]`` (what each concept draws; the last group is
        the style); their sum plus the output bias is the image's logits."""
        f = self._features(z.reshape(-1, z.shape[-1]))
        logits = F.conv_transpose2d(f.flatten(0, 1), self.out.weight, None, self.out.stride)
        return logits.reshape(*z.shape[:-1], self.G, *self.image_shape)


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
