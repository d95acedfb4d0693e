"""Where a head/torso validation image loses its PSNR: per segmentation label, the PSNR of the super-resolved render
against the real panel and the label's share of the squared error (a diagnostic, not a benchmark).

    python bench/diag_val_regions.py VAL_IMAGE.png --frame 181 [--data-dir data --subject katie]

VAL_IMAGE is a validation image the head/torso stage logs (panels side by side: real | ours (SR) | ...), 512 px high.
The labels are the subject's segmentation of that frame (talkfield.dataset.LABELS).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def region_table(real: np.ndarray, ours: np.ndarray, labels: np.ndarray) -> list[tuple[str, float, float, float]]:
    """(label name, area fraction, PSNR dB, share of the squared error) for every label present, plus 'all'.
    real/ours: float [H,W,3] in [0,1]; labels: int [H,W]."""
    from talkfield.dataset import LABELS

    err = ((ours - real) ** 2).mean(-1)
    rows = [("all", 1.0, float(-10 * np.log10(max(err.mean(), 1e-12))), 1.0)]
    for name, value in LABELS.items():
        m = labels == value
        if m.any():
            rows.append((name, float(m.mean()), float(-10 * np.log10(max(err[m].mean(), 1e-12))),
                         float(err[m].sum() / max(err.sum(), 1e-12))))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", type=Path)
    ap.add_argument("--frame", type=int, required=True, help="the subject frame the image shows")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--subject", default="katie")
    args = ap.parse_args()
    import cv2

    from talkfield.dataset import open_subject

    img = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cannot read {args.image}")
    img = img[..., ::-1].astype(np.float64) / 255.0
    h = img.shape[0]
    real, ours = img[:, :h], img[:, h:2 * h]
    ds = open_subject(args.data_dir, args.subject)
    labels = ds.labels(args.frame)
    if labels.shape[0] != h:
        labels = cv2.resize(labels, (h, h), interpolation=cv2.INTER_NEAREST)
    print(f"{args.image} (frame {args.frame}):")
    print(f"  {'label':12s} {'area':>6s} {'PSNR dB':>8s} {'error share':>12s}")
    for name, area, psnr, share in region_table(real, ours, labels):
        print(f"  {name:12s} {area:6.3f} {psnr:8.2f} {share:12.3f}")


if __name__ == "__main__":
    main()
