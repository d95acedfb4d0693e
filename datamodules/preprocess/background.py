"""Stage 6: the clean background plate and the torso-only images.

Plate: over up to `samples` evenly spaced frames, a pixel counts as sure background when it is labelled
background and at least `margin_px` from any person pixel; the plate is the mean colour over the frames where
it was sure background. `bg_known.png` (255 = seen) marks those pixels.
Fill policy for never-uncovered pixels (behind the person in every sampled frame): the colour of the nearest
known pixel, then a Gaussian blur (sigma `fill_blur_px`) inside the filled area only; the fill is a guess and
the torso/head targets cover it in every frame, so training never asks the model to reproduce it.

Torso image (RGBA): the frame with every head pixel removed; the area the chin hides (head pixels between the
jaw corners, below the ear line) is filled by smearing each column's topmost neck colour upward (darkening
2% per pixel, as GeneFace++), then blurred; alpha = torso + neck + fill.
"""

from __future__ import annotations

import numpy as np

from talkfield import landmarks as lmk
from talkfield.dataset import HEAD_LABELS, LABELS


def plate(frames: list[np.ndarray], labels: list[np.ndarray], margin_px: int, blur_px: float):
    """frames: list of [H,W,3] uint8, labels: list of [H,W] uint8 -> (plate [H,W,3] uint8, known [H,W] bool)."""
    import cv2

    H, W = labels[0].shape
    acc = np.zeros((H, W, 3), np.float64)
    cnt = np.zeros((H, W), np.float64)
    for img, lab in zip(frames, labels):
        bg = (lab == LABELS["background"]).astype(np.uint8)
        dist = cv2.distanceTransform(bg, cv2.DIST_L2, 5)
        sure = dist > margin_px
        acc[sure] += img[sure]
        cnt[sure] += 1
    known = cnt > 0
    out = np.zeros((H, W, 3), np.float64)
    out[known] = acc[known] / cnt[known][:, None]
    if not known.any():
        return np.full((H, W, 3), 127, np.uint8), known
    if (~known).any():
        _, lab_idx = cv2.distanceTransformWithLabels((~known).astype(np.uint8), cv2.DIST_L2, 5,
                                                     labelType=cv2.DIST_LABEL_PIXEL)
        ky, kx = np.nonzero(known)
        # labels number the zero (known) pixels in row-major scan order
        order = np.zeros(lab_idx.max() + 1, np.int64)
        zero_lab = lab_idx[ky, kx]
        order[zero_lab] = np.arange(len(ky))
        src = order[lab_idx[~known]]
        out[~known] = out[ky[src], kx[src]]
        if blur_px > 0:
            blurred = cv2.GaussianBlur(out, (0, 0), blur_px)
            out[~known] = blurred[~known]
    return np.clip(np.round(out), 0, 255).astype(np.uint8), known


def torso_rgba(img: np.ndarray, lab: np.ndarray, pts: np.ndarray, fill_px: int | None = None) -> np.ndarray:
    """Torso-only RGBA [H,W,4] uint8 from the frame [H,W,3], its label map [H,W] and landmarks [478,2+] (px)."""
    import cv2

    H, W = lab.shape
    assert HEAD_LABELS == (1, 2, 3, 4) and LABELS["neck"] == 5 and LABELS["torso"] == 6
    head = (lab >= 1) & (lab <= 4)
    body = lab >= 5
    jaw = lmk.to68(pts)[:, :2]
    face_h = float(pts[:, 1].max() - pts[:, 1].min())
    fill_px = int(round(fill_px if fill_px is not None else 0.35 * face_h))
    x0 = int(np.clip(np.floor(jaw[3, 0]), 0, W - 1))
    x1 = int(np.clip(np.ceil(jaw[13, 0]), 0, W - 1))
    ear_y = float(min(jaw[0, 1], jaw[16, 1]))
    out = img.copy()
    fill = np.zeros((H, W), bool)
    cols = np.arange(x0, x1 + 1)
    if len(cols):
        sub = body[:, cols]
        has = sub.any(0)
        top = np.where(has, sub.argmax(0), H)  # first body row per column
        lo = np.maximum(top - fill_px, int(np.ceil(ear_y)))
        r0 = int(max(0, lo.min()))
        r1 = int(min(H, top.max()))
        if r1 > r0:
            rows = np.arange(r0, r1)[:, None]
            region = (rows >= lo[None]) & (rows < top[None]) & has[None] & head[r0:r1, cols]
            src_row = np.clip(top + 2, 0, H - 1)
            colour = img[src_row, cols].astype(np.float32)  # [C,3]
            gain = np.float32(0.98) ** np.clip(top[None] - rows, 0, None).astype(np.float32)
            smear = np.clip(colour[None] * gain[..., None], 0, 255).astype(np.uint8)
            patch = out[r0:r1, x0:x1 + 1]
            patch[region] = smear[region]
            fill[r0:r1, x0:x1 + 1] = region
            if region.any():
                a0, a1 = max(0, r0 - 3), min(H, r1 + 3)
                b0, b1 = max(0, x0 - 3), min(W, x1 + 4)
                blurred = cv2.GaussianBlur(out[a0:a1, b0:b1], (5, 5), 0)
                m = fill[a0:a1, b0:b1]
                out[a0:a1, b0:b1][m] = blurred[m]
    alpha = (body | fill).astype(np.uint8)
    rgba = np.empty((H, W, 4), np.uint8)
    np.multiply(out, alpha[..., None], out=rgba[..., :3])
    rgba[..., 3] = alpha * 255
    return rgba
