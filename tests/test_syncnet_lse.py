"""SyncNet (user-given weights): real loading code checked on a small saved model we build; MFCCs; scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from networks.syncnet_lse import SyncNetS, load_syncnet, lse_scores, mfcc_psf, offset_scores


def test_mfcc_shape_rate_and_energy():
    sr = 16000
    t = np.arange(sr) / sr
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.float64)
    feat = mfcc_psf(tone, sr)
    assert feat.shape == (99, 13)  # 1 + ceil((16000 - 400) / 160) frames at 100 Hz
    quiet = mfcc_psf(tone * 0.1, sr)
    assert np.allclose(feat[:, 0] - quiet[:, 0], np.log(100.0), atol=1e-6)  # c0 = log frame energy


def test_saved_state_dict_loads_strictly(tmp_path):
    torch.manual_seed(0)
    model = SyncNetS().eval()
    path = tmp_path / "syncnet_v2.model"
    torch.save(model.state_dict(), path)
    loaded = load_syncnet(path)
    x = torch.randn(2, 1, 13, 20)
    assert torch.allclose(loaded.forward_aud(x), model.forward_aud(x))
    assert loaded.forward_lip(torch.randn(2, 3, 5, 224, 224)).shape == (2, 1024)
    bad = {k.replace("netcnnlip", "lipnet"): v for k, v in model.state_dict().items()}
    torch.save(bad, tmp_path / "bad.model")
    with pytest.raises(ValueError, match="not a SyncNet"):
        load_syncnet(tmp_path / "bad.model")
    with pytest.raises(FileNotFoundError, match="syncnet=<path>"):
        load_syncnet(tmp_path / "missing.model")


def test_offset_search_recovers_a_planted_shift():
    torch.manual_seed(0)
    sig = torch.randn(60, 16)
    for shift in (-4, 0, 3):
        af = torch.roll(sig, shifts=shift, dims=0)
        out = offset_scores(sig[10:50], af[10:50], vshift=6)
        assert out["offset"] == -shift
        # at the true offset only the few frames whose partner falls off the clip edge differ
        assert out["lse_d"] < 0.25 * (out["lse_d"] + out["lse_c"]) and out["lse_c"] > 1.0


def test_lse_scores_run_end_to_end_on_a_clip():
    torch.manual_seed(0)
    model = SyncNetS().eval()
    T = 12
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 255, (T, 224, 224, 3), dtype=np.uint8)
    audio = rng.standard_normal(640 * T).astype(np.float32) * 0.1
    out = lse_scores(model, faces, audio, vshift=3)
    assert np.isfinite(out["lse_d"]) and out["lse_c"] >= 0 and -3 <= out["offset"] <= 3
    with pytest.raises(ValueError, match="too short"):
        lse_scores(model, faces[:4], audio[:640 * 4])
