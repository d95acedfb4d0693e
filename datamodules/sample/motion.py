"""Head, torso and eyelid motion of the sample subject (smooth, deterministic from the seed)."""

from __future__ import annotations

import numpy as np

HEAD_LIMITS_DEG = (15.0, 10.0, 5.0)
"""The head's yaw, pitch and roll span +-these over a clip."""


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, f_lo: float, f_hi: float, n: int = 6) -> np.ndarray:
    x = np.zeros_like(t)
    for _ in range(n):
        f = rng.uniform(f_lo, f_hi)
        x += rng.uniform(0.5, 1.0) / np.sqrt(f) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return x


def _span(x: np.ndarray) -> np.ndarray:
    """Affinely map x to exactly [-1, 1] (a constant stays 0)."""
    lo, hi = x.min(), x.max()
    return np.zeros_like(x) if hi - lo < 1e-12 else 2 * (x - lo) / (hi - lo) - 1


def head_motion(rng: np.random.Generator, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(angles [T,3] degrees (yaw, pitch, roll) spanning +-HEAD_LIMITS_DEG, translation [T,3] head units)."""
    t = np.arange(n_frames) / fps
    ang = np.stack([_span(_smooth_noise(rng, t, 0.04, 0.3)) * lim for lim in HEAD_LIMITS_DEG], 1)
    trans = np.stack([_smooth_noise(rng, t, 0.03, 0.2, 4) for _ in range(3)], 1)
    trans = trans / np.maximum(np.abs(trans).max(0), 1e-9) * np.array([0.06, 0.04, 0.12])
    return ang, trans


def torso_motion(head_angles: np.ndarray, head_trans: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """The torso follows the head a little and a quarter second late: (angles [T,3] deg, translation [T,3])."""
    lag = int(round(0.25 * fps))
    idx = np.clip(np.arange(len(head_angles)) - lag, 0, len(head_angles) - 1)
    ang = head_angles[idx] * np.array([0.25, 0.08, 0.3])
    trans = head_trans[idx] * np.array([0.5, 0.3, 0.2])
    return ang, trans


def blink_track(rng: np.random.Generator, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(closure [T] in [0, 1], blink peak times [B] s). Gaps 1.4-2.9 s: 20.7-43 blinks a minute, each with a
    fully closed frame (close 80 ms, hold 40 ms, open 150 ms)."""
    dur = n_frames / fps
    peaks = []
    t = rng.uniform(0.4, 1.4)
    while t < dur - 0.1:
        peaks.append(round(t * fps) / fps)
        t += rng.uniform(1.4, 2.9)
    tf = np.arange(n_frames) / fps
    close = np.zeros(n_frames)
    for p in peaks:
        d = tf - p
        c = np.where(d < -0.02, 1 - np.clip((-d - 0.02) / 0.08, 0, 1),
                     np.where(d > 0.02, 1 - np.clip((d - 0.02) / 0.15, 0, 1), 1.0))
        c = c * c * (3 - 2 * c)
        close = np.maximum(close, c)
    return close, np.array(peaks)
