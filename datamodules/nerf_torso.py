"""The torso stage's data: the head's whole-frame datamodule (`datamodules.nerf_video`) plus what the torso needs and
scores against: the real frame, the neck band, the background plate and the person's mean jaw. CPU tensors only."""

from __future__ import annotations

import logging

import numpy as np
import torch

from datamodules.nerf_video import NerfVideoDataModule, _resize
from talkfield import landmarks as lmk

log = logging.getLogger(__name__)


def neck_band_mask(jaw: np.ndarray, size: int, up: float, down: float) -> np.ndarray:
    """The neck band, where head/torso seams show: the strip along the jaw line (68-layout points 0-16, jaw [17, 2+]
    px at `size`) from `up` above it to `down` below it, in units of the jaw width (ear to ear), measured along the
    face's downward direction. bool [size, size]."""
    import cv2

    p = np.asarray(jaw, np.float64)[:, :2]
    across = p[-1] - p[0]
    width = max(float(np.linalg.norm(across)), 1e-6)
    normal = np.array([-across[1], across[0]]) / width
    if normal[1] < 0:  # point down the face
        normal = -normal
    poly = np.concatenate([p - normal * up * width, (p + normal * down * width)[::-1]])
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    return mask.astype(bool)


class TorsoVideoDataModule(NerfVideoDataModule):
    """`NerfVideoDataModule` items plus: real [H,W,3] / real_sr (the real frame, float32 in [0, 1]) and neck / neck_sr
    (bool neck band) at the render and super-resolved sizes. The item's `bg` (the frame's own torso over the plate)
    is the torso target. Attributes after setup: plate [r, r, 3] float32, mean_jaw [7, 3] (head units).

    Args: those of NerfVideoDataModule, and neck_band_up / neck_band_down: the band's extent above / below the jaw
    line in jaw widths (`neck_band_mask`).
    """

    torso = True

    def __init__(self, *args, neck_band_up: float = 0.05, neck_band_down: float = 0.3, **kwargs):
        super().__init__(*args, **kwargs)
        self.neck_band_up, self.neck_band_down = float(neck_band_up), float(neck_band_down)
        self.real: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.real is not None:
            return
        ds, T, n = self.ds, self.ds.T, self.ds.size
        r, s = self.render_size, self.sr_size
        self.plate = torch.from_numpy(_resize(ds.background(), r).astype(np.float32) / 255.0)
        self.mean_jaw = torch.from_numpy(np.asarray(ds.array("mean_shape"), np.float32)[lmk.JAW])
        jaw = np.asarray(ds.array("lms2d"), np.float32)[:, lmk.LM68_FROM_478[lmk.JAW68]]
        real = torch.empty(T, r, r, 3, dtype=torch.uint8)
        real_sr = torch.empty(T, s, s, 3, dtype=torch.uint8)
        neck = torch.empty(T, r, r, dtype=torch.bool)
        neck_sr = torch.empty(T, s, s, dtype=torch.bool)
        log.info("loading %d real frames and neck bands of subject %r", T, self.subject)
        for t in range(T):
            frame = ds.frame(t)
            band = neck_band_mask(jaw[t], n, self.neck_band_up, self.neck_band_down).astype(np.float32)
            real[t] = torch.from_numpy(_resize(frame, r))
            real_sr[t] = torch.from_numpy(_resize(frame, s))
            neck[t] = torch.from_numpy(_resize(band, r) > 0.5)
            neck_sr[t] = torch.from_numpy(_resize(band, s) > 0.5)
        self.real, self.real_sr, self.neck, self.neck_sr = real, real_sr, neck, neck_sr

    UINT8_KEYS = NerfVideoDataModule.UINT8_KEYS + ("real", "real_sr")

    def item(self, t: int, raw: bool = False) -> dict[str, torch.Tensor]:
        out = super().item(t, raw=True)
        out.update(real=self.real[t], real_sr=self.real_sr[t], neck=self.neck[t], neck_sr=self.neck_sr[t])
        return out if raw else self.to_float(out)
