"""Preprocessing on the real 8 s clip: the dataset it writes, caching, resume after an interruption, and the
numbers the real clip must meet (landmarks in every frame, reprojection median < 3 px, < 25 MB)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from datamodules.preprocess import PreprocessError, pipeline, preprocess_video
from talkfield import camera, landmarks as lmk, motion
from talkfield.dataset import ARRAYS, LABELS, SubjectDataset, split_indices

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "WDA_KatieHill_000.mp4"
CFG = {"segment": {"parallel_min_frames": 100}}  # 200 frames: the segment stage runs in 2 worker processes


@pytest.fixture(scope="module")
def katie(tmp_path_factory):
    """The real clip preprocessed once, through an interruption in the segment stage and a resume.

    Returns (subject dir, stage-marker mtimes before the resume, mtimes after)."""
    data = tmp_path_factory.mktemp("pp") / "data"
    orig = pipeline.Pipeline.stage_segment

    def boom(self, T):
        orig(self, T)
        raise KeyboardInterrupt  # after the stage's files, before its marker: the stage must run again

    pipeline.Pipeline.stage_segment = boom
    try:
        with pytest.raises(KeyboardInterrupt):
            preprocess_video(REAL, "katie", data, cfg=CFG, show_progress=False)
    finally:
        pipeline.Pipeline.stage_segment = orig
    work = data / "_work" / "katie"
    assert not (data / "katie").exists(), "an interrupted run must not leave a dataset behind"
    stages = work / ".stages"
    before = {p.stem: p.stat().st_mtime_ns for p in stages.glob("*.json")}
    assert set(before) == {"decode", "crop", "landmarks", "fit"}
    out = preprocess_video(REAL, "katie", data, cfg=CFG, show_progress=False)
    after = {p.stem: p.stat().st_mtime_ns for p in (out / ".stages").glob("*.json")}
    return out, before, after


def test_resume_reuses_finished_stages(katie):
    out, before, after = katie
    assert out.name == "katie" and (out / "manifest.json").is_file()
    assert not (out.parent / "_work").exists()
    for s in ("decode", "crop", "landmarks", "fit"):
        assert after[s] == before[s], f"stage {s} ran again after the interruption"
    assert set(after) == set(pipeline.STAGES)


def test_dataset_schema_and_shapes(katie):
    out, _, _ = katie
    sub = SubjectDataset(out)
    T, S = sub.T, sub.size
    assert T == 200 and S == 512
    m = sub.manifest
    for name, spec in ARRAYS.items():
        if spec.required:
            assert sub.has(name), name
        if sub.has(name):
            arr = sub.array(name)
            assert str(arr.dtype) == spec.dtype, name
            assert list(arr.shape) == m.arrays[name]["shape"]
    A = 2 * T
    assert sub.array("audio").shape == (640 * T,)
    assert sub.array("mel").shape == (A, 80) and sub.array("f0").shape == (A,)
    assert sub.array("whisper").shape == (A, 384) and "whisper" in m.audio_features
    assert sub.array("lms2d").shape == (T, 478, 3) and sub.array("lms3d").shape == (T, 478, 3)
    assert sub.array("c2w").shape == (T, 4, 4) and sub.array("intrinsics").shape == (3, 3)
    assert sub.array("offsets").shape == (T, 68, 3) and sub.array("motion_stats").shape == (4, 204)
    K = sub.array("exp_basis").shape[0]
    assert 1 <= K <= 32 and sub.array("exp_coeffs").shape == (T, K)
    tr, va = split_indices(T)
    assert list(sub.split("train")) == list(tr) and list(sub.split("val")) == list(va) and len(va) == 19
    assert set(m.crop) >= {"source_width", "source_height", "rotation", "x0", "y0", "size", "out_size"}
    assert m.images["torso"] == "webp"
    for t in (0, T - 1):
        assert sub.frame(t).shape == (S, S, 3)
        lab = sub.labels(t)
        assert lab.shape == (S, S) and set(np.unique(lab)) <= set(LABELS.values())
        # a talking head: every class but background fills a real area
        for c in ("hair", "face", "lips", "eyes", "neck", "torso"):
            assert (lab == LABELS[c]).sum() > 50, c
        rgba = sub.torso_rgba(t)
        assert rgba.shape == (S, S, 4)
        assert not (rgba[..., 3][lab == LABELS["eyes"]] > 0).any(), "the head is removed from the torso image"
        assert (rgba[..., 3][lab == LABELS["torso"]] == 255).all()
    assert sub.background().shape == (S, S, 3)
    assert sub.head_target(3).shape == (S, S, 3)
    known = sub._read(out / "bg_known.png", -1)
    frac = m.extra["background"]["never_uncovered_fraction"]
    assert abs(frac - (known == 0).mean()) < 1e-6 and 0.05 < frac < 0.7
    assert "nearest known background" in m.extra["background"]["fill_policy"]
    assert any("quality will suffer" in w for w in m.extra["warnings"])  # 8 s < 60 s


def test_real_clip_numbers(katie):
    """Landmarks in 100% of frames; the fitted model reprojects within 3 px (median) of the detections."""
    out, _, _ = katie
    sub = SubjectDataset(out)
    assert sub.array("detected").all()
    uv, z = camera.project(np.asarray(sub.array("lms3d")), np.asarray(sub.array("c2w")),
                           np.asarray(sub.array("intrinsics")))
    err = np.linalg.norm(uv - sub.array("lms2d")[..., :2], axis=-1)
    assert np.median(err) < 3.0
    assert (z > 0).all()
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 25e6, f"dataset is {size / 1e6:.1f} MB"


def test_motion_and_camera_conventions(katie):
    out, _, _ = katie
    sub = SubjectDataset(out)
    mean = np.asarray(sub.array("mean_shape"), np.float64)
    a, b = lmk.OUTER_EYE_CORNERS
    assert abs(np.linalg.norm(mean[b] - mean[a]) - 1.0) < 1e-5
    assert np.abs(mean[lmk.RIGID].mean(0)).max() < 1e-5
    assert mean[b, 0] > mean[a, 0] and mean[152, 1] > mean[10, 1]  # x to the subject's left, y down
    lms3d = np.asarray(sub.array("lms3d"), np.float64)
    off = np.asarray(sub.array("offsets"), np.float64)
    np.testing.assert_allclose(off, motion.offsets(lms3d, mean), atol=1e-5)
    np.testing.assert_allclose(sub.array("motion_stats"), motion.motion_stats(off), atol=1e-5)
    q03, q97 = sub.manifest.eye_quantiles
    eo = np.asarray(sub.array("eye_open"))
    np.testing.assert_allclose(eo, motion.eye_openness(lmk.eye_ratio(lms3d), q03, q97), atol=1e-5)
    np.testing.assert_allclose(eo, motion.eye_openness_from_offsets(off, mean, q03, q97), atol=1e-5)
    assert eo.min() == 0.0 and eo.max() == 1.0
    R = np.asarray(sub.array("c2w"))[:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
    # the camera looks at the face from the front: it sits at negative z, its z axis points into +z
    c2w = np.asarray(sub.array("c2w"))
    assert (c2w[:, 2, 3] < -2).all() and (c2w[:, 2, 2] > 0.8).all()


def test_rerun_skips_and_config_change_reruns_only_dependent_stages(katie, caplog):
    out, _, after = katie
    data = out.parent
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert preprocess_video(REAL, "katie", data, cfg=CFG, show_progress=False) == out
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    out2 = preprocess_video(REAL, "katie", data, cfg={**CFG, "audio": {"whisper": False}}, show_progress=False)
    now = {p.stem: p.stat().st_mtime_ns for p in (out2 / ".stages").glob("*.json")}
    for s in ("decode", "crop", "landmarks", "fit", "segment", "background"):
        assert now[s] == after[s], s
    assert now["audio"] != after["audio"]
    sub = SubjectDataset(out2)
    assert not sub.has("whisper") and not (out2 / "whisper.npy").exists()
    assert sub.manifest.extra["audio"]["skipped"]["whisper"] == "preprocess.audio.whisper=false"
    with pytest.raises(KeyError, match="preprocess.audio.nope"):
        preprocess_video(REAL, "katie", data, cfg={**CFG, "audio": {"nope": 1}}, show_progress=False)


def test_debug_video(katie):
    import av

    out, _, _ = katie
    with av.open(str(out / "debug.mp4")) as c:
        n = sum(1 for _ in c.decode(video=0))
        assert c.streams.audio, "the debug video carries the speech"
    assert n == 200
