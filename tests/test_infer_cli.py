"""Inference entry point and checkpoint errors (issue 9): missing checkpoints name what to train, another subject's
checkpoint is refused, bad input exits with a clear message and no output file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from talkfield.dataset import ARRAYS, Manifest, SubjectWriter
from talkfield.inference import TalkingHeadPipeline
from talkfield.runs import CheckpointError, make_meta, mark_latest

ROOT = Path(__file__).resolve().parents[1]


def fake_subject(data_dir: Path, name: str = "alice", T: int = 12) -> Path:
    """A schema-complete subject of random arrays (for the loading errors; nothing is rendered from it)."""
    import cv2

    rng = np.random.default_rng(0)
    shapes = {"T": T, "S": T * 640, "A": 2 * T, "K": 4}
    w = SubjectWriter(data_dir / name, name)
    for key, spec in ARRAYS.items():
        if not spec.required:
            continue
        dims = [d.strip() for d in spec.shape.strip("[]").split(",")]
        shape = [shapes[d] if d in shapes else int(d) for d in dims]
        w.save(key, rng.random(shape).astype(spec.dtype) if spec.dtype != "bool" else np.ones(shape, bool))
    cv2.imwrite(str(data_dir / name / "bg.png"), np.zeros((32, 32, 3), np.uint8))
    crop = {"source_width": 64, "source_height": 64, "rotation": 0, "x0": 0, "y0": 0, "size": 64, "out_size": 32}
    w.finish(Manifest(subject=name, fingerprint="f" * 16, T=T, size=32, crop=crop, eye_quantiles=[0.1, 0.3]))
    return data_dir / name


def fake_run(runs_dir: Path, subject: str, stage: str, owner: str | None, fingerprint: str | None = "f" * 16) -> Path:
    """A run directory with a checkpoint whose metadata says it belongs to `owner` (None: generic)."""
    run = runs_dir / subject / stage / "20260101-000000"
    (run / "checkpoints").mkdir(parents=True)
    meta = make_meta(stage, owner, fingerprint, {})
    torch.save({"state_dict": {}, "talkfield": meta}, run / "checkpoints" / "last.ckpt")
    mark_latest(run)
    return run / "checkpoints" / "last.ckpt"


def test_missing_checkpoints_name_what_to_train(tmp_path):
    fake_subject(tmp_path / "data")
    with pytest.raises(CheckpointError) as e:
        TalkingHeadPipeline.from_subject("alice", data_dir=tmp_path / "data", runs_dir=tmp_path / "outputs",
                                         device="cpu")
    msg = str(e.value)
    assert "experiment=head_nerf subject.name=alice" in msg
    assert "experiment=audio2motion subject.name=alice" in msg
    assert "a2m=" in msg  # the generic-model alternative is offered


def test_missing_dataset_says_preprocess(tmp_path):
    from talkfield.dataset import DatasetError

    with pytest.raises(DatasetError, match="preprocess.py"):
        TalkingHeadPipeline.from_subject("nobody", data_dir=tmp_path / "data", runs_dir=tmp_path / "outputs",
                                         device="cpu")


def test_checkpoint_of_another_subject_is_refused(tmp_path):
    fake_subject(tmp_path / "data")
    other = fake_run(tmp_path / "outputs", "bob", "head", "bob")
    fake_run(tmp_path / "outputs", "alice", "audio2motion", "alice")
    with pytest.raises(CheckpointError, match="belongs to subject 'bob', not 'alice'"):
        TalkingHeadPipeline.from_subject("alice", data_dir=tmp_path / "data", runs_dir=tmp_path / "outputs",
                                         device="cpu", head=other)


def test_a2m_of_another_subject_is_refused_but_a_corpus_model_is_allowed(tmp_path):
    from lightning_modules.audio2motion import load_audio2motion
    from talkfield.inference import _resolve_a2m

    fake_subject(tmp_path / "data")
    runs = tmp_path / "outputs"
    bob = fake_run(runs, "bob", "audio2motion", "bob")
    with pytest.raises(CheckpointError, match="belongs to subject 'bob'"):
        load_audio2motion(bob, "alice", "f" * 16, allow_generic=True)
    corpus = fake_run(runs, "voxcorpus", "audio2motion", None, None)
    assert _resolve_a2m("voxcorpus", runs, "alice") == corpus  # a corpus name resolves to its latest run
    assert _resolve_a2m(str(corpus.parent.parent), runs, "alice") == corpus


def _infer(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TALKFIELD_DATA": str(tmp_path / "data"), "TALKFIELD_OUTPUTS": str(tmp_path / "outputs"),
           "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(ROOT / "infer.py"), *args, "hydra.run.dir=" + str(tmp_path / "hy")],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_reports_missing_checkpoints_and_writes_nothing(tmp_path):
    fake_subject(tmp_path / "data")
    out = tmp_path / "videos" / "talk.mp4"
    r = _infer(["subject.name=alice", f"audio={tmp_path / 'speech.wav'}", f"out={out}"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "python train.py experiment=head_nerf subject.name=alice" in r.stdout + r.stderr
    assert not out.exists()


def test_cli_rejects_unknown_knob(tmp_path):
    r = _infer(["subject.name=alice", "audio=x.wav", "out=y.mp4", "+knobs.mouth=2"], tmp_path)
    assert r.returncode == 2 and "unknown knob" in r.stdout + r.stderr


def test_no_torso_run_renders_head_only_and_says_so(tmp_path, caplog, monkeypatch):
    """torso=None with no torso run: head-only with a warning naming the training command; torso='none': silent."""
    import logging

    import lightning_modules.audio2motion as a2m_mod
    import lightning_modules.head_nerf as head_mod

    fake_subject(tmp_path / "data")
    head_ck = fake_run(tmp_path / "outputs", "alice", "head", "alice")
    a2m_ck = fake_run(tmp_path / "outputs", "alice", "audio2motion", "alice")
    loaded = {}

    class Stop(Exception):
        pass

    def fake_load_head(path, subject=None, fingerprint=None, map_location="cpu"):
        loaded["head"] = (Path(path), subject, fingerprint)
        raise Stop  # the loaders themselves are tested by their stages; here only what gets resolved

    monkeypatch.setattr(head_mod, "load_head", fake_load_head)
    monkeypatch.setattr(a2m_mod, "load_audio2motion", lambda *a, **k: None)
    for torso, warned in ((None, True), ("none", False)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="talkfield.inference"), pytest.raises(Stop):
            TalkingHeadPipeline.from_subject("alice", data_dir=tmp_path / "data", runs_dir=tmp_path / "outputs",
                                             device="cpu", torso=torso)
        assert loaded["head"] == (head_ck, "alice", "f" * 16)
        assert ("no torso run" in caplog.text and "experiment=torso_nerf subject.name=alice" in caplog.text) == warned
    assert a2m_ck.is_file()
