"""Runs and checkpoints (CONTRACTS.md section 1).

Runs live in `outputs/<subject>/<stage>/<run_id>/` with a `latest` pointer file per stage. Every checkpoint carries
`checkpoint["talkfield"]`: the subject, its fingerprint, the dataset format_version, the stage and the resolved
config. Loading one for the wrong subject, stage or an incompatible version is refused with a message saying which.
A generic (corpus) Audio2Motion model has subject None and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from talkfield.dataset import FORMAT_VERSION, atomic_write_text

STAGES = ("head", "torso", "audio2motion", "fit_image", "lipsync")
META_KEY = "talkfield"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, or belongs to another subject, stage or format version."""


def fingerprint(source_hash: str, preprocess_cfg: dict[str, Any]) -> str:
    """Subject fingerprint: hash of the source file's hash and the preprocessing config (sorted JSON)."""
    h = hashlib.sha256()
    h.update(source_hash.encode())
    h.update(json.dumps(preprocess_cfg, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def file_hash(path: Path | str, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex, first 16 chars)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def stage_dir(runs_root: Path | str, subject: str, stage: str) -> Path:
    return Path(runs_root) / subject / stage


def mark_latest(run_dir: Path) -> None:
    """Point `<stage>/latest` at this run (a one-line text file with the run id; written atomically)."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir.parent / "latest", run_dir.name + "\n")


def latest_run(runs_root: Path | str, subject: str, stage: str) -> Path | None:
    """The run directory `latest` points at, or None."""
    pointer = stage_dir(runs_root, subject, stage) / "latest"
    if not pointer.is_file():
        return None
    run = pointer.parent / pointer.read_text().strip()
    return run if run.is_dir() else None


def find_checkpoint(run_dir: Path, prefer: str = "last") -> Path | None:
    """A run's checkpoint: checkpoints/last.ckpt (prefer='last') or the best by val/psnr (prefer='best')."""
    ckdir = Path(run_dir) / "checkpoints"
    if prefer == "best":
        best = sorted(ckdir.glob("best*.ckpt"))
        if best:
            return best[-1]
    last = ckdir / "last.ckpt"
    if last.is_file():
        return last
    any_ckpt = sorted(ckdir.glob("*.ckpt"), key=os.path.getmtime)
    return any_ckpt[-1] if any_ckpt else None


def resolve_checkpoint(spec: str | None, runs_root: Path | str, subject: str, stage: str,
                       prefer: str = "last") -> Path | None:
    """Turn `latest`, a run directory or a file path into a checkpoint file. None stays None."""
    if spec in (None, "", "null"):
        return None
    if spec == "latest":
        run = latest_run(runs_root, subject, stage)
        if run is None:
            raise CheckpointError(f"no {stage} run for subject {subject!r} under {stage_dir(runs_root, subject, stage)}; "
                                  f"train one first (python train.py experiment={_experiment_of(stage)} "
                                  f"subject.name={subject})")
        ck = find_checkpoint(run, prefer)
        if ck is None:
            raise CheckpointError(f"run {run} has no checkpoint yet")
        return ck
    p = Path(spec)
    if p.is_dir():
        ck = find_checkpoint(p, prefer)
        if ck is None:
            raise CheckpointError(f"{p} holds no checkpoint (looked in {p / 'checkpoints'})")
        return ck
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    return p


def _experiment_of(stage: str) -> str:
    return {"head": "head_nerf", "torso": "torso_nerf"}.get(stage, stage)


def make_meta(stage: str, subject: str | None, fingerprint_: str | None, config: dict[str, Any],
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata every checkpoint carries under checkpoint['talkfield'] (JSON-safe values only)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
    return {"stage": stage, "subject": subject, "fingerprint": fingerprint_, "format_version": FORMAT_VERSION,
            "config": json.loads(json.dumps(config, default=str)), **(extra or {})}


def check_meta(meta: dict[str, Any] | None, *, path: Path | str, stage: str, subject: str | None,
               fingerprint_: str | None, allow_generic: bool = False) -> None:
    """Refuse a checkpoint from another stage, subject, fingerprint or format version, saying which."""
    if meta is None:
        raise CheckpointError(f"{path} is not a TalkField checkpoint (no '{META_KEY}' metadata)")
    if meta.get("stage") != stage:
        raise CheckpointError(f"{path} is a {meta.get('stage')!r} checkpoint; a {stage!r} checkpoint is needed here")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} was trained on dataset format_version {meta.get('format_version')}; "
                              f"this code reads {FORMAT_VERSION}: retrain on a re-preprocessed subject")
    owner = meta.get("subject")
    if owner is None:
        if allow_generic:
            return
        raise CheckpointError(f"{path} is a generic (corpus) model; a model of subject {subject!r} is needed here")
    if subject is not None and owner != subject:
        raise CheckpointError(f"{path} belongs to subject {owner!r}, not {subject!r}")
    if fingerprint_ is not None and meta.get("fingerprint") != fingerprint_:
        raise CheckpointError(f"{path} was trained on another preprocessing of subject {owner!r} "
                              f"(fingerprint {meta.get('fingerprint')} != dataset {fingerprint_}); "
                              "retrain, or point subject.name at the dataset it was trained on")


def load_checkpoint(path: Path | str, *, stage: str, subject: str | None, fingerprint_: str | None,
                    allow_generic: bool = False, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load(weights_only=True) a checkpoint and check its metadata. Returns the whole checkpoint dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    check_meta(ckpt.get(META_KEY), path=path, stage=stage, subject=subject, fingerprint_=fingerprint_,
               allow_generic=allow_generic)
    return ckpt


CARRIED_KEYS = ("audio2motion_person",)
"""Checkpoint entries besides state_dict and metadata that loading needs (the Audio2Motion person's statistics)."""


def save_weights_only(ckpt: dict[str, Any], dst: Path | str) -> Path:
    """Strip optimizer/loop state from a checkpoint: state_dict + metadata (+ CARRIED_KEYS present) only (for
    carrying and bundles)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    slim = {"state_dict": ckpt["state_dict"], META_KEY: ckpt[META_KEY]}
    slim.update({k: ckpt[k] for k in CARRIED_KEYS if k in ckpt})
    tmp = dst.with_name(f".{dst.name}.tmp")
    torch.save(slim, tmp)
    os.replace(tmp, dst)
    return dst
