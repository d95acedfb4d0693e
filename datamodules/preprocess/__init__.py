"""Preprocessing: any talking-person video -> one binarized subject dataset (talkfield.dataset schema).

    from datamodules.preprocess import preprocess_video
    subject_dir = preprocess_video(Path("talk.mp4"), "alice", Path("data"))

One module per stage (decode, crop, landmarks, fit, segment, background, audio_features, debug) and
`pipeline.py` orchestrating them with caching and resume. Entry point: `python preprocess.py video=... subject.name=...`.
"""

from .common import DEFAULTS, PreprocessError
from .pipeline import STAGES, preprocess_video

__all__ = ["DEFAULTS", "PreprocessError", "STAGES", "preprocess_video"]
