"""Preprocessing benchmark (issue 4): speed on the real clip and on a 5-minute 1920x1080 input, and accuracy on
the synthetic sample against its ground truth.

    python bench/bm_preprocess.py [--skip-long] [--skip-sample] [--sample-dir DIR] [--write]

Every timing is a cold process (`python preprocess.py ...` in a subprocess, preprocess.force=true) so imports and
model loading count. The 5-minute input is made in a temporary folder from the real clip: each frame padded to
1920x1080 (edge-replicated) and the clip looped, its audio looped with it. `--write` appends the rows to
bench/RESULTS.md (| figure | value | unit | card | date | command |).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = ROOT / ".." / "shared" / "data" / "WDA_KatieHill_000.mp4"
CARD = "CPU 2 cores"
DATE = "2026-11-25"


def run_preprocess(video: Path, name: str, data: Path, extra: list[str] = ()) -> float:
    env = dict(os.environ, TALKFIELD_DATA=str(data), TALKFIELD_OUTPUTS=str(data / "_outputs"))
    cmd = [sys.executable, str(ROOT / "preprocess.py"), f"video={video}", f"subject.name={name}",
           "preprocess.force=true", "progress=false", *extra]
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"preprocess failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return dt


def dir_mb(p: Path) -> float:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6


def make_long_input(out: Path, seconds: float = 300.0) -> Path:
    """The real clip padded to 1920x1080 and looped to `seconds`, with its audio looped (H.264 + AAC)."""
    import av
    import cv2

    from talkfield.audio import load_audio
    from talkfield.media import VideoWriter

    with av.open(str(REAL)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    wav = load_audio(REAL)
    h, w = frames[0].shape[:2]
    top, left = (1080 - h) // 2, (1920 - w) // 2
    padded = [cv2.copyMakeBorder(f, top, 1080 - h - top, left, 1920 - w - left, cv2.BORDER_REPLICATE)
              for f in frames]
    n = int(round(seconds * 25))
    audio = wav[np.arange(n * 640) % len(wav)]
    with VideoWriter(out, 25, (1920, 1080), audio=audio, sample_rate=16000, crf=23, preset="ultrafast") as vw:
        for i in range(n):
            vw.write(padded[i % len(padded)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--skip-sample", action="store_true")
    ap.add_argument("--sample-dir", type=Path, default=None, help="an existing generated sample (else generated)")
    ap.add_argument("--write", action="store_true", help="append the rows to bench/RESULTS.md")
    args = ap.parse_args()
    cmd = "python bench/bm_preprocess.py" + "".join(
        f" {a}" for a, on in (("--skip-long", args.skip_long), ("--skip-sample", args.skip_sample)) if on)
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="bm_preprocess_") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        # real clip, cold process
        wall = run_preprocess(REAL, "real", data)
        man = json.loads((data / "real" / "manifest.json").read_text())
        rows += [("preprocess real 8 s clip, end to end, cold process", round(wall, 1), "s"),
                 ("real clip dataset size", round(dir_mb(data / "real"), 1), "MB"),
                 ("real clip frames with detected landmarks", round(100 * man["extra"]["landmarks"]["detected_fraction"], 1), "%"),
                 ("real clip reprojection median (fitted model vs detections)",
                  round(man["extra"]["fit"]["reproj_median_px"], 2), "px"),
                 ("real clip plate never-uncovered area", round(100 * man["extra"]["background"]["never_uncovered_fraction"], 1), "%")]
        print(rows[-5:], flush=True)
        if not args.skip_long:
            long = make_long_input(tmp / "long_1080p.mp4")
            wall = run_preprocess(long, "long", data)
            T = json.loads((data / "long" / "manifest.json").read_text())["T"]
            rows += [("preprocess 5-min 1920x1080 input, cold process", round(T / wall, 1), "source frames/s"),
                     ("preprocess 5-min 1920x1080 input, wall time", round(wall, 1), "s")]
            print(rows[-2:], flush=True)
        if not args.skip_sample:
            from datamodules.preprocess.evaluate import ground_truth_errors
            from datamodules.sample import generate_sample

            sdir = args.sample_dir or tmp / "sample"
            video = generate_sample(sdir, seed=0, duration=30.0, size=512)
            wall = run_preprocess(video, "sample", data)
            e = ground_truth_errors(data / "sample", sdir)
            rows += [("sample (30 s, 512 px) preprocess wall time, cold process", round(wall, 1), "s"),
                     ("sample head rotation error median (after one global alignment)", round(e["rot_median_deg"], 3), "deg"),
                     ("sample head rotation error p95", round(e["rot_p95_deg"], 3), "deg"),
                     ("sample rotation error of predicting no motion, median", round(e["rot_still_median_deg"], 3), "deg"),
                     ("sample rotation: no-motion error / our error (medians)", round(e["rot_ratio"], 2), "x"),
                     ("sample landmark reprojection median (vs true 2D landmarks)", round(e["reproj_median_px"], 3), "px"),
                     ("sample rigid-point jitter, mean abs 2nd difference", round(e["jitter_px"], 3), "px"),
                     ("sample rigid-point jitter of the ground truth itself", round(e["jitter_gt_px"], 3), "px"),
                     ("sample lip-opening lag (mouth opening vs truth)", e["lip_lag_frames"], "frames"),
                     ("sample blink F1 (+-2 frames)", round(e["blink_f1"], 3), "-"),
                     ("sample audio-video offset", round(e["av_offset_frames"], 2), "frames")]
            print(json.dumps(e, indent=1), flush=True)
    lines = [f"| {f} | {v} | {u} | {CARD} | {DATE} | `{cmd}` |" for f, v, u in rows]
    print("\n".join(lines))
    if args.write:
        res = ROOT / "bench" / "RESULTS.md"
        if not res.is_file():
            res.write_text("| figure | value | unit | card | date | command |\n|---|---|---|---|---|---|\n")
        with res.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
