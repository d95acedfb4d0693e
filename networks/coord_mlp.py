"""A coordinate network: 2D position -> RGB (the `fit_image` experiment)."""

from __future__ import annotations

import torch
from torch import nn

from networks.encodings import FourierEncoding, mlp


class CoordMLP(nn.Module):
    """Fourier-encoded 2D coordinates -> MLP -> sigmoid RGB. forward(xy [N,2] in [-1,1]) -> rgb [N,3]."""

    def __init__(self, num_freqs: int = 10, hidden: int = 256, num_layers: int = 4):
        super().__init__()
        self.encoding = FourierEncoding(2, num_freqs)
        self.net = mlp(self.encoding.output_dim, hidden, 3, num_layers)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(self.encoding(xy)))
