"""Audio2Motion losses: pure functions on person-normalised motion [B,T,204] (the module weights them)."""

from __future__ import annotations

import torch

from talkfield import landmarks as lmk


def region_weights(lips: float = 5.0, eyes: float = 3.0, jaw: float = 1.0, other: float = 1.0) -> torch.Tensor:
    """Per-number weights [204] of the 68-point layout (x, y, z of each point share its region's weight)."""
    w = torch.full((68,), float(other))
    w[lmk.JAW68] = jaw
    w[lmk.EYES68] = eyes
    w[lmk.LIPS68] = lips
    return w.repeat_interleave(3)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_d w_d (pred - target)^2 / sum_d w_d, averaged over batch and time. pred/target [B,T,D], weights [D]."""
    w = weights.to(pred)
    return (((pred - target) ** 2) * w).sum(-1).mean() / w.sum()


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Region-weighted squared landmark error in head units, divided by the mean squared scale of the weighted
    numbers (so it is O(1) for any person). pred/target [B,T,204] normalised, scale [B,204] (head units per
    normalised unit), weights [204] (zero = ignored)."""
    w = weights.to(pred)
    err = ((pred - target) * scale[:, None, :]) ** 2
    norm = ((scale ** 2) * w).sum(-1).mean() / w.sum()
    return (err * w).sum(-1).mean() / w.sum() / norm.clamp_min(1e-12)


def velocity_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted MSE of the first temporal differences [B,T-1,D] (keeps closures and openings sharp)."""
    return weighted_mse(pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1], weights)


def laplacian_loss(pred: torch.Tensor) -> torch.Tensor:
    """Temporal smoothness: mean squared second difference of pred [B,T,D]."""
    if pred.shape[1] < 3:
        return pred.sum() * 0
    return ((pred[:, 2:] - 2 * pred[:, 1:-1] + pred[:, :-2]) ** 2).mean()


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two series [T] (0 when either is constant)."""
    a = a.double() - a.double().mean()
    b = b.double() - b.double().mean()
    den = (a.norm() * b.norm()).clamp_min(1e-12)
    return ((a * b).sum() / den).float()
