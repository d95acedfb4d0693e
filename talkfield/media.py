"""Writing videos: one streaming writer for the sample generator, inference and evaluation.

`VideoWriter` encodes RGB frames pushed one at a time to H.264 (yuv420p) with an optional AAC audio track given
up front, into an MP4 written under a temporary name and renamed into place on a clean close; on an exception
(or `abort()`) the partial file is removed, so a path either holds a complete video or nothing new.

    with VideoWriter("out.mp4", fps=25, size=(512, 512), audio=wav, sample_rate=16000) as w:
        for frame in frames:          # [H, W, 3] uint8 RGB
            w.write(frame)

Audio and video both start at time 0: the audio is interleaved as the frames arrive, and FFmpeg's MP4 muxer
records the AAC encoder delay (priming) in an edit list, so decoders that honour it (FFmpeg/PyAV, browsers)
put audio sample 0 at video frame 0. YUV 4:2:0 needs even sizes: odd widths/heights are padded by one
replicated column/row (the stored size is reported by `coded_size`).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np


class VideoWriter:
    """Streaming MP4 writer. size = (width, height) of the frames; audio: [S] or [S, C] float (-1..1) or int16.

    crf / preset: x264 quality (lower crf = better; 18 is visually lossless) and speed.
    """

    def __init__(self, path, fps: float, size: tuple[int, int], audio: np.ndarray | None = None,
                 sample_rate: int = 16000, *, crf: int = 18, preset: str = "veryfast", audio_bitrate: int = 128000,
                 faststart: bool = True):
        import av

        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"VideoWriter: size must be positive (width, height), got {size}")
        if not fps or fps <= 0:
            raise ValueError(f"VideoWriter: fps must be > 0, got {fps}")
        self.path = Path(path)
        self.size = (w, h)
        self.coded_size = (w + (w & 1), h + (h & 1))
        self.fps = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
        self.frames_written = 0
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.{id(self):x}.tmp{self.path.suffix or '.mp4'}")
        opts = {"movflags": "+faststart"} if faststart else {}
        self._container = av.open(str(self._tmp), mode="w", format="mp4", options=opts)
        try:
            vs = self._container.add_stream("libx264", rate=self.fps)
            vs.width, vs.height = self.coded_size
            vs.pix_fmt = "yuv420p"
            vs.options = {"crf": str(int(crf)), "preset": preset}
            vs.codec_context.time_base = Fraction(1) / self.fps
            self._vs = vs
            self._as = None
            self._audio = None
            if audio is not None:
                a = np.asarray(audio)
                if a.ndim == 1:
                    a = a[:, None]
                if a.ndim != 2 or a.shape[1] not in (1, 2):
                    raise ValueError(f"VideoWriter: audio must be [samples] or [samples, 1|2], got {a.shape}")
                if a.dtype == np.int16:
                    a = a.astype(np.float32) / 32768.0
                a = np.ascontiguousarray(np.clip(a.astype(np.float32), -1.0, 1.0).T)  # [C, S] planar
                if not sample_rate or sample_rate <= 0:
                    raise ValueError(f"VideoWriter: sample_rate must be > 0, got {sample_rate}")
                s = self._container.add_stream("aac", rate=int(sample_rate))
                s.layout = "mono" if a.shape[0] == 1 else "stereo"
                s.bit_rate = int(audio_bitrate)
                self._as = s
                self._audio = a
                self._sr = int(sample_rate)
                self._audio_pos = 0
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------ API
    def write(self, frame: np.ndarray) -> None:
        """Append one frame [H, W, 3] uint8 RGB (float in [0, 1] is accepted and converted)."""
        import av

        if self._closed:
            raise RuntimeError(f"VideoWriter({self.path}): write after close")
        f = np.asarray(frame)
        if f.ndim != 3 or f.shape[2] != 3 or (f.shape[1], f.shape[0]) != self.size:
            raise ValueError(f"VideoWriter({self.path}): expected a frame of shape "
                             f"({self.size[1]}, {self.size[0]}, 3), got {f.shape}")
        if f.dtype != np.uint8:
            f = (np.clip(f.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
        if self.coded_size != self.size:
            f = np.pad(f, ((0, self.coded_size[1] - self.size[1]), (0, self.coded_size[0] - self.size[0]), (0, 0)),
                       mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        vf.pts = self.frames_written
        vf.time_base = Fraction(1) / self.fps
        for pkt in self._vs.encode(vf):
            self._container.mux(pkt)
        self.frames_written += 1
        if self._as is not None:  # keep the audio interleaved up to the current video time
            self._write_audio_until(int(self.frames_written / self.fps * self._sr))

    def close(self) -> Path:
        """Flush, finish the file and move it into place. Returns the final path."""
        if self._closed:
            return self.path
        try:
            if self._as is not None:
                self._write_audio_until(self._audio.shape[1], flush=True)
            for pkt in self._vs.encode(None):
                self._container.mux(pkt)
            self._container.close()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Stop and remove the partial file (the final path is left untouched)."""
        self._closed = True
        try:
            self._container.close()
        except Exception:
            pass
        try:
            self._tmp.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # ------------------------------------------------------------------ audio
    def _write_audio_until(self, end: int, flush: bool = False) -> None:
        import av

        end = min(end, self._audio.shape[1])
        chunk = 1024
        while self._audio_pos + chunk <= end or (flush and self._audio_pos < end):
            a = self._audio[:, self._audio_pos:min(end, self._audio_pos + chunk)]
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(a), format="fltp", layout=self._as.layout.name)
            af.sample_rate = self._sr
            af.pts = self._audio_pos
            af.time_base = Fraction(1, self._sr)
            for pkt in self._as.encode(af):
                self._container.mux(pkt)
            self._audio_pos += a.shape[1]
        if flush:
            for pkt in self._as.encode(None):
                self._container.mux(pkt)
