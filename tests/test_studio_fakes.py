"""Test doubles for the Studio (no tests here): a fake pipeline honouring the TalkingHeadPipeline contract, a fake
TTS, a fake trained-subject layout, and small audio and video files."""

from __future__ import annotations

import threading
import wave
from pathlib import Path

import numpy as np

from talkfield.runs import mark_latest


def write_wav(path: Path, seconds: float, sr: int = 16000, amp: float = 0.3, freq: float = 220.0) -> Path:
    """A mono 16-bit sine (amp 0 = silence)."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = (amp * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(x.tobytes())
    return path


def write_mp4(path: Path, frames: int = 10, size: int = 64, fps: int = 25, audio: np.ndarray | None = None,
              sr: int = 16000) -> Path:
    """A small real H.264 mp4 (moving gradient), with an AAC track when `audio` ([S] float32) is given."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        as_ = None
        if audio is not None:
            as_ = c.add_stream("aac", rate=sr)
            as_.layout = "mono"
        for i in range(frames):
            img = np.zeros((size, size, 3), np.uint8)
            img[..., 0] = (np.arange(size)[None, :] * 4 + i * 8) % 256
            img[..., 1] = 128
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if as_ is not None:
            af = av.AudioFrame.from_ndarray(audio.astype(np.float32)[None, :], format="fltp", layout="mono")
            af.sample_rate = sr
            for p in as_.encode(af):
                c.mux(p)
            for p in as_.encode():
                c.mux(p)
    tmp.replace(path)
    return path


def make_trained_subject(runs_dir: Path, name: str, stages=("head", "torso", "audio2motion"),
                         no_checkpoint: tuple[str, ...] = ()) -> None:
    """outputs/<name>/<stage>/<run>/checkpoints/last.ckpt + latest pointers (the checkpoint files are dummies:
    only their presence matters to discovery; the fake pipeline does not read them)."""
    for stage in stages:
        run = runs_dir / name / stage / "20250101-000000"
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        if stage not in no_checkpoint:
            (run / "checkpoints" / "last.ckpt").write_bytes(b"dummy")
        mark_latest(run)


class FakeDataset:
    """Stands in for talkfield.dataset.SubjectDataset in discovery (a root and a frame)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "manifest.json").write_text("{}")

    def frame(self, t: int) -> np.ndarray:
        img = np.zeros((96, 128, 3), np.uint8)
        img[..., 0] = 200
        return img


class FakeCancelled(RuntimeError):
    """What the real pipeline raises as talkfield.inference.Cancelled."""


class FakePipeline:
    """Follows the TalkingHeadPipeline.render contract: reports progress per frame, polls `cancel`, writes the
    output only when complete. `gate` (an Event), when given, must be set before each frame renders."""

    def __init__(self, subject: str, frames: int = 5, gate: threading.Event | None = None, mp4: bool = False,
                 frame_delay: float = 0.0):
        self.subject = subject
        self.frames = frames
        self.gate = gate
        self.mp4 = mp4
        self.frame_delay = frame_delay
        self.calls: list[dict] = []
        self.started = threading.Event()

    def render(self, audio_path, out_path, knobs, progress=None, cancel=None):
        self.calls.append({"audio": Path(audio_path), "out": Path(out_path), "knobs": knobs})
        self.started.set()
        assert Path(audio_path).is_file(), audio_path
        for i in range(self.frames):
            if self.gate is not None:
                while not self.gate.wait(0.02):
                    if cancel is not None and cancel.is_set():
                        raise FakeCancelled("cancelled")
            if cancel is not None and cancel.is_set():
                raise FakeCancelled("cancelled")
            if self.frame_delay:
                import time

                time.sleep(self.frame_delay)
            if progress is not None:
                progress(i + 1, self.frames, 50.0)
        if self.mp4:
            from talkfield.audio import load_audio

            wav = load_audio(audio_path)
            n = max(1, int(round(len(wav) / 640)))
            write_mp4(Path(out_path), frames=n, audio=wav)
        else:
            Path(out_path).write_bytes(b"not really an mp4")
        return Path(out_path)


class FakeTTS:
    """Writes a sine wav of `seconds` and records (text, language)."""

    name = "fake"

    def __init__(self, seconds: float = 0.5):
        self.seconds = seconds
        self.calls: list[tuple[str, str]] = []

    def synthesize(self, text, language, out_dir, cancel=None):
        self.calls.append((text, language))
        return write_wav(Path(out_dir) / "speech.wav", self.seconds)
