"""Stage 8b: the debug video for a person to check by eye (debug.mp4 beside the manifest).

Left: the cropped frame with the tracked landmarks (green; interpolated frames red), the fitted model projected
through the fitted camera (blue rigid points) and a thumbnail of the source frame with the crop box.
Right: the label map blended over the frame (hair, face, lips, eyes, neck, torso in fixed colours) with the
eye openness bar. Half resolution, H.264.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from talkfield import camera, landmarks as lmk

COLOURS = np.array([[0, 0, 0], [150, 80, 20], [240, 200, 160], [220, 30, 60], [30, 200, 240], [120, 200, 80],
                    [70, 90, 220]], np.uint8)
"""RGB per label (background, hair, face, lips, eyes, neck, torso)."""


def write_debug_video(path: Path, frames, labels, lms2d: np.ndarray, detected: np.ndarray, fitted: dict,
                      thumb: np.ndarray | None, crop: dict, fps: int = 25, audio: np.ndarray | None = None) -> None:
    """frames / labels: sequences of [S,S,3] uint8 RGB and [S,S] uint8; lms2d [T,478,3] px; fitted: the fit
    dict (c2w, intrinsics, lms3d, eye_open). Writes an H.264 mp4 (with the speech track if given)."""
    import av
    import cv2

    T = len(lms2d)
    S = None
    uv, _ = camera.project(fitted["lms3d"][:, lmk.RIGID], fitted["c2w"], fitted["intrinsics"])
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    c = av.open(str(tmp), "w")
    try:
        vs = None
        as_ = None
        if audio is not None:
            as_ = c.add_stream("aac", rate=16000, layout="mono")
        for t, (img, lab) in enumerate(zip(frames, labels)):
            if S is None:
                S = img.shape[0]
                h = S // 2
                vs = c.add_stream("libx264", rate=fps)
                vs.width, vs.height, vs.pix_fmt = 2 * h, h, "yuv420p"
                vs.options = {"crf": "30", "preset": "veryfast"}
            left = img.copy()
            col = (0, 255, 0) if detected[t] else (255, 0, 0)
            for x, y in lms2d[t, :, :2]:
                cv2.circle(left, (int(x), int(y)), 1, col, -1)
            for x, y in uv[t]:
                cv2.circle(left, (int(x), int(y)), 2, (0, 80, 255), -1)
            if thumb is not None:
                th = thumb.copy()
                sc = th.shape[1] / crop["source_width"]
                x0, y0, s = crop["x0"] * sc, crop["y0"] * sc, crop["size"] * sc
                cv2.rectangle(th, (int(x0), int(y0)), (int(x0 + s), int(y0 + s)), (255, 255, 0), 2)
                left[: th.shape[0], : th.shape[1]] = th
            right = (0.5 * img + 0.5 * COLOURS[lab]).astype(np.uint8)
            e = float(fitted["eye_open"][t])
            cv2.rectangle(right, (S - 20, S - 10 - int(e * (S // 3))), (S - 8, S - 10), (255, 255, 255), -1)
            cv2.putText(right, f"{t}", (8, S - 12), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
            pane = np.concatenate([left, right], 1)
            pane = cv2.resize(pane, (2 * h, h), interpolation=cv2.INTER_AREA)
            for p in vs.encode(av.VideoFrame.from_ndarray(pane, format="rgb24")):
                c.mux(p)
        if vs is not None:
            for p in vs.encode():
                c.mux(p)
        if as_ is not None:
            n = 1024
            for a in range(0, len(audio), n):
                piece = np.zeros(n, np.float32)
                piece[: len(audio[a:a + n])] = audio[a:a + n]
                fr = av.AudioFrame.from_ndarray(piece[None], format="flt", layout="mono")
                fr.sample_rate = 16000
                fr.pts = a
                for p in as_.encode(fr):
                    c.mux(p)
            for p in as_.encode():
                c.mux(p)
    finally:
        c.close()
    tmp.replace(path)
