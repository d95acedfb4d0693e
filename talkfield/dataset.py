"""The binarized subject dataset, format_version 1 (CONTRACTS.md section 2). Owns the schema, writing and reading.

A subject is a directory `data/<name>/` holding `manifest.json`, arrays as `.npy` (never pickled) and images:

    manifest.json          format_version, subject, fingerprint, fps, sample_rate, T, crop, split, arrays, images
    <array>.npy            see ARRAYS below (shapes use T frames, A = 2T audio-feature rows at 50 Hz)
    frames/000000.jpg      the cropped real frame (RGB, out_size^2)
    masks/000000.png       uint8 label map (LABELS)
    torso/000000.png       torso-only RGBA: head removed, the area behind the chin filled, alpha = torso+neck+fill
    bg.png                 clean background plate (RGB); bg_known.png: 255 where some frame showed the background

Audio features run at 50 Hz: frame t owns rows 2t and 2t+1; the end is padded by repeating the last row.
T = min(video frames at 25 fps, floor(audio samples / 640)). Train = first floor(T*10/11) frames, val = the rest.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
FEATURES_PER_FRAME = 2  # 50 Hz audio features

LABELS = {"background": 0, "hair": 1, "face": 2, "lips": 3, "eyes": 4, "neck": 5, "torso": 6}
"""Classes of the per-frame label map. The head is {hair, face, lips, eyes}."""
HEAD_LABELS = (1, 2, 3, 4)


@dataclass(frozen=True)
class ArraySpec:
    """Schema of one array: symbolic shape, dtype, unit, meaning, and whether every dataset has it."""

    shape: str
    dtype: str
    unit: str
    meaning: str
    required: bool = True


ARRAYS: dict[str, ArraySpec] = {
    "audio": ArraySpec("[S]", "float32", "amplitude [-1,1]", "16 kHz mono speech track, aligned to frame 0"),
    "mel": ArraySpec("[A,80]", "float32", "log10 power", "log-mel spectrogram, 50 Hz (n_fft 512, hop 320, 80-7600 Hz)"),
    "f0": ArraySpec("[A]", "float32", "Hz", "pitch at 50 Hz, 0 where unvoiced"),
    "whisper": ArraySpec("[A,384]", "float32", "-", "Whisper tiny.en encoder features, 50 Hz", required=False),
    "hubert": ArraySpec("[A,1024]", "float32", "-", "HuBERT-large last hidden state, 50 Hz", required=False),
    "lms2d": ArraySpec("[T,478,3]", "float32", "px, px, relative z", "tracked face-mesh landmarks in the crop"),
    "detected": ArraySpec("[T]", "bool", "-", "True where the detector found the face (else interpolated)"),
    "intrinsics": ArraySpec("[3,3]", "float32", "px", "camera K at the dataset resolution"),
    "c2w": ArraySpec("[T,4,4]", "float32", "head units", "camera-to-world in the head's canonical frame"),
    "mean_shape": ArraySpec("[478,3]", "float32", "head units", "the person's mean canonical 3D shape"),
    "lms3d": ArraySpec("[T,478,3]", "float32", "head units", "fitted canonical 3D landmarks (mean + expression)"),
    "offsets": ArraySpec("[T,68,3]", "float32", "head units", "motion: canonical 68-point offsets from the mean shape"),
    "motion_stats": ArraySpec("[4,204]", "float32", "head units", "rows: mean, std, q03, q97 of offsets (flattened)"),
    "exp_basis": ArraySpec("[K,478,3]", "float32", "head units", "per-person expression basis (PCA), K <= 32"),
    "exp_coeffs": ArraySpec("[T,K]", "float32", "-", "expression coefficients per frame"),
    "eye_ratio": ArraySpec("[T]", "float32", "ratio", "raw eyelid gap over eye width"),
    "eye_open": ArraySpec("[T]", "float32", "[0,1]", "eye openness mapped by the person's 3%/97% quantiles"),
    "face_rect": ArraySpec("[T,4]", "int32", "px", "face box x0, y0, x1, y1"),
    "lip_rect": ArraySpec("[T,4]", "int32", "px", "square lip box x0, y0, x1, y1"),
}


class DatasetError(RuntimeError):
    """A subject dataset is missing, incomplete or of another format version."""


def split_indices(T: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / val frame indices: the first floor(T*10/11) frames train, the rest are held out."""
    n_train = (T * 10) // 11
    return np.arange(n_train), np.arange(n_train, T)


def audio_rows(t: np.ndarray | int) -> np.ndarray:
    """The 50 Hz feature rows frame(s) t own: [..., 2] = (2t, 2t+1)."""
    t = np.asarray(t)
    return np.stack([2 * t, 2 * t + 1], axis=-1)


def atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    """Write an array to `path` via a temporary file and rename: nothing half-written survives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to `path` via a temporary file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def preprocess_hint(name: str) -> str:
    return f"run `python preprocess.py video=<path/to/video.mp4> subject.name={name}`"


@dataclass
class Manifest:
    """Contents of manifest.json. `arrays` maps name -> {file, shape, dtype, unit, meaning}."""

    subject: str
    fingerprint: str
    T: int
    size: int
    crop: dict[str, Any]
    format_version: int = FORMAT_VERSION
    fps: int = FPS
    sample_rate: int = SAMPLE_RATE
    split: dict[str, list[int]] = field(default_factory=dict)
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    eye_quantiles: list[float] = field(default_factory=list)
    audio_features: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class SubjectWriter:
    """Writes a subject dataset array by array; `finish` writes the manifest last (its presence = complete)."""

    def __init__(self, root: Path, subject: str):
        self.root = Path(root)
        self.subject = subject
        self.root.mkdir(parents=True, exist_ok=True)
        self.arrays: dict[str, dict[str, Any]] = {}

    def save(self, name: str, arr: np.ndarray) -> None:
        """Save one schema array (dtype checked against ARRAYS)."""
        if name not in ARRAYS:
            raise KeyError(f"array {name!r} is not in the dataset schema (talkfield.dataset.ARRAYS)")
        spec = ARRAYS[name]
        arr = np.asarray(arr)
        if str(arr.dtype) != spec.dtype:
            arr = arr.astype(spec.dtype)
        atomic_save_npy(self.root / f"{name}.npy", arr)
        self.arrays[name] = {"file": f"{name}.npy", "shape": list(arr.shape), "dtype": spec.dtype,
                             "unit": spec.unit, "meaning": spec.meaning}

    def finish(self, manifest: Manifest) -> Path:
        manifest.arrays = {**manifest.arrays, **self.arrays}
        if not manifest.split:
            tr, va = split_indices(manifest.T)
            manifest.split = {"train": [0, int(len(tr))], "val": [int(len(tr)), int(manifest.T)]}
        path = self.root / "manifest.json"
        atomic_write_text(path, manifest.to_json())
        return path


class SubjectDataset:
    """Read-only access to a preprocessed subject. Arrays load lazily with allow_pickle=False (memory-mapped)."""

    def __init__(self, root: Path | str, name: str | None = None):
        self.root = Path(root)
        self.name = name or self.root.name
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise DatasetError(f"subject {self.name!r}: no dataset at {self.root} (manifest.json missing); "
                               f"{preprocess_hint(self.name)}")
        self.manifest = Manifest.from_json(mpath.read_text())
        if self.manifest.format_version != FORMAT_VERSION:
            raise DatasetError(f"subject {self.name!r}: dataset format_version {self.manifest.format_version}, "
                               f"this code reads {FORMAT_VERSION}; re-run preprocessing ({preprocess_hint(self.name)})")
        missing = [k for k, s in ARRAYS.items() if s.required and k not in self.manifest.arrays]
        missing += [k for k in self.manifest.arrays if not (self.root / self.manifest.arrays[k]["file"]).is_file()]
        if missing:
            raise DatasetError(f"subject {self.name!r}: arrays missing from {self.root}: {sorted(set(missing))}; "
                               f"{preprocess_hint(self.name)} (add preprocess.force=true to rebuild)")
        self._cache: dict[str, np.ndarray] = {}
        self._plate: np.ndarray | None = None

    @property
    def T(self) -> int:
        return self.manifest.T

    @property
    def size(self) -> int:
        return self.manifest.size

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    def has(self, name: str) -> bool:
        return name in self.manifest.arrays

    def array(self, name: str, mmap: bool = True) -> np.ndarray:
        """Load one array by schema name (e.g. 'c2w' -> [T,4,4] float32)."""
        if name not in self._cache:
            if name not in self.manifest.arrays:
                raise DatasetError(f"subject {self.name!r} has no array {name!r} "
                                   f"(has: {sorted(self.manifest.arrays)}); {preprocess_hint(self.name)}")
            self._cache[name] = np.load(self.root / self.manifest.arrays[name]["file"],
                                        mmap_mode="r" if mmap else None, allow_pickle=False)
        return self._cache[name]

    def split(self, which: str) -> np.ndarray:
        """Frame indices of 'train' or 'val'."""
        a, b = self.manifest.split[which]
        return np.arange(a, b)

    # images --------------------------------------------------------------------------------------------
    def image_path(self, kind: str, t: int | None = None) -> Path:
        """Path of an image: kind in {'frames','masks','torso'} with a frame index, or {'bg','bg_known'}."""
        if t is None:
            return self.root / f"{kind}.png"
        ext = self.manifest.images.get(kind, "png" if kind != "frames" else "jpg")
        return self.root / kind / f"{t:06d}.{ext}"

    def _read(self, path: Path, flags: int) -> np.ndarray:
        import cv2

        img = cv2.imread(str(path), flags)
        if img is None:
            raise DatasetError(f"subject {self.name!r}: cannot read image {path}; {preprocess_hint(self.name)}")
        if img.ndim == 3 and img.shape[2] == 3:
            img = img[:, :, ::-1]
        elif img.ndim == 3 and img.shape[2] == 4:
            img = img[:, :, [2, 1, 0, 3]]
        return np.ascontiguousarray(img)

    def frame(self, t: int) -> np.ndarray:
        """Real frame t: uint8 [H,W,3] RGB."""
        import cv2

        return self._read(self.image_path("frames", t), cv2.IMREAD_COLOR)

    def labels(self, t: int) -> np.ndarray:
        """Label map of frame t: uint8 [H,W] with values in LABELS."""
        import cv2

        return self._read(self.image_path("masks", t), cv2.IMREAD_UNCHANGED)

    def torso_rgba(self, t: int) -> np.ndarray:
        """Torso-only image of frame t (head removed, area behind the chin filled): uint8 [H,W,4] RGBA."""
        import cv2

        return self._read(self.image_path("torso", t), cv2.IMREAD_UNCHANGED)

    def background(self) -> np.ndarray:
        """Clean background plate: uint8 [H,W,3] RGB (decoded once per dataset object; each call gets a copy)."""
        import cv2

        if self._plate is None:
            self._plate = self._read(self.image_path("bg"), cv2.IMREAD_COLOR)
        return self._plate.copy()

    def head_background(self, t: int) -> np.ndarray:
        """What the head is rendered over for frame t: its torso image (RGBA) over the plate, float32 [H,W,3] in
        0..255 (not rounded)."""
        if self._plate is None:
            self.background()
        torso = self.torso_rgba(t).astype(np.float32) / 255.0
        a = torso[..., 3:]
        return (torso[..., :3] * a + self._plate.astype(np.float32) / 255.0 * (1.0 - a)) * 255.0

    def head_target(self, t: int, labels: np.ndarray | None = None) -> np.ndarray:
        """Head-stage ground truth: the frame with its background replaced by the plate, uint8 [H,W,3].
        labels: frame t's label map when the caller has already read it."""
        frame, lab = self.frame(t), self.labels(t) if labels is None else labels
        return np.where((lab == LABELS["background"])[..., None], self.background(), frame)


def open_subject(data_dir: Path | str, name: str) -> SubjectDataset:
    """Open `data_dir/name` with a clear error when it is missing or incompatible."""
    return SubjectDataset(Path(data_dir) / name, name)
