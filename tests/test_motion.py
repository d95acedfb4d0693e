"""talkfield.motion: the canonical frame, the motion representation, its statistics and eye openness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkfield import camera, landmarks as lmk, motion


def _shape(seed: int = 0) -> np.ndarray:
    """A face-like 478-point cloud already in the canonical frame (from a deterministic random draw)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(478, 3)) * np.array([0.6, 0.8, 0.3])
    X[33] = [-0.5, -0.2, 0.1]
    X[263] = [0.5, -0.2, 0.1]
    X[10] = [0.0, -1.0, 0.2]
    X[152] = [0.0, 1.0, 0.1]
    return motion.normalize_shape(X)[0]


def _random_similarity(rng, n):
    R = camera.rotation_matrix(*rng.uniform(-0.4, 0.4, size=(3, n)))
    s = rng.uniform(50, 200, size=n)
    t = rng.uniform(-300, 300, size=(n, 3))
    return s, R, t


def test_similarity_align_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    X = _shape()
    s, R, t = _random_similarity(rng, 5)
    Y = motion.apply_similarity(np.broadcast_to(X, (5, 478, 3)), s, R, t)
    s2, R2, t2 = motion.similarity_align(Y, X)
    back = motion.apply_similarity(Y, s2, R2, t2)
    np.testing.assert_allclose(back, np.broadcast_to(X, back.shape), atol=1e-9)
    np.testing.assert_allclose(s2, 1 / s, rtol=1e-9)
    assert np.allclose(np.linalg.det(R2), 1.0)


def test_normalize_shape_head_units_origin_axes():
    X = _shape(3)
    rng = np.random.default_rng(2)
    s, R, t = _random_similarity(rng, 1)
    Y = motion.apply_similarity(X, s[0], R[0], t[0])
    N, s2, R2, t2 = motion.normalize_shape(Y)
    a, b = lmk.OUTER_EYE_CORNERS
    assert abs(np.linalg.norm(N[b] - N[a]) - 1) < 1e-12
    np.testing.assert_allclose(N[lmk.RIGID].mean(0), 0, atol=1e-12)
    d = N[b] - N[a]
    assert d[0] > 0.99 and abs(d[1]) < 1e-9 and abs(d[2]) < 1e-9  # x from the right to the left eye corner
    assert N[152, 1] > N[10, 1]  # y down
    np.testing.assert_allclose(N, X, atol=1e-9)  # X was already canonical: the same shape comes back


def test_canonicalize_undoes_per_frame_similarities_and_keeps_expression():
    rng = np.random.default_rng(4)
    X = _shape(5)
    T = 40
    expr = np.zeros((T, 478, 3))
    open_ = np.sin(np.linspace(0, 6, T))
    expr[:, lmk.LIPS, 1] = 0.05 * open_[:, None]  # lips move, the rigid subset does not
    s, R, t = _random_similarity(rng, T)
    frames = motion.apply_similarity(X + expr, s, R, t)
    fit = motion.canonicalize(frames)
    assert fit.canonical.shape == (T, 478, 3) and fit.mean_shape.shape == (478, 3)
    # the rigid subset is still; the lips keep their motion
    np.testing.assert_allclose(fit.canonical[:, lmk.RIGID], np.broadcast_to(fit.mean_shape[lmk.RIGID],
                                                                            (T, len(lmk.RIGID), 3)), atol=1e-8)
    off = motion.offsets(fit.canonical, fit.mean_shape)
    assert off.shape == (T, 68, 3)
    mouth_y = off[:, 48:68, 1].mean(1)
    assert np.corrcoef(mouth_y, open_)[0, 1] > 0.999
    # the recovered per-frame transform maps each frame onto the canonical frame
    np.testing.assert_allclose(motion.apply_similarity(frames, fit.s, fit.R, fit.t), fit.canonical, atol=1e-9)


def test_offsets_roundtrip_and_stats():
    rng = np.random.default_rng(6)
    mean = _shape(7)
    lms = mean + 0.01 * rng.normal(size=(50, 478, 3))
    off = motion.offsets(lms, mean)
    np.testing.assert_allclose(motion.from_offsets(off, mean), lmk.to68(lms), atol=1e-12)
    st = motion.motion_stats(off)
    flat = off.reshape(50, 204)
    assert st.shape == (4, 204) and st.dtype == np.float32
    np.testing.assert_allclose(st[0], flat.mean(0), atol=1e-6)
    np.testing.assert_allclose(st[1], flat.std(0), atol=1e-6)
    np.testing.assert_allclose(st[2], np.quantile(flat, 0.03, axis=0), atol=1e-6)
    np.testing.assert_allclose(st[3], np.quantile(flat, 0.97, axis=0), atol=1e-6)
    assert list(motion.STAT_ROWS) == ["mean", "std", "q03", "q97"]


def test_zscore_roundtrip_numpy_and_torch():
    rng = np.random.default_rng(8)
    off = 0.02 * rng.normal(size=(30, 68, 3))
    st = motion.motion_stats(off)
    z = motion.zscore(off, st)
    assert z.shape == (30, 204)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-3)
    np.testing.assert_allclose(motion.unzscore(z, st), off, atol=1e-6)
    zt = motion.zscore(torch.tensor(off, dtype=torch.float32), st)
    assert isinstance(zt, torch.Tensor) and zt.shape == (30, 204)
    np.testing.assert_allclose(zt.numpy(), z, atol=1e-4)
    back = motion.unzscore(zt, st)
    assert back.shape == (30, 68, 3)
    np.testing.assert_allclose(back.numpy(), off, atol=1e-6)
    # flattened input works too
    np.testing.assert_allclose(motion.zscore(off.reshape(30, 204), st), z, atol=1e-6)


def test_eye_openness_definition():
    ratio = np.array([0.05, 0.1, 0.2, 0.3, 0.35])
    q03, q97 = 0.1, 0.3
    eo = motion.eye_openness(ratio, q03, q97)
    np.testing.assert_allclose(eo, [0, 0, 0.5, 1, 1], atol=1e-6)
    et = motion.eye_openness(torch.tensor(ratio), q03, q97)
    np.testing.assert_allclose(et.numpy(), eo, atol=1e-6)
    r = np.random.default_rng(0).uniform(0.1, 0.4, 1000)
    lo, hi = motion.eye_quantiles(r)
    assert lo == pytest.approx(np.quantile(r, 0.03)) and hi == pytest.approx(np.quantile(r, 0.97))
    e = motion.eye_openness(r, lo, hi)
    assert 0.02 < (e == 0).mean() < 0.04 and 0.02 < (e == 1).mean() < 0.04


def test_eye_openness_from_offsets_matches_full_mesh():
    """Inference derives eye openness from 68-point offsets; it equals the value from the full mesh."""
    rng = np.random.default_rng(9)
    mean = _shape(10)
    lms = mean + 0.01 * rng.normal(size=(20, 478, 3))
    close = np.linspace(0, 1, 20)
    # close the eyes progressively: lower lids move up to the upper lids
    for up, lo in lmk.EYELID_PAIRS:
        lms[:, lo] += close[:, None] * (lms[:, up] - lms[:, lo])
    ratio = lmk.eye_ratio(lms)
    assert np.all(np.diff(ratio) < 0)
    q = motion.eye_quantiles(ratio)
    full = motion.eye_openness(ratio, *q)
    off = motion.offsets(lms, mean)
    np.testing.assert_allclose(motion.eye_openness_from_offsets(off, mean, *q), full, atol=1e-6)
