"""Super-resolution 2x: a residual conv net on the rendered frame (the output is the bilinear upsampling plus a
learned correction, so an untrained net is an exact bilinear upsampler)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SuperResolution(nn.Module):
    """image [B, 3, H, W] in [0, 1] -> [B, 3, 2H, 2W] in [0, 1].

    Args: channels: width at the input resolution; blocks: residual blocks there; up_channels: width after the
    pixel-shuffle upsampling.
    """

    def __init__(self, channels: int = 64, blocks: int = 2, up_channels: int = 32):
        super().__init__()
        self.inp = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.Sequential(*[_ResBlock(channels) for _ in range(blocks)])
        self.up = nn.Sequential(nn.Conv2d(channels, up_channels * 4, 3, padding=1), nn.PixelShuffle(2),
                                nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(up_channels, up_channels, 3, padding=1),
                                nn.LeakyReLU(0.2, inplace=True))
        self.to_rgb = nn.Conv2d(up_channels, 3, 3, padding=1)
        nn.init.zeros_(self.to_rgb.weight)
        nn.init.zeros_(self.to_rgb.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
        h = F.leaky_relu(self.inp(image * 2 - 1), 0.2)
        h = self.up(self.blocks(h))
        return (base + self.to_rgb(h).float()).clamp(0, 1)
