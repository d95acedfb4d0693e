"""Loss functions and metrics: pure functions returning tensors (the modules weight them from config)."""

from __future__ import annotations

import torch


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB for images in [0, 1]. pred/target: [..., C]; mask: [...] bool (None = all pixels)."""
    err = (pred.float() - target.float()) ** 2
    if mask is not None:
        m = mask.to(err.dtype)[..., None].expand_as(err)
        mse = (err * m).sum() / m.sum().clamp_min(1.0)
    else:
        mse = err.mean()
    return -10.0 * torch.log10(mse.clamp_min(1e-10))
