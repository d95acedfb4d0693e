"""Shared pieces of the preprocessing stages: configuration defaults, errors, the work directory with its stage
cache, progress bars and frame-range formatting."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from talkfield.dataset import atomic_save_npy, atomic_write_text

log = logging.getLogger("talkfield.preprocess")

DEFAULTS: dict[str, Any] = {
    "size": 512,                 # output crop size (px, square)
    "fps": 25,
    "min_duration_s": 5.0,       # shorter: error
    "warn_duration_s": 60.0,     # shorter: warning (quality suffers)
    "max_audio_short_frames": 2,  # audio may end this many frames before the video (else error)
    "crop": {
        "face_scale": 2.6,       # crop side = face_scale x the face box size (detector box, forehead..chin)
        "face_y": 0.42,          # face-box centre sits this far down the crop (0 top, 1 bottom)
        "scan_every": 5,         # detect faces on every n-th frame to choose the crop
        "scan_side": 640,        # the scan works on frames downscaled to this longest side
        "min_face_px": 64,       # face box smaller than this in the source: error (too small even after crop)
        "warn_face_px": 128,     # smaller than this: warning (upscaled, blurrier)
    },
    "landmarks": {
        "max_missing": 0.10,     # more frames without a face than this fraction: error
        "smooth_sigma": 1.0,     # zero-lag Gaussian smoothing (frames) of the non-lip, non-eye points
    },
    "fit": {
        "max_components": 32,    # expression basis size cap; the count is chosen by held-out-frame error
        "holdout_every": 5,      # every n-th frame is held out when choosing the count
        "smooth_pose": 10.0,     # weight of the temporal second-difference penalty on rotation/translation
        "smooth_scale_px": 0.1,  # accelerations (px) above this are penalised linearly (Charbonnier)
        "exp_ridge": 1e-3,       # damping of the per-frame expression solve (relative to its curvature)
        "iters": 80,             # L-BFGS iterations of the joint fit
        "focal": None,           # fixed focal length at `size` px (None: chosen from focal_grid)
        "focal_grid": [1.5, 3.0, 6.0],  # candidate focal lengths (x size) scored by reprojection
        "reweight": 1,           # rounds of per-point re-weighting (1 / residual variance) of the pose fit
    },
    "segment": {
        "threshold": 0.5,        # selfie-segmentation probability counted as person
        "workers": 2,            # processes for long videos (label maps + torso images)
        "parallel_min_frames": 600,  # fewer frames than this run in-process (a worker costs ~3 s to start)
    },
    "background": {"samples": 100, "margin_px": 10, "fill_blur_px": 8},
    "audio": {
        "denoise": False,        # spectral gating of the speech track before features
        "whisper": True,         # Whisper tiny.en encoder features (when the weights are installed)
        "hubert": "auto",        # a folder with HuBERT weights, "auto" (HF cache if present) or null (off)
    },
    "output": {"jpeg_quality": 90, "torso_quality": 90, "debug_video": True},
}


class PreprocessError(RuntimeError):
    """Preprocessing cannot continue because of the input (names the file, the frames and what to do)."""


def merge_cfg(cfg: dict | None) -> dict:
    """DEFAULTS updated recursively with `cfg` (unknown keys are refused with their path)."""
    out = copy.deepcopy(DEFAULTS)

    def upd(dst, src, path):
        for k, v in (src or {}).items():
            if k not in dst:
                raise KeyError(f"unknown preprocessing option {path}{k} (known: {sorted(dst)})")
            if isinstance(dst[k], dict) and isinstance(v, dict):
                upd(dst[k], v, f"{path}{k}.")
            else:
                dst[k] = v

    upd(out, cfg, "preprocess.")
    return out


def stable_hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def frame_ranges(idx: Iterable[int], step: int = 1, last: int | None = None) -> list[tuple[int, int]]:
    """Frame indices -> inclusive ranges [(a, b), ...]. With `step` > 1 the indices are samples every `step`
    frames: neighbouring samples merge and each range extends to the frame before the next sample (<= last)."""
    idx = sorted(int(i) for i in idx)
    out: list[tuple[int, int]] = []
    for i in idx:
        if out and i <= out[-1][1] + 1:
            out[-1] = (out[-1][0], i + step - 1)
        else:
            out.append((i, i + step - 1))
    if last is not None:
        out = [(a, min(b, last)) for a, b in out]
    return out


def format_ranges(ranges: list[tuple[int, int]], fps: float = 25.0, limit: int = 12) -> str:
    parts = [f"{a}-{b} ({a / fps:.2f}-{(b + 1) / fps:.2f} s)" if a != b else f"{a} ({a / fps:.2f} s)"
             for a, b in ranges[:limit]]
    more = f" and {len(ranges) - limit} more" if len(ranges) > limit else ""
    return ", ".join(parts) + more


def progress(iterable, total: int | None = None, desc: str = "", enable: bool = True):
    """tqdm progress bar on stderr (disabled when not wanted)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="frame", leave=False, disable=not enable,
                mininterval=1.0, dynamic_ncols=True)


class Work:
    """The work directory of one subject: stage outputs and the stage cache (`.stages/<stage>.json`).

    A stage is finished when its marker exists with the expected key (a hash of its inputs and its part of the
    config); markers are written after the stage's files, so an interrupted stage simply runs again.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.stages = self.root / ".stages"
        self.cache = self.root / ".cache"

    def create(self) -> None:
        self.stages.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)

    def done(self, stage: str, key: str) -> dict | None:
        p = self.stages / f"{stage}.json"
        if not p.is_file():
            return None
        info = json.loads(p.read_text())
        return info if info.get("key") == key else None

    def finish(self, stage: str, key: str, info: dict | None = None) -> None:
        atomic_write_text(self.stages / f"{stage}.json", json.dumps({"key": key, **(info or {})}, indent=1,
                                                                    default=_json_default))

    def invalidate_from(self, stage: str, order: list[str]) -> None:
        for s in order[order.index(stage):]:
            (self.stages / f"{s}.json").unlink(missing_ok=True)

    def save(self, name: str, arr: np.ndarray) -> None:
        atomic_save_npy(self.cache / f"{name}.npy", arr)

    def load(self, name: str) -> np.ndarray:
        return np.load(self.cache / f"{name}.npy", allow_pickle=False)

    def info(self, stage: str) -> dict:
        return json.loads((self.stages / f"{stage}.json").read_text())


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def remove_tree(path: Path) -> None:
    if Path(path).exists():
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished work directory onto `dst` (the old dataset, if any, is removed after the move)."""
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old.{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        remove_tree(old)
