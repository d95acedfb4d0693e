"""How well can held-out frames be predicted from the training frames at all? (issue 6: val face PSNR >= 28 dB and
full frame >= 33 dB on the last 1/11 of an 8 s clip; the head field reaches ~23 / ~24 dB.)

    python bench/diag_val_oracle.py --data-dir <data> --subject katie [--out oracle.json]

For every held-out frame t, two memorisation baselines built from the training frames, composited exactly like the
head stage's renders (the head over frame t's own torso image over the plate) and scored like its validation
(PSNR against the head-stage target, full frame and inside the dilated landmark hull; PSNR per label):
- nearest: the training frame s whose 2D landmarks (pose and expression) are closest to frame t's, its head pasted
  with its own head mask;
- registered: the same frame s warped onto t by the similarity transform that maps s's landmarks onto t's (the best
  rigid 2D registration), head mask warped with it;
- expression: the training frame whose landmarks are closest to t's after that registration (the nearest
  expression), registered;
- previous: not a baseline but a scale: the real frame t-1 (a held-out frame itself after the first; frame 1 for
  frame 0), registered onto t: how much a face changes in 40 ms;
- self: frame t's own head over its background: the ceiling that the compositing itself leaves (head mask edges,
  the torso image's fill behind the chin).
Both use frame t's tracked landmarks (the motion oracle the head stage validates with) and real pixels of other
frames, so they show how much of frame t the rest of the clip explains; the head field is scored the same way in
its validation (`val/psnr_face`, `val/psnr`). For comparison the same baselines are computed for training frames,
searching only frames at least --gap frames away. Last, against the real frame (the torso stage's target): the
previous real frame as it is, and frame t's own head and torso over the plate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """networks.losses.psnr of two uint8 images (mask: bool [H,W] or None)."""
    import torch

    from networks.losses import psnr as psnr_t

    m = None if mask is None else torch.from_numpy(mask)
    return float(psnr_t(torch.from_numpy(a) / 255.0, torch.from_numpy(b) / 255.0, m))


def predict(ds, t: int, s: int, lms: np.ndarray, register: bool) -> np.ndarray:
    """Frame s's head over frame t's background (optionally warped onto t by a landmark similarity), uint8."""
    import cv2

    from talkfield.dataset import HEAD_LABELS

    src = ds.frame(s).astype(np.float32)
    head = np.isin(ds.labels(s), HEAD_LABELS).astype(np.float32)
    if register:
        M, _ = cv2.estimateAffinePartial2D(lms[s].astype(np.float32), lms[t].astype(np.float32), method=cv2.LMEDS)
        n = ds.size
        src = cv2.warpAffine(src, M, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        head = cv2.warpAffine(head, M, (n, n), flags=cv2.INTER_LINEAR)
    bg = ds.head_background(t)
    out = src * head[..., None] + bg * (1 - head[..., None])
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def similarity_residual(src: np.ndarray, dst: np.ndarray) -> float:
    """RMS landmark distance (px) after the least-squares similarity transform mapping src [K,2] onto dst."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    zs = a[:, 0] + 1j * a[:, 1]
    zd = b[:, 0] + 1j * b[:, 1]
    c = (np.conj(zs) @ zd) / max(float(np.vdot(zs, zs).real), 1e-12)  # scale x rotation as one complex factor
    r = c * zs - zd
    return float(np.sqrt(np.mean(np.abs(r) ** 2)))


def score(ds, t: int, pred: np.ndarray, lms: np.ndarray, face_dilate: int) -> dict[str, float]:
    from datamodules.nerf_video import face_hull_mask
    from talkfield.dataset import LABELS

    target = ds.head_target(t)
    lab = ds.labels(t)
    face = face_hull_mask(lms[t], ds.size, face_dilate) > 0
    row = {"psnr": psnr(pred, target), "psnr_face": psnr(pred, target, face)}
    for name in ("hair", "face", "lips", "eyes"):
        m = lab == LABELS[name]
        if m.any():
            row[f"psnr_label_{name}"] = psnr(pred, target, m)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--subject", default="katie")
    ap.add_argument("--gap", type=int, default=12, help="training frames: search at least this many frames away")
    ap.add_argument("--train-samples", type=int, default=19, help="training frames scored (evenly spaced)")
    ap.add_argument("--face-dilate", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from talkfield.dataset import open_subject

    ds = open_subject(args.data_dir, args.subject)
    lms = np.asarray(ds.array("lms2d"), np.float32)[..., :2]
    train, val = ds.split("train"), ds.split("val")
    flat = lms.reshape(len(lms), -1)
    res: dict = {"subject": args.subject, "train_frames": len(train), "val_frames": len(val), "gap": args.gap}
    picks = train[np.linspace(0, len(train) - 1, args.train_samples).round().astype(int)]
    for split, frames in (("val", val), ("train", picks)):
        rows = {"nearest": [], "registered": [], "expression": [], "previous": [], "self": []}
        for t in frames:
            cand = train[np.abs(train - t) >= (args.gap if split == "train" else 0)]
            near = int(cand[np.argmin(np.linalg.norm(flat[cand] - flat[t], axis=1))])
            expr = int(cand[np.argmin([similarity_residual(lms[c], lms[t]) for c in cand])])
            for mode, s, reg in (("nearest", near, False), ("registered", near, True), ("expression", expr, True),
                                 ("previous", int(t) - 1 if t > 0 else 1, True), ("self", int(t), False)):
                r = score(ds, int(t), predict(ds, int(t), s, lms, reg), lms, args.face_dilate)
                rows[mode].append({"frame": int(t), "source": s, **r})
        for mode, rr in rows.items():
            keys = [k for k in rr[0] if k.startswith("psnr")]
            mean = {k: float(np.mean([r[k] for r in rr if k in r])) for k in keys}
            res[f"{split}_{mode}"] = {"mean": mean, "frames": rr}
            print(f"{split:5s} {mode:10s} " + "  ".join(f"{k[5:] or 'full'} {v:5.2f}" for k, v in mean.items()))
    # the torso stage's target is the real frame (issue 7: >= 30 dB full frame): the previous real frame as it is
    # (a static camera), and frame t's own head and torso over the plate (the ceiling the plate leaves)
    from talkfield.dataset import HEAD_LABELS

    full = {"previous_frame": [], "own_head_torso_over_plate": []}
    for t in val:
        real = ds.frame(int(t))
        full["previous_frame"].append(psnr(ds.frame(int(t) - 1), real))
        head = np.isin(ds.labels(int(t)), HEAD_LABELS)[..., None]
        own = np.where(head, real.astype(np.float32), ds.head_background(int(t)))
        full["own_head_torso_over_plate"].append(psnr(np.clip(own + 0.5, 0, 255).astype(np.uint8), real))
    res["val_real_frame"] = {k: float(np.mean(v)) for k, v in full.items()}
    print("val   vs the real frame: " + "  ".join(f"{k} {v:5.2f}" for k, v in res["val_real_frame"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
