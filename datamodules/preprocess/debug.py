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
    import cv2

    from talkfield.media import VideoWriter

    uv, _ = camera.project(fitted["lms3d"][:, lmk.RIGID], fitted["c2w"], fitted["intrinsics"])
    writer = None
    try:
        for t, (img, lab) in enumerate(zip(frames, labels)):
            S = img.shape[0]
            h = S // 2
            if writer is None:  # the talkfield.media writer: streaming, atomic, speech track muxed
                writer = VideoWriter(path, fps=fps, size=(2 * h, h), audio=audio, sample_rate=16000, crf=30)
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
            writer.write(cv2.resize(pane, (2 * h, h), interpolation=cv2.INTER_AREA))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
