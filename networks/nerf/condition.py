"""Condition encoder: a window of z-scored landmark offsets + eye openness -> one condition vector per image."""

from __future__ import annotations

import torch
from torch import nn


class WindowAttention(nn.Module):
    """Learned smoothing over a window of W per-frame features (AD-NeRF style).

    Conv1d along the window axis reduces channels to 1, a Linear(W, W) + softmax gives the weights.
    forward(feat [B, W, C]) -> (smoothed [B, C], weights [B, W]).
    """

    def __init__(self, channels: int, window: int):
        super().__init__()
        dims = [channels, 16, 8, 4, 2, 1]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Conv1d(a, b, kernel_size=3, padding=1), nn.LeakyReLU(0.02)]
        self.conv = nn.Sequential(*layers[:-1])
        self.linear = nn.Linear(window, window)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score = self.conv(feat.transpose(1, 2)).squeeze(1)  # [B, W]
        weights = torch.softmax(self.linear(score), dim=-1)
        return (weights[..., None] * feat).sum(1), weights


class ConditionEncoder(nn.Module):
    """Landmarks + eye openness over a window of frames -> condition [B, out_dim].

    Args:
        motion_dim: 204 (68 x 3 z-scored canonical offsets). window: W frames centred on the target frame.
        hidden: width of the per-frame landmark MLP. landmark_dim: its output. eye_dim: eye-openness features
            (concatenated, not added into landmark channels: the original's eye_blink_dim mismatch cannot happen).
    forward(motion [B, W, 204], eye [B, W] in [0, 1]) -> (cond [B, landmark_dim + eye_dim], weights [B, W]).
    """

    def __init__(self, motion_dim: int = 204, window: int = 3, hidden: int = 64, landmark_dim: int = 64,
                 eye_dim: int = 8):
        super().__init__()
        self.window, self.out_dim = window, landmark_dim + eye_dim
        self.landmark_net = nn.Sequential(
            nn.Linear(motion_dim, hidden), nn.LeakyReLU(0.02), nn.Linear(hidden, hidden), nn.LeakyReLU(0.02),
            nn.Linear(hidden, landmark_dim))
        self.eye_net = nn.Sequential(nn.Linear(1, 16), nn.LeakyReLU(0.02), nn.Linear(16, eye_dim)) if eye_dim else None
        self.attention = WindowAttention(self.out_dim, window)

    def forward(self, motion: torch.Tensor, eye: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if motion.shape[1] != self.window:
            raise ValueError(f"condition window has {motion.shape[1]} frames, the encoder was built for {self.window}")
        feat = self.landmark_net(motion)
        if self.eye_net is not None:
            feat = torch.cat([feat, self.eye_net(eye[..., None].to(feat.dtype))], dim=-1)
        return self.attention(feat)
