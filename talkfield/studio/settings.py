"""Studio settings: plain dataclasses built from configs/studio.yaml (or directly, in tests)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

POSE_MODES = ("loop", "static")  # follow the template's head motion (ping-pong looped) | hold the first pose


@dataclass
class Limits:
    max_text_chars: int = 400          # longer text is refused before any synthesis
    max_audio_seconds: float = 120.0   # uploaded or synthesized speech longer than this is refused
    min_audio_seconds: float = 0.04    # one video frame at 25 fps
    max_upload_mb: float = 50.0
    audio_suffixes: tuple[str, ...] = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus",
                                       ".webm", ".mp4")


@dataclass
class KnobDefaults:
    mouth_amp: float = 1.0     # scales the predicted mouth motion; 1 = as predicted
    mouth_amp_range: tuple[float, float] = (0.0, 2.0)
    blink: bool = True         # synthesize blinks
    pose: str = "loop"         # one of POSE_MODES
    paste_back: bool = False   # composite the 512 crop back into the original full frame


@dataclass
class TTSSettings:
    backend: str = "espeak"    # espeak | piper | edge
    language: str = "auto"     # auto | en | zh (auto: any CJK ideograph -> zh)
    timeout_s: float = 120.0
    espeak: dict[str, Any] = field(default_factory=lambda: {
        "binary": "espeak-ng", "speed": 165, "voices": {"en": "en-us", "zh": "cmn"}})
    piper: dict[str, Any] = field(default_factory=lambda: {
        "command": None, "voices": {"en": None, "zh": None}, "length_scale": None})
    edge: dict[str, Any] = field(default_factory=lambda: {
        "voices": {"en": "en-US-AriaNeural", "zh": "zh-CN-XiaoxiaoNeural"}, "rate": "+0%", "proxy": None})


@dataclass
class StudioSettings:
    runs_dir: Path
    data_dir: Path
    studio_dir: Path                   # the only folder the web app serves files from (jobs, thumbnails, uploads)
    device: str = "auto"
    max_waiting: int = 4               # requests waiting behind the running one; more are refused ('queue full')
    keep_jobs: int = 20                # finished job folders kept on disk (oldest removed first)
    limits: Limits = field(default_factory=Limits)
    knobs: KnobDefaults = field(default_factory=KnobDefaults)
    tts: TTSSettings = field(default_factory=TTSSettings)

    def __post_init__(self):
        self.runs_dir = Path(self.runs_dir).resolve()
        self.data_dir = Path(self.data_dir).resolve()
        self.studio_dir = Path(self.studio_dir).resolve()

    @property
    def jobs_dir(self) -> Path:
        return self.studio_dir / "jobs"

    @property
    def thumbs_dir(self) -> Path:
        return self.studio_dir / "thumbnails"

    @property
    def uploads_dir(self) -> Path:
        """Gradio's upload/cache folder (GRADIO_TEMP_DIR) is put here, inside the studio folder."""
        return self.studio_dir / "gradio"

    @classmethod
    def from_cfg(cls, cfg: Any) -> "StudioSettings":
        """From the composed configs/studio.yaml (a DictConfig). Only the keys read here are resolved
        (paths.output_dir needs Hydra's runtime, which the app does not have)."""
        from omegaconf import OmegaConf

        def sub(klass, key):
            node = OmegaConf.select(cfg, key)
            raw = OmegaConf.to_container(node, resolve=True) if node is not None else {}
            names = {f.name for f in fields(klass)}
            unknown = set(raw) - names
            if unknown:
                raise ValueError(f"configs/studio.yaml: unknown keys under {key}: {sorted(unknown)} "
                                 f"(known: {sorted(names)})")
            return klass(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

        knobs = sub(KnobDefaults, "knobs")
        if knobs.pose not in POSE_MODES:
            raise ValueError(f"configs/studio.yaml: knobs.pose={knobs.pose!r}; one of {POSE_MODES}")
        tts = sub(TTSSettings, "tts")
        return cls(runs_dir=cfg.paths.runs_dir, data_dir=cfg.paths.data_dir, studio_dir=cfg.studio_dir,
                   device=cfg.device, max_waiting=int(cfg.queue.max_waiting), keep_jobs=int(cfg.queue.keep_jobs),
                   limits=sub(Limits, "limits"), knobs=knobs, tts=tts)
