"""Stage 1: decoding. Probe a video, iterate its frames resampled to 25 fps (rotation honoured), and decode the
speech track aligned to video frame 0 (stream start times, edit lists and AAC priming as FFmpeg reports them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from talkfield.audio import AudioError, check_audio, decode_audio

from .common import PreprocessError, log


@dataclass
class VideoInfo:
    """What the decoder found: source size after rotation, rotation (degrees clockwise applied), the first
    frame's time (s), the duration (s), the number of 25 fps output frames, the source frame rate, and whether
    the file has an audio stream."""

    path: str
    width: int
    height: int
    rotation: int
    start_time: float
    duration: float
    n_frames: int
    src_fps: float
    src_frames: int
    has_audio: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _open(path: Path):
    import av

    if not path.is_file():
        raise PreprocessError(f"{path}: no such file; check the video= path")
    try:
        c = av.open(str(path))
    except Exception as e:
        raise PreprocessError(f"{path}: cannot be read as a video ({type(e).__name__}: {e}); "
                              "re-encode it (e.g. to H.264 mp4) or check that the file is complete") from e
    if not c.streams.video:
        c.close()
        raise PreprocessError(f"{path}: has no video stream; give a video file with video=<path>")
    return c


def _rotation(frame) -> int:
    """Clockwise rotation in degrees to apply so the frame displays upright (from the display matrix)."""
    try:
        r = frame.rotation  # FFmpeg's av_display_rotation_get: counter-clockwise degrees of the matrix
    except AttributeError:
        return 0
    r = int(round(-(r or 0))) % 360
    return r if r in (0, 90, 180, 270) else 0


def rotate(img: np.ndarray, clockwise_deg: int) -> np.ndarray:
    """Rotate an image [H,W,C] clockwise by 0/90/180/270 degrees."""
    k = (clockwise_deg // 90) % 4
    return np.ascontiguousarray(np.rot90(img, k=-k)) if k else img


def iter_frames(path: Path | str, fps: int = 25, every: int = 1, fmt: str = "rgb24",
                info: VideoInfo | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Frames resampled to `fps` (frame i shows the source frame on screen at time i / fps after the first
    frame): yields (i, image [H,W,3] uint8 RGB, rotation applied) for every `every`-th output frame.

    Variable frame rate is handled by holding the last source frame whose time is <= the output time.
    A decoding error after some frames ends the iteration with a PreprocessError naming the frame.
    """
    import av

    path = Path(path)
    c = _open(path)
    with c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        t0 = None
        nxt = 0  # next output frame index
        prev = None
        rot = None
        n_max = info.n_frames if info is not None else None
        try:
            for frame in c.decode(vs):
                if frame.time is None:
                    continue
                if t0 is None:
                    t0 = float(frame.time)
                    rot = _rotation(frame)
                t = float(frame.time) - t0
                # emit all output frames whose time falls before this source frame, from the previous one
                while prev is not None and nxt / fps < t - 1e-6 and (n_max is None or nxt < n_max):
                    if nxt % every == 0:
                        yield nxt, _to_array(prev, fmt, rot)
                    nxt += 1
                prev = frame
            if prev is not None:
                end = n_max if n_max is not None else nxt + 1
                while nxt < end:
                    if nxt % every == 0:
                        yield nxt, _to_array(prev, fmt, rot)
                    nxt += 1
        except av.error.FFmpegError as e:
            raise PreprocessError(f"{path}: decoding failed at output frame {nxt} ({nxt / fps:.2f} s): {e}; "
                                  "the file looks truncated or corrupt: re-encode or re-download it") from e


def _to_array(frame, fmt: str, rot: int) -> np.ndarray:
    return rotate(frame.to_ndarray(format=fmt), rot)


def probe(path: Path | str, fps: int = 25) -> VideoInfo:
    """Read the stream headers, the packets' timestamps (no decoding) and the first frame (size, rotation)."""
    import av

    path = Path(path)
    c = _open(path)
    with c:
        vs = c.streams.video[0]
        has_audio = bool(c.streams.audio)
        times = []
        try:
            for pkt in c.demux(vs):
                if pkt.pts is not None and pkt.size > 0:
                    times.append(float(pkt.pts * pkt.time_base))
        except av.error.FFmpegError as e:
            if len(times) < fps:
                raise PreprocessError(f"{path}: cannot read the video packets ({e}); the file is unreadable or "
                                      "truncated: re-encode or re-download it") from e
            log.warning("%s: reading stopped after %d frames: %s; using the readable part", path, len(times), e)
    first = None
    c = _open(path)
    with c:
        try:
            for frame in c.decode(c.streams.video[0]):
                first = frame
                break
        except av.error.FFmpegError as e:
            raise PreprocessError(f"{path}: cannot decode the first video frame ({e}); the file is unreadable "
                                  "or corrupt: re-encode or re-download it") from e
    if first is None or not times:
        raise PreprocessError(f"{path}: the video stream holds no decodable frame; the file is unreadable or "
                              "truncated: re-encode or re-download it")
    rot = _rotation(first)
    w, h = first.width, first.height
    if rot in (90, 270):
        w, h = h, w
    t = np.sort(np.asarray(times))
    t0 = float(first.time) if first.time is not None else float(t[0])
    dt = float(np.median(np.diff(t))) if len(t) > 1 else 1.0 / fps
    duration = float(t[-1] - t0 + dt)
    n_frames = int(np.floor(duration * fps + 1e-6))
    src_fps = 1.0 / dt if dt > 0 else float(fps)
    return VideoInfo(str(path), int(w), int(h), rot, t0, duration, max(n_frames, 1), src_fps, len(t), has_audio)


def aligned_audio(video: Path, info: VideoInfo, audio: Path | None, sr: int = 16000) -> tuple[np.ndarray, dict]:
    """The speech track as float32 mono at `sr`, sample 0 at video frame 0.

    From the video: the audio stream's first decoded sample time minus the first video frame's time shifts
    the track (zeros prepended, or samples dropped). From a separate file: taken from its start.
    Returns (wav [S], record dict with source, offset_s).
    """
    src = Path(audio) if audio is not None else Path(video)
    if audio is None and not info.has_audio:
        raise PreprocessError(f"{video}: has no audio track (frames 0-{info.n_frames - 1} have no sound); "
                              "pass the speech as a separate file: audio=<path/to/speech.wav>")
    try:
        wav, start = decode_audio(src, sr)
        check_audio(wav, src, sr)
    except AudioError as e:
        raise PreprocessError(f"{e} (frames 0-{info.n_frames - 1} of {video} need speech)") from e
    offset = float(start - info.start_time) if audio is None else 0.0
    shift = int(round(offset * sr))
    if shift > 0:
        wav = np.concatenate([np.zeros(shift, np.float32), wav])
    elif shift < 0:
        wav = wav[-shift:]
    return wav.astype(np.float32), {"source": str(src), "offset_s": offset, "samples": int(len(wav))}
