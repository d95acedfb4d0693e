"""Preprocessing accuracy on the synthetic sample against its ground truth (never against the detections that
were fitted): the numbers of issue 4. The 30 s, 512 px sample is slow; the tiny 6 s subject gives a fast check
of the timing-related figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.preprocess.evaluate import ground_truth_errors


def test_tiny_subject_timing_against_ground_truth(tiny_subject):
    data_dir, name = tiny_subject
    sample_dir = data_dir.parent / "sources" / name
    e = ground_truth_errors(data_dir / name, sample_dir)
    assert abs(e["av_offset_frames"]) <= 1
    assert abs(e["lip_lag_frames"]) <= 1 and e["lip_corr"] > 0.8
    assert e["rot_median_deg"] < e["rot_still_median_deg"]


@pytest.fixture(scope="module")
def sample_errors(tmp_path_factory):
    from datamodules.preprocess import preprocess_video
    from datamodules.sample import generate_sample

    root = tmp_path_factory.mktemp("sample")
    video = generate_sample(root / "src", seed=0, duration=30.0, size=512)
    out = preprocess_video(Path(video), "sample", root / "data", show_progress=False)
    return ground_truth_errors(out, root / "src")


@pytest.mark.slow
def test_sample_head_rotation(sample_errors):
    e = sample_errors
    assert e["rot_median_deg"] < 1.0
    assert e["rot_p95_deg"] < 3.0
    assert e["rot_ratio"] >= 3.0


@pytest.mark.slow
def test_sample_reprojection_and_jitter(sample_errors):
    assert sample_errors["reproj_median_px"] < 2.0
    assert sample_errors["jitter_px"] <= 0.3


@pytest.mark.slow
def test_sample_lips_blinks_audio(sample_errors):
    e = sample_errors
    assert abs(e["lip_lag_frames"]) <= 1
    assert e["blink_f1"] >= 0.9 and e["blinks_true"] >= 5
    assert abs(e["av_offset_frames"]) <= 1
