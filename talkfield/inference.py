"""Inference: any speech -> a talking-head video of a trained subject.

    pipe = TalkingHeadPipeline.from_subject("katie", data_dir="data", runs_dir="outputs")   # latest runs
    pipe.render("speech.mp3", "talk.mp4", Knobs(pose="loop"), progress=print)

Stages (each timed, `PipelineResult.timings`): audio decode (PyAV: wav/mp3/m4a/flac/..., any rate, any channels)
-> features (the Audio2Motion model's kind, 50 Hz) -> Audio2Motion (offsets [T,68,3]) -> post-processing (LLE,
smoothing, quantile clamp, blinks) -> poses (the training video, ping-pong looped: `talkfield.poses`) -> head
render (+ torso) -> super-resolution -> optional paste-back into the source frame -> H.264 + AAC (streamed).

Memory is constant in the audio length apart from per-frame arrays of a few hundred bytes: frames go to the
encoder thread as they are rendered (a bounded queue), never collected. The mp4 is written under a temporary
name and renamed on success; on an error or a cancel nothing is left behind (`talkfield.media.VideoWriter`).

Streaming (`stream`): audio arrives in 40 ms chunks; frame t is rendered once the audio of frame t + lookahead
(+ the condition window) has arrived; chunks that arrived while the previous step ran are processed together
(up to batch_frames), so a backlog drains; `StreamStats` holds the latency from the last sample of chunk t to
the moment frame t is ready.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from talkfield.audio import speech_conditions
from talkfield.dataset import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, SubjectDataset, open_subject
from talkfield.poses import PoseDriver

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, float], None]
"""progress(frames_done, frames_total, frames_per_second)."""
CHUNK_SAMPLES = SAMPLES_PER_FRAME
"""One streaming chunk: 40 ms = one 25 fps frame = 640 samples at 16 kHz."""
MEL_TAIL = 512 - 320
"""Samples past a frame's end that its second 50 Hz mel row reads (row 2t+1 covers [640t+320, 640t+832))."""
HEARD_ROWS = 1500
"""Streaming: the loudness / pitch references are measured over the last 1500 feature rows (30 s) heard."""
PRIOR_ROWS = 250
"""Streaming: the subject's own references are blended out over the first 250 rows (5 s) heard."""
BAND_EVERY = 10
"""Streaming, mel 'band' models: the per-band floor / loud level is re-measured every 10 rows (200 ms)."""


class Cancelled(RuntimeError):
    """render() was cancelled through its `cancel` event; no output file was left behind."""


class InferenceError(RuntimeError):
    """Inference cannot run on this input (too short, bad option, missing source video...); the message says why."""


# ----------------------------------------------------------------------------------------------------------------
# knobs
# ----------------------------------------------------------------------------------------------------------------
BLINK_MODES = ("none", "period", "rate")


@dataclass
class Knobs:
    """Per-render settings (Studio sliders, `infer.knobs.*` in configs/infer.yaml).

    temperature: Audio2Motion prior noise scale (0 = its deterministic mode). mouth_amp: mouth amplitude (1 = the
    person's usual). lle_blend: share of the LLE projection onto the person's own motion (0..1).
    blink: False/"none", True (= "rate"), "period" (every 4 s, GeneFace++) or "rate" (~15/min, random);
    blink_mode: the same as a string (wins when set). pose: "loop" (training video, ping-pong), "static",
    "static:<k>" or "<a>-<b>" (a frame range, ping-pong). pose_smooth: pose moving-average window (frames).
    paste_back: composite the 512 crop into the full-resolution source frame. batch_frames: frames per render
    step. bf16: autocast the renderer to bfloat16 on CUDA. seed: Audio2Motion noise and random blinks.
    lookahead: streaming look-ahead of Audio2Motion, in frames (latency ~ (lookahead + 2) x 40 ms + compute).
    pause_close: how far the mouth closes in pauses found in the audio (0 off .. 1 the person's closed mouth); the
    pause detector sees `lookahead` frames ahead in file and streaming rendering alike
    (`networks.audio2motion.postprocess.PauseTracker`).
    """

    temperature: float = 0.0
    mouth_amp: float = 1.0
    lle_blend: float = 0.2
    blink: bool | str = False
    pose: str = "loop"
    paste_back: bool = False
    batch_frames: int = 8
    bf16: bool = True
    pose_smooth: int = 7
    seed: int = 0
    lookahead: int = 4
    blink_mode: str | None = None
    pause_close: float = 1.0

    @property
    def blink_kind(self) -> str:
        """The effective blink mode: none | period | rate."""
        b = self.blink_mode if self.blink_mode else self.blink
        if b is True:
            return "rate"
        if b is False or b is None:
            return "none"
        b = str(b).lower()
        if b in ("true", "yes", "on"):
            return "rate"
        if b in ("false", "no", "off"):
            return "none"
        if b not in BLINK_MODES:
            raise InferenceError(f"blink={b!r}: use one of {', '.join(BLINK_MODES)} (or true/false)")
        return b

    def check(self) -> "Knobs":
        if self.temperature < 0:
            raise InferenceError(f"temperature={self.temperature}: must be >= 0")
        if self.mouth_amp < 0:
            raise InferenceError(f"mouth_amp={self.mouth_amp}: must be >= 0")
        if not 0.0 <= self.lle_blend <= 1.0:
            raise InferenceError(f"lle_blend={self.lle_blend}: must be in [0, 1]")
        if self.batch_frames < 1:
            raise InferenceError(f"batch_frames={self.batch_frames}: must be >= 1")
        if self.lookahead < 0:
            raise InferenceError(f"lookahead={self.lookahead}: must be >= 0")
        if not 0.0 <= self.pause_close <= 1.0:
            raise InferenceError(f"pause_close={self.pause_close}: must be in [0, 1]")
        self.blink_kind  # noqa: B018  (validates)
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Knobs":
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise InferenceError(f"unknown knob(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d).check()


# ----------------------------------------------------------------------------------------------------------------
# audio
# ----------------------------------------------------------------------------------------------------------------
def load_speech(path: Path | str) -> np.ndarray:
    """Speech from any file PyAV decodes, as float32 mono 16 kHz [S]; clear errors for unreadable, silent or
    shorter-than-one-frame audio (talkfield.audio.AudioError / InferenceError)."""
    from talkfield.audio import load_audio

    wav = load_audio(path, SAMPLE_RATE)
    if len(wav) < SAMPLES_PER_FRAME:
        raise InferenceError(f"{path}: the audio is {1000 * len(wav) / SAMPLE_RATE:.0f} ms long, shorter than one "
                             f"video frame ({1000 // FPS} ms); give at least {1000 // FPS} ms of speech")
    return wav


def frame_count(num_samples: int) -> int:
    """Video frames for an audio track: floor(S / 640) (CONTRACTS.md section 2); the muxed audio is whole, so the
    video ends less than one frame before the audio."""
    return int(num_samples) // SAMPLES_PER_FRAME


class AudioChunker:
    """Cuts sample blocks of any size into fixed chunks (default 40 ms = 640 samples), keeping the remainder.

    push(block [n] float32) -> list of full chunks [chunk]; flush() -> the zero-padded remainder or None.
    """

    def __init__(self, chunk: int = CHUNK_SAMPLES):
        self.chunk = int(chunk)
        self._buf = np.zeros(0, np.float32)

    def push(self, block: np.ndarray) -> list[np.ndarray]:
        self._buf = np.concatenate([self._buf, np.asarray(block, np.float32).reshape(-1)])
        n = len(self._buf) // self.chunk
        out = [self._buf[i * self.chunk:(i + 1) * self.chunk] for i in range(n)]
        self._buf = self._buf[n * self.chunk:]
        return out

    def flush(self) -> np.ndarray | None:
        if len(self._buf) == 0:
            return None
        out = np.zeros(self.chunk, np.float32)
        out[:len(self._buf)] = self._buf
        self._buf = np.zeros(0, np.float32)
        return out


def chunk_source(wav: np.ndarray, chunk: int = CHUNK_SAMPLES, realtime: bool = False,
                 block: int = 1024) -> Iterator[tuple[np.ndarray, float]]:
    """Simulate a live microphone: yield (40 ms chunk, arrival time of its last sample on time.perf_counter).

    The waveform is delivered in blocks of `block` samples (like a sound card), re-cut into chunks by
    `AudioChunker`. realtime=True paces the blocks at the audio's own rate (sleeping), and a chunk's arrival time
    is when a live source delivered its block (start + block end / 16 kHz), also when the consumer pulls it
    later: a consumer slower than real time sees its backlog in the latencies. realtime=False delivers as fast as
    the consumer pulls (arrival = the moment it is pulled).
    """
    ch = AudioChunker(chunk)
    t0 = time.perf_counter()
    due = t0
    for a in range(0, len(wav), block):
        piece = wav[a:a + block]
        if realtime:
            due = t0 + (a + len(piece)) / SAMPLE_RATE
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        for c in ch.push(piece):
            yield c, due if realtime else time.perf_counter()
    last = ch.flush()
    if last is not None:
        yield last, due if realtime else time.perf_counter()


class ChunkFeed:
    """Reads a chunk source ((chunk, arrival) pairs, e.g. `chunk_source` or a live device) on a thread, so that the
    consumer can take every chunk that has already arrived at once.

    take(max_n, cancel) waits for the next chunk, then adds those already waiting, max_n at most; it returns [] when
    `cancel` is set while waiting and None at the end of the source (a source's error is raised there). At most
    `max_pending` chunks wait (a source faster than real time is held back, so memory stays bounded); a live source
    stamps its own arrival times, so holding it back does not hide a backlog from the latencies.
    """

    _END = object()

    def __init__(self, chunks: Iterable[tuple[np.ndarray, float]], max_pending: int = 64):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(max_pending)))
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._run, args=(chunks,), name="talkfield-audio-feed", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, chunks) -> None:
        try:
            for item in chunks:
                if not self._put(item):
                    return
        except BaseException as e:  # raised by take()
            self._put((self._END, e))
            return
        self._put((self._END, None))

    def take(self, max_n: int, cancel: threading.Event | None = None) -> list[tuple[np.ndarray, float]] | None:
        if self._ended:
            return None
        out: list[tuple[np.ndarray, float]] = []
        while len(out) < max_n:
            try:  # block for the first chunk only; then take what is already waiting
                item = self._q.get_nowait() if out else self._q.get(timeout=0.05)
            except queue.Empty:
                if out:
                    break
                if cancel is not None and cancel.is_set():
                    return []
                continue
            if item[0] is self._END:
                self._ended = True
                if item[1] is not None:
                    raise item[1]
                return out or None
            out.append(item)
        return out

    def close(self) -> None:
        """Stop reading (the thread ends after the item it is waiting for)."""
        self._stop.set()
        self._thread.join(timeout=1.0)


# ----------------------------------------------------------------------------------------------------------------
# timings
# ----------------------------------------------------------------------------------------------------------------
class StageTimer:
    """Accumulated wall time per stage. `with timer("render"): ...`; sync=True synchronizes CUDA at both ends
    (exact per-stage GPU times, at the cost of pipelining; the benchmark's profile pass)."""

    def __init__(self, sync: bool = False):
        self.sync = sync and torch.cuda.is_available()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        if self.sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def table(self, frames: int | None = None) -> str:
        total = sum(self.seconds.values())
        rows = [f"{'stage':<14} {'seconds':>9} {'ms/frame':>9} {'share':>6}"]
        for k, v in self.seconds.items():
            per = f"{1000 * v / frames:9.2f}" if frames else f"{'':>9}"
            rows.append(f"{k:<14} {v:9.3f} {per} {100 * v / max(total, 1e-9):5.1f}%")
        return "\n".join(rows)


@dataclass
class PipelineResult:
    """What render() did: output path, frames, audio seconds, wall seconds (audio file -> closed mp4), frames per
    second over that wall time, per-stage seconds, and the checkpoints used."""

    path: Path
    frames: int
    audio_seconds: float
    wall_seconds: float
    fps: float
    timings: dict[str, float]
    checkpoints: dict[str, str | None]


@dataclass
class StreamStats:
    """Streaming latencies (seconds) from the last sample of chunk t to frame t being ready, one per frame;
    pushes: chunks taken together at each step (more than one when a backlog was waiting); batches: frames per
    render call."""

    latencies: list[float] = field(default_factory=list)
    lookahead_frames: int = 0
    pushes: list[int] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies), q)) if self.latencies else float("nan")

    def summary(self) -> str:
        if not self.latencies:
            return "no frames"
        return (f"latency over {len(self.latencies)} frames: p50 {1000 * self.percentile(50):.0f} ms, "
                f"p95 {1000 * self.percentile(95):.0f} ms, max {1000 * max(self.latencies):.0f} ms "
                f"(look-ahead {self.lookahead_frames} frames = {self.lookahead_frames * 1000 // FPS} ms)")


# ----------------------------------------------------------------------------------------------------------------
# encoding: a thread that owns the VideoWriter, fed through a bounded queue (constant memory)
# ----------------------------------------------------------------------------------------------------------------
class FrameSink:
    """Streams uint8 RGB frames [H,W,3] to an mp4 (H.264 + AAC) on a background thread.

    The queue holds at most `max_queue` frames, so memory stays constant however long the video is. The file
    appears at `path` only on close(); abort() (or an exception inside `with`) removes the partial file.
    """

    def __init__(self, path: Path | str, size: tuple[int, int], audio: np.ndarray | None, fps: int = FPS,
                 sample_rate: int = SAMPLE_RATE, max_queue: int = 32, crf: int = 18, preset: str = "veryfast"):
        from talkfield.media import VideoWriter

        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise InferenceError(f"out={self.path} is a directory; give a file name such as {self.path / 'talk.mp4'}")
        self.writer = VideoWriter(self.path, fps=fps, size=size, audio=audio, sample_rate=sample_rate, crf=crf,
                                  preset=preset)
        self.busy_seconds = 0.0
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="talkfield-encoder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is not None:
                continue
            try:
                t = time.perf_counter()
                self.writer.write(item)
                self.busy_seconds += time.perf_counter() - t
            except BaseException as e:  # surfaced by the next put() or close()
                self._error = e

    def put(self, frame: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(frame)

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written

    def close(self) -> Path:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            self.writer.abort()
            raise self._error
        return self.writer.close()

    def abort(self) -> None:
        self._error = self._error or Cancelled("aborted")
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        self._q.put(None)
        self._thread.join(timeout=30)
        self.writer.abort()

    def __enter__(self) -> "FrameSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ----------------------------------------------------------------------------------------------------------------
# paste-back: the source video, read at any output frame index (seeking in blocks, so ping-pong works)
# ----------------------------------------------------------------------------------------------------------------
class SourceFrames:
    """Frames of the source video at 25 fps, by index, upright (rotation applied), full resolution.

    Frame i shows the last source frame whose time is <= i / 25 s after the first frame (the rule of
    `datamodules.preprocess.decode.iter_frames`). Frames are decoded in blocks of `block` frames after a seek, and
    the last `keep` blocks are cached, so forward and backward (ping-pong) access cost about one decode each.
    """

    def __init__(self, path: Path | str, block: int = 16, keep: int = 2, fps: int = FPS):
        import av

        self.path, self.block, self.keep, self.fps = Path(path), int(block), int(keep), fps
        if not self.path.is_file():
            raise InferenceError(f"paste_back: the source video {self.path} (recorded by preprocessing) is missing; "
                                 "restore it there or render without paste_back")
        self._c = av.open(str(self.path))
        self._vs = self._c.streams.video[0]
        self._vs.thread_type = "AUTO"
        self._cache: dict[int, list[np.ndarray]] = {}
        self._order: deque[int] = deque()
        self._t0: float | None = None
        self._rot = 0
        for f in self._c.decode(self._vs):
            self._t0 = float(f.time)
            from datamodules.preprocess.decode import _rotation

            self._rot = _rotation(f)
            break
        if self._t0 is None:
            raise InferenceError(f"paste_back: {self.path} holds no decodable video frame")

    def close(self) -> None:
        self._c.close()

    def _decode_block(self, k: int) -> list[np.ndarray]:
        from datamodules.preprocess.decode import rotate

        a, b = k * self.block, (k + 1) * self.block  # output frames [a, b)
        tb = self._vs.time_base
        start = self._t0 + a / self.fps
        self._c.seek(max(0, int((start - 0.5) / tb)), stream=self._vs, backward=True)
        out: list[np.ndarray] = []
        prev, prev_arr = None, None

        def arr():
            nonlocal prev_arr
            if prev_arr is None:
                prev_arr = rotate(prev.to_ndarray(format="rgb24"), self._rot)
            return prev_arr

        i = a
        for f in self._c.decode(self._vs):
            if f.time is None:
                continue
            rel = float(f.time) - self._t0
            while prev is not None and i < b and i / self.fps < rel - 1e-6:
                out.append(arr())
                i += 1
            if i >= b:
                break
            prev, prev_arr = f, None
        if prev is None:
            raise InferenceError(f"paste_back: {self.path} has no frame at {start:.2f} s (output frame {a})")
        while len(out) < self.block:  # past the last source frame: hold it
            out.append(arr())
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        k = int(i) // self.block
        if k not in self._cache:
            self._cache[k] = self._decode_block(k)
            self._order.append(k)
            while len(self._order) > self.keep:
                self._cache.pop(self._order.popleft(), None)
        return self._cache[k][int(i) - k * self.block]


def feather_mask(size: int, feather: int) -> np.ndarray:
    """[size,size] float32 weights: 1 inside, a linear ramp to ~0 over `feather` px at the border."""
    r = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    w = np.clip((r + 0.5) / max(feather, 1), 0.0, 1.0)
    return np.minimum(w[:, None], w[None, :])


def paste_back(frame: np.ndarray, crop_img: np.ndarray, crop: dict[str, Any], mask: np.ndarray | None = None) -> np.ndarray:
    """Composite a rendered crop [n,n,3] uint8 into the full source frame [H,W,3] uint8 using the crop record
    (x0, y0, size): resized to size x size, blended with `mask` [size,size] (feather_mask) at its border."""
    import cv2

    x0, y0, s = int(crop["x0"]), int(crop["y0"]), int(crop["size"])
    H, W = frame.shape[:2]
    if x0 < 0 or y0 < 0 or x0 + s > W or y0 + s > H:
        raise InferenceError(f"paste_back: the crop ({x0}, {y0}, size {s}) does not fit the {W}x{H} source frame; "
                             "the source video differs from the one preprocessed")
    interp = cv2.INTER_AREA if s < crop_img.shape[0] else cv2.INTER_LINEAR
    patch = cv2.resize(crop_img, (s, s), interpolation=interp) if crop_img.shape[0] != s else crop_img
    out = np.array(frame, copy=True)
    if mask is None:
        out[y0:y0 + s, x0:x0 + s] = patch
    else:
        region = out[y0:y0 + s, x0:x0 + s].astype(np.float32)
        m = mask[..., None]
        out[y0:y0 + s, x0:x0 + s] = np.clip(patch * m + region * (1 - m) + 0.5, 0, 255).astype(np.uint8)
    return out


def source_video_path(ds: SubjectDataset) -> Path | None:
    """The source video preprocessing recorded for a subject (manifest extra.source.video), or None."""
    src = (ds.manifest.extra or {}).get("source") or {}
    v = src.get("video") if isinstance(src, dict) else src
    if not isinstance(v, str) or not v:
        return None
    p = Path(v)
    return p if p.is_absolute() else ds.root / p


# ----------------------------------------------------------------------------------------------------------------
# the renderer: head (+ torso) + super-resolution, batched
# ----------------------------------------------------------------------------------------------------------------
def condition_window(t: np.ndarray, window: int, T: int) -> np.ndarray:
    """Condition windows centred on frames t [B] -> [B, window] indices, edge-replicated into [0, T)."""
    h = window // 2
    return np.clip(np.asarray(t)[:, None] + np.arange(-h, window - h)[None, :], 0, T - 1)


class FrameRenderer:
    """Renders batches of frames at the output size from motion and poses: head (`load_head`), torso when given,
    super-resolution (the head's), to uint8 [B, 2r, 2r, 3] on the device.

    head: a HeadNeRFModule (lightning_modules.head_nerf): render_heads(c2w [B,4,4], K, motion [B,W,204], eye [B,W],
    frame [B], bg, size) and sr. torso: a TorsoNeRFModule (lightning_modules.torso_nerf): render_frames(c2w, K,
    motion, eye, frame, plate, size) (head over torso over the plate, before SR) and sr; or None: head-only over the
    real torso of the driving frame (the background the head stage trained with). Each call renders its B frames
    in one step (one march/composite loop for all B heads, one field call for all B torsos), equal per frame to
    the one-frame methods (render_head / render_frame) up to float rounding.
    """

    def __init__(self, head, torso, ds: SubjectDataset, device: torch.device):
        from talkfield.camera import scale_intrinsics

        self.head, self.torso, self.ds, self.device = head, torso, ds, device
        self.sr = torso.sr if torso is not None else head.sr  # the torso stage may fine-tune its own copy
        self.size = int(head.render_size)
        self.out_size = 2 * self.size
        self.window = int(head.field.condition.window)
        K = np.asarray(ds.array("intrinsics"), np.float64)
        self.K = torch.from_numpy(scale_intrinsics(K, ds.size, self.size).astype(np.float32)).to(device)
        plate = ds.background()
        self.plate = torch.from_numpy(_resize(plate, self.size)).to(device)
        self._bg_cache: dict[int, torch.Tensor] = {}
        self._bg_order: deque[int] = deque()

    def background(self, src: int) -> torch.Tensor:
        """Head-only background of source frame `src`: its torso RGBA over the plate, uint8 [r,r,3] on the device."""
        if self.torso is not None:
            return self.plate
        if src not in self._bg_cache:
            bg = self.ds.head_background(int(src))
            self._bg_cache[src] = _to_device(_resize(np.clip(np.round(bg), 0, 255).astype(np.uint8), self.size),
                                             self.device)
            self._bg_order.append(src)
            while len(self._bg_order) > 256:
                self._bg_cache.pop(self._bg_order.popleft(), None)
        return self._bg_cache[src]

    @torch.no_grad()
    def render(self, c2w: np.ndarray, motion: np.ndarray, eye: np.ndarray, src: np.ndarray, bf16: bool = True,
               timer: StageTimer | None = None) -> torch.Tensor:
        """c2w [B,4,4], motion [B,W,68,3] raw offsets, eye [B,W], src [B] driving source frames -> uint8
        [B, 2r, 2r, 3] on the device."""
        timer = timer or StageTimer()
        dev = self.device
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and dev.type == "cuda" else nullcontext())
        B = len(c2w)
        c2w_t = _to_device(np.asarray(c2w, np.float32), dev)
        mot = _to_device(np.asarray(motion, np.float32).reshape(B, -1, 204), dev)
        eye_t = _to_device(np.asarray(eye, np.float32), dev)
        # inference: the mean per-frame code for every frame (CONTRACTS.md section 5)
        frame = torch.full((B,), -1, dtype=torch.long, device=dev)
        with amp:
            # all B frames in one step: the head's rays of every frame in one march/composite loop, the torso's
            # pixels of every frame in one field call (no host sync per frame)
            if self.torso is not None:
                with timer("head+torso"):
                    img = self.torso.render_frames(c2w_t, self.K, mot, eye_t, frame, self.plate.float() / 255.0,
                                                   self.size)
            else:
                with timer("head"):
                    bg = torch.stack([self.background(int(s)) for s in src]).float() / 255.0
                    img = self.head.render_heads(c2w_t, self.K, mot, eye_t, frame, bg, self.size)["image"]
            with timer("sr"):
                sr = self.sr(img.float().clamp(0, 1).permute(0, 3, 1, 2)).float()
        with timer("to_uint8"):
            return (sr.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`; to a GPU through pinned memory without waiting (a pageable copy would wait for
    all queued GPU work)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if img.shape[0] == size and img.shape[1] == size:
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


# ----------------------------------------------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------------------------------------------
def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device={device}: no CUDA GPU here; use device=cpu or auto")
    return d


def _resolve(spec, runs_dir: Path, subject: str, stage: str) -> Path | None:
    from talkfield.runs import resolve_checkpoint

    return resolve_checkpoint("latest" if spec is None else str(spec), runs_dir, subject, stage)


class TalkingHeadPipeline:
    """A subject's trained models, loaded once; render() any number of audio files (warm)."""

    def __init__(self, ds: SubjectDataset, head, torso, a2m, person, device: torch.device,
                 checkpoints: dict[str, str | None]):
        self.ds, self.head, self.torso, self.a2m, self.person = ds, head, torso, a2m, person
        self.device = device
        self.checkpoints = checkpoints
        self.renderer = FrameRenderer(head, torso, ds, device)
        self.c2w = np.asarray(ds.array("c2w"), np.float32)
        self.stats = np.asarray(ds.array("motion_stats"), np.float32)

    # --- loading --------------------------------------------------------------------------------------------------
    @classmethod
    def from_subject(cls, subject: str, *, data_dir, runs_dir, device: str | torch.device = "auto", head=None,
                     torso=None, a2m=None, compile: str | None = None, compile_bucket: int = 16384,
                     compact_every: int = 1) -> "TalkingHeadPipeline":
        """Load a subject's dataset and models. head / torso / a2m: a checkpoint file, a run directory, 'latest' or
        None (= the subject's latest run of that stage, logged). torso=False (or 'none') renders head-only; with no
        torso run the pipeline renders head-only and says so. a2m may also name a generic corpus model: a
        checkpoint, a run directory, or the corpus name under runs_dir (its latest audio2motion run).
        compile / compile_bucket: `compile_head` (infer.compile, infer.compile_bucket; None: eager).
        compact_every: the head renderer's inference loop drops finished rays every this many passes
        (infer.compact_every; `cuda_ext.render_inference`)."""
        if int(compact_every) < 1:
            raise InferenceError(f"compact_every={compact_every} (infer.compact_every): must be >= 1")
        from lightning_modules.audio2motion import load_audio2motion
        from lightning_modules.head_nerf import load_head
        from networks.audio2motion import PersonMotion
        from talkfield.runs import CheckpointError, latest_run

        runs_dir, data_dir = Path(runs_dir), Path(data_dir)
        ds = open_subject(data_dir, subject)
        dev = pick_device(device)
        fp = ds.fingerprint
        used: dict[str, str | None] = {}

        # the torso checkpoint carries its own frozen head; without one the head run renders head-only
        torso_ck = None
        head_only = torso is False or (isinstance(torso, str) and torso.lower() in ("none", "false", "off"))
        if head_only:
            log.info("torso: off (head-only over the real torso of the driving frames)")
        elif torso is None and latest_run(runs_dir, subject, "torso") is None:
            log.warning("no torso run for subject %r under %s: rendering head-only over the real torso of the "
                        "driving frames (train one: python train.py experiment=torso_nerf subject.name=%s)",
                        subject, runs_dir / subject / "torso", subject)
        else:
            torso_ck = _resolve(torso, runs_dir, subject, "torso")

        # missing checkpoints are reported together, in training order
        missing = []
        head_ck = a2m_ck = None
        if torso_ck is None:
            try:
                head_ck = _resolve(head, runs_dir, subject, "head")
            except CheckpointError as e:
                missing.append(str(e))
        try:
            a2m_ck = _resolve_a2m(a2m, runs_dir, subject)
        except CheckpointError as e:
            missing.append(str(e))
        if missing:
            raise CheckpointError("cannot render subject %r:\n  - %s" % (subject, "\n  - ".join(missing)))

        torso_m = None
        if torso_ck is not None:
            torso_m = _load_torso(torso_ck, subject, fp, dev)
            head_m = torso_m.head
            used["torso"] = str(torso_ck)
            used["head"] = f"frozen head inside {torso_ck}"
            log.info("torso: %s%s (with its frozen head)", torso_ck, "" if torso is not None else " (latest run)")
            if head is not None:
                log.warning("head=%s ignored: the torso checkpoint renders with the head it was trained on", head)
        else:
            head_m = load_head(head_ck, subject=subject, fingerprint=fp, map_location=dev)
            used["head"], used["torso"] = str(head_ck), None
            log.info("head: %s%s (head-only)", head_ck, "" if head is not None else " (latest run)")

        a2m_m = load_audio2motion(a2m_ck, subject, fp, allow_generic=True, map_location=dev)
        used["audio2motion"] = str(a2m_ck)
        log.info("audio2motion: %s (%s, %s features)", a2m_ck,
                 "generic corpus model" if a2m_m.generic else f"subject {subject}", a2m_m.features)
        if a2m_m.person is not None:
            person = a2m_m.person
        else:
            off = np.asarray(ds.array("offsets"), np.float32)
            train = ds.split("train")
            person = PersonMotion.from_arrays(off[train], ds.array("motion_stats"), ds.array("mean_shape"),
                                              tuple(ds.manifest.eye_quantiles), np.asarray(ds.array("eye_open"))[train])
        pipe = cls(ds, head_m, torso_m, a2m_m, person, dev, used)
        pipe.compile_head(compile, compile_bucket)
        head_m.renderer.compact_every = int(compact_every)
        return pipe

    def compile_head(self, mode: str | None = "reduce-overhead", bucket: int = 16384) -> bool:
        """Render the head field under torch.compile (`HeadNeRFModule.compile_for_inference`: fullgraph, samples
        padded to a multiple of `bucket`; the first frames of each bucket compile). mode: none | default |
        reduce-overhead | max-autotune-no-cudagraphs. CUDA only: elsewhere a notice, and the field stays eager.
        Returns whether the field is compiled."""
        from lightning_modules.head_nerf import infer_compile_mode

        mode = infer_compile_mode(mode)
        if mode is not None and self.device.type != "cuda":
            log.info("compile=%s: the compiled head field is CUDA-only; eager on %s", mode, self.device)
            mode = None
        compiled = self.head.compile_for_inference(mode, bucket)
        if compiled:
            log.info("head field: torch.compile mode %s, samples padded to a multiple of %d", mode, bucket)
        return compiled

    # --- motion ---------------------------------------------------------------------------------------------------
    def motion(self, wav: np.ndarray, knobs: Knobs, timer: StageTimer | None = None) -> np.ndarray:
        """Speech [S] -> post-processed offsets [T,68,3] (T = floor(S / 640)) for the whole recording."""
        from networks.audio2motion import postprocess, predict_motion

        timer = timer or StageTimer()
        T = frame_count(len(wav))
        with timer("features"):
            feats, f0 = speech_conditions(wav[: T * SAMPLES_PER_FRAME + MEL_TAIL], self.a2m.features, T)
        with timer("audio2motion"):
            off = predict_motion(self.a2m, feats, f0, temperature=knobs.temperature, mouth_amp=knobs.mouth_amp,
                                 stats=self.stats, seed=knobs.seed)
        with timer("postprocess"):
            off = postprocess(off, self.person, lle_blend=knobs.lle_blend, blink=knobs.blink_kind, seed=knobs.seed,
                              audio=wav[: T * SAMPLES_PER_FRAME], pause_close=knobs.pause_close,
                              lookahead=knobs.lookahead)
        return off

    # --- rendering ------------------------------------------------------------------------------------------------
    def _frames(self, off: np.ndarray, ts: np.ndarray, driver: PoseDriver, T: int):
        """Inputs of frames ts: c2w [B,4,4], motion windows [B,W,68,3], eye windows [B,W], source frames [B]."""
        win = condition_window(ts, self.renderer.window, T)
        motion = off[win]
        eye = self.person.eye_openness(motion)
        return driver.poses(ts), motion, eye, driver.index(ts)

    def _finish_frames(self, imgs: torch.Tensor, src: np.ndarray, knobs: Knobs, paste) -> list[np.ndarray]:
        frames = list(imgs.cpu().numpy())
        if paste is None:
            return frames
        source, mask = paste
        return [paste_back(source[int(s)], f, self.ds.manifest.crop, mask) for f, s in zip(frames, src)]

    def _output_size(self, knobs: Knobs) -> tuple[int, int]:
        if not knobs.paste_back:
            return self.renderer.out_size, self.renderer.out_size
        c = self.ds.manifest.crop
        return int(c["source_width"]), int(c["source_height"])

    def _paste_source(self, knobs: Knobs):
        if not knobs.paste_back:
            return None
        p = source_video_path(self.ds)
        if p is None:
            raise InferenceError(f"paste_back: the manifest of subject {self.ds.name!r} records no source video; "
                                 "re-run preprocessing, or render without paste_back")
        size = int(self.ds.manifest.crop["size"])
        return SourceFrames(p), feather_mask(size, max(2, size // 32))

    def render(self, audio_path, out_path, knobs: Knobs | None = None, progress: ProgressFn | None = None,
               cancel: threading.Event | None = None, *, show_progress: bool = True,
               profile: bool = False) -> Path:
        """Speech file -> mp4 at out_path (its folder is created). Returns the path. See render_result()."""
        return self.render_result(audio_path, out_path, knobs, progress, cancel, show_progress=show_progress,
                                  profile=profile).path

    def render_result(self, audio_path, out_path, knobs: Knobs | None = None, progress: ProgressFn | None = None,
                      cancel: threading.Event | None = None, *, show_progress: bool = True,
                      profile: bool = False) -> PipelineResult:
        """render() returning a PipelineResult (frames, wall time, fps, per-stage seconds). profile=True
        synchronizes CUDA around each stage for exact per-stage times (slower overall)."""
        from tqdm.auto import tqdm

        knobs = (knobs or Knobs()).check()
        timer = StageTimer(sync=profile)
        t_start = time.perf_counter()
        with timer("decode_audio"):
            wav = load_speech(audio_path)
        T = frame_count(len(wav))
        off = self.motion(wav, knobs, timer)
        with timer("poses"):
            driver = PoseDriver.from_poses(self.c2w, knobs.pose, knobs.pose_smooth)
        paste = self._paste_source(knobs)
        bar = tqdm(total=T, unit="frame", desc="render", disable=not show_progress, smoothing=0.1)
        try:
            with FrameSink(out_path, self._output_size(knobs), wav, max_queue=max(16, 2 * knobs.batch_frames)) as sink:
                t_loop = time.perf_counter()
                for a in range(0, T, knobs.batch_frames):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(f"rendering {audio_path} cancelled at frame {a} of {T}")
                    ts = np.arange(a, min(T, a + knobs.batch_frames))
                    c2w, motion, eye, src = self._frames(off, ts, driver, T)
                    imgs = self.renderer.render(c2w, motion, eye, src, knobs.bf16, timer)
                    with timer("download" if paste is None else "paste_back"):
                        frames = self._finish_frames(imgs, src, knobs, paste)
                    with timer("encode_wait"):
                        for f in frames:
                            sink.put(f)
                    done = int(ts[-1]) + 1
                    bar.update(len(ts))
                    if progress is not None:
                        progress(done, T, done / max(time.perf_counter() - t_loop, 1e-9))
                with timer("encode_flush"):
                    sink.close()
                timer.add("encode_thread_busy", sink.busy_seconds)
        finally:
            bar.close()
            if paste is not None:
                paste[0].close()
        wall = time.perf_counter() - t_start
        timings = dict(timer.seconds)
        log.info("%d frames (%.1f s of audio) in %.2f s: %.1f frames/s -> %s", T, len(wav) / SAMPLE_RATE, wall,
                 T / wall, out_path)
        return PipelineResult(Path(out_path), T, len(wav) / SAMPLE_RATE, wall, T / wall, timings, self.checkpoints)

    # --- streaming ------------------------------------------------------------------------------------------------
    def stream(self, chunks: Iterable[tuple[np.ndarray, float]], knobs: Knobs | None = None,
               on_frame: Callable[[int, np.ndarray], None] | None = None,
               cancel: threading.Event | None = None) -> StreamStats:
        """Live mode: consume (40 ms chunk [640] float32 16 kHz, arrival time) pairs (see `chunk_source`), emit
        frames as soon as they are determined: on_frame(t, uint8 [H,W,3]). Returns the latencies.

        The source is read on a thread (`ChunkFeed`). Each step takes every chunk that has arrived, up to
        `batch_frames`: when the renderer keeps up that is one chunk and frame t is emitted when chunk t +
        lookahead_frames arrives; after a slow step the waiting chunks go through features, Audio2Motion and
        rendering together, so the backlog drains instead of growing. No frame ever waits for audio past its
        look-ahead; a frame fixed in such a step may see up to batch_frames - 1 chunks more of the audio that had
        already arrived (with a look-ahead past Audio2Motion's receptive field the motion is the same).
        """
        knobs = (knobs or Knobs()).check()
        if self.a2m.features not in ("mel", "hubert"):
            raise InferenceError(f"streaming needs mel or hubert features; this Audio2Motion model uses "
                                 f"{self.a2m.features} (30 s windows)")
        if knobs.temperature > 0:
            log.warning("streaming with temperature %.2f: the prior noise is redrawn per window; "
                        "temperature=0 gives steadier motion", knobs.temperature)
        sm = StreamingMotion(self, knobs)
        driver = PoseDriver.from_poses(self.c2w, knobs.pose, knobs.pose_smooth)
        paste = self._paste_source(knobs)
        stats = StreamStats(lookahead_frames=sm.lookahead_frames)
        arrivals: dict[int, float] = {}
        n_chunks = 0
        feed = ChunkFeed(chunks, max_pending=max(64, 4 * knobs.batch_frames))
        try:
            def emit(ts: np.ndarray, motion: np.ndarray, eye: np.ndarray) -> None:
                for a in range(0, len(ts), knobs.batch_frames):
                    sl = slice(a, a + knobs.batch_frames)
                    t = ts[sl]
                    imgs = self.renderer.render(driver.poses(t), motion[sl], eye[sl], driver.index(t), knobs.bf16)
                    frames = self._finish_frames(imgs, driver.index(t), knobs, paste)
                    now = time.perf_counter()
                    stats.batches.append(len(t))
                    for ti, f in zip(t, frames):
                        stats.latencies.append(now - arrivals.pop(int(ti), now))
                        if on_frame is not None:
                            on_frame(int(ti), f)

            while True:
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"stream cancelled after {n_chunks} chunks")
                # every chunk that has arrived (up to batch_frames) in one step: one feature / Audio2Motion pass and
                # batched renders, so a renderer faster than real time catches up with a backlog instead of
                # paying the per-step costs once per 40 ms chunk
                got = feed.take(knobs.batch_frames, cancel)
                if got is None:
                    break
                if not got:
                    continue
                for _, arrived in got:
                    arrivals[n_chunks] = arrived
                    n_chunks += 1
                stats.pushes.append(len(got))
                ready = sm.push(np.concatenate([np.asarray(c, np.float32).reshape(-1) for c, _ in got]))
                if ready is not None:
                    emit(*ready)
            ready = sm.finish()
            if ready is not None:
                emit(*ready)
        finally:
            feed.close()
            if paste is not None:
                paste[0].close()
        return stats

    def render_stream(self, audio_path, out_path, knobs: Knobs | None = None, realtime: bool = True,
                      progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> tuple[Path, StreamStats]:
        """Streaming mode on a file: the audio is fed chunk by chunk (at its real pace when realtime) through
        stream(); frames go to an mp4 as they are emitted. Returns (path, latency stats)."""
        knobs = (knobs or Knobs()).check()
        wav = load_speech(audio_path)
        T = frame_count(len(wav))
        t0 = time.perf_counter()
        with FrameSink(out_path, self._output_size(knobs), wav) as sink:
            def on_frame(t: int, f: np.ndarray) -> None:
                if t < T:
                    sink.put(f)
                    if progress is not None:
                        progress(t + 1, T, (t + 1) / max(time.perf_counter() - t0, 1e-9))

            # one 40 ms block per chunk: a chunk arrives when its last sample does
            stats = self.stream(chunk_source(wav[: T * SAMPLES_PER_FRAME], realtime=realtime, block=CHUNK_SAMPLES),
                                knobs, on_frame, cancel)
        return Path(out_path), stats


def _resolve_a2m(spec, runs_dir: Path, subject: str) -> Path:
    """The Audio2Motion checkpoint: given file/run dir, 'latest' / None (the subject's latest run), or the name of
    a corpus whose latest audio2motion run under runs_dir is a generic model."""
    from talkfield.runs import CheckpointError, latest_run, resolve_checkpoint

    if spec is not None and str(spec) not in ("latest",) and not Path(str(spec)).exists() \
            and "/" not in str(spec) and latest_run(runs_dir, str(spec), "audio2motion") is not None:
        return resolve_checkpoint("latest", runs_dir, str(spec), "audio2motion")
    try:
        return _resolve(spec, runs_dir, subject, "audio2motion")
    except CheckpointError as e:
        if spec is None:
            raise CheckpointError(f"{e}, or pass a2m=<a generic corpus model: checkpoint, run dir or corpus name>") from e
        raise


def _load_torso(path: Path, subject: str, fingerprint: str, device: torch.device):
    try:
        from lightning_modules.torso_nerf import load_torso
    except ImportError as e:
        raise InferenceError(f"torso checkpoint {path} found but lightning_modules.torso_nerf.load_torso is not "
                             "available in this checkout; pass torso=none to render head-only") from e
    m = load_torso(path, subject=subject, fingerprint=fingerprint, map_location=device)
    if not hasattr(m, "render_frames"):
        raise InferenceError(f"the torso module of {path} has no render_frames(c2w, K, motion, eye, frame, bg, size); "
                             "inference needs it (docs/inference.md)")
    return m


# ----------------------------------------------------------------------------------------------------------------
# streaming motion: Audio2Motion over a sliding window with bounded look-ahead
# ----------------------------------------------------------------------------------------------------------------
class StreamingMotion:
    """Turns 40 ms audio chunks into post-processed motion frames with a bounded look-ahead.

    After n chunks (frames 0..n-1 of audio complete), features are known for frames < n - 1 (a frame's second
    mel row reads 192 samples of the next frame). Motion of frame t is fixed once features reach t + lookahead;
    a frame is rendered once the motion of its whole condition window (up to t + window // 2) is fixed. So frame t
    is ready when chunk t + `lookahead_frames` arrives, lookahead_frames = lookahead + window // 2 + 1.

    Features are computed once per new stretch of audio (with a short overlap so pitch tracking has context) and
    cached; Audio2Motion and post-processing run on the window [t - context, t + lookahead] (context: the
    model's receptive field), so memory and time per step are constant in the stream's length. Blinks follow one
    schedule over absolute frame indices (the same as file rendering with the same seed).

    The mel features are normalised as the whole-file path does, with references measured on what has been heard
    (the file path measures them on the whole recording): for a model with mel_norm 'band' the per-band noise floor
    and loud level ([2,80] `mel_band_stats`), for 'level' the loud-frame level; the speaker's median f0 likewise.
    At the start the subject's own references (its recording's mel and f0) are blended in, over PRIOR_ROWS rows.
    pipe: needs .a2m, .person, .stats, .ds (has/array, for the subject's mel level and f0 as priors at the start)
    and .renderer.window.
    """

    def __init__(self, pipe, knobs: Knobs, context: int | None = None):
        self.pipe, self.knobs = pipe, knobs
        self.kind = pipe.a2m.features
        net = pipe.a2m.network
        self.stride = int(net.stride)
        rf = int(net.receptive_field()) if context is None else int(context)
        self.context = -(-rf // self.stride) * self.stride
        self.lookahead = int(knobs.lookahead)
        self.half = int(pipe.renderer.window) // 2
        self.window = int(pipe.renderer.window)
        self.lookahead_frames = self.lookahead + self.half + 1
        self.overlap = 8 if self.kind == "mel" else self.context  # frames of audio re-analysed for context
        self.wav = np.zeros(0, np.float32)   # samples from frame wav_start on
        self.wav_start = 0
        self.n_samples = 0                   # samples received in total
        self.feat_start = self.feat_end = 0  # cached feature rows cover frames [feat_start, feat_end)
        self.feats: np.ndarray | None = None
        self.f0: np.ndarray | None = None
        self.motion: dict[int, np.ndarray] = {}  # fixed motion by frame (only the last few kept)
        self.next_motion = 0                 # first frame whose motion is not fixed yet
        self.next_render = 0                 # first frame not emitted yet
        self.band = self.kind == "mel" and getattr(net, "mel_norm", "level") == "band"
        self.row_means: deque[float] = deque(maxlen=HEARD_ROWS)  # mel level of each row heard ('level' models)
        self.rows: deque[np.ndarray] = deque(maxlen=HEARD_ROWS)  # mel rows heard ('band' models)
        self.rows_heard = 0
        self.voiced: deque[float] = deque(maxlen=HEARD_ROWS)
        self._band_ref: np.ndarray | None = None
        self._band_at = -BAND_EVERY
        self._blink = np.zeros(0, np.float32)
        from networks.audio2motion import PauseTracker

        self.pauses = PauseTracker(self.lookahead)  # the file path's pause decisions, chunk by chunk
        ds = pipe.ds
        self._mel_prior: float | np.ndarray | None = None
        self._f0_prior: float | None = None
        if self.kind == "mel" and ds.has("mel"):
            from networks.audio2motion import mel_band_stats, mel_level

            mel = np.asarray(ds.array("mel"), np.float32)
            self._mel_prior = mel_band_stats(mel) if self.band else mel_level(mel)
        if ds.has("f0"):
            f = np.asarray(ds.array("f0"))
            self._f0_prior = float(np.median(f[f > 0])) if (f > 0).any() else None

    # ------------------------------------------------------------------------------------------------------------
    def push(self, chunk: np.ndarray):
        """Add one 40 ms chunk. Returns (frames [n], motion windows [n,W,68,3], eye [n,W]) ready to render, or None."""
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        self.wav = np.concatenate([self.wav, chunk])
        self.pauses.push(chunk)
        self.n_samples += len(chunk)
        n_feat = max(0, (self.n_samples - MEL_TAIL) // SAMPLES_PER_FRAME)  # frames whose features are complete
        self._fix_motion(n_feat - self.lookahead, n_feat)
        return self._ready(final=False)

    def finish(self):
        """End of stream: fix and return every remaining frame (features padded at the end)."""
        T = self.n_samples // SAMPLES_PER_FRAME
        self.pauses.finish()
        self._fix_motion(T, T)
        return self._ready(final=True)

    # ------------------------------------------------------------------------------------------------------------
    def _features(self, n_feat: int) -> None:
        """Extend the cached feature rows to frames < n_feat (re-analysing `overlap` frames before the end)."""
        if n_feat <= self.feat_end:
            return
        redo = max(self.feat_start, self.feat_end - 4)        # rows from here on are (re)written
        a = max(self.wav_start, redo - self.overlap)          # analysis starts here
        seg = self.wav[(a - self.wav_start) * SAMPLES_PER_FRAME:]
        feats, f0 = speech_conditions(seg, self.kind, n_feat - a)
        new_f, new_p = feats[2 * (redo - a):], f0[2 * (redo - a):]
        if self.feats is None:
            self.feats, self.f0 = new_f, new_p
        else:
            cut = 2 * (redo - self.feat_start)
            self.feats = np.concatenate([self.feats[:cut], new_f])
            self.f0 = np.concatenate([self.f0[:cut], new_p])
        # running loudness and pitch of what was heard (only rows not counted before)
        fresh = slice(2 * (self.feat_end - redo), None)
        if self.kind == "mel":
            rows = np.array(new_f[fresh], np.float32)
            self.rows_heard += len(rows)
            if self.band:
                self.rows.extend(rows)
            else:
                self.row_means.extend(rows.mean(-1).tolist())
        v = new_p[fresh]
        self.voiced.extend(v[v > 0].tolist())
        self.feat_end = n_feat

    def _refs(self) -> tuple[float | np.ndarray | None, float | None]:
        """The mel reference of `predict_motion` (band models: [2,80] floor / loud level per band; level models: the
        loud-frame level) and the median f0, over what has been heard (the subject's own as a prior at the start)."""
        from networks.audio2motion import mel_band_stats

        mel_ref = None
        w = 1.0 if self._mel_prior is None else min(1.0, self.rows_heard / PRIOR_ROWS)
        if self.band and self.rows:
            if self._band_ref is None or self.rows_heard - self._band_at >= BAND_EVERY:
                heard = mel_band_stats(np.stack(self.rows))
                prior = heard if self._mel_prior is None else self._mel_prior
                self._band_ref = (w * heard + (1 - w) * prior).astype(np.float32)
                self._band_at = self.rows_heard
            mel_ref = self._band_ref
        elif self.kind == "mel" and self.row_means:
            heard = float(np.quantile(np.asarray(self.row_means), 0.95))
            mel_ref = w * heard + (1 - w) * (self._mel_prior or 0.0)
        f0_ref = float(np.median(np.asarray(self.voiced))) if len(self.voiced) >= 25 else self._f0_prior
        return mel_ref, f0_ref

    def _blink_closure(self, ts: np.ndarray) -> np.ndarray:
        from networks.audio2motion import blink_schedule

        need = int(ts.max()) + 1
        if need > len(self._blink):
            horizon = max(need, 2 * len(self._blink), 25 * 60)
            self._blink = blink_schedule(horizon, self.knobs.blink_kind, seed=self.knobs.seed)
        return self._blink[ts]

    def _fix_motion(self, upto: int, n_feat: int) -> None:
        """Fix the motion of frames [next_motion, upto) from features of frames < n_feat."""
        from networks.audio2motion import postprocess, predict_motion
        from networks.audio2motion.postprocess import apply_blinks, close_mouth_in_pauses

        a = self.next_motion
        if upto <= a or n_feat <= 0:
            return
        self._features(n_feat)
        lo = max(self.feat_start, a - self.context)
        lo -= (lo - self.feat_start) % self.stride
        r0, r1 = 2 * (lo - self.feat_start), 2 * (n_feat - self.feat_start)
        mel_ref, f0_ref = self._refs()
        k = self.knobs
        off = predict_motion(self.pipe.a2m, self.feats[r0:r1], self.f0[r0:r1], temperature=k.temperature,
                             mouth_amp=k.mouth_amp, stats=self.pipe.stats, seed=k.seed, mel_ref=mel_ref,
                             f0_ref=f0_ref)
        off = postprocess(off, self.pipe.person, lle_blend=k.lle_blend, blink="none")
        ts = np.arange(a, upto)
        new = off[ts - lo]
        if k.pause_close > 0:
            new = close_mouth_in_pauses(new, self.pauses.take(upto), self.pipe.person.closed_mouth(), k.pause_close)
        else:
            self.pauses.take(upto)
        if k.blink_kind != "none":
            new = apply_blinks(new, self._blink_closure(ts), self.pipe.person.closed_eyes)
        for t, o in zip(ts, new):
            self.motion[int(t)] = o
        self.next_motion = upto
        # keep only the audio and feature rows the next window needs
        keep = max(0, self.next_motion - self.context - self.overlap - self.stride)
        if keep > self.wav_start:
            self.wav = self.wav[(keep - self.wav_start) * SAMPLES_PER_FRAME:]
            self.wav_start = keep
        if keep > self.feat_start:
            cut = 2 * (min(keep, self.feat_end) - self.feat_start)
            self.feats, self.f0 = self.feats[cut:], self.f0[cut:]
            self.feat_start = min(keep, self.feat_end)

    def _ready(self, final: bool):
        """Frames whose condition window is fixed (all remaining ones at the end), with their windows."""
        end = self.next_motion if final else self.next_motion - self.half
        if end <= self.next_render:
            return None
        ts = np.arange(self.next_render, end)
        # windows are edge-replicated at the true start and end only; mid-stream they never pass the fixed motion
        win = condition_window(ts, self.window, self.next_motion)
        motion = np.stack([np.stack([self.motion[int(i)] for i in row]) for row in win])
        eye = self.pipe.person.eye_openness(motion)
        self.next_render = end
        for t in [t for t in self.motion if t < self.next_render - self.half]:
            del self.motion[t]
        return ts, motion, eye
