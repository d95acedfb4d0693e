"""Audio2Motion: speech -> the person's facial motion (canonical 68-point offsets [T,68,3], head units).

Inference API (used by infer.py and the web app):

    from lightning_modules.audio2motion import load_audio2motion
    from networks.audio2motion import extract_conditions, predict_motion, postprocess
    model = load_audio2motion(ckpt, subject="katie", fingerprint=ds.fingerprint)      # -> Audio2Motion
    feats, f0 = extract_conditions(load_audio("speech.wav"), model.features)        # [2T,C], [2T]
    off = predict_motion(model, feats, f0, temperature=0.0, mouth_amp=1.0)          # [T,68,3]
    off = postprocess(off, model.person, lle_blend=0.2, blink="rate")                # [T,68,3]

A generic (corpus) model has no person: pass `stats=` (the target person's [4,204] motion statistics) to
`predict_motion` and a `PersonMotion` to `postprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from networks.audio2motion.features import (FEATURE_DIMS, coarse_pitch, extract_conditions, median_f0, mel_band_stats,
                                            mel_level, prepare_features)
from networks.audio2motion.postprocess import (PauseTracker, PersonMotion, blink_schedule, clamp_to_quantiles,
                                               close_mouth_in_pauses, lip_width68, lle_project, lle_weights,
                                               mouth_opening68, pause_weights, postprocess, smooth_motion)
from networks.audio2motion.syncnet import LipSyncExpert
from networks.audio2motion.vae import Audio2MotionVAE, denormalize_motion, normalize_motion, person_norm


EDGE_FRAMES = 16
"""Frames of held first/last frame added at each end of a recording before prediction (a multiple of 4)."""


@dataclass
class Audio2Motion:
    """A loaded model: network (eval mode), features (the audio feature kind it was trained on), person (the
    subject's PersonMotion; None for a generic corpus model), meta (checkpoint metadata), mouth_amp_default."""

    network: Audio2MotionVAE
    features: str
    person: PersonMotion | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def generic(self) -> bool:
        return self.person is None


def _pad_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    if len(x) >= n:
        return x[:n]
    return torch.cat([x, x[-1:].expand(n - len(x), *x.shape[1:])])


@torch.no_grad()
def predict_motion(model: Audio2Motion, features: np.ndarray | torch.Tensor, f0: np.ndarray | torch.Tensor, *,
                   temperature: float = 0.0, mouth_amp: float = 1.0, blink: np.ndarray | None = None,
                   stats: np.ndarray | None = None, seed: int = 0, chunk_frames: int | None = None,
                   mel_ref: float | None = None, f0_ref: float | None = None) -> np.ndarray:
    """Speech conditions -> motion offsets [T,68,3] float32 (head units, before post-processing).

    features: [2T,C] raw 50 Hz features of `model.features` (as stored by preprocessing / `extract_conditions`);
    f0: [2T] Hz; temperature: scale of the prior noise (0 = the prior's mode, deterministic); mouth_amp: 1 = the
    person's usual mouth amplitude (>1 wider, <1 smaller); blink: [T] 0/1 blink flags (None: eyes open);
    stats: the person's [4,204] statistics (required for a generic model, else the model's own person);
    The recording is extended by EDGE_FRAMES held first/last frames at each end. chunk_frames: run in chunks of
    this many frames with `network.receptive_field()` frames of context each
    side (same output as one pass at temperature 0; for streaming); mel_ref: for a network with mel_norm 'band'
    the [2,80] `mel_band_stats` of what was heard (a scalar is ignored there), for 'level' the loud-frame level
    (`mel_level`); f0_ref: the speaker's median f0. Default: measured on the given features; when streaming,
    pass running values.
    """
    net = model.network
    kind = model.features
    if stats is None:
        if model.person is None:
            raise ValueError("this Audio2Motion model is generic (trained on a corpus): pass stats=<the person's "
                             "[4,204] motion_stats>")
        stats = model.person.stats
    dev = next(net.parameters()).device
    feats = torch.as_tensor(np.array(features, np.float32))
    f0t = torch.as_tensor(np.array(f0, np.float32))
    if feats.ndim != 2 or feats.shape[1] != FEATURE_DIMS[kind]:
        raise ValueError(f"features must be [2T,{FEATURE_DIMS[kind]}] ({kind}); got {tuple(feats.shape)}")
    T = len(feats) // 2
    if T < 1 or len(f0t) < 2 * T:
        raise ValueError(f"need 2T feature rows and 2T f0 rows; got {len(feats)} and {len(f0t)}")
    feats = prepare_features(feats[: 2 * T], kind, mel_ref, getattr(net, "mel_norm", "level"))
    f0t = f0t[: 2 * T]
    f0_ref = median_f0(f0t) if f0_ref is None else f0_ref
    flags = torch.zeros(T, dtype=torch.long) if blink is None else torch.as_tensor(np.asarray(blink)).long()[:T]
    s = net.stride
    # the recording is extended by EDGE_FRAMES copies of its first and last frame (zero padding would read as
    # average speech to the network; a held first/last frame reads as what it is, e.g. the background before speech)
    e = EDGE_FRAMES
    feats = torch.cat([feats[:2].repeat(e, 1), feats, feats[-2:].repeat(e, 1)])
    f0t = torch.cat([f0t[:2].repeat(e), f0t, f0t[-2:].repeat(e)])
    flags = torch.cat([flags[:1].repeat(e), flags, flags[-1:].repeat(e)])
    T0, T = T, T + 2 * e
    g = torch.Generator().manual_seed(int(seed))
    chunk = T if not chunk_frames else max(s, int(chunk_frames) // s * s)
    ctx = 0 if chunk >= T else -(-net.receptive_field() // s) * s
    out = []
    for a in range(0, T, chunk):
        b = min(T, a + chunk)
        lo, hi = max(0, a - ctx), min(T, b + ctx)
        n = -(-(hi - lo) // s) * s
        fe = _pad_rows(feats[2 * lo: 2 * hi], 2 * n)
        fz = _pad_rows(f0t[2 * lo: 2 * hi], 2 * n)
        bl = _pad_rows(flags[lo:hi], n)
        z = net.infer(fe[None].to(dev), fz[None].to(dev), bl[None].to(dev), float(mouth_amp), temperature, g,
                      f0_ref=f0_ref)[0].cpu()
        out.append(z[a - lo: b - lo])
    z = torch.cat(out)[e: e + T0]
    return denormalize_motion(z, stats).numpy().astype(np.float32)


__all__ = [
    "Audio2Motion", "Audio2MotionVAE", "LipSyncExpert", "PersonMotion", "predict_motion", "postprocess",
    "extract_conditions", "prepare_features", "mel_band_stats", "coarse_pitch", "mel_level", "median_f0",
    "lle_project", "lle_weights", "clamp_to_quantiles", "blink_schedule", "smooth_motion", "mouth_opening68",
    "lip_width68", "normalize_motion", "denormalize_motion", "person_norm", "FEATURE_DIMS",
]
