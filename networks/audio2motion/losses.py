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


def mouth_measures(z: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor, gap_base: torch.Tensor,
                   width_base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mouth opening and lip width (head units, as `postprocess.mouth_opening68` / `lip_width68`) of normalised
    motion z [B,T,204]; scale / mean [B,204] the person's normalisation; gap_base / width_base [B,3] the mean-shape
    vectors between the inner-lip midpoints and between the mouth corners. Returns (opening, width) [B,T]."""
    from networks.audio2motion.postprocess import INNER_LIP_MID68, MOUTH_CORNERS68

    B, T = z.shape[:2]
    off = (z * scale[:, None] + mean[:, None]).reshape(B, T, 68, 3)
    (u, lo), (c1, c2) = INNER_LIP_MID68, MOUTH_CORNERS68
    gap = (gap_base[:, None] + off[:, :, lo] - off[:, :, u]).norm(dim=-1)
    width = (width_base[:, None] + off[:, :, c2] - off[:, :, c1]).norm(dim=-1)
    return gap, width


def mouth_loss(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
               gap_base: torch.Tensor, width_base: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """L1 on mouth opening and lip width (head units) divided by the person's opening std norm [B]: the
    quantities the lip-sync numbers are measured on, with a median-seeking loss (sharper closures than MSE)."""
    gp, wp = mouth_measures(pred, scale, mean, gap_base, width_base)
    gt, wt = mouth_measures(target, scale, mean, gap_base, width_base)
    return (((gp - gt).abs() + (wp - wt).abs()) / norm[:, None]).mean()


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two series [T] (0 when either is constant)."""
    a = a.double() - a.double().mean()
    b = b.double() - b.double().mean()
    den = (a.norm() * b.norm()).clamp_min(1e-12)
    return ((a * b).sum() / den).float()
