"""Benchmark of the torso stage on one GPU (never a test): train `experiment=torso_nerf` on top of a trained head
for a fixed wall-time budget counted from the first optimizer step (data loading, the cuda_ext build and the head
load excluded) and record the full-frame val PSNR against the REAL frames (motion oracle), the neck-band PSNR, the
head-over-plate and head-over-real-torso references, the PSNR-vs-wall-time curve and iterations/s.

    python bench/bm_torso_nerf.py --data-dir data --subject katie --head HEAD.ckpt --minutes 7 --out OUTDIR [k=v ...]

A head run and a torso run do not fit one 10-minute device command, so the head travels weights-only:

    python bench/bm_torso_nerf.py --export-head HEAD_RUN_DIR --to OUTDIR/head_katie.ckpt

writes the head's last checkpoint without optimizer state (float32; float16 only when float32 would exceed the
15 MiB a returned file may have, and it says so). The measurement behind the loss / SR defaults:

    python bench/bm_torso_nerf.py --compare STEPS --data-dir D --subject S --head HEAD.ckpt --out OUTDIR [key=value ...]

trains the variants in COMPARE (same seed, steps and overrides) and writes their val metrics as rows.
Runs with logger=csv (no wandb there); the side-by-side val video
needs PyAV (carry its wheel). Writes OUTDIR/curve.json, OUTDIR/results_rows.md (rows for bench/RESULTS.md), the
last val video OUTDIR/val_video.mp4, OUTDIR/run_summary.json, and the run under OUTDIR/run/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # so the config can name bm_head_nerf.BenchCallback

from bm_head_nerf import prepare, timed_run  # noqa: E402
DATE = "2026-11-25"
VAL_KEYS = ("val/psnr", "val/psnr_neck", "val/psnr_render", "val/psnr_neck_render", "val/psnr_head_over_plate",
            "val/psnr_neck_head_over_plate", "val/psnr_head_over_real_torso", "val/psnr_neck_head_over_real_torso",
            "val/ssim")
MAX_RETURN_BYTES = 15 * 2**20
COMPARE = {
    "torso loss only (GeneFace++)": ["model.loss.lambda_composite=0", "model.loss.lambda_composite_sr=0"],
    "torso + composite (render size)": ["model.loss.lambda_composite_sr=0"],
    "torso + composite (render + SR)": [],
    "torso + composite (render + SR), SR fine-tuned": ["model.train_sr=true"],
}
"""Variants of the torso losses and SR training compared by --compare (the default config is the third)."""


def export_weights(run_dir: Path, dst: Path) -> Path:
    """Weights-only copy of a run's last checkpoint (tensors of >= 65,536 elements in float16 only if float32 does
    not fit MAX_RETURN_BYTES)."""
    from talkfield.runs import find_checkpoint, save_weights_only

    src = find_checkpoint(run_dir, "last") if run_dir.is_dir() else run_dir
    ckpt = torch.load(src, map_location="cpu", weights_only=False)  # our own run (its hparams hold factories)
    save_weights_only(ckpt, dst)
    if dst.stat().st_size > MAX_RETURN_BYTES:
        # only the large tables travel as float16; small tensors (statistics, MLP biases, scalars) stay float32,
        # so checks against the dataset (e.g. the head's motion statistics) see the trained values
        ckpt["state_dict"] = {k: v.half() if v.is_floating_point() and v.numel() >= 65536 else v
                              for k, v in ckpt["state_dict"].items()}
        save_weights_only(ckpt, dst)
        print(f"large tensors stored as float16 ({dst.stat().st_size / 2**20:.1f} MiB)", flush=True)
    print(f"exported {src} -> {dst} ({dst.stat().st_size / 2**20:.1f} MiB)", flush=True)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--subject", default="katie")
    ap.add_argument("--head", help="head checkpoint (file, run dir or latest) for model.init_from")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--export-head", type=Path, help="export a head run's weights (with --to) and exit")
    ap.add_argument("--to", type=Path)
    ap.add_argument("--compare", type=int, metavar="STEPS", help="train the COMPARE variants for STEPS steps each")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = ap.parse_args()
    if args.export_head is not None:
        export_weights(args.export_head, args.to)
        return
    if not args.head:
        ap.error("--head is required (a head checkpoint, run dir or latest)")
    out = prepare(args.out)
    from talkfield.training import device_name
    head = args.head if args.head == "latest" else str(Path(args.head).resolve())
    if args.compare:
        compare(args, head, out)
        return
    overrides = ["experiment=torso_nerf", f"subject.name={args.subject}", "subject.synthetic=null",
                 f"paths.data_dir={Path(args.data_dir).resolve()}", f"model.init_from={head}", "logger=csv",
                 "trainer.max_steps=1000000", "trainer.val_check_interval=1000", "trainer.enable_progress_bar=false",
                 "callbacks.model_checkpoint.save_top_k=0", *args.overrides]
    cfg, metrics, state = timed_run(overrides, out, args.minutes, VAL_KEYS)
    its = state["iterations_per_s"]
    card = device_name()
    fin = {k: v for k, v in metrics.items() if k.startswith("val/")}
    result = {"card": card, "subject": args.subject, "minutes": args.minutes, "iterations_per_s": its,
              "steps": state["steps"], "curve": state["curve"], "final": fin, "overrides": overrides}
    (out / "curve.json").write_text(json.dumps(result, indent=2))
    run_dir = out / "run"
    videos = sorted((run_dir / "media").glob("val_video/*.mp4"))
    if videos:
        shutil.copy(videos[-1], out / "val_video.mp4")
    if (run_dir / "run_summary.json").is_file():
        shutil.copy(run_dir / "run_summary.json", out / "run_summary.json")
    cmd = f"python bench/bm_torso_nerf.py --subject {args.subject} --head <head ckpt> --minutes {args.minutes:g}"
    if args.overrides:
        cmd += " " + " ".join(args.overrides)
    sr = f"{2 * int(cfg.data.render_size)} px SR"
    names = {"val/psnr": f"full-frame PSNR vs real frames ({sr})",
             "val/psnr_neck": f"neck-band PSNR vs real frames ({sr})",
             "val/psnr_render": "full-frame PSNR vs real frames (render size, before SR)",
             "val/psnr_head_over_plate": "reference: same head over the bare plate, full frame",
             "val/psnr_neck_head_over_plate": "reference: same head over the bare plate, neck band",
             "val/psnr_head_over_real_torso": "reference: same head over the frame's own torso, full frame",
             "val/psnr_neck_head_over_real_torso": "reference: same head over the frame's own torso, neck band",
             "val/ssim": f"SSIM vs real frames ({sr})"}
    rows = [f"| torso_nerf {args.subject} {names[k]} after {args.minutes:g} min (motion oracle) | {fin[k]:.2f} | "
            f"{'' if k == 'val/ssim' else 'dB'} | {card} | {DATE} | `{cmd}` |" for k in names if k in fin]
    if its is not None:
        rows.append(f"| torso_nerf training iterations/s at {int(cfg.data.render_size) ** 2} pixels (val excluded) | "
                    f"{its:.1f} | it/s | {card} | {DATE} | `{cmd}` |")
    for row in state["curve"]:
        rows.append(f"| torso_nerf {args.subject} val/psnr at {row['wall_s']:.0f} s (step {row['step']}) | "
                    f"{row.get('val/psnr', float('nan')):.2f} | dB | {card} | {DATE} | `{cmd}` |")
    (out / "results_rows.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


def compare(args, head: str, out: Path) -> None:
    """Train each COMPARE variant for args.compare steps (validating at the end) and write their val metrics."""
    from omegaconf import open_dict

    from talkfield.training import device_name, run
    from tests.helpers import compose_train

    base = ["experiment=torso_nerf", f"subject.name={args.subject}", "subject.synthetic=null",
            f"paths.data_dir={Path(args.data_dir).resolve()}", f"model.init_from={head}", "logger=csv",
            f"trainer.max_steps={args.compare}", f"trainer.val_check_interval={args.compare}",
            "trainer.enable_progress_bar=false", "callbacks.model_checkpoint.save_top_k=0", *args.overrides]
    card = device_name()
    cmd = (f"python bench/bm_torso_nerf.py --compare {args.compare} --subject {args.subject} --head <head ckpt> "
           + " ".join(args.overrides)).strip()
    rows, results = [], {}
    for i, (name, extra) in enumerate(COMPARE.items()):
        overrides = [*base, *extra]
        cfg = compose_train(overrides, out)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out / f"variant{i}")
        t = time.perf_counter()
        m = run(cfg, overrides=overrides)
        results[name] = {"wall_s": round(time.perf_counter() - t, 1),
                         **{k: v for k, v in m.items() if k.startswith("val/")}}
        print(name, json.dumps(results[name]), flush=True)
        for k in ("val/psnr", "val/psnr_neck", "val/psnr_render", "val/psnr_head_over_real_torso"):
            rows.append(f"| torso_nerf {args.subject} {args.compare} steps, {name}: {k} | {m[k]:.2f} | dB | {card} | "
                        f"{DATE} | `{cmd}` |")
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    (out / "results_rows.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
