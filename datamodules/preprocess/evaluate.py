"""Accuracy of a preprocessed subject against ground truth (the synthetic sample's `ground_truth/`), never
against the detections that were fitted. Used by tests/test_preprocess_sample.py and bench/bm_preprocess.py.

    errors = ground_truth_errors(subject_dir, sample_dir)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from talkfield import camera, landmarks as lmk
from talkfield.dataset import SubjectDataset


def _project_rot(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def rotation_errors(R_est: np.ndarray, R_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame rotation error (deg) after one global alignment, and the error of predicting no motion.

    R_est, R_gt: [T,3,3] camera-to-world rotations in two head frames that differ by one fixed rotation A
    (R_est ~ A @ R_gt). A is the chordal mean of R_est R_gt^T. No motion = the best single rotation for all frames.
    """
    A = _project_rot(np.einsum("tij,tkj->ik", R_est, R_gt))
    err = camera.rotation_angle_deg(R_est, A @ R_gt)
    still = _project_rot(R_gt.sum(0))
    base = camera.rotation_angle_deg(np.broadcast_to(still, R_gt.shape), R_gt)
    return err, base


def best_lag(a: np.ndarray, b: np.ndarray, max_lag: int) -> int:
    """Lag (in samples of a and b) maximising the normalised cross-correlation; positive: a lags b."""
    a = (a - a.mean()) / (a.std() + 1e-12)
    b = (b - b.mean()) / (b.std() + 1e-12)
    n = min(len(a), len(b))
    best, best_c = 0, -np.inf
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            c = np.mean(a[lag:n] * b[: n - lag])
        else:
            c = np.mean(a[: n + lag] * b[-lag:n])
        if c > best_c:
            best, best_c = lag, c
    return best


def events(signal: np.ndarray, thresh: float, above: bool) -> np.ndarray:
    """Centres (frame of the extreme) of the contiguous runs where signal is above (or below) thresh."""
    m = signal > thresh if above else signal < thresh
    out = []
    t, T = 0, len(m)
    while t < T:
        if m[t]:
            e = t
            while e + 1 < T and m[e + 1]:
                e += 1
            seg = signal[t:e + 1]
            out.append(t + int(np.argmax(seg) if above else np.argmin(seg)))
            t = e + 1
        else:
            t += 1
    return np.asarray(out, int)


def match_f1(pred: np.ndarray, true: np.ndarray, tol: int) -> tuple[float, int, int, int]:
    """Greedy one-to-one matching of event frames within +-tol. Returns (F1, true positives, n_pred, n_true)."""
    used = np.zeros(len(pred), bool)
    tp = 0
    for t in true:
        d = np.abs(pred - t).astype(float)
        d[used] = np.inf
        if len(d) and d.min() <= tol:
            used[int(np.argmin(d))] = True
            tp += 1
    prec = tp / max(len(pred), 1)
    rec = tp / max(len(true), 1)
    f1 = 2 * prec * rec / max(prec + rec, 1e-12)
    return f1, tp, len(pred), len(true)


def ground_truth_errors(subject_dir: Path | str, sample_dir: Path | str) -> dict:
    """Compare a preprocessed synthetic sample with its ground truth. Returns a dict of figures:

    rot_median_deg, rot_p95_deg, rot_still_median_deg (no-motion baseline), rot_ratio, reproj_median_px
    (fitted model through the fitted camera vs true 2D landmarks), jitter_px (mean |2nd difference| of the
    fitted rigid points in the image) and jitter_gt_px (the same on the true points), lip_lag_frames, blink_f1
    (+-2 frames) with counts, av_offset_frames (audio cross-correlation with the true waveform).
    """
    sub = SubjectDataset(subject_dir)
    gt_dir = Path(sample_dir) / "ground_truth"
    gman = json.loads((Path(sample_dir) / "ground_truth.json").read_text())
    T = sub.T
    g = {k: np.load(gt_dir / f"{k}.npy") for k in ("c2w", "K", "landmarks_2d", "mouth_opening", "blink", "audio")}
    Tg = min(T, len(g["c2w"]))
    crop = sub.manifest.crop
    # ground truth lives in the source video's pixels; map it into the crop
    sc = crop["out_size"] / crop["size"]
    gt2d = (g["landmarks_2d"][:Tg] - np.array([crop["x0"], crop["y0"]])) * sc
    c2w = np.asarray(sub.array("c2w"))[:Tg]
    K = np.asarray(sub.array("intrinsics"))
    lms3d = np.asarray(sub.array("lms3d"))[:Tg]
    err, base = rotation_errors(c2w[:, :3, :3], g["c2w"][:Tg, :3, :3])
    uv, _ = camera.project(lms3d, c2w, K)
    rep = np.linalg.norm(uv - gt2d, axis=-1)
    rig = uv[:, lmk.RIGID]
    rig_gt = gt2d[:, lmk.RIGID]
    jit = float(np.abs(rig[2:] - 2 * rig[1:-1] + rig[:-2]).mean())
    jit_gt = float(np.abs(rig_gt[2:] - 2 * rig_gt[1:-1] + rig_gt[:-2]).mean())
    mo = lmk.mouth_opening(lms3d)
    lag = best_lag(mo, g["mouth_opening"][:Tg], 5)
    blinks_true = events(g["blink"][:Tg], 0.5, above=True)
    blinks_pred = events(np.asarray(sub.array("eye_open"))[:Tg], 0.5, above=False)
    f1, tp, npred, ntrue = match_f1(blinks_pred, blinks_true, 2)
    ours = np.asarray(sub.array("audio"))
    sr = sub.manifest.sample_rate
    n = min(len(ours), len(g["audio"]))
    env_o = _envelope(ours[:n], sr)
    env_g = _envelope(g["audio"][:n].astype(np.float32), sr)
    av_lag_ms = best_lag(env_o, env_g, 200)  # 1 ms envelope steps
    return {
        "frames": int(Tg),
        "rot_median_deg": float(np.median(err)), "rot_p95_deg": float(np.percentile(err, 95)),
        "rot_still_median_deg": float(np.median(base)),
        "rot_ratio": float(np.median(base) / max(np.median(err), 1e-9)),
        "reproj_median_px": float(np.median(rep)), "reproj_p95_px": float(np.percentile(rep, 95)),
        "jitter_px": jit, "jitter_gt_px": jit_gt,
        "lip_lag_frames": int(lag),
        "lip_corr": float(np.corrcoef(mo, g["mouth_opening"][:Tg])[0, 1]),
        "blink_f1": float(f1), "blinks_matched": tp, "blinks_pred": npred, "blinks_true": ntrue,
        "av_offset_frames": float(av_lag_ms / 1000.0 * sub.manifest.fps),
        "focal_px": float(K[0, 0]), "focal_gt_px": float(g["K"][0, 0] * sc),
        "sample_frames": int(gman["frames"]),
    }


def _envelope(x: np.ndarray, sr: int) -> np.ndarray:
    """Absolute amplitude averaged in 1 ms steps (for an offset estimate robust to resampling filters)."""
    step = sr // 1000
    n = len(x) // step
    return np.abs(x[: n * step]).reshape(n, step).mean(1)
