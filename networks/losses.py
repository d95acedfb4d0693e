"""Loss functions and metrics: pure functions returning tensors (the modules weight them from config)."""

from __future__ import annotations

import numpy as np
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


def photometric(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-pixel photometric error, mean over everything. pred/target: [..., 3] in [0, 1]; kind: mse | l1 | huber."""
    pred, target = pred.float(), target.float()
    if kind == "mse":
        return ((pred - target) ** 2).mean()
    if kind == "l1":
        return (pred - target).abs().mean()
    if kind == "huber":
        return torch.nn.functional.smooth_l1_loss(pred, target, beta=0.1)
    raise ValueError(f"photometric loss kind {kind!r}: use mse, l1 or huber")


def alpha_entropy(weights_sum: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean binary entropy (bits) of each ray's opacity: pushes alpha towards 0 or 1. weights_sum: [N] in [0, 1]."""
    a = weights_sum.float().clamp(eps, 1.0 - eps)
    b = 1.0 - a
    return (-(a * torch.log2(a) + b * torch.log2(b))).mean()


def alpha_mask_loss(weights_sum: torch.Tensor, head_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between each ray's opacity and the head segmentation (1 inside the head, 0 outside,
    fractions at edges): keeps the face opaque (no background showing through eyes and mouth) and the field empty
    outside the head. weights_sum: [N]; head_mask: [N] (or any shape with N elements) in [0, 1]."""
    return ((weights_sum.float().reshape(-1) - head_mask.float().reshape(-1)) ** 2).mean()


def ambient_regularizer(ambient_sum: torch.Tensor, nonface: torch.Tensor, mode: str = "mae") -> torch.Tensor:
    """Mean ambient magnitude over the rays outside the face: motion there should come from nothing (hair,
    ears and neck must not follow the lips). ambient_sum: [N] per-ray sum of |ambient| (or [N, k]);
    nonface: [N] bool. mode: mae (sum as is) | mse (squared). Returns 0 when no ray is outside the face."""
    a = ambient_sum.float()
    if a.dim() > 1:
        a = a.abs().sum(-1)
    a = a if mode == "mae" else a ** 2 if mode == "mse" else None
    if a is None:
        raise ValueError(f"ambient regularizer mode {mode!r}: use mae or mse")
    m = nonface.to(a.dtype)
    return (a * m).sum() / m.sum().clamp_min(1.0)


def adaptive_log_weight(log10_weight: torch.Tensor, loss: torch.Tensor, target: float, rate: float,
                        log10_min: float, log10_max: float) -> torch.Tensor:
    """The next value of an adaptive loss weight, kept in log10 space (GeneFace++'s ambient weight, made safe):
    log10(w) += rate * (log10(loss) - log10(target)), clamped to [log10_min, log10_max]. A non-finite or zero
    loss leaves the weight unchanged, so the weight can neither run away to inf/NaN nor collapse."""
    l = loss.detach().float()
    step = rate * (torch.log10(l.clamp_min(1e-30)) - float(np.log10(target)))
    ok = torch.isfinite(l) & (l > 0)
    new = torch.where(ok, log10_weight + step, log10_weight)
    return new.clamp(log10_min, log10_max)


def ramp(step: int, start: int, length: int) -> float:
    """0 before `start`, rising linearly to 1 over `length` steps (length 0: a step at `start`)."""
    if step < start:
        return 0.0
    return 1.0 if length <= 0 else min(1.0, (step - start) / length)


def crop_box(images: torch.Tensor, rects: torch.Tensor, out_size: int) -> torch.Tensor:
    """Crop boxes given in pixel coordinates and resize them to out_size x out_size (bilinear).

    images: [B, C, H, W]; rects: [B, 4] (x0, y0, x1, y1) with x along the width (columns, u right) and y along
    the height (rows, v down), the dataset's `lip_rect` convention. Rows are sliced with y, columns with x (the
    original sliced rows with the x-range, transposing the crop). Boxes are clamped to the image.
    Returns [B, C, out_size, out_size].
    """
    B, _, H, W = images.shape
    out = []
    for b in range(B):
        x0, y0, x1, y1 = [int(round(float(v))) for v in rects[b]]
        x0, x1 = max(0, min(x0, W - 1)), max(1, min(x1, W))
        y0, y1 = max(0, min(y0, H - 1)), max(1, min(y1, H))
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        crop = images[b:b + 1, :, y0:y1, x0:x1]
        out.append(torch.nn.functional.interpolate(crop, size=(out_size, out_size), mode="bilinear",
                                                   align_corners=False))
    return torch.cat(out)


def perceptual(net: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean perceptual distance. net: an LPIPS-style module (in0, in1, normalize=True) -> [B, 1, 1, 1];
    pred/target: [B, 3, H, W] in [0, 1]."""
    return net(pred.float(), target.float(), normalize=True).mean()
