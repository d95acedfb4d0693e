"""Audio conditions of Audio2Motion: per-kind feature preparation and coarse pitch. Pure functions.

The raw features come from `talkfield.audio` (log_mel / whisper_features / hubert_features, 50 Hz, frame t owns
rows 2t and 2t+1). Here they are only made comparable across recordings:

- mel, mode 'band' (the default of configs/model/audio2motion.yaml): per band, the recording's noise floor (5th
  percentile) maps to 0 and its loud level (95th percentile) to 1, so gain, a steady background and the
  distance between speech and pauses are the same for every recording (a noisy 8 s video, a clean news read);
- mel, mode 'level': gain normalisation only (subtract the recording's loud-frame level, floor the noise at
  -`MEL_FLOOR` decades); kept for checkpoints trained with it (the network stores its mode).
- whisper / hubert: unchanged (the network standardises every kind per channel with training statistics).
- pitch: semitones relative to the speaker's median voiced f0, quantised to `PITCH_BINS` bins (bin 0 =
  unvoiced), so a high and a low voice give the same contour (speaker-normalised "coarse pitch").

Every function works on a whole recording or on a chunk; for streaming pass `ref` (the running level / median f0).
"""

from __future__ import annotations

import numpy as np
import torch

FEATURE_DIMS = {"mel": 80, "whisper": 384, "hubert": 1024}
"""Width of each audio feature kind (the `audio_features=` config group)."""
MEL_FLOOR = 5.0
"""Noise floor of gain-normalised mel, in decades (log10 power) below the loud-frame level (50 dB)."""
PITCH_RANGE_ST = 18
"""Coarse pitch covers -18..+18 semitones around the speaker's median."""
PITCH_BINS = 2 * PITCH_RANGE_ST + 2
"""Bin 0 = unvoiced, bins 1..37 = semitone offsets -18..+18."""


def mel_level(mel: torch.Tensor | np.ndarray, q: float = 0.95) -> float:
    """Loud-frame level of a log-mel recording [A,80]: the q-quantile of the per-row mean (log10 power)."""
    m = torch.as_tensor(np.asarray(mel) if not isinstance(mel, torch.Tensor) else mel).float()
    return float(torch.quantile(m.mean(-1), q))


def mel_band_stats(mel: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-band noise floor and loud level of a log-mel recording [A,80]: [2,80] (5th and 95th percentiles)."""
    m = np.asarray(mel.detach().cpu() if isinstance(mel, torch.Tensor) else mel, np.float64)
    return np.quantile(m, [0.05, 0.95], axis=0).astype(np.float32)


BAND_MIN_SPAN = 0.5
"""Smallest floor-to-loud span of a band (decades) in mode 'band' (bands without speech energy stay near 0)."""


def prepare_features(features: torch.Tensor, kind: str, ref=None, mode: str = "level") -> torch.Tensor:
    """Make raw 50 Hz features of one kind comparable across recordings. features: [A,C] or [B,A,C] float32.

    mel, mode 'level': x - level (level = `mel_level` of each recording unless `ref`, a float, is given), floored at
    -MEL_FLOOR. mel, mode 'band': (x - floor_b) / max(loud_b - floor_b, BAND_MIN_SPAN) per band, clipped to
    [-0.5, 1.5]; floor/loud from `ref` ([2,C], `mel_band_stats` of what was heard) or measured on `features`
    (a scalar `ref` is ignored in this mode). whisper / hubert: returned as float32.
    """
    if kind not in FEATURE_DIMS:
        raise ValueError(f"audio feature kind {kind!r}: one of {sorted(FEATURE_DIMS)}")
    x = features.float()
    if x.shape[-1] != FEATURE_DIMS[kind]:
        raise ValueError(f"{kind} features must have {FEATURE_DIMS[kind]} channels, got shape {tuple(x.shape)}")
    if kind != "mel":
        return x
    if mode == "band":
        if ref is not None and np.ndim(ref) == 2:
            st = torch.as_tensor(np.asarray(ref), dtype=x.dtype)
            lo, hi = st[0], st[1]
        else:
            q = torch.quantile(x, torch.tensor([0.05, 0.95], dtype=x.dtype), dim=-2)  # [2,...,C]
            lo, hi = q[0].unsqueeze(-2), q[1].unsqueeze(-2)
        return ((x - lo) / (hi - lo).clamp_min(BAND_MIN_SPAN)).clamp(-0.5, 1.5)
    if mode != "level":
        raise ValueError(f"mel normalisation mode {mode!r}: 'band' or 'level'")
    if ref is None:
        level = torch.quantile(x.mean(-1), 0.95, dim=-1, keepdim=True)[..., None]  # [...,1,1]
    else:
        level = torch.as_tensor(ref, dtype=x.dtype)
    return (x - level).clamp_min(-MEL_FLOOR)


def median_f0(f0: torch.Tensor | np.ndarray) -> float:
    """Median voiced pitch (Hz) of a recording [A]; 0 if nothing is voiced."""
    f = torch.as_tensor(np.asarray(f0) if not isinstance(f0, torch.Tensor) else f0).float()
    v = f[f > 0]
    return float(v.median()) if v.numel() else 0.0


def coarse_pitch(f0: torch.Tensor, ref: float | torch.Tensor | None = None) -> torch.Tensor:
    """Speaker-normalised coarse pitch: f0 [...,A] Hz -> long [...,A] in [0, PITCH_BINS).

    Bin 0 is unvoiced (f0 <= 0); voiced rows map round(12 log2(f0 / ref)) clipped to +-PITCH_RANGE_ST to
    1..PITCH_BINS-1. ref: the speaker's median voiced f0 (default: per recording along the last axis).
    """
    f = f0.float()
    voiced = f > 0
    if ref is None:
        masked = torch.where(voiced, f, torch.full_like(f, float("nan")))
        ref_t = torch.nanmedian(masked, dim=-1, keepdim=True).values
        ref_t = torch.nan_to_num(ref_t, nan=200.0)
    else:
        ref_t = torch.as_tensor(ref, dtype=f.dtype)
        if ref_t.dim() > 0:
            ref_t = ref_t[..., None]
        ref_t = torch.where(ref_t > 0, ref_t, torch.full_like(ref_t, 200.0))
    st = 12.0 * torch.log2(f.clamp_min(1.0) / ref_t)
    b = st.round().clamp(-PITCH_RANGE_ST, PITCH_RANGE_ST).long() + PITCH_RANGE_ST + 1
    return torch.where(voiced, b, torch.zeros_like(b))


def extract_conditions(wav: np.ndarray, kind: str = "mel",
                       hubert_path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Audio conditions of a speech track exactly as preprocessing stores them (the extractors of
    `talkfield.audio`): wav [S] float32 16 kHz -> (features [2T,C], f0 [2T]) with T = S // 640 frames."""
    from talkfield.audio import speech_conditions

    T = len(wav) // 640
    if T < 1:
        raise ValueError(f"speech too short: {len(wav)} samples, at least 640 (one 25 fps frame) needed")
    if kind not in FEATURE_DIMS:
        raise ValueError(f"audio feature kind {kind!r}: one of {sorted(FEATURE_DIMS)}")
    return speech_conditions(np.asarray(wav[: T * 640], np.float32), kind, T, hubert_path)
