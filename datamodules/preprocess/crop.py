"""Stage 2: one square crop for the whole video that keeps the head and shoulders with the face large, and the
cropped frames resized to `size` (frames/000000.jpg ...).

The crop record (manifest 'crop') maps crop pixels back to the source: source = (x0, y0) + crop * size_src / out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import PreprocessError, format_ranges, frame_ranges, log, progress
from .decode import VideoInfo, iter_frames


def scan_faces(video: Path, info: VideoInfo, every: int, side: int, show: bool = True) -> dict:
    """Detect faces on every `every`-th frame (downscaled so its longest side is `side`).

    Returns {'idx': [n] frame indices, 'boxes': [n,4] x0,y0,x1,y1 source px (nan where no face),
    'multi': [n] number of faces found}. Several faces: the largest is kept.
    """
    import cv2
    import mediapipe as mp

    scale = min(1.0, side / max(info.width, info.height))
    idx, boxes, multi = [], [], []
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as det:
        total = (info.n_frames + every - 1) // every
        for i, img in progress(iter_frames(video, every=every, info=info), total=total, desc="scan faces",
                               enable=show):
            small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else img
            res = det.process(small)
            h, w = small.shape[:2]
            found = []
            for d in res.detections or []:
                bb = d.location_data.relative_bounding_box
                found.append([bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h])
            idx.append(i)
            multi.append(len(found))
            if found:
                f = np.asarray(found) / scale
                boxes.append(f[np.argmax((f[:, 2] - f[:, 0]) * (f[:, 3] - f[:, 1]))])
            else:
                boxes.append([np.nan] * 4)
    return {"idx": np.asarray(idx), "boxes": np.asarray(boxes, np.float64), "multi": np.asarray(multi)}


def choose_crop(scan: dict, info: VideoInfo, cfg: dict, out_size: int) -> dict:
    """The square crop record from the face scan (errors for missing or too-small faces)."""
    video = info.path
    idx, boxes, multi = scan["idx"], scan["boxes"], scan["multi"]
    ok = np.isfinite(boxes[:, 0])
    max_missing = cfg["landmarks"]["max_missing"]
    if ok.mean() < 1.0 - max_missing:
        step = int(idx[1] - idx[0]) if len(idx) > 1 else 1
        miss = frame_ranges(idx[~ok], step, info.n_frames - 1)
        raise PreprocessError(f"{video}: no face found in {100 * (1 - ok.mean()):.0f}% of the sampled frames "
                              f"(around frames {format_ranges(miss)}); the face must be visible in at least "
                              f"{100 * (1 - max_missing):.0f}% of frames: trim those parts "
                              "or pass preprocess.landmarks.max_missing=<fraction>")
    if (multi > 1).any():
        step = int(idx[1] - idx[0]) if len(idx) > 1 else 1
        many = frame_ranges(idx[multi > 1], step, info.n_frames - 1)
        log.warning("%s: several faces in frames %s; tracking the largest face", video, format_ranges(many))
    b = boxes[ok]
    sizes = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    face = float(np.median(sizes))
    c = cfg["crop"]
    if face < c["min_face_px"]:
        raise PreprocessError(f"{video}: the face is too small ({face:.0f} px, frames 0-{info.n_frames - 1}); "
                              f"at least {c['min_face_px']} px is needed for a {out_size} px crop: use a closer "
                              "or higher-resolution recording (or lower preprocess.crop.min_face_px)")
    if face < c["warn_face_px"]:
        log.warning("%s: the face is small (%.0f px); it will be upscaled %.1fx and look blurry", video, face,
                    out_size / (c["face_scale"] * face))
    cx = float(np.median((b[:, 0] + b[:, 2]) / 2))
    cy = float(np.median((b[:, 1] + b[:, 3]) / 2))
    # the crop must hold the face wherever it moves: extend the side by the face centre's spread
    spread = float(np.percentile(np.abs((b[:, 0] + b[:, 2]) / 2 - cx), 95) +
                   np.percentile(np.abs((b[:, 1] + b[:, 3]) / 2 - cy), 95))
    side = c["face_scale"] * face + 2 * spread
    side = int(round(min(side, info.width, info.height)))
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - c["face_y"] * side))
    x0 = int(np.clip(x0, 0, info.width - side))
    y0 = int(np.clip(y0, 0, info.height - side))
    return {"source_width": info.width, "source_height": info.height, "rotation": info.rotation,
            "x0": x0, "y0": y0, "size": side, "out_size": out_size, "face_px": face}


def write_frames(video: Path, info: VideoInfo, crop: dict, out_dir: Path, quality: int, show: bool = True) -> int:
    """Decode, crop, resize and write every 25 fps frame as out_dir/000000.jpg; returns the count written."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    x0, y0, s, out = crop["x0"], crop["y0"], crop["size"], crop["out_size"]
    interp = cv2.INTER_AREA if s > out else cv2.INTER_CUBIC
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    n = 0
    for i, img in progress(iter_frames(video, info=info, fmt="bgr24"), total=info.n_frames, desc="crop frames",
                           enable=show):
        patch = img[y0:y0 + s, x0:x0 + s]
        if s != out:
            patch = cv2.resize(patch, (out, out), interpolation=interp)
        ok, buf = cv2.imencode(".jpg", patch, params)
        (out_dir / f"{i:06d}.jpg").write_bytes(buf.tobytes())
        n = i + 1
    if n < info.n_frames:
        raise PreprocessError(f"{video}: only frames 0-{n - 1} of {info.n_frames} could be decoded; the file is "
                              "truncated: re-encode or re-download it")
    return n


def read_frame(frames_dir: Path, t: int) -> np.ndarray:
    """Cropped frame t as uint8 [H,W,3] RGB."""
    import cv2

    img = cv2.imread(str(frames_dir / f"{t:06d}.jpg"), cv2.IMREAD_COLOR)
    if img is None:
        raise PreprocessError(f"cannot read {frames_dir / f'{t:06d}.jpg'}; re-run with preprocess.force=true")
    return img[:, :, ::-1]
