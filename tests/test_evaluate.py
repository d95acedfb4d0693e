"""Evaluation metrics on synthetic inputs with known answers, LMD mean-centring, reports (JSON + markdown) and
their reading by experiments/collect.py. Fast; the end-to-end runs are in test_evaluate_e2e.py (slow)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from talkfield import evaluation as ev
from talkfield import landmarks as lmk


def _frames(n=2, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, s, s, 3, generator=g)


def test_psnr_of_a_known_error_and_face_region():
    target = torch.zeros(2, 16, 16, 3)
    pred = target.clone()
    pred[:, :, :8] = 0.1  # left half off by 0.1 (MSE 0.005 over the frame), right half exact
    face = torch.zeros(2, 16, 16, dtype=torch.bool)
    face[:, :, 8:] = True  # the face region sees no error
    m = ev.image_metrics(pred, target, face)
    np.testing.assert_allclose(m["psnr"], -10 * math.log10(0.005), atol=1e-4)
    assert (m["psnr_face"] >= 99.9).all()  # MSE 0 is clamped at 1e-10 -> 100 dB
    face[:, :, :] = False
    face[:, 0, 0] = True  # a one-pixel face inside the erroneous half: PSNR of MSE 0.01 = 20 dB
    np.testing.assert_allclose(ev.image_metrics(pred, target, face)["psnr_face"], 20.0, atol=1e-4)


def test_ssim_is_one_on_identical_frames_and_drops_with_noise():
    a = _frames()
    face = torch.ones(2, 32, 32, dtype=torch.bool)
    same = ev.image_metrics(a, a.clone(), face)
    np.testing.assert_allclose(same["ssim"], 1.0, atol=1e-5)
    noisy = (a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (ev.image_metrics(noisy, a, face)["ssim"] < 0.9).all()


def test_empty_face_region_gives_nan_not_a_number_from_nothing():
    a = _frames()
    m = ev.image_metrics(a, a * 0.5, torch.zeros(2, 32, 32, dtype=torch.bool))
    assert np.isnan(m["psnr_face"]).all() and np.isnan(ev.nanmean(m["psnr_face"]))


def test_lpips_is_passed_per_frame_inputs_in_0_1():
    calls = []

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, p, t, normalize):
            calls.append((p.shape, normalize, float(p.max()) <= 1.0))
            return (p - t).abs().mean((1, 2, 3)).reshape(-1, 1, 1, 1)

    a = _frames(3)
    out = ev.image_metrics(a, torch.zeros_like(a), torch.ones(3, 32, 32, dtype=torch.bool), Fake(), batch=2)
    np.testing.assert_allclose(out["lpips"], a.mean((1, 2, 3)).numpy(), rtol=1e-6)
    assert calls[0] == (torch.Size([2, 3, 32, 32]), True, True) and len(calls) == 2


def _mesh(seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(100, 400, (1, lmk.NUM_MESH, 3)).astype(np.float32)


def test_lmd_is_mean_centred_and_scaled_to_512():
    real = _mesh()
    moved = real.copy()
    moved[..., :2] += np.array([37.0, -12.0])  # the whole face moves: the mouth's shape is the same
    assert ev.lmd(moved, real, 512)[0] == pytest.approx(0.0, abs=1e-4)
    # displace mouth points by (3, 4) with alternating sign: the mean stays, every point is 5 px off
    pred = real.copy()
    signs = np.where(np.arange(20) % 2 == 0, 1.0, -1.0)[:, None]
    pred[0, lmk.LIPS, :2] += signs * np.array([3.0, 4.0])
    assert ev.lmd(pred, real, 512)[0] == pytest.approx(5.0, abs=1e-4)
    assert ev.lmd(pred, real, 256)[0] == pytest.approx(10.0, abs=1e-4)  # 5 px at 256 is 10 px at 512
    other = real.copy()
    other[0, lmk.RIGID, :2] += 50.0  # non-mouth points do not count
    assert ev.lmd(other, real, 512)[0] == pytest.approx(0.0, abs=1e-4)


def test_lmd_marks_undetected_frames_nan_and_the_mean_skips_them():
    real = np.concatenate([_mesh(0), _mesh(1)])
    pred = real.copy()
    pred[1, lmk.LIPS[0], 0] += 20.0  # one point 20 px off: mean-centred error is not zero
    d = ev.lmd(pred, real, 512, valid=np.array([True, False]))
    assert d[0] == pytest.approx(0.0, abs=1e-4) and np.isnan(d[1])
    assert ev.nanmean(d) == pytest.approx(0.0, abs=1e-4)
    assert ev.lmd(pred, real, 512)[1] > 0.5


def test_mouth_points_are_the_68_layout_mouth_and_need_478_points():
    pts = np.arange(lmk.NUM_MESH * 3, dtype=np.float32).reshape(lmk.NUM_MESH, 3)
    mp = ev.mouth_points(pts)
    assert mp.shape == (20, 2)
    np.testing.assert_array_equal(mp, pts[lmk.LM68_FROM_478[48:68], :2])
    with pytest.raises(ValueError, match="478"):
        ev.mouth_points(pts[:68])


def test_detected_canonical_undoes_a_similarity_transform():
    from talkfield.motion import normalize_shape

    mean = normalize_shape(_mesh(3)[0].astype(np.float64))[0]
    c, s = math.cos(0.3), math.sin(0.3)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    seen = (120.0 * mean @ R.T + np.array([256.0, 250.0, 3.0]))[None]
    canon = ev.detected_canonical(seen, mean)
    np.testing.assert_allclose(canon[0], mean, atol=1e-6)


def test_truth_errors_known_values():
    from talkfield.motion import normalize_shape

    base = normalize_shape(_mesh(4)[0].astype(np.float64))[0]
    canon = np.stack([base, base])
    op, wd = lmk.mouth_opening(canon), lmk.lip_width(canon)
    e = ev.truth_errors(canon, op + np.array([0.01, -0.03]), wd + 0.02)
    assert e["mouth_mae"] == pytest.approx(0.02) and e["width_mae"] == pytest.approx(0.02)
    canon[1] = np.nan
    assert ev.truth_errors(canon, op, wd)["mouth_mae"] == pytest.approx(0.0)


def test_renders_round_trip_losslessly(tmp_path):
    imgs = (np.random.default_rng(0).uniform(0, 255, (3, 24, 24, 3))).astype(np.uint8)
    frames = np.array([181, 182, 183])
    d = ev.save_renders(tmp_path, "oracle", frames, imgs)
    assert sorted(p.name for p in d.glob("*.png")) == ["000181.png", "000182.png", "000183.png"]
    np.testing.assert_array_equal(ev.load_renders(tmp_path, "oracle", frames), imgs)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ev.load_renders(tmp_path, "oracle", np.array([184]))


def test_face_crops_are_square_bgr_and_pad_outside_the_frame():
    img = np.zeros((1, 64, 64, 3), np.uint8)
    img[..., 0] = 200  # red in RGB
    crops = ev.face_crops(img, np.array([[16, 16, 48, 48]]), out=32)
    assert crops.shape == (1, 32, 32, 3)
    assert crops[0, 16, 16, 2] == 200 and crops[0, 16, 16, 0] == 0  # BGR
    edge = ev.face_crops(img, np.array([[-20, -20, 10, 10]]), out=32)
    assert edge[0, 0, 0].tolist() == [110, 110, 110]


def _result():
    return {
        "subject": "tiny", "system": "head only", "frames": [181, 200], "n_frames": 19, "resolution": 512,
        "ground_truth": "head-stage target (background replaced by the plate, the frame's own torso)",
        "face_dilate": 8, "checkpoints": {"head": "/x/last.ckpt", "torso": None, "audio2motion": "/y/last.ckpt"},
        "device": "CPU 2 cores", "wall_s": 3.2, "modes": ["oracle", "self"], "lpips_variant": "stlpips-alex",
        "audio_features": "mel", "notes": ["a note"],
        "metrics": {"oracle/psnr": 31.234, "oracle/lpips": 0.0412, "oracle/lmd": float("nan"), "oracle/lmd_frames": 0,
                    "self/psnr": 29.5, "self/lmd": 3.1, "real/sample_mouth_mae": 0.01},
        "landmarks": {"lipsync": {"trained_on": [{"subject": "tiny", "split": "train", "frames": [0, 136]}]}},
    }


def test_report_names_lpips_variant_audio_features_and_writes_json(tmp_path):
    res = _result()
    j, md = ev.write_report(tmp_path, res)
    text = md.read_text()
    assert "LPIPS (stlpips-alex)" in text and "audio features: mel" in text
    assert "| motion-oracle | 31.23 | 0.0412 | - |" in text  # NaN LMD shows as '-'
    assert "| self-driven | 29.50 | - | 3.1000 |" in text
    assert "real frames (detector reference)" in text and "tiny [0, 136]" in text
    assert "head-stage target" in text and "a note" in text
    back = json.loads(j.read_text())
    assert back["metrics"]["oracle/psnr"] == 31.234 and back["lpips_variant"] == "stlpips-alex"


def test_collect_merges_eval_json_metrics(tmp_path):
    from experiments.collect import load_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "run_summary.json").write_text(json.dumps({"study": "s", "row": "r", "metrics": {"val/psnr": 20.0}}))
    ev.write_report(run, _result())
    data = load_run(run)
    assert data["metrics"]["eval/oracle/psnr"] == 31.234 and data["metrics"]["val/psnr"] == 20.0
    assert data["metrics"]["eval/oracle/lmd_frames"] == 0
