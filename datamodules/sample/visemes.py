"""Visemes: the mouth shapes that drive the sample's face, derived from the phone timeline (not from loudness).

Each phone maps to a viseme with targets for four articulators (`ARTICULATORS`): jaw opening (0..1 of
`face_model.JAW_MAX_DEG`), lip closure (1 = inner lips meet), lip spreading (-1..1) and rounding (0..1).
Coarticulation follows Cohen & Massaro's dominance model: every phone pulls each articulator towards its target
with a weight that decays exponentially away from the phone's centre; bilabials (p, b, m) dominate closure and
jaw so the lips really meet. The face shows the articulation `lead` seconds ahead of the sound (visual lead).
"""

from __future__ import annotations

import numpy as np

from .speech import Phone

ARTICULATORS = ("jaw", "close", "wide", "round")

VISEMES = ("sil", "PP", "FF", "DD", "nn", "kk", "SS", "CH", "aa", "E", "I", "O", "U")
"""Viseme names (a subset of the common 15-viseme set); per-frame labels index this tuple."""

PHONE_TO_VISEME = {"sil": "sil", "p": "PP", "b": "PP", "m": "PP", "f": "FF", "v": "FF", "t": "DD", "d": "DD",
                   "l": "DD", "n": "nn", "k": "kk", "g": "kk", "s": "SS", "S": "CH", "a": "aa", "e": "E",
                   "i": "I", "j": "I", "o": "O", "u": "U", "w": "U"}

# viseme: (jaw, close, wide, round) targets, and dominance (per articulator)
TARGETS = {
    "sil": ((0.00, 0.75, 0.00, 0.00), (1.0, 1.0, 1.0, 1.0)),
    "PP": ((0.00, 1.00, 0.00, 0.05), (6.0, 10.0, 0.3, 0.3)),
    "FF": ((0.08, 0.65, 0.10, 0.00), (3.0, 4.0, 0.4, 0.3)),
    "DD": ((0.25, 0.15, 0.20, 0.00), (0.6, 0.6, 0.4, 0.3)),
    "nn": ((0.20, 0.30, 0.10, 0.00), (0.6, 0.6, 0.4, 0.3)),
    "kk": ((0.35, 0.10, 0.10, 0.00), (0.5, 0.5, 0.3, 0.3)),
    "SS": ((0.08, 0.35, 0.45, 0.00), (1.5, 1.0, 0.8, 0.5)),
    "CH": ((0.15, 0.20, -0.30, 0.60), (1.0, 0.8, 1.0, 1.0)),
    "aa": ((1.00, 0.00, 0.25, 0.00), (1.0, 1.0, 1.0, 1.0)),
    "E": ((0.55, 0.00, 0.70, 0.00), (1.0, 1.0, 1.0, 1.0)),
    "I": ((0.20, 0.05, 1.00, 0.00), (1.0, 1.0, 1.0, 1.0)),
    "O": ((0.65, 0.00, -0.40, 0.75), (1.0, 1.0, 1.0, 1.0)),
    "U": ((0.22, 0.10, -0.60, 1.00), (1.0, 1.0, 1.0, 1.0)),
}


def viseme_of(label: str) -> str:
    return PHONE_TO_VISEME[label]


def articulation(phones: list[Phone], times: np.ndarray) -> np.ndarray:
    """Coarticulated articulator values [N, 4] (ARTICULATORS order) at `times` [N] (s, audio clock)."""
    num = np.zeros((len(times), 4))
    den = np.full((len(times), 4), 1e-9)
    for p in phones:
        target, dom = TARGETS[viseme_of(p.label)]
        target = np.array(target, float)
        if p.label in "aeiou":  # unstressed vowels open less
            target[0] *= 0.65 + 0.35 * p.stress
        c = 0.5 * (p.start + p.end)
        tau = 0.5 * (p.end - p.start) + 0.025
        lo, hi = np.searchsorted(times, [c - 8 * tau, c + 8 * tau])
        if hi <= lo:
            continue
        w = np.exp(-np.abs(times[lo:hi] - c) / tau)[:, None] * np.array(dom)[None]
        num[lo:hi] += w * target
        den[lo:hi] += w
    out = num / den
    # no phone near (never happens inside the timeline): rest shape
    empty = den[:, 0] < 1e-6
    out[empty] = TARGETS["sil"][0]
    return out


def frame_articulation(phones: list[Phone], n_frames: int, fps: float, lead: float) -> tuple[np.ndarray, np.ndarray]:
    """Per video frame: articulators [T, 4] and viseme index [T] (into VISEMES).

    Frame i is the picture at time i / fps; it shows the articulation of the audio at i / fps + lead.
    """
    step = 0.005
    end = max(p.end for p in phones)
    fine_t = np.arange(0.0, end + step, step)
    fine = articulation(phones, fine_t)
    tq = np.clip(np.arange(n_frames) / fps + lead, 0, end)
    art = np.stack([np.interp(tq, fine_t, fine[:, k]) for k in range(4)], 1)
    starts = np.array([p.start for p in phones])
    idx = np.clip(np.searchsorted(starts, tq, side="right") - 1, 0, len(phones) - 1)
    vis = np.array([VISEMES.index(viseme_of(phones[i].label)) for i in idx], dtype=np.int64)
    return art, vis
