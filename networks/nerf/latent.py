"""Per-frame latent codes (CONTRACTS.md section 5): the one function deciding which code a frame gets."""

from __future__ import annotations

import torch
from torch import nn


def per_frame_code(table: torch.Tensor, frame: torch.Tensor, num_train: int | torch.Tensor) -> torch.Tensor:
    """THE per-frame code rule: training frames use their own code, any other frame the mean of the training codes.

    table: [F, D] codes (rows >= num_train are never used); frame: [B] int64 frame indices of the subject
    (training frames are 0 .. num_train-1 by the dataset split; pass -1 for a frame that has no index, e.g. at
    inference); num_train: number of training frames. Returns [B, D].
    """
    n = int(num_train)
    if n < 1:
        raise ValueError("per_frame_code: the table has no training codes (num_train is 0); was setup() run?")
    frame = frame.reshape(-1).to(table.device)
    mean = table[:n].mean(0, keepdim=True)
    own = (frame >= 0) & (frame < n)
    rows = table[frame.clamp(0, n - 1)]
    return torch.where(own[:, None], rows, mean.expand_as(rows))


class FrameCodes(nn.Module):
    """A table of per-frame latent codes with capacity `max_frames`, init N(0, init_std^2).

    `num_train` (a buffer, so checkpoints carry it) is set once from the dataset; forward(frame [B]) -> [B, dim]
    applies `per_frame_code` with a host copy of it (reading the buffer would wait for the GPU on every call).
    """

    def __init__(self, max_frames: int = 20000, dim: int = 4, init_std: float = 0.1):
        super().__init__()
        self.dim = dim
        self.table = nn.Parameter(torch.randn(max_frames, dim) * init_std)
        self.register_buffer("num_train", torch.zeros((), dtype=torch.long))
        self._num_train: int | None = None

    def set_num_train(self, n: int) -> None:
        if n > self.table.shape[0]:
            raise ValueError(f"{n} training frames exceed the per-frame code table ({self.table.shape[0]}); raise "
                             "model.network.latent_max_frames")
        if int(self.num_train) not in (0, n):
            raise ValueError(f"per-frame codes were trained on {int(self.num_train)} frames, the dataset has {n}")
        self.num_train.fill_(n)
        self._num_train = int(n)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        if self._num_train is None:  # first use, or after load_state_dict: read the buffer once
            self._num_train = int(self.num_train)
        return per_frame_code(self.table, frame, self._num_train)

    def _load_from_state_dict(self, *args, **kwargs):
        self._num_train = None
        super()._load_from_state_dict(*args, **kwargs)
