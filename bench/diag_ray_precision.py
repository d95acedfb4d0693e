"""Does a trained head prefer float32 or bf16-rounded rays? Renders a few frames of a subject with a head checkpoint
on the CPU (PyTorch twins) both ways and prints render-size PSNR (full frame and face) against the head-stage target.
A head trained with bf16-rounded rays (before commit ed4af08) scores higher with them. A diagnostic, not a benchmark.

    python bench/diag_ray_precision.py HEAD.ckpt [--data-dir data --subject katie --frames 10,120,181,190]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def save_panel(path: Path, target: torch.Tensor, image: torch.Tensor, alpha: torch.Tensor) -> None:
    """target | render | 4 x mean |error| | alpha, side by side (uint8 PNG)."""
    import cv2
    import numpy as np

    err = (4 * (image - target).abs().mean(-1, keepdim=True)).clamp(0, 1).expand_as(image)
    panel = torch.cat([target, image, err, alpha[..., None].expand_as(image)], 1).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray((panel[..., ::-1] * 255).round().astype(np.uint8)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("head", type=Path)
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--subject", default="katie")
    ap.add_argument("--frames", default="10,120,181,190", help="subject frame indices (val frames use the mean code)")
    ap.add_argument("--render-size", type=int, default=256)
    ap.add_argument("--save", type=Path, default=None,
                    help="folder for one image per frame (fp32 rays): target | render | 4 x |error| | alpha")
    args = ap.parse_args()
    import lightning_modules.head_nerf as hn
    from datamodules.nerf_video import NerfVideoDataModule
    from lightning_modules.head_nerf import load_head
    from networks import losses as L
    from talkfield import camera

    head = load_head(args.head, subject=args.subject)
    dm = NerfVideoDataModule(args.data_dir, args.subject, render_size=args.render_size)
    dm.setup()
    n_train = len(dm.train_idx)

    def bf16_rays(c2w, K, H, W):  # the behaviour before ed4af08: the ray matmuls under bf16 autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return camera._get_rays(c2w, K, H, W)

    print(f"{'frame':>6s} {'rays':>5s} {'PSNR':>7s} {'face':>7s}")
    for t in (int(x) for x in args.frames.split(",")):
        b = dm.item(t)
        code = b["frame"] if t < n_train else torch.tensor(-1)
        for name, fn in (("fp32", camera.get_rays), ("bf16", bf16_rays)):
            hn.get_rays = fn
            with torch.no_grad():
                out = head.render_head(b["c2w"], b["K"], b["motion"], b["eye"], code, b["bg"])
            img = out["image"].clamp(0, 1)
            if args.save is not None and name == "fp32":
                save_panel(args.save / f"frame{t:06d}.png", b["target"], img, out["alpha"])
            print(f"{t:6d} {name:>5s} {float(L.psnr(img, b['target'])):7.2f} "
                  f"{float(L.psnr(img, b['target'], b['face'])):7.2f}", flush=True)
    hn.get_rays = camera.get_rays


if __name__ == "__main__":
    main()
