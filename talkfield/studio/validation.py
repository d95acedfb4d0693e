"""Checks on what a Studio user sends: text, language, the uploaded audio, the knobs.

Every failure raises RequestError with a message meant for the page (it names the problem and the fix, and never
shows server paths beyond the file's own name).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from talkfield.studio.settings import POSE_MODES, KnobDefaults, Limits

LANGUAGES = ("en", "zh")
# CJK unified ideographs (+ extension A, compatibility ideographs): Mandarin text for TTS purposes
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class RequestError(ValueError):
    """A request the Studio refuses; str(e) is shown to the user as is."""


# ---------------------------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------------------------
def clean_text(text: str | None, limits: Limits) -> str:
    """Strip the text and check it is non-empty, printable and at most limits.max_text_chars characters."""
    text = (text or "").strip()
    if not text:
        raise RequestError("The text is empty: type what the person should say, or switch to an audio file.")
    # control characters (other than line breaks and tabs) have no business in speech text
    text = "".join(ch for ch in text if ch in "\n\t" or ch.isprintable())
    if not re.search(r"\w", text):
        raise RequestError("The text has no words to speak (only punctuation or symbols).")
    if len(text) > limits.max_text_chars:
        raise RequestError(f"The text is {len(text)} characters long; the limit is {limits.max_text_chars}. "
                           "Shorten it or split it into several videos.")
    return text


def detect_language(text: str) -> str:
    """'zh' when the text holds any CJK ideograph (Mandarin, voice cmn), else 'en'."""
    return "zh" if _CJK.search(text) else "en"


def resolve_language(text: str, choice: str | None) -> str:
    """The language to speak `text` in: choice 'auto' (or None/'') detects it, else 'en' or 'zh'."""
    choice = (choice or "auto").strip().lower()
    if choice == "auto":
        return detect_language(text)
    if choice not in LANGUAGES:
        raise RequestError(f"Unknown language {choice!r}; choose auto, en or zh.")
    return choice


# ---------------------------------------------------------------------------------------------------------------
# audio
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioInfo:
    path: Path
    seconds: float


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def check_upload(path: str | Path | None, limits: Limits, roots: list[Path] | None = None) -> Path:
    """Cheap checks on an uploaded file before decoding: it exists, lies inside `roots` (where uploads land),
    has an audio suffix and is not too large."""
    if path is None or str(path).strip() == "":
        raise RequestError("No audio file: upload or record speech, or switch to text.")
    p = Path(path).resolve()
    if roots and not _inside(p, [Path(r).resolve() for r in roots]):
        raise RequestError(f"{p.name}: not an uploaded file; upload it through the page.")
    if not p.is_file():
        raise RequestError(f"{p.name}: the upload is gone (expired?); upload it again.")
    if p.suffix.lower() not in limits.audio_suffixes:
        raise RequestError(f"{p.name}: unsupported file type {p.suffix or '(none)'!r}; "
                           f"use one of {', '.join(s.lstrip('.') for s in limits.audio_suffixes)}.")
    mb = p.stat().st_size / 1e6
    if mb > limits.max_upload_mb:
        raise RequestError(f"{p.name}: {mb:.1f} MB is over the {limits.max_upload_mb:g} MB upload limit.")
    return p


def probe_audio(path: Path, limits: Limits, what: str | None = None) -> AudioInfo:
    """Decode speech with PyAV (talkfield.audio) and check its length. `what` names it in messages.

    The container's declared duration is checked first so a long file is refused without decoding it all.
    """
    import av

    from talkfield.audio import SR, AudioError, load_audio

    name = what or Path(path).name
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise RequestError(f"{name}: the file has no audio track.")
            declared = c.duration / 1e6 if c.duration else None
    except RequestError:
        raise
    except Exception as e:  # PyAV raises many InvalidDataError flavours for garbage
        raise RequestError(f"{name}: cannot be read as audio (corrupt or not an audio file: "
                           f"{type(e).__name__}). Use wav, mp3, m4a, flac or ogg.") from e
    if declared is not None and declared > limits.max_audio_seconds + 1.0:
        raise RequestError(_too_long(name, declared, limits))
    try:
        wav = load_audio(path)
    except AudioError as e:
        raise RequestError(str(e).replace(str(path), name)) from e
    seconds = len(wav) / SR
    if seconds > limits.max_audio_seconds:
        raise RequestError(_too_long(name, seconds, limits))
    if seconds < limits.min_audio_seconds:
        raise RequestError(f"{name}: {seconds * 1000:.0f} ms of audio is shorter than one video frame "
                           f"({limits.min_audio_seconds * 1000:.0f} ms).")
    return AudioInfo(Path(path), seconds)


def _too_long(name: str, seconds: float, limits: Limits) -> str:
    return (f"{name}: {seconds:.1f} s of audio is over the {limits.max_audio_seconds:g} s limit; "
            "trim it or split it into several videos.")


# ---------------------------------------------------------------------------------------------------------------
# knobs
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KnobValues:
    """What the user set; turned into talkfield.inference.Knobs by the service."""

    mouth_amp: float
    blink: bool
    pose: str
    paste_back: bool


def check_knobs(defaults: KnobDefaults, mouth_amp=None, blink=None, pose=None, paste_back=None) -> KnobValues:
    """Fill unset knobs from the defaults and range-check the rest."""
    amp = defaults.mouth_amp if mouth_amp is None else mouth_amp
    try:
        amp = float(amp)
    except (TypeError, ValueError):
        raise RequestError(f"Mouth amplitude must be a number, got {mouth_amp!r}.") from None
    lo, hi = defaults.mouth_amp_range
    if not math.isfinite(amp) or not lo <= amp <= hi:
        raise RequestError(f"Mouth amplitude {amp:g} is outside {lo:g}..{hi:g}.")
    pose = defaults.pose if pose in (None, "") else str(pose)
    if pose not in POSE_MODES:
        raise RequestError(f"Unknown head pose mode {pose!r}; one of {', '.join(POSE_MODES)}.")
    return KnobValues(mouth_amp=amp, blink=defaults.blink if blink is None else bool(blink), pose=pose,
                      paste_back=defaults.paste_back if paste_back is None else bool(paste_back))
