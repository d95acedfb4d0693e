"""Pose driving at inference: which training-video frame (and so which camera pose) drives output frame t.

Head pose is not predicted; it replays the subject's training video. GeneFace++ indexes the training poses with
the output frame index and raises IndexError once the audio outlasts the video (reference section 5). Here every
mode maps an unbounded frame index into a clip [a, b] of the video with mirror (ping-pong) looping:

    a, a+1, ..., b-1, b, b-1, ..., a+1, a, a+1, ...     (period 2 (b - a); no frame is shown twice in a row)

Modes (`pose=`): "loop" (the whole video, ping-pong), "static" (frame 0; "static:<k>" holds frame k), "a-b" (the
inclusive frame range a..b, ping-pong). The poses of the clip are smoothed with `camera.smooth_poses` over a
reflect-padded copy, so the turning points of the ping-pong stay as smooth as the rest of the track.

Everything is closed-form in t: `PoseDriver.index(t)` and `PoseDriver.poses(t)` work for any t, in any order, in
constant memory (the streaming renderer asks frame by frame).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from talkfield.camera import smooth_poses

POSE_MODES = ("loop", "static", "a-b")


class PoseError(ValueError):
    """A pose mode that cannot be parsed or names frames outside the training video."""


def mirror_index(t, a: int, b: int) -> np.ndarray:
    """Ping-pong indexing of a clip: output frame t (int or array, >= 0) -> source frame in [a, b] (inclusive).

    t = 0 maps to a; the clip runs forward to b, then backward to a, and so on. a == b holds that frame.
    """
    t = np.asarray(t, np.int64)
    if np.any(t < 0):
        raise PoseError("mirror_index: frame indices must be >= 0")
    n = int(b) - int(a)
    if n < 0:
        raise PoseError(f"mirror_index: empty clip {a}-{b}")
    if n == 0:
        return np.full_like(t, int(a))
    r = t % (2 * n)
    return int(a) + np.where(r <= n, r, 2 * n - r)


def parse_pose(mode: str, num_frames: int) -> tuple[int, int]:
    """Parse a pose mode into the inclusive clip (a, b) of the training video (num_frames frames).

    "loop" -> (0, T-1); "static" -> (0, 0); "static:<k>" -> (k, k); "<a>-<b>" -> (a, b). Errors name the mode and
    the valid range.
    """
    T = int(num_frames)
    if T < 1:
        raise PoseError("the subject has no frames to take poses from")
    m = str(mode).strip().lower()
    if m in ("loop", "mirror", "nearest"):
        return 0, T - 1
    if m == "static":
        return 0, 0
    k = re.fullmatch(r"static[:=](\d+)", m)
    if k:
        a = int(k.group(1))
        if a >= T:
            raise PoseError(f"pose={mode}: frame {a} is past the training video's last frame {T - 1}")
        return a, a
    r = re.fullmatch(r"(\d+)\s*-\s*(\d+)", m)
    if r:
        a, b = int(r.group(1)), int(r.group(2))
        if a > b:
            raise PoseError(f"pose={mode}: the range is reversed; write it as {b}-{a}")
        if b >= T:
            raise PoseError(f"pose={mode}: frame {b} is past the training video's last frame {T - 1}; "
                            f"use a range inside 0-{T - 1}")
        return a, b
    raise PoseError(f"pose={mode!r} is not a pose mode: use loop, static, static:<frame> or <a>-<b> "
                    f"(a frame range inside 0-{T - 1})")


def smooth_clip(c2w: np.ndarray, window: int) -> np.ndarray:
    """Smooth a clip of poses [n,4,4] as its ping-pong repetition would be: reflect-pad by window // 2 on both
    ends (the frames the mirror loop shows around each turning point), `smooth_poses`, crop."""
    c2w = np.asarray(c2w, np.float64)
    n, h = len(c2w), int(window) // 2
    if window <= 1 or n == 1:
        return c2w.copy()
    idx = mirror_index(np.arange(-h, n + h) % (2 * (n - 1)), 0, n - 1)
    return smooth_poses(c2w[idx], window)[h:h + n]


@dataclass
class PoseDriver:
    """Camera poses for any output frame: clip [a, b] of the subject's poses, smoothed, ping-pong looped.

    c2w: [T,4,4] the subject's camera-to-world poses; mode: see `parse_pose`; smooth: moving window (frames).
    """

    a: int
    b: int
    clip: np.ndarray  # [b - a + 1, 4, 4] float32, smoothed

    @classmethod
    def from_poses(cls, c2w: np.ndarray, mode: str = "loop", smooth: int = 7) -> "PoseDriver":
        c2w = np.asarray(c2w)
        a, b = parse_pose(mode, len(c2w))
        clip = smooth_clip(c2w[a:b + 1], smooth).astype(np.float32)
        return cls(a, b, clip)

    @property
    def length(self) -> int:
        """Frames in the clip."""
        return self.b - self.a + 1

    def index(self, t) -> np.ndarray:
        """Source frame(s) of the training video shown at output frame(s) t: [...] int64 in [a, b]."""
        return mirror_index(t, self.a, self.b)

    def poses(self, t) -> np.ndarray:
        """Smoothed c2w of output frame(s) t: [..., 4, 4] float32."""
        return self.clip[self.index(t) - self.a]
