"""Post-processing of predicted motion (inference): LLE projection onto the person's own landmark set, temporal
smoothing, clamping to the person's quantiles, blink synthesis. Pure numpy functions on offsets [T,68,3] (head
units, CONTRACTS.md section 4).

GeneFace++ (reference section 2.3) projects with unregularised LLE (K=10) and blends 20%; here the local Gram
matrix gets a ridge term (classic LLE), so duplicate or collinear neighbours do not blow the weights up.
Blinks interpolate the eye points toward the person's closed-eye configuration and are checked with the one
eye-openness definition (`talkfield.motion.eye_openness_from_offsets`).

Pauses: `PauseTracker` finds pauses in the driving audio itself (frame energy against a running noise floor and
loud level, hysteresis, a minimum length) causally with a bounded look-ahead, so the file path and the streaming
path make the same decisions; `close_mouth_in_pauses` eases the lips and jaw toward the person's own closed mouth
(`PersonMotion.closed_mouth`) in them, with ramps that end before the next speech frame.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from talkfield import landmarks as lmk
from talkfield.motion import eye_openness_from_offsets

BLINK_PROFILE = np.array([0.1, 0.5, 0.7, 1.0, 0.7, 0.5, 0.1], np.float32)
"""Closure (0 open .. 1 closed) over the frames of one synthesized blink (GeneFace++'s 7-frame profile)."""
EYE_POINTS = lmk.EYES68
"""Indices (68 layout) of the eye points that blinks move."""
LIP_POINTS = lmk.LIPS68
MOUTH_POINTS = np.union1d(lmk.JAW68, lmk.LIPS68)
"""Indices (68 layout) of the points that pause closing moves: jaw line and lips."""
FRAME_SAMPLES = 640
"""Samples of one 25 fps frame at 16 kHz (the pause detector's frame)."""


def _idx68(i478: int) -> int:
    return int(np.nonzero(lmk.LM68_FROM_478 == i478)[0][0])


INNER_LIP_MID68 = tuple(_idx68(i) for i in lmk.INNER_LIP_MID)
MOUTH_CORNERS68 = tuple(_idx68(i) for i in lmk.MOUTH_CORNERS)


def mouth_opening68(points68: np.ndarray) -> np.ndarray:
    """Inner-lip gap of 68-layout points [...,68,3] -> [...] (same definition as `landmarks.mouth_opening`)."""
    a, b = INNER_LIP_MID68
    return np.linalg.norm(points68[..., b, :] - points68[..., a, :], axis=-1)


def lip_width68(points68: np.ndarray) -> np.ndarray:
    """Mouth-corner distance of 68-layout points [...,68,3] -> [...] (as `landmarks.lip_width`)."""
    a, b = MOUTH_CORNERS68
    return np.linalg.norm(points68[..., b, :] - points68[..., a, :], axis=-1)


# --------------------------------------------------------------------------------------------------------------
# LLE
# --------------------------------------------------------------------------------------------------------------
def lle_weights(x: np.ndarray, database: np.ndarray, k: int = 10, ridge: float = 1e-3):
    """Locally-linear reconstruction weights of each query from its K nearest database rows.

    x: [M,D], database: [N,D]. Solves min ||x - sum_k w_k d_k||^2 s.t. sum_k w_k = 1 with the local Gram matrix
    C = (d_k - x)(d_j - x)^T regularised by ridge * trace(C) / K (plus 1e-12) on the diagonal.
    Returns (weights [M,K] float64, each row summing to 1; idx [M,K] int64 into database).
    """
    x = np.asarray(x, np.float64)
    db = np.asarray(database, np.float64)
    k = int(min(k, len(db)))
    d2 = (x * x).sum(1)[:, None] - 2 * x @ db.T + (db * db).sum(1)[None]
    idx = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < len(db) else np.tile(np.arange(len(db)), (len(x), 1))
    Z = db[idx] - x[:, None, :]  # [M,K,D]
    C = Z @ Z.transpose(0, 2, 1)  # [M,K,K]
    tr = np.trace(C, axis1=1, axis2=2)
    C = C + (ridge * tr / k + 1e-12)[:, None, None] * np.eye(k)[None]
    w = np.linalg.solve(C, np.ones((len(x), k, 1)))[..., 0]
    w = w / w.sum(1, keepdims=True)
    return w, idx


def lle_project(x: np.ndarray, database: np.ndarray, k: int = 10, ridge: float = 1e-3) -> np.ndarray:
    """Project queries onto the locally-linear span of their K nearest database rows: [M,D] -> [M,D]."""
    w, idx = lle_weights(x, database, k, ridge)
    return np.einsum("mk,mkd->md", w, np.asarray(database, np.float64)[idx])


# --------------------------------------------------------------------------------------------------------------
# smoothing and clamping
# --------------------------------------------------------------------------------------------------------------
def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing along axis 0 (edges reflected). x: [T,...]; sigma in frames (0: none)."""
    if sigma <= 0 or len(x) < 2:
        return np.asarray(x)
    r = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1)
    kern = np.exp(-0.5 * (t / sigma) ** 2)
    kern /= kern.sum()
    mode = "reflect" if len(x) > r else "edge"
    pad = np.pad(np.asarray(x, np.float64), [(r, r)] + [(0, 0)] * (x.ndim - 1), mode=mode)
    out = np.zeros_like(np.asarray(x, np.float64))
    for i, kv in enumerate(kern):
        out += kv * pad[i:i + len(x)]
    return out.astype(np.asarray(x).dtype)


def smooth_motion(off: np.ndarray, sigma: float = 1.0, lip_sigma: float = 0.5) -> np.ndarray:
    """Temporal smoothing of offsets [T,68,3]: `sigma` frames for all points except the lips (`lip_sigma`)."""
    out = gaussian_smooth(off, sigma).copy()
    out[:, LIP_POINTS] = gaussian_smooth(off[:, LIP_POINTS], lip_sigma)
    return out


def clamp_to_quantiles(off: np.ndarray, stats: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Clamp each of the 204 numbers of offsets [T,68,3] to the person's [q03, q97] (stats rows 2, 3), widened
    by `margin` x (q97 - q03) on each side."""
    lo, hi = np.asarray(stats[2], np.float64), np.asarray(stats[3], np.float64)
    span = hi - lo
    flat = np.asarray(off, np.float64).reshape(len(off), -1)
    return np.clip(flat, lo - margin * span, hi + margin * span).reshape(off.shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# blinks
# --------------------------------------------------------------------------------------------------------------
def blink_schedule(T: int, mode: str = "none", *, period: int = 100, start: int = 75, rate: float = 15.0,
                   fps: int = 25, seed: int = 0) -> np.ndarray:
    """Eye closure per frame [T] in [0,1] (1 = closed) made of `BLINK_PROFILE` blinks.

    mode 'none': no blinks; 'period': one blink every `period` frames from frame `start` (GeneFace++);
    'rate': `rate` blinks per minute at random times (intervals: 0.5 s refractory + exponential), seeded.
    """
    c = np.zeros(T, np.float32)
    n = len(BLINK_PROFILE)
    if mode == "none":
        return c
    if mode == "period":
        starts = list(range(start, T, max(int(period), n + 1)))
    elif mode == "rate":
        if rate <= 0:
            return c
        rng = np.random.default_rng(seed)
        mean_gap = 60.0 * fps / rate
        refractory = min(0.5 * fps, 0.5 * mean_gap)
        starts, t = [], rng.exponential(mean_gap - refractory) * 0.5
        while t < T:
            starts.append(int(t))
            t += refractory + rng.exponential(mean_gap - refractory)
    else:
        raise ValueError(f"blink mode {mode!r}: one of none, period, rate")
    for s in starts:
        seg = BLINK_PROFILE[: max(0, min(n, T - s))]
        c[s:s + len(seg)] = np.maximum(c[s:s + len(seg)], seg)
    return c


def closed_eye_pose(offsets: np.ndarray, eye_open: np.ndarray | None, mean_shape: np.ndarray) -> np.ndarray:
    """The person's closed-eye configuration of the 12 eye points, offsets [12,3].

    From their own frames when they blink (mean over frames with eye openness <= 0.1); otherwise built from the
    mean pose by moving each upper-lid point onto its lower-lid partner (EYELID_PAIRS), leaving 10% of the gap.
    """
    off = np.asarray(offsets, np.float64)
    if eye_open is not None:
        shut = np.asarray(eye_open) <= 0.1
        if shut.sum() >= 2:
            return off[shut][:, EYE_POINTS].mean(0).astype(np.float32)
    pose = off.mean(0)
    pts = pose + lmk.to68(np.asarray(mean_shape, np.float64))
    for up, lo in lmk.EYELID_PAIRS:
        iu, il = _idx68(int(up)), _idx68(int(lo))
        pts[iu] = pts[il] + 0.1 * (pts[iu] - pts[il])
    return (pts - lmk.to68(np.asarray(mean_shape, np.float64)))[EYE_POINTS].astype(np.float32)


def apply_blinks(off: np.ndarray, closure: np.ndarray, closed_pose: np.ndarray) -> np.ndarray:
    """Move the eye points of offsets [T,68,3] toward `closed_pose` [12,3] by closure [T] in [0,1]."""
    out = np.array(off, np.float32, copy=True)
    c = np.asarray(closure, np.float32)[:, None, None]
    out[:, EYE_POINTS] = (1 - c) * out[:, EYE_POINTS] + c * np.asarray(closed_pose, np.float32)[None]
    return out


# --------------------------------------------------------------------------------------------------------------
# the person and the whole chain
# --------------------------------------------------------------------------------------------------------------
@dataclass
class PersonMotion:
    """What post-processing needs of the person: stats [4,204], mean_shape [478,3], eye_quantiles (q03, q97) of
    the raw eye ratio, database [N,68,3] (their own training offsets, for LLE), closed_eyes [12,3]."""

    stats: np.ndarray
    mean_shape: np.ndarray
    eye_quantiles: tuple[float, float]
    database: np.ndarray
    closed_eyes: np.ndarray

    @classmethod
    def from_arrays(cls, offsets: np.ndarray, stats: np.ndarray, mean_shape: np.ndarray,
                    eye_quantiles: tuple[float, float], eye_open: np.ndarray | None = None,
                    max_database: int = 3000) -> "PersonMotion":
        """Build from a person's training offsets [T,68,3] (subsampled evenly to <= max_database frames)."""
        off = np.asarray(offsets, np.float32)
        keep = np.linspace(0, len(off) - 1, min(len(off), max_database)).round().astype(int)
        return cls(np.asarray(stats, np.float32), np.asarray(mean_shape, np.float32),
                   (float(eye_quantiles[0]), float(eye_quantiles[1])), off[keep],
                   closed_eye_pose(off, eye_open, mean_shape))

    def eye_openness(self, off: np.ndarray) -> np.ndarray:
        """THE eye openness of offsets [...,68,3] for this person -> [...] in [0,1]."""
        return eye_openness_from_offsets(off, self.mean_shape, *self.eye_quantiles)

    def closed_mouth(self, quantile: float = 0.1, low: float = 0.08) -> np.ndarray:
        """The person's own closed mouth: the mean of `MOUTH_POINTS` over their database frames whose mouth
        opening lies between its `low` and `quantile` quantiles (when no frame does, the widest-open frames at or
        below the `quantile` one). Returns offsets [len(MOUTH_POINTS),3]; its opening is at most the `quantile`
        quantile (the gap of a mean is at most the mean gap), so it counts as closed by that line while lying as
        close to it as the person's frames allow: the least-closed pose that is still closed (docs/audio2motion.md,
        Pauses)."""
        cache = self.__dict__.setdefault("_closed_mouth", {})
        key = (float(quantile), float(low))
        if key not in cache:
            db = np.asarray(self.database, np.float64)
            opening = mouth_opening68(db + lmk.to68(np.asarray(self.mean_shape, np.float64)))
            lo, hi = np.quantile(opening, [min(low, quantile), quantile])
            sel = (opening >= lo) & (opening <= hi)
            if not sel.any():
                sel = opening == opening[opening <= hi].max()
            cache[key] = db[sel][:, MOUTH_POINTS].mean(0).astype(np.float32)
        return cache[key]


# --------------------------------------------------------------------------------------------------------------
# pauses: the mouth closes when the speaker is silent
# --------------------------------------------------------------------------------------------------------------
def frame_levels(wav: np.ndarray) -> np.ndarray:
    """dB (20 log10 RMS, +1e-5) of each complete 640-sample frame of 16 kHz audio [S] -> [S // 640]."""
    n = len(wav) // FRAME_SAMPLES
    w = np.asarray(wav[: n * FRAME_SAMPLES], np.float64).reshape(n, FRAME_SAMPLES)
    return (20 * np.log10(np.sqrt((w * w).mean(1)) + 1e-5)).astype(np.float32)


def smoothstep(x):
    """3x^2 - 2x^3 of x clipped to [0,1]."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class PauseTracker:
    """Pauses in speech, frame by frame at 25 fps, deciding frame t from the audio of frames <= t + lookahead.

    A frame is quiet when its level (`frame_levels`) is under floor + max(min_rise_db, rise x (loud - floor)) and
    at least `min_drop_db` under loud, floor and loud being the `floor_quantile` / `loud_quantile` of the levels
    of the last `ref_frames` frames up to it (causal); once quiet it stays quiet until it rises `hysteresis_db`
    above that threshold. The audio starts quiet (before the first word the speaker is silent) and the min_drop_db
    test applies only once a speech frame has been heard (a steady start has no loud level to compare with).
    A pause is a run of at least `min_pause` quiet frames; its closing weight ramps up over `ramp` frames after the
    last speech frame and down over `ramp` frames ending `lead` frames before the next one (smoothstep): the mouth
    opens ahead of the sound, as it does in speech. When the next speech frame is beyond the look-ahead the pause
    is taken to go on. With lookahead >= lead + ramp - 1 and >= min_pause - 1 the decisions are those of unlimited
    look-ahead apart from the causal floor / loud levels.

    Feed 16 kHz samples in any blocks with `push`; `take(upto)` returns the weights [upto - taken] in [0,1] of
    the next frames once final (frame t is final when frame t + lookahead has been pushed, or after `finish`).
    State is bounded: the last `ref_frames` levels and the frames not taken yet.
    """

    def __init__(self, lookahead: int = 4, *, min_pause: int = 7, ramp: int = 3, lead: int = 2, ref_frames: int = 250,
                 floor_quantile: float = 0.1, loud_quantile: float = 0.95, rise: float = 0.25,
                 min_rise_db: float = 3.0, min_drop_db: float = 10.0, hysteresis_db: float = 2.0):
        if lookahead < 0 or min_pause < 1 or ramp < 1:
            raise ValueError(f"PauseTracker: lookahead {lookahead} >= 0, min_pause {min_pause} >= 1 and ramp {ramp} "
                             ">= 1 expected")
        self.lookahead, self.min_pause, self.ramp, self.lead = int(lookahead), int(min_pause), int(ramp), int(lead)
        self.floor_q, self.loud_q, self.rise = floor_quantile, loud_quantile, rise
        self.min_rise_db, self.min_drop_db, self.hysteresis_db = min_rise_db, min_drop_db, hysteresis_db
        self._spoken = False                 # a speech frame has been heard
        self._hist: deque[float] = deque(maxlen=int(ref_frames))
        self._buf = np.zeros(0, np.float32)  # samples of the incomplete frame
        self._quiet: list[bool] = []         # frames [taken, pushed)
        self._start: list[int] = []          # first frame of each one's quiet run (-1: not quiet)
        self._was_quiet, self._run = True, 0
        self.pushed = self.taken = 0
        self.ended = False

    def push(self, wav: np.ndarray) -> None:
        """Add 16 kHz samples [S] (the continuation of what was pushed)."""
        self._buf = np.concatenate([self._buf, np.asarray(wav, np.float32).reshape(-1)])
        n = len(self._buf) // FRAME_SAMPLES
        if n == 0:
            return
        for level in frame_levels(self._buf[: n * FRAME_SAMPLES]):
            self._add(float(level))
        self._buf = self._buf[n * FRAME_SAMPLES:]

    def finish(self) -> None:
        """End of the audio: every frame pushed becomes final (an incomplete last frame is dropped)."""
        self.ended = True

    def _add(self, level: float) -> None:
        self._hist.append(level)
        h = np.asarray(self._hist)
        floor, loud = np.quantile(h, self.floor_q), np.quantile(h, self.loud_q)
        thr = floor + max(self.min_rise_db, self.rise * (loud - floor))
        if self._spoken:
            thr = min(thr, loud - self.min_drop_db)
        quiet = level < thr + (self.hysteresis_db if self._was_quiet else 0.0)
        self._spoken |= not quiet
        if quiet and not self._was_quiet:
            self._run = self.pushed
        self._quiet.append(bool(quiet))
        self._start.append(self._run if quiet else -1)
        self._was_quiet = quiet
        self.pushed += 1

    def ready(self) -> int:
        """Frames [0, ready()) are final."""
        return self.pushed if self.ended else max(0, self.pushed - self.lookahead)

    def take(self, upto: int) -> np.ndarray:
        """Closing weights [upto - taken] of frames [taken, upto) (each must be final); advances `taken`."""
        if upto > self.ready():
            raise ValueError(f"PauseTracker.take({upto}): only frames < {self.ready()} are final")
        out = np.zeros(max(0, upto - self.taken), np.float32)
        for i, t in enumerate(range(self.taken, upto)):
            out[i] = self._weight(t)
        drop = max(0, upto - self.taken)
        self._quiet, self._start = self._quiet[drop:], self._start[drop:]
        self.taken = max(self.taken, upto)
        return out

    def _weight(self, t: int) -> float:
        j = t - self.taken
        if not self._quiet[j]:
            return 0.0
        horizon = min(self.pushed, t + self.lookahead + 1)  # frames < horizon are visible from t
        nxt = next((s for s in range(t + 1, horizon) if not self._quiet[s - self.taken]), None)
        start = self._start[j]
        # with a short look-ahead a run is known to be long enough only min_pause - 1 - lookahead frames in
        first = start + max(0, self.min_pause - 1 - self.lookahead)
        visible_len = (nxt if nxt is not None else horizon) - start
        if visible_len < self.min_pause or t < first:
            return 0.0
        d = t - first + 1 if nxt is None else min(t - first + 1, nxt - t - self.lead)
        return float(smoothstep(d / self.ramp))


def pause_weights(wav: np.ndarray, lookahead: int = 4, **kw) -> np.ndarray:
    """Closing weights [S // 640] of 16 kHz audio [S] from a `PauseTracker` (same arguments) fed all at once."""
    tr = PauseTracker(lookahead, **kw)
    tr.push(wav)
    tr.finish()
    return tr.take(tr.pushed)


def close_mouth_in_pauses(off: np.ndarray, weights: np.ndarray, closed_mouth: np.ndarray,
                          strength: float = 1.0) -> np.ndarray:
    """Ease `MOUTH_POINTS` of offsets [T,68,3] toward closed_mouth [len(MOUTH_POINTS),3] by strength x weights [T]."""
    out = np.array(off, np.float32, copy=True)
    w = (float(strength) * np.asarray(weights, np.float32))[:, None, None]
    out[:, MOUTH_POINTS] = (1 - w) * out[:, MOUTH_POINTS] + w * np.asarray(closed_mouth, np.float32)[None]
    return out


def postprocess(offsets: np.ndarray, person: PersonMotion, *, lle_blend: float = 0.2, lle_k: int = 10,
                lle_ridge: float = 1e-3, smooth_sigma: float = 1.0, lip_smooth_sigma: float = 0.5,
                clamp: bool = True, clamp_margin: float = 0.0, blink: str = "none", blink_period: int = 100,
                blink_rate: float = 15.0, seed: int = 0, fps: int = 25, audio: np.ndarray | None = None,
                pause_close: float = 1.0, lookahead: int = 4) -> np.ndarray:
    """Predicted offsets [T,68,3] -> post-processed offsets [T,68,3] (head units).

    1. LLE: out = lle_blend * LLE(pred onto person.database, K=lle_k, ridge) + (1 - lle_blend) * pred;
    2. temporal smoothing (smooth_sigma frames, lips lip_smooth_sigma); 3. clamp to the person's [q03, q97]
    (+- clamp_margin x range); 4. with the driving audio (16 kHz [S], frame t = samples [640t, 640t+640)): the
    mouth eased toward the person's closed mouth in pauses by pause_close (0: off, 1: fully closed) x
    `pause_weights(audio, lookahead)`; 5. blinks (mode blink: none | period (every blink_period frames) | rate
    (blink_rate per minute, seeded)) toward the person's closed-eye pose.
    """
    off = np.asarray(offsets, np.float32)
    T = len(off)
    if lle_blend > 0:
        flat = off.reshape(T, -1)
        proj = lle_project(flat, person.database.reshape(len(person.database), -1), lle_k, lle_ridge)
        off = (lle_blend * proj + (1 - lle_blend) * flat).reshape(off.shape).astype(np.float32)
    off = smooth_motion(off, smooth_sigma, lip_smooth_sigma)
    if clamp:
        off = clamp_to_quantiles(off, person.stats, clamp_margin)
    if audio is not None and pause_close > 0:
        w = pause_weights(audio, lookahead)[:T]
        w = np.pad(w, (0, T - len(w)))
        off = close_mouth_in_pauses(off, w, person.closed_mouth(), pause_close)
    if blink != "none":
        closure = blink_schedule(T, blink, period=blink_period, rate=blink_rate, fps=fps, seed=seed)
        off = apply_blinks(off, closure, person.closed_eyes)
    return off.astype(np.float32)
