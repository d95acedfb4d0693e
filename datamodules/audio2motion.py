"""Audio2Motion data: one preprocessed subject (default) or a folder of them (`data=audio2motion_corpus`).

Train: an endless step-indexed stream of batches of `window`-frame crops from the subjects' train splits (batch
k is a pure function of (seed, k): exact resume). Val: each subject's whole val split as one sequence.
Every item carries the audio features of the chosen kind (prepared by `networks.audio2motion.features`), f0,
the person-normalised motion, the blink flag (eye openness < `blink_threshold`, the one definition stored by
preprocessing), the mouth amplitude of the crop and the person's normalising scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.streams import StepStream, step_generator
from networks.audio2motion.features import FEATURE_DIMS, prepare_features
from networks.audio2motion.postprocess import INNER_LIP_MID68, MOUTH_CORNERS68, PersonMotion, mouth_opening68
from networks.audio2motion.vae import normalize_motion, person_norm
from talkfield import landmarks as lmk
from talkfield.dataset import DatasetError, open_subject, preprocess_hint
from talkfield.motion import from_offsets

log = logging.getLogger(__name__)


@dataclass
class Clip:
    """One subject in memory (CPU tensors). features [2T,C] prepared; f0 [2T]; motion [T,204] normalised;
    blink [T] long; opening [T] mouth opening (head units); scale [204]; train/val frame ranges; rest [204] the
    closed-mouth pose (mean normalised motion of train frames with opening <= their 10th percentile);
    quiet_rows [R] the train feature rows of the recording's quietest 10% (its pauses and background);
    mouth_base [2,3] mean-shape vectors between the inner-lip midpoints and between the mouth corners."""

    name: str
    fingerprint: str
    features: torch.Tensor
    f0: torch.Tensor
    motion: torch.Tensor
    blink: torch.Tensor
    opening: torch.Tensor
    scale: torch.Tensor
    stats: np.ndarray
    train: tuple[int, int]
    val: tuple[int, int]
    person: PersonMotion
    amp_std: float
    rest: torch.Tensor
    quiet_rows: torch.Tensor
    mouth_base: torch.Tensor

    @property
    def T(self) -> int:
        return len(self.motion)


def load_clip(data_dir: Path | str, name: str, kind: str, blink_threshold: float = 0.35,
              mel_norm: str = "level") -> Clip:
    """Read a preprocessed subject for Audio2Motion (arrays offsets, motion_stats, eye_open, mel/whisper/hubert,
    f0, mean_shape)."""
    ds = open_subject(data_dir, name)
    if not ds.has(kind):
        have = ds.manifest.audio_features or sorted(ds.manifest.arrays)
        raise DatasetError(f"subject {name!r} has no {kind!r} audio features (has {have}); use "
                           f"audio_features=mel, or re-run preprocessing with them enabled ({preprocess_hint(name)})")
    T = ds.T
    off = np.array(ds.array("offsets"), np.float32)
    stats = np.array(ds.array("motion_stats"), np.float32)
    mean_shape = np.array(ds.array("mean_shape"), np.float32)
    eye_open = np.asarray(ds.array("eye_open"), np.float32)
    feats = torch.from_numpy(np.asarray(ds.array(kind), np.float32)[: 2 * T].copy())
    f0 = torch.from_numpy(np.asarray(ds.array("f0"), np.float32)[: 2 * T].copy())
    tr, va = ds.manifest.split["train"], ds.manifest.split["val"]
    q = ds.manifest.eye_quantiles or [0.0, 1.0]
    opening = mouth_opening68(from_offsets(off, mean_shape))
    a, b = tr
    person = PersonMotion.from_arrays(off[a:b], stats, mean_shape, (q[0], q[1]), eye_open[a:b])
    motion = normalize_motion(torch.from_numpy(off), stats).float()
    closed = opening[a:b] <= np.quantile(opening[a:b], 0.10)
    raw_level = feats[2 * a: 2 * b].mean(-1)
    quiet = torch.nonzero(raw_level <= torch.quantile(raw_level, 0.10)).reshape(-1) + 2 * a
    ms68 = lmk.to68(mean_shape)
    (u, lo), (c1, c2) = INNER_LIP_MID68, MOUTH_CORNERS68
    mouth_base = torch.from_numpy(np.stack([ms68[lo] - ms68[u], ms68[c2] - ms68[c1]]).astype(np.float32))
    return Clip(
        name=name, fingerprint=ds.fingerprint, mouth_base=mouth_base,
        features=prepare_features(feats, kind, mode=mel_norm), f0=f0,
        motion=motion, rest=motion[a:b][torch.from_numpy(closed)].mean(0), quiet_rows=quiet,
        blink=torch.from_numpy((eye_open < blink_threshold).astype(np.int64)),
        opening=torch.from_numpy(opening.astype(np.float32)), scale=person_norm(stats)[1], stats=stats,
        train=(int(a), int(b)), val=(int(va[0]), int(va[1])), person=person,
        amp_std=float(max(opening[a:b].std(), 1e-6)))


def find_subjects(data_dir: Path | str) -> list[str]:
    """Names of the preprocessed subjects (folders with manifest.json) directly under data_dir."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DatasetError(f"corpus folder {d} does not exist; pass data.data_dir=<folder of preprocessed subjects>")
    names = sorted(p.parent.name for p in d.glob("*/manifest.json"))
    if not names:
        raise DatasetError(f"corpus folder {d} holds no preprocessed subject (no */manifest.json); preprocess "
                           "each video with `python preprocess.py video=<file> subject.name=<name> paths.data_dir="
                           f"{d}`")
    return names


class _ValSequences(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class Audio2MotionDataModule(LightningDataModule):
    """data_dir: folder of preprocessed subjects; subjects: names in it (None: all of them, the corpus case);
    corpus: True for a generic (subject-less) model; features: mel | whisper | hubert; window: frames per
    training crop (a multiple of 4); batch_size: crops per step; mouth_amp_drop: probability that a crop's mouth
    amplitude is replaced by 1 (the person's usual, what inference uses by default); blink_threshold: eye
    openness below which the blink flag is 1; needs_subject: False when no single subject is required (corpus);
    stride: the model's temporal stride (crops and val sequences are multiples of it); mel_norm: 'band' | 'level'
    (`networks.audio2motion.features.prepare_features`, the model's own); pause_aug: probability that a crop gets
    an inserted pause (pause_frames = (min, max) frames): its audio rows are replaced by the recording's quietest
    rows raised by U(0, pause_jitter) (prepared-feature units: another recording's background sits a little above
    its floor), pitch by unvoiced, and the motion eases (3 frames) into the person's closed-mouth rest pose. A
    prior for pauses that a short video cannot teach (the mouth closes when speech stops)."""

    def __init__(self, data_dir: str, subjects: list[str] | None = None, corpus: bool = False,
                 features: str = "mel", window: int = 64, batch_size: int = 16, mouth_amp_drop: float = 0.5,
                 blink_threshold: float = 0.35, seed: int = 0, num_workers: int = 0, needs_subject: bool = True,
                 stride: int = 4, mel_norm: str = "level", pause_aug: float = 0.0,
                 pause_frames: tuple[int, int] = (6, 25), pause_jitter: float = 0.0):
        super().__init__()
        if features not in FEATURE_DIMS:
            raise ValueError(f"data.features={features!r}: one of {sorted(FEATURE_DIMS)} (audio_features=...)")
        if window % stride:
            raise ValueError(f"data.window={window} must be a multiple of the model's temporal stride {stride}")
        self.data_dir, self.subjects, self.corpus, self.features = data_dir, subjects, corpus, features
        self.window, self.batch_size, self.mouth_amp_drop = window, batch_size, mouth_amp_drop
        self.blink_threshold, self.seed, self.num_workers, self.stride = blink_threshold, seed, num_workers, stride
        self.mel_norm, self.pause_aug, self.pause_frames = mel_norm, pause_aug, tuple(pause_frames)
        self.pause_jitter = pause_jitter
        self.clips: list[Clip] = []

    # ---------------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.clips:
            return
        names = list(self.subjects) if self.subjects else find_subjects(self.data_dir)
        self.clips = [load_clip(self.data_dir, n, self.features, self.blink_threshold, self.mel_norm) for n in names]
        short = [c.name for c in self.clips if c.train[1] - c.train[0] < self.window]
        if short:
            raise DatasetError(f"subjects {short}: train split shorter than data.window={self.window} frames; "
                               "lower data.window (a multiple of 4)")
        # crop starts are drawn in proportion to each subject's train length
        lengths = np.array([c.train[1] - c.train[0] - self.window + 1 for c in self.clips], np.float64)
        self._cum = np.cumsum(lengths)
        log.info("audio2motion data: %d subject(s) %s, %d train crops of %d frames, features %s",
                 len(self.clips), [c.name for c in self.clips][:8], int(self._cum[-1]), self.window, self.features)

    def trained_on(self) -> list[dict]:
        """What a model trained on this data saw: subject, fingerprint, train frame range, per subject."""
        return [{"subject": c.name, "fingerprint": c.fingerprint, "split": "train", "frames": list(c.train)}
                for c in self.clips]

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std [C] of the prepared features over every subject's train split."""
        rows = torch.cat([c.features[2 * c.train[0]: 2 * c.train[1]] for c in self.clips])
        return rows.mean(0), rows.std(0)

    # ---------------------------------------------------------------------------------------------------------
    def crop(self, clip: Clip, start: int, length: int) -> dict[str, torch.Tensor]:
        """One crop of a clip: frames [start, start+length)."""
        s, e = start, start + length
        op = clip.opening[s:e]
        return {"features": clip.features[2 * s: 2 * e], "f0": clip.f0[2 * s: 2 * e], "motion": clip.motion[s:e],
                "blink": clip.blink[s:e], "mouth_amp": (op.std() / clip.amp_std).reshape(()),
                "scale": clip.scale, "mean": torch.from_numpy(clip.stats[0]), "gap_base": clip.mouth_base[0],
                "width_base": clip.mouth_base[1], "amp_std": torch.tensor(clip.amp_std, dtype=torch.float32)}

    def _batch(self, _index: int, step: int) -> dict[str, torch.Tensor]:
        g = step_generator(self.seed, step)
        u = torch.rand(self.batch_size, generator=g, dtype=torch.float64).numpy() * self._cum[-1]
        items = []
        for x in u:
            ci = int(np.searchsorted(self._cum, x, side="right"))
            off = int(x - (self._cum[ci - 1] if ci else 0.0))
            clip = self.clips[ci]
            item = self.crop(clip, clip.train[0] + off, self.window)
            item["subject_idx"] = torch.tensor(ci)
            if self.pause_aug > 0 and float(torch.rand(1, generator=g)) < self.pause_aug:
                item = self.insert_pause(item, clip, g)
            items.append(item)
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        drop = torch.rand(self.batch_size, generator=g) < self.mouth_amp_drop
        batch["mouth_amp"] = torch.where(drop, torch.ones_like(batch["mouth_amp"]), batch["mouth_amp"])
        return batch

    def insert_pause(self, item: dict, clip: Clip, g: torch.Generator) -> dict:
        """Replace a random span of the crop by a pause: quiet audio rows, no pitch, the rest pose (eased in/out)."""
        lo, hi = self.pause_frames
        n = int(torch.randint(lo, min(hi, self.window) + 1, (1,), generator=g))
        s = int(torch.randint(0, self.window - n + 1, (1,), generator=g))
        rows = clip.quiet_rows[torch.randint(0, len(clip.quiet_rows), (2 * n,), generator=g)]
        feats, f0, motion = item["features"].clone(), item["f0"].clone(), item["motion"].clone()
        lift = float(torch.rand(1, generator=g)) * self.pause_jitter
        feats[2 * s: 2 * (s + n)] = clip.features[rows] + lift
        f0[2 * s: 2 * (s + n)] = 0.0
        t = torch.arange(self.window, dtype=torch.float32)
        ramp = 3.0
        w = torch.clamp(torch.minimum(t - s + 1, s + n - t) / ramp, 0.0, 1.0)  # 0 outside, eased to 1 inside
        w = 0.5 - 0.5 * torch.cos(torch.pi * w)
        motion = (1 - w[:, None]) * motion + w[:, None] * clip.rest[None]
        return {**item, "features": feats, "f0": f0, "motion": motion, "mouth_amp": torch.tensor(1.0)}

    def val_items(self) -> list[dict]:
        """Each subject's val split as one sequence (its length cut to a multiple of the stride)."""
        items = []
        for ci, c in enumerate(self.clips):
            a, b = c.val
            n = (b - a) // self.stride * self.stride
            if n < self.stride:
                continue
            it = self.crop(c, a, n)
            it["mouth_amp"] = torch.tensor(1.0)
            it["subject_idx"] = torch.tensor(ci)
            it = {k: v[None] for k, v in it.items()}
            items.append(it)
        return items

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step if self.trainer is not None else 0
        stream = StepStream(1, self._batch, seed=self.seed, start=start)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_ValSequences(self.val_items()), batch_size=None)
