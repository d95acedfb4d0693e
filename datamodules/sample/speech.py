"""Speech-like audio made by the framework itself: a phone timeline and a source-filter synthesiser.

- `phone_timeline` draws phrases of (C)V(C) syllables from a small inventory (vowels, plosives, fricatives,
  nasals, approximants) separated by pauses, deterministically from a seed.
- `pitch_contour` gives F0 per control step: a declining line per phrase, accents on stressed vowels, slow
  drift and a little jitter.
- `synthesize` renders it: a glottal pulse train (phase accumulation of F0, spectral tilt) through a cascade of
  time-varying formant resonators for voiced sounds; band-limited noise for fricatives, plosive bursts and
  aspiration; bilabial closures (p, b, m) are silent or murmured. Loudness depends on the phone class and a
  random stress per syllable, not on the lip shape, so frame energy says little about lip width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

# name: (class, voiced, (F1, F2, F3) targets in Hz, relative amplitude)
PHONES: dict[str, tuple[str, bool, tuple[float, float, float], float]] = {
    "a": ("vowel", True, (780, 1250, 2600), 1.0),
    "e": ("vowel", True, (520, 1900, 2650), 0.95),
    "i": ("vowel", True, (300, 2300, 3000), 0.9),
    "o": ("vowel", True, (540, 900, 2500), 0.95),
    "u": ("vowel", True, (330, 850, 2350), 0.9),
    "p": ("stop", False, (400, 1000, 2300), 0.0),
    "b": ("stop", True, (350, 1000, 2300), 0.0),
    "t": ("stop", False, (400, 1700, 2700), 0.0),
    "d": ("stop", True, (350, 1700, 2700), 0.0),
    "k": ("stop", False, (400, 1900, 2500), 0.0),
    "g": ("stop", True, (350, 1900, 2500), 0.0),
    "m": ("nasal", True, (280, 1100, 2400), 0.35),
    "n": ("nasal", True, (280, 1600, 2600), 0.35),
    "s": ("fricative", False, (400, 1700, 2700), 0.0),
    "S": ("fricative", False, (400, 1800, 2500), 0.0),  # "sh"
    "f": ("fricative", False, (400, 1100, 2400), 0.0),
    "v": ("fricative", True, (350, 1100, 2400), 0.25),
    "l": ("approximant", True, (380, 1100, 2700), 0.5),
    "w": ("approximant", True, (320, 750, 2300), 0.5),
    "j": ("approximant", True, (290, 2200, 2900), 0.5),
    "sil": ("pause", False, (500, 1500, 2500), 0.0),
}
"""The phone inventory. 'sil' is a pause."""

VOWELS = ["a", "e", "i", "o", "u"]
VOWEL_P = [0.24, 0.19, 0.19, 0.19, 0.19]
ONSETS = ["p", "b", "m", "t", "d", "k", "g", "n", "s", "S", "f", "v", "l", "w", "j"]
ONSET_P = np.array([8, 7, 8, 8, 6, 6, 4, 6, 7, 4, 5, 4, 5, 4, 3], float)
CODAS = ["m", "n", "s", "t", "k", "p", "l", "f"]
CODA_P = np.array([5, 6, 5, 5, 3, 3, 3, 2], float)

NOISE_BANDS = {"s": (4000, 7500), "S": (1800, 5000), "f": (900, 7000), "v": (900, 7000),
               "p": (400, 2500), "b": (400, 2500), "t": (2500, 7000), "d": (2500, 7000),
               "k": (1200, 3500), "g": (1200, 3500), "asp": (500, 6000)}
"""Noise bands (Hz) for frication, plosive bursts and aspiration."""


@dataclass
class Phone:
    """One segment of the timeline: label, start and end (s), stress (vowels, 0..1), F0 accent flag."""

    label: str
    start: float
    end: float
    stress: float = 0.0
    accent: bool = False

    def to_dict(self) -> dict:
        return {"phone": self.label, "start": round(self.start, 6), "end": round(self.end, 6),
                "class": PHONES[self.label][0], "stress": round(self.stress, 4)}


def phone_timeline(rng: np.random.Generator, duration: float) -> list[Phone]:
    """Phrases of 2-7 words (1-3 syllables each), pauses of 0.25-0.7 s between them, covering [0, duration]."""
    phones: list[Phone] = []
    t = 0.0

    def push(label, dur, **kw):
        nonlocal t
        phones.append(Phone(label, t, t + dur, **kw))
        t += dur

    push("sil", float(rng.uniform(0.2, 0.45)))
    onset_p = ONSET_P / ONSET_P.sum()
    coda_p = CODA_P / CODA_P.sum()
    while t < duration:
        n_words = int(rng.integers(2, 8))
        for w in range(n_words):
            n_syl = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
            stressed = int(rng.integers(0, n_syl))
            for s in range(n_syl):
                if rng.random() < 0.85:
                    c = str(rng.choice(ONSETS, p=onset_p))
                    cls = PHONES[c][0]
                    dur = {"stop": rng.uniform(0.06, 0.1), "fricative": rng.uniform(0.08, 0.14),
                           "nasal": rng.uniform(0.06, 0.1), "approximant": rng.uniform(0.05, 0.08)}[cls]
                    push(c, float(dur))
                is_stressed = s == stressed
                stress = float(rng.uniform(0.75, 1.0) if is_stressed else rng.uniform(0.35, 0.75))
                v = str(rng.choice(VOWELS, p=VOWEL_P))
                vdur = rng.uniform(0.12, 0.2) if is_stressed else rng.uniform(0.07, 0.13)
                push(v, float(vdur), stress=stress, accent=is_stressed and rng.random() < 0.5)
                if rng.random() < 0.3:
                    c = str(rng.choice(CODAS, p=coda_p))
                    cls = PHONES[c][0]
                    dur = {"stop": rng.uniform(0.05, 0.09), "fricative": rng.uniform(0.07, 0.12),
                           "nasal": rng.uniform(0.05, 0.09), "approximant": rng.uniform(0.05, 0.08)}[cls]
                    push(c, float(dur))
            if w < n_words - 1 and rng.random() < 0.12:
                push("sil", float(rng.uniform(0.06, 0.15)))
        push("sil", float(rng.uniform(0.25, 0.7)))
    # close on a pause ending exactly at `duration`
    while phones and phones[-1].start >= duration - 0.15:
        phones.pop()
    if phones[-1].label == "sil":
        phones[-1].end = duration
    else:
        phones.append(Phone("sil", phones[-1].end, duration))
    return phones


def pitch_contour(rng: np.random.Generator, phones: list[Phone], times: np.ndarray) -> np.ndarray:
    """F0 in Hz at `times` [N] (s): per-phrase declination 215 -> 175 Hz, accents (+25-45 Hz), drift, jitter."""
    f0 = np.full(len(times), 195.0)
    # phrase boundaries: pauses of at least 0.2 s
    bounds = [0.0] + [p.start for p in phones if p.label == "sil" and p.end - p.start >= 0.2] + [times[-1] + 1]
    for a, b in zip(bounds[:-1], bounds[1:]):
        sel = (times >= a) & (times < b)
        if not sel.any():
            continue
        start = rng.uniform(205, 230)
        end = rng.uniform(165, 185)
        x = (times[sel] - a) / max(b - a, 1e-3)
        f0[sel] = start + (end - start) * x
    for p in phones:
        if p.accent:
            c = 0.5 * (p.start + p.end)
            f0 += rng.uniform(25, 45) * np.exp(-0.5 * ((times - c) / 0.07) ** 2)
    drift = np.zeros(len(times))
    for _ in range(4):
        drift += rng.uniform(2, 5) * np.sin(2 * np.pi * rng.uniform(0.2, 1.5) * times + rng.uniform(0, 2 * np.pi))
    return f0 + drift


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    if n <= 1:
        return x
    k = np.hanning(n + 2)[1:-1]
    k /= k.sum()
    pad = np.pad(x, [(n, n)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    if x.ndim == 1:
        return np.convolve(pad, k, mode="same")[n:-n]
    return np.stack([np.convolve(pad[:, i], k, mode="same") for i in range(x.shape[1])], 1)[n:-n]


DEFAULT_PITCH_HZ = 195.0
"""The default voice's pitch level (Hz): `pitch_contour` moves around it (phrases 215 -> 175 Hz, accents above)."""


def synthesize(phones: list[Phone], duration: float, sample_rate: int, rng: np.random.Generator,
               return_tracks: bool = False, pitch_hz: float = DEFAULT_PITCH_HZ):
    """Render the timeline to mono float32 audio [round(duration * sample_rate)] in [-1, 1].

    pitch_hz: the voice's pitch level; the whole contour is scaled by pitch_hz / DEFAULT_PITCH_HZ (intonation keeps
    its shape in semitones), the rest of the voice (formants, noise) is unchanged.

    With `return_tracks`, also returns {"t": control times [C] s, "f0": Hz [C], "voicing": amplitude [C]}.
    """
    sr = int(sample_rate)
    n = int(round(duration * sr))
    hop = max(1, sr // 1000)  # ~1 ms control rate
    nc = n // hop + 2
    tc = np.arange(nc) * hop / sr

    formants = np.zeros((nc, 3))
    av = np.zeros(nc)  # voicing amplitude
    noise_amp = {k: np.zeros(nc) for k in NOISE_BANDS}
    for p in phones:
        i0, i1 = int(p.start * sr / hop), min(nc, int(np.ceil(p.end * sr / hop)))
        cls, voiced, fmt, amp = PHONES[p.label]
        formants[i0:i1] = fmt
        if cls == "vowel":
            av[i0:i1] = amp * (0.45 + 0.55 * p.stress)
        elif cls in ("nasal", "approximant"):
            av[i0:i1] = amp
        elif cls == "fricative":
            noise_amp[p.label][i0:i1] = {"s": 0.22, "S": 0.2, "f": 0.035, "v": 0.03}[p.label]
            if voiced:
                av[i0:i1] = amp
        elif cls == "stop":
            L = i1 - i0
            burst = i0 + int(0.7 * L)
            if voiced:
                av[i0:burst] = 0.06  # voice bar during the closure
                av[burst:i1] = 0.3
            b1 = min(i1, burst + max(1, int(0.012 * sr / hop)))
            noise_amp[p.label][burst:b1] = {"p": 0.25, "b": 0.2, "t": 0.3, "d": 0.25, "k": 0.28, "g": 0.22}[p.label]
            if not voiced:
                noise_amp["asp"][b1:i1] = 0.06
        # "sil": nothing
    formants = _smooth(formants, max(1, int(0.035 * sr / hop)))
    av = _smooth(av, max(1, int(0.012 * sr / hop)))
    for k in noise_amp:
        noise_amp[k] = _smooth(noise_amp[k], max(1, int(0.004 * sr / hop)))

    f0 = pitch_contour(rng, phones, tc) * (float(pitch_hz) / DEFAULT_PITCH_HZ)
    t = np.arange(n) / sr
    f0_s = np.interp(t, tc, f0) * (1 + 0.004 * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1)))
    phase = np.cumsum(f0_s / sr)
    pulses = np.zeros(n)
    wraps = np.nonzero(np.diff(np.floor(phase)) > 0)[0] + 1
    frac = (phase[wraps] - np.floor(phase[wraps])) * sr / np.maximum(f0_s[wraps], 1)  # samples past the wrap
    pos = wraps - frac
    i = np.floor(pos).astype(int)
    w = pos - i
    ok = (i >= 0) & (i + 1 < n)
    np.add.at(pulses, i[ok], 1 - w[ok])
    np.add.at(pulses, i[ok] + 1, w[ok])
    shimmer = 1 + 0.05 * rng.standard_normal(len(pulses))
    src = lfilter([1.0], [1, -1.9, 0.9025], pulses * shimmer[: len(pulses)])  # glottal pulse shape (-12 dB/oct)
    src = src / (np.abs(src).max() + 1e-9)
    src = src * np.interp(t, tc, av)
    src = src + 0.01 * rng.standard_normal(n) * np.interp(t, tc, av)  # breathiness

    # cascade formant resonators, coefficients per 5-ms block
    bw = np.array([90.0, 110.0, 160.0])
    y = src
    block = 5 * hop
    nb = int(np.ceil(n / block))
    for k in range(3):
        fk = np.interp(np.arange(nb) * block / sr, tc, formants[:, k])
        r = np.exp(-np.pi * bw[k] / sr)
        a1 = -2 * r * np.cos(2 * np.pi * fk / sr)
        a2 = r * r
        gain = 1 + a1 + a2
        out = np.empty(n)
        zi = np.zeros(2)
        for b in range(nb):
            s0, s1 = b * block, min(n, (b + 1) * block)
            out[s0:s1], zi = lfilter([gain[b]], [1, a1[b], a2], y[s0:s1], zi=zi)
        y = out
    # fixed higher formants and lip radiation
    for fk, bk in ((3500.0, 250.0), (4500.0, 300.0)):
        if fk < sr / 2 - 200:
            r = np.exp(-np.pi * bk / sr)
            a1, a2 = -2 * r * np.cos(2 * np.pi * fk / sr), r * r
            y = y + 0.3 * lfilter([1 + a1 + a2], [1, a1, a2], y)
    y = np.diff(y, prepend=0.0)
    y = y / (np.percentile(np.abs(y), 99.9) + 1e-9) * 0.5

    white = rng.standard_normal(n)
    for k, (lo, hi) in NOISE_BANDS.items():
        a = noise_amp[k]
        if not a.any():
            continue
        hi = min(hi, 0.45 * sr)
        sos = butter(4, [lo, hi], btype="band", fs=sr, output="sos")
        y = y + sosfilt(sos, white) * np.interp(t, tc, a) * 2.0
    y = y / max(np.abs(y).max(), 1e-9) * 0.9
    # a quiet room-noise floor (about -55 dBFS), so pauses are not digital silence
    floor = lfilter([1.0], [1, -0.95], rng.standard_normal(n))
    y = y + floor / (floor.std() + 1e-9) * 0.0018
    if return_tracks:
        return y.astype(np.float32), {"t": tc, "f0": f0, "voicing": av}
    return y.astype(np.float32)
