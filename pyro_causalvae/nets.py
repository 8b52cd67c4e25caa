"""Neural networks of the CausalVAE: image encoder and decoder, and the per-concept mechanisms g_i.

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

    :param in_dim: size of the latent vector (``n_concepts * concept_dim``).
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


class Mechanisms(nn.Module):
    """The per-concept nonlinear mechanisms ``g_i`` of the mask layer, batched over concepts.

    ``g_i(A[:, i] o z)``: each parent block ``z_j`` (``concept_dim`` dims) is projected by a weight
    ``V[j, i]`` of unit norm per hidden unit and scaled by the edge weight ``A[j, i]``, so that ``|A[j, i]|``
    alone measures the strength of the edge ``j -> i`` (no scale can hide in the network); then a small MLP
    per concept maps the sum to ``concept_dim`` outputs. With all parents' weights zero, ``g_i`` is a
    learned constant (the root's mean).

    :param n: number of concepts.
    :param concept_dim: dims per concept block.
    :param hidden: hidden width of each mechanism.
    """

    def __init__(self, n: int, concept_dim: int, hidden: int = 32):
        super().__init__()
        self.n, self.d, self.hidden = n, concept_dim, hidden
        self.V = nn.Parameter(torch.randn(n, n, concept_dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(n, hidden))
        self.W2 = nn.Parameter(torch.randn(n, hidden, hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(n, hidden))
        self.W3 = nn.Parameter(torch.randn(n, hidden, concept_dim) / math.sqrt(hidden))
        self.b3 = nn.Parameter(torch.zeros(n, concept_dim))

    def _unit_V(self) -> torch.Tensor:
        return self.V / self.V.norm(dim=2, keepdim=True).clamp_min(1e-8)

    def forward(self, z: torch.Tensor, A: torch.Tensor, i: int | None = None) -> torch.Tensor:
        """Mechanism outputs.

        :param z: concept blocks of shape ``[..., n, concept_dim]``.
        :param A: edge weights ``[n, n]`` (already masked).
        :param i: compute only concept ``i`` (returns ``[..., concept_dim]``), or all (``[..., n, concept_dim]``).
        """
        n, d, H = self.n, self.d, self.hidden
        batch = z.shape[:-2]
        flat = z.reshape(-1, n * d)  # [M, n*d]
        V = self._unit_V() * A[:, :, None, None]  # [j, i, d, H]
        if i is None:
            W1 = V.permute(0, 2, 1, 3).reshape(n * d, n * H)  # [(j, d), (i, H)]
            h = F.silu((flat @ W1).reshape(-1, n, H) + self.b1).transpose(0, 1)  # [n, M, H]
            h = F.silu(torch.baddbmm(self.b2[:, None, :], h, self.W2))  # [n, M, H]
            out = torch.baddbmm(self.b3[:, None, :], h, self.W3)  # [n, M, d]
            return out.transpose(0, 1).reshape(*batch, n, d)
        h = F.silu(flat @ V[:, i].reshape(n * d, H) + self.b1[i])
        h = F.silu(h @ self.W2[i] + self.b2[i])
        return (h @ self.W3[i] + self.b3[i]).reshape(*batch, d)
