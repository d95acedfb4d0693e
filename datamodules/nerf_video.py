"""Whole-frame data for the head field: one frame per step (SR and the perceptual loss need whole images), with its
camera, landmark-condition window, eye openness, ground truth, background and face mask. CPU tensors only."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.streams import StepStream
from talkfield.camera import scale_intrinsics
from talkfield.dataset import HEAD_LABELS, DatasetError, SubjectDataset, open_subject, preprocess_hint

log = logging.getLogger(__name__)


def face_hull_mask(points: np.ndarray, size: int, dilate_px: int) -> np.ndarray:
    """Face region: convex hull of the landmarks points [P, 2+] (px at `size`), dilated by `dilate_px`. bool [size, size]."""
    import cv2

    mask = np.zeros((size, size), np.uint8)
    hull = cv2.convexHull(np.round(points[:, :2]).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    if dilate_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        mask = cv2.dilate(mask, k)
    return mask.astype(bool)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if img.shape[0] == size and img.shape[1] == size:
        return img
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def condition_window(t: int, window: int, T: int) -> np.ndarray:
    """Frame indices of the condition window centred on t, edge-replicated at the ends of the video: [window]."""
    h = window // 2
    return np.clip(np.arange(t - h, t - h + window), 0, T - 1)


class _Frames(Dataset):
    def __init__(self, dm: "NerfVideoDataModule", frames: np.ndarray):
        self.dm, self.frames = dm, frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.dm.item(int(self.frames[i]))


class NerfVideoDataModule(LightningDataModule):
    """A preprocessed subject as whole frames.

    Args:
        data_dir, subject: the dataset `data_dir/subject` (talkfield.dataset schema). render_size: NeRF render
            side (px); the super-resolved side is 2 x render_size. window: condition frames centred on t.
        face_dilate: dilation of the landmark hull at the dataset resolution (px) for the face region.
        val_frames: held-out frames used for validation (None: all), evenly spaced. train_frames: draw training
            steps from the first n training frames only (None: all; a debugging/overfitting aid: the per-frame
            codes still follow the dataset split). seed: training order.
    Train items come from an endless step-indexed stream (exact resume); val items are the held-out frames.
    Each item: frame [] int64, c2w [4,4], K [3,3] (at render_size), motion [W,204] raw canonical offsets,
    eye [W], target/bg/face at render_size ([H,W,3] float32 in [0,1], [H,W,3], [H,W] bool), target_sr/face_sr
    at 2 x render_size, lip_rect [4] (x0, y0, x1, y1) float32 px at 2 x render_size, head_mask [H,W] float32 in
    [0, 1] at render_size (the segmentation's head labels, area-averaged: where the head field should be opaque).
    """

    def __init__(self, data_dir: str, subject: str, render_size: int = 256, window: int = 3, face_dilate: int = 8,
                 val_frames: int | None = None, train_frames: int | None = None, seed: int = 0,
                 num_workers: int = 0):
        super().__init__()
        self.data_dir, self.subject = Path(data_dir), subject
        self.render_size, self.sr_size, self.window = int(render_size), 2 * int(render_size), int(window)
        self.face_dilate, self.val_frames, self.seed, self.num_workers = face_dilate, val_frames, seed, num_workers
        self.train_frames = train_frames
        self.ds: SubjectDataset | None = None

    # ---------------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.ds is not None:
            return
        self.ds = ds = open_subject(self.data_dir, self.subject)
        T, n = ds.T, ds.size
        for name, shape in (("offsets", (T, 68, 3)), ("c2w", (T, 4, 4)), ("eye_open", (T,)), ("lms2d", (T, 478, 3)),
                            ("lip_rect", (T, 4)), ("motion_stats", (4, 204)), ("intrinsics", (3, 3))):
            got = tuple(ds.array(name).shape)
            if got != shape:
                raise DatasetError(f"subject {self.subject!r}: array {name} has shape {got}, expected {shape}; "
                                   f"{preprocess_hint(self.subject)} (add preprocess.force=true to rebuild)")
        self.train_idx, val_idx = ds.split("train"), ds.split("val")
        if len(self.train_idx) == 0 or len(val_idx) == 0:
            raise DatasetError(f"subject {self.subject!r}: {T} frames leave no train or no val frames")
        if self.val_frames is not None and len(val_idx) > self.val_frames:
            val_idx = val_idx[np.round(np.linspace(0, len(val_idx) - 1, self.val_frames)).astype(int)]
        self.val_idx = val_idx
        self.offsets = torch.from_numpy(np.asarray(ds.array("offsets"), np.float32).reshape(T, 204))
        self.eye = torch.from_numpy(np.asarray(ds.array("eye_open"), np.float32))
        self.c2w = torch.from_numpy(np.asarray(ds.array("c2w"), np.float32))
        self.motion_stats = torch.from_numpy(np.asarray(ds.array("motion_stats"), np.float32))
        K = np.asarray(ds.array("intrinsics"), np.float64)
        self.K = torch.from_numpy(scale_intrinsics(K, n, self.render_size).astype(np.float32))
        lip = np.asarray(ds.array("lip_rect"), np.float32) * (self.sr_size / n)
        self.lip_rect = torch.from_numpy(lip)
        lms = np.asarray(ds.array("lms2d"), np.float32)
        r, s = self.render_size, self.sr_size
        n_frames = T
        self.target = torch.empty(n_frames, r, r, 3, dtype=torch.uint8)
        self.target_sr = torch.empty(n_frames, s, s, 3, dtype=torch.uint8)
        self.bg = torch.empty(n_frames, r, r, 3, dtype=torch.uint8)
        self.face = torch.empty(n_frames, r, r, dtype=torch.bool)
        self.face_sr = torch.empty(n_frames, s, s, dtype=torch.bool)
        self.head_mask = torch.empty(n_frames, r, r, dtype=torch.uint8)
        workers = max(1, min(8, os.cpu_count() or 1))
        log.info("loading %d frames of subject %r at %d and %d px (%d threads)", T, self.subject, r, s, workers)

        def load(t: int) -> None:  # each call fills row t only; cv2 and numpy release the GIL, so threads overlap
            labels = ds.labels(t)
            tgt = ds.head_target(t, labels)
            bg = ds.head_background(t)
            face = face_hull_mask(lms[t], n, self.face_dilate).astype(np.float32)
            self.target[t] = torch.from_numpy(_resize(tgt, r))
            self.target_sr[t] = torch.from_numpy(_resize(tgt, s))
            self.bg[t] = torch.from_numpy(np.clip(np.round(_resize(bg, r)), 0, 255).astype(np.uint8))
            self.face[t] = torch.from_numpy(_resize(face, r) > 0)
            self.face_sr[t] = torch.from_numpy(_resize(face, s) > 0)
            head = np.isin(labels, HEAD_LABELS).astype(np.float32)
            self.head_mask[t] = torch.from_numpy(np.round(_resize(head, r) * 255.0).astype(np.uint8))

        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(load, range(T)):  # re-raises the first failure (naming the file) here
                pass

    # ---------------------------------------------------------------------------------------------------------
    @property
    def num_train(self) -> int:
        return len(self.train_idx)

    @property
    def fingerprint(self) -> str:
        return self.ds.fingerprint

    # image entries stored as uint8 (0..255); items carry them as float32 in [0, 1]
    UINT8_KEYS = ("target", "target_sr", "bg", "head_mask")

    def to_float(self, batch: dict) -> dict:
        """uint8 image entries of an item or batch -> float32 in [0, 1] (in place, on whatever device they are)."""
        for k in self.UINT8_KEYS:
            v = batch.get(k)
            if isinstance(v, torch.Tensor) and v.dtype == torch.uint8:
                batch[k] = v / 255.0  # uint8 / float: float32 in one op, the same values as v.float() / 255
        return batch

    def item(self, t: int, raw: bool = False) -> dict[str, torch.Tensor]:
        """Everything the head stage needs for frame t (see the class docstring). raw: image entries stay uint8
        (training items: they travel to the device as bytes and `on_after_batch_transfer` converts them there)."""
        win = torch.from_numpy(condition_window(t, self.window, self.ds.T))
        out = {
            "frame": torch.tensor(t, dtype=torch.long), "c2w": self.c2w[t], "K": self.K,
            "motion": self.offsets[win], "eye": self.eye[win],
            "target": self.target[t], "target_sr": self.target_sr[t],
            "bg": self.bg[t], "face": self.face[t], "face_sr": self.face_sr[t],
            "lip_rect": self.lip_rect[t], "head_mask": self.head_mask[t],
        }
        return out if raw else self.to_float(out)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # the H100 head run spent 6.2 ms per step in the train loader converting the 256/512 px images to float on
        # the host (+1.4 ms moving 4x the bytes); a uint8 item is converted on the device instead
        return self.to_float(batch) if isinstance(batch, dict) else batch

    def _train_item(self, index: int, step: int) -> dict[str, torch.Tensor]:
        return self.item(int(self.train_idx[index]), raw=True)

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step if self.trainer is not None else 0
        n = len(self.train_idx) if self.train_frames is None else max(1, min(int(self.train_frames), len(self.train_idx)))
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        # under DDP each rank renders its own whole frame per step: the global batch is `world` frames
        stream = StepStream(n, self._train_item, seed=self.seed, start=start, rank=rank, world_size=world)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Frames(self, self.val_idx), batch_size=None, num_workers=0)

    def predict_frames(self, frames) -> DataLoader:
        """Any frames of the subject (e.g. all training frames for a render pass)."""
        return DataLoader(_Frames(self, np.asarray(frames)), batch_size=None, num_workers=0)
