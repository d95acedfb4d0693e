"""Trained subjects the Studio can render: found under the runs folder (outputs/<subject>/<stage>/<run_id>/, the
`latest` pointer per stage; CONTRACTS.md section 1), each with a thumbnail (its first dataset frame) and a list
of what is missing. The pipeline (TalkingHeadPipeline.from_subject) stays the final judge of what loads; this
only lets the page say early and plainly what to train.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from talkfield.runs import _experiment_of, find_checkpoint, latest_run

log = logging.getLogger(__name__)

RENDER_STAGES = ("head", "torso", "audio2motion")
REQUIRED = ("head",)  # without a head field nothing renders; torso and Audio2Motion may fall back (pipeline says)


def train_hint(subject: str, stage: str = "head") -> str:
    return f"python train.py experiment={_experiment_of(stage)} subject.name={subject}"


NO_SUBJECT_HELP = (
    "No trained subject yet under `{runs_dir}`.\n\n"
    "To make one: preprocess a video of the person, then train the head (and, for the full result, the torso "
    "and Audio2Motion):\n\n"
    "```\npython preprocess.py video=<path/to/video.mp4> subject.name=<name>\n"
    "python train.py experiment=head_nerf subject.name=<name>\n"
    "python train.py experiment=torso_nerf subject.name=<name>\n"
    "python train.py experiment=audio2motion subject.name=<name>\n```\n\n"
    "then reload this page."
)


@dataclass
class SubjectInfo:
    name: str
    checkpoints: dict[str, Path | None] = field(default_factory=dict)   # stage -> checkpoint of its latest run
    problems: list[str] = field(default_factory=list)   # reasons it cannot render (with the fix)
    notes: list[str] = field(default_factory=list)      # things that render in a reduced way
    thumbnail: Path | None = None

    @property
    def ready(self) -> bool:
        return not self.problems

    @property
    def label(self) -> str:
        return self.name if self.ready else f"{self.name} (incomplete)"

    def signature(self) -> tuple:
        """Changes when a stage gets a new latest checkpoint (so a cached pipeline is rebuilt)."""
        sig = []
        for stage, ck in sorted(self.checkpoints.items()):
            sig.append((stage, str(ck), ck.stat().st_mtime_ns if ck is not None and ck.exists() else None))
        return tuple(sig)


def inspect_subject(name: str, runs_dir: Path, data_dir: Path, thumbs_dir: Path | None = None) -> SubjectInfo:
    """What `name` has: the latest checkpoint per stage, its dataset, a thumbnail; and what is missing."""
    info = SubjectInfo(name)
    for stage in RENDER_STAGES:
        run = latest_run(runs_dir, name, stage)
        ck = find_checkpoint(run) if run is not None else None
        info.checkpoints[stage] = ck
        if ck is not None:
            continue
        if run is not None:
            msg = f"the latest {stage} run ({run.name}) has no checkpoint yet (still training, or it failed)"
        else:
            msg = f"no {stage} run"
        if stage in REQUIRED:
            info.problems.append(f"{msg}: train it with `{train_hint(name, stage)}`")
        elif stage == "torso":
            info.notes.append(f"{msg}: renders the head only (`{train_hint(name, stage)}` adds the torso)")
        else:
            info.notes.append(f"{msg}: needs a generic Audio2Motion model, or `{train_hint(name, stage)}`")
    try:
        from talkfield.dataset import DatasetError, open_subject

        ds = open_subject(data_dir, name)
    except DatasetError as e:
        info.problems.append(str(e))
        return info
    if thumbs_dir is not None:
        try:
            info.thumbnail = _thumbnail(ds, Path(thumbs_dir) / f"{name}.jpg")
        except Exception as e:  # a missing frame must not hide the subject; the pipeline will say more
            log.warning("subject %s: no thumbnail (%s)", name, e)
    return info


def discover_subjects(runs_dir: Path, data_dir: Path, thumbs_dir: Path | None = None) -> list[SubjectInfo]:
    """Every folder under runs_dir with a render stage folder (head/torso/audio2motion), ready ones first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    names = sorted(p.name for p in runs_dir.iterdir()
                   if p.is_dir() and not p.name.startswith(("_", "."))
                   and any((p / s).is_dir() for s in RENDER_STAGES))
    infos = [inspect_subject(n, runs_dir, Path(data_dir), thumbs_dir) for n in names]
    return sorted(infos, key=lambda i: (not i.ready, i.name))


def _thumbnail(ds, dst: Path, size: int = 256) -> Path:
    """The subject's first frame as a small JPEG in the studio folder (rebuilt when the dataset changes)."""
    import cv2

    manifest = ds.root / "manifest.json"
    if dst.is_file() and dst.stat().st_mtime_ns >= manifest.stat().st_mtime_ns:
        return dst
    img = ds.frame(0)[:, :, ::-1]  # RGB -> BGR for cv2
    h, w = img.shape[:2]
    s = size / max(h, w)
    if s < 1:
        img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise OSError(f"cannot encode the thumbnail of {ds.root}")
    # a unique temporary name: several page loads may build the same thumbnail at once
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.stem}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(buf.tobytes())
    os.replace(tmp, dst)
    return dst
