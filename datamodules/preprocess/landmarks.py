"""Stage 3: 478 face-mesh landmarks per frame (MediaPipe 0.10.21 `solutions.face_mesh`, iris refinement, offline).

Tracking mode (each frame's region of interest comes from the previous frame's landmarks) gives temporally
stable points; the rigid and contour points then get a zero-lag Gaussian smoothing over time while lips, eyes
and irises stay raw so they follow speech and blinks without delay. Frames without a detection are
interpolated linearly (held at the ends) and listed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from talkfield import landmarks as lmk

from .common import PreprocessError, format_ranges, frame_ranges, log, progress
from .crop import read_frame

RESPONSIVE = np.unique(np.concatenate([lmk.LIPS, lmk.RIGHT_EYE, lmk.LEFT_EYE, lmk.IRIS,
                                       np.array([13, 14, 78, 308, 82, 312, 87, 317, 95, 324, 88, 318, 178, 402,
                                                 80, 310, 81, 311, 191, 415, 61, 291, 146, 375, 91, 321, 181, 405,
                                                 84, 314, 17, 0, 37, 267, 39, 269, 40, 270, 185, 409]),
                                       np.array([157, 158, 159, 160, 161, 384, 385, 386, 387, 388,
                                                 144, 145, 153, 154, 155, 373, 374, 380, 381, 382])]))
"""Mesh points left unsmoothed: lips (inner + outer rings), eye contours and irises."""


def detect(frames_dir: Path | None, T: int, size: int, show: bool = True,
           read=None) -> tuple[np.ndarray, np.ndarray, int]:
    """Run the face mesh over frames 0..T-1. Returns (points [T,478,3] float32 px with z scaled like x,
    detected [T] bool, number of frames with several faces). Several faces: the one nearest the previous
    choice (the largest at the start) is kept. read: t -> uint8 [size,size,3] RGB (default: the cropped
    frame t of frames_dir; evaluation passes rendered frames)."""
    read = read or (lambda t: read_frame(frames_dir, t))
    import mediapipe as mp

    pts = np.zeros((T, lmk.NUM_MESH, 3), np.float32)
    found = np.zeros(T, bool)
    multi = 0
    prev_c = None
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=2, refine_landmarks=True,
                                         min_detection_confidence=0.5, min_tracking_confidence=0.5) as mesh:
        for t in progress(range(T), total=T, desc="landmarks", enable=show):
            res = mesh.process(read(t))
            faces = res.multi_face_landmarks or []
            if not faces:
                continue
            cands = [np.array([(p.x, p.y, p.z) for p in f.landmark], np.float32) * size for f in faces]
            if len(cands) > 1:
                multi += 1
                if prev_c is not None:
                    k = int(np.argmin([np.linalg.norm(c[:, :2].mean(0) - prev_c) for c in cands]))
                else:
                    k = int(np.argmax([np.ptp(c[:, 0]) * np.ptp(c[:, 1]) for c in cands]))
            else:
                k = 0
            pts[t] = cands[k]
            found[t] = True
            prev_c = cands[k][:, :2].mean(0)
    return pts, found, multi


def interpolate_missing(pts: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Linear interpolation over time of frames where found is False (held at the ends). [T,N,3] -> same."""
    if found.all():
        return pts
    T = len(pts)
    good = np.flatnonzero(found)
    flat = pts.reshape(T, -1)
    out = np.empty_like(flat)
    for j in range(flat.shape[1]):
        out[:, j] = np.interp(np.arange(T), good, flat[good, j])
    return out.reshape(pts.shape)


def smooth_stable(pts: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-lag Gaussian smoothing over time of every point except RESPONSIVE ones. [T,478,3] -> same."""
    if sigma <= 0 or len(pts) < 3:
        return pts
    from scipy.ndimage import gaussian_filter1d

    out = gaussian_filter1d(pts.astype(np.float64), sigma, axis=0, mode="nearest").astype(np.float32)
    out[:, RESPONSIVE] = pts[:, RESPONSIVE]
    return out


def track(frames_dir: Path, T: int, size: int, cfg: dict, video: str, show: bool = True) -> dict:
    """Stage entry: detections, the missing-frame check, interpolation and smoothing.

    Returns {'raw': [T,478,3] (interpolated detections), 'lms2d': [T,478,3] (smoothed), 'detected': [T],
    'missing_ranges': [(a, b), ...], 'multi_face_frames': int}.
    """
    raw, found, multi = detect(frames_dir, T, size, show)
    miss = frame_ranges(np.flatnonzero(~found))
    frac = 1.0 - found.mean()
    if not found.any() or frac > cfg["max_missing"]:
        raise PreprocessError(f"{video}: no face found in {int((~found).sum())} of {T} frames ({100 * frac:.0f}%): "
                              f"frames {format_ranges(miss)}; the face must be visible in at least "
                              f"{100 * (1 - cfg['max_missing']):.0f}% of frames: trim those parts out of the "
                              "video or pass preprocess.landmarks.max_missing=<fraction>")
    if miss:
        log.warning("%s: no face in frames %s; their landmarks are interpolated", video, format_ranges(miss))
    if multi:
        log.warning("%s: several faces in %d frames; tracking the one nearest the previous frame's face", video, multi)
    raw = interpolate_missing(raw, found)
    return {"raw": raw, "lms2d": smooth_stable(raw, cfg["smooth_sigma"]), "detected": found,
            "missing_ranges": miss, "multi_face_frames": multi}
