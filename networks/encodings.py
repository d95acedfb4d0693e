"""Coordinate encodings that need no CUDA extension."""

from __future__ import annotations

import math

import torch
from torch import nn


class FourierEncoding(nn.Module):
    """[x, sin(2^k pi x), cos(2^k pi x)] for k < num_freqs. x: [..., D] -> [..., D * (1 + 2 * num_freqs)]."""

    def __init__(self, input_dim: int, num_freqs: int, include_input: bool = True):
        super().__init__()
        self.input_dim, self.num_freqs, self.include_input = input_dim, num_freqs, include_input
        self.register_buffer("freqs", (2.0 ** torch.arange(num_freqs)) * math.pi, persistent=False)

    @property
    def output_dim(self) -> int:
        return self.input_dim * (2 * self.num_freqs + int(self.include_input))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = x[..., None, :] * self.freqs[:, None]  # [..., F, D]
        enc = torch.cat([torch.sin(xb), torch.cos(xb)], dim=-2).flatten(-2)
        return torch.cat([x, enc], dim=-1) if self.include_input else enc


def mlp(in_dim: int, hidden: int, out_dim: int, num_layers: int, bias: bool = True,
        activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """An MLP with `num_layers` linear layers (num_layers - 1 hidden layers of width `hidden`)."""
    dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
        if i < num_layers - 1:
            layers.append(activation())
    return nn.Sequential(*layers)
