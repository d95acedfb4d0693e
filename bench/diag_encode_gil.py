"""Does the H.264 encoder thread hold Python's GIL? (issue 9: the render loop is host-bound Python, and the encoder
runs on a background thread of the same process.)

    python bench/diag_encode_gil.py [--frames 150] [--size 512] [--video ../shared/data/<clip>.mp4]

Encodes the same frames with `talkfield.media.VideoWriter` (libx264 crf 18 veryfast, as inference writes them) on a
background thread while the main thread runs a pure-Python counting loop, and reports: encode ms/frame alone, the
main loop's iterations/s alone and while the encoder runs (the share of its speed it keeps). A share well under 1
on a machine with idle cores means the encoder thread holds the GIL for that part of its time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def frames_from(video: str | None, n: int, size: int) -> list[np.ndarray]:
    """n RGB uint8 frames [size, size, 3]: the clip's frames (looped) or a moving gradient pattern."""
    if video:
        import av

        out = []
        with av.open(video) as c:
            for f in c.decode(video=0):
                out.append(f.to_ndarray(format="rgb24", width=size, height=size))
                if len(out) == n:
                    break
        return [out[i % len(out)] for i in range(n)]
    y, x = np.mgrid[:size, :size]
    return [np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, (x + y + i) % 256], -1).astype(np.uint8)
            for i in range(n)]


def count_for(seconds: float) -> float:
    """Pure-Python loop iterations per second for `seconds` (holds the GIL whenever it runs)."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            n += 1
    return n / (time.perf_counter() - t0)


def encode(frames: list[np.ndarray], path: Path, done: threading.Event, out: dict) -> None:
    from talkfield.media import VideoWriter

    h, w = frames[0].shape[:2]
    t0 = time.perf_counter()
    with VideoWriter(path, 25, (w, h)) as vw:
        for f in frames:
            vw.write(f)
    out["s"] = time.perf_counter() - t0
    done.set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--video", default=None)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    frames = frames_from(args.video, args.frames, args.size)
    res: dict = {"frames": args.frames, "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        alone: dict = {}
        encode(frames, Path(tmp) / "alone.mp4", threading.Event(), alone)
        res["encode_ms_per_frame_alone"] = 1000 * alone["s"] / args.frames
        res["loop_rate_alone"] = count_for(max(1.0, alone["s"]))
        done, info = threading.Event(), {}
        th = threading.Thread(target=encode, args=(frames, Path(tmp) / "bg.mp4", done, info))
        th.start()
        n, t0 = 0, time.perf_counter()
        while not done.is_set():
            for _ in range(1000):
                n += 1
        rate = n / (time.perf_counter() - t0)
        th.join()
        res["encode_ms_per_frame_with_loop"] = 1000 * info["s"] / args.frames
        res["loop_rate_with_encoder"] = rate
        res["loop_share_kept"] = rate / res["loop_rate_alone"]
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
