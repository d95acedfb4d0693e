"""Benchmark: generating the embedded sample subject (issue 3 asks for a 60 s 512x512 sample in < 2 min on 2 cores).

    python bench/bm_sample.py [--duration 60] [--size 512] [--record]

Times the whole `generate_sample` call (model build, speech synthesis, rendering, H.264/AAC encoding, ground
truth) in a fresh temporary folder, then the per-frame render and encode costs on their own. `--record` appends
rows to bench/RESULTS.md. The machine's load average is printed: other processes on the same cores slow it down.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADER = "| figure | value | unit | card | date | command |\n|---|---|---|---|---|---|\n"
DATE = "2026-11-25"


def record(rows: list[tuple[str, float, str]], card: str, command: str) -> None:
    if not RESULTS.exists() or not RESULTS.read_text().strip():
        RESULTS.write_text(HEADER)
    with RESULTS.open("a") as f:
        for fig, val, unit in rows:
            f.write(f"| {fig} | {val:g} | {unit} | {card} | {DATE} | `{command}` |\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--fps", type=float, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    args = ap.parse_args()

    from datamodules.sample import generate_sample
    from datamodules.sample.face_model import build_face_model
    from datamodules.sample.render import FrameState, Renderer
    from talkfield.camera import rotation_matrix
    from talkfield.media import VideoWriter

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        generate_sample(Path(tmp) / "sample", seed=args.seed, duration=args.duration, size=args.size,
                        fps=args.fps, force=True)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0

        ren = Renderer(build_face_model(), args.size)
        st = FrameState(head_R=rotation_matrix(0.2, 0.1, 0.05), head_t=np.zeros(3), torso_R=np.eye(3),
                        torso_t=np.zeros(3), jaw=0.6, wide=0.3, blink=0.2)
        img = ren.render(st)[0]
        n = 100
        t1 = time.perf_counter()
        for _ in range(n):
            img = ren.render(st)[0]
        render_ms = (time.perf_counter() - t1) / n * 1e3
        t2 = time.perf_counter()
        with VideoWriter(Path(tmp) / "enc.mp4", args.fps, (args.size, args.size)) as w:
            for _ in range(n):
                w.write(img)
        encode_ms = (time.perf_counter() - t2) / n * 1e3
    load1 = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0))
    tag = f"{args.duration:g} s {args.size}x{args.size} {args.fps:g} fps"
    print(f"generate_sample({tag}): {wall:.1f} s wall, {cpu:.1f} s CPU (this process)")
    print(f"render {render_ms:.1f} ms/frame, H.264 encode {encode_ms:.1f} ms/frame at {args.size}px")
    print(f"cores {cores}, load average {load0:.1f} -> {load1:.1f}")
    if args.record:
        card = f"CPU {cores} cores"
        cmd = "python bench/bm_sample.py --record"
        record([(f"sample generation, {tag} (wall)", round(wall, 1), "s"),
                (f"sample generation, {tag} (CPU time, all threads)", round(cpu, 1), "s"),
                (f"sample render per frame, {args.size}px", round(render_ms, 1), "ms"),
                (f"sample H.264 encode per frame, {args.size}px", round(encode_ms, 1), "ms")], card, cmd)
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
