"""Geometry of every index subset of talkfield.landmarks on a real MediaPipe detection (the real clip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from talkfield import landmarks as lmk

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "WDA_KatieHill_000.mp4"


@pytest.fixture(scope="module")
def det():
    """478 detected points (px, px, z scaled like x) on frame 0 and frame 100 of the real clip (frontal)."""
    import av
    import mediapipe as mp

    with av.open(str(REAL)) as c:
        frames = [f.to_ndarray(format="rgb24") for i, f in zip(range(101), c.decode(video=0))]
    out = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as mesh:
        for img in (frames[0], frames[100]):
            res = mesh.process(img)
            h, w = img.shape[:2]
            out.append(np.array([(p.x * w, p.y * h, p.z * w) for p in res.multi_face_landmarks[0].landmark]))
    return out


def _inside(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    import cv2

    c = poly.astype(np.float32).reshape(-1, 1, 2)
    return np.array([cv2.pointPolygonTest(c, (float(x), float(y)), False) >= 0 for x, y in pts])


def test_index_tables_are_valid():
    assert lmk.LM68_FROM_478.shape == (68,) and len(set(lmk.LM68_FROM_478.tolist())) == 68
    for name in ("LIPS", "JAW", "RIGID", "RIGHT_EYE", "LEFT_EYE", "IRIS", "FACE_OVAL", "OUTER_LIPS", "INNER_LIPS"):
        idx = getattr(lmk, name)
        assert idx.min() >= 0 and idx.max() < lmk.NUM_MESH, name
        assert len(set(idx.tolist())) == len(idx), name
    assert len(lmk.LIPS) == 20 and len(lmk.JAW) == 7
    # every point eye openness uses is in the 68-point layout (inference computes it from 68-point offsets)
    used = set(lmk.EYELID_PAIRS.ravel().tolist()) | set(lmk.EYE_WIDTH_PAIRS.ravel().tolist())
    assert used <= set(lmk.LM68_FROM_478.tolist())


@pytest.mark.parametrize("k", [0, 1])
def test_68_layout_geometry(det, k):
    p = lmk.to68(det[k])[:, :2]
    x, y = p[:, 0], p[:, 1]
    nose_x = x[27:31].mean()
    # jaw runs from the subject's right (image left) via the chin to the left; the chin is its lowest point
    assert x[0] < x[4] < x[8] < x[12] < x[16]
    assert y[8] == y[0:17].max() or y[8] > np.percentile(y[0:17], 90)
    # brows above the eyes, on their own sides
    assert y[17:22].mean() < y[36:42].mean() and y[22:27].mean() < y[42:48].mean()
    assert x[17:22].max() < nose_x < x[22:27].min()
    # nose bridge goes down; nostrils below the bridge
    assert np.all(np.diff(y[27:31]) > 0) and y[31:36].mean() > y[28]
    # right eye (36-41) image-left, left eye (42-47) image-right; outer corners outside inner corners
    assert x[36:42].max() < nose_x < x[42:48].min()
    assert x[36] < x[39] and x[45] > x[42]
    # upper lids above lower lids
    assert y[37] < y[41] and y[38] < y[40] and y[43] < y[47] and y[44] < y[46]
    # mouth below the nose tip, between the jaw sides; outer lip corners left/right of the inner ones
    assert y[48:68].min() > y[30]
    assert x[0] < x[48:68].min() and x[48:68].max() < x[16]
    assert x[48] < x[60] and x[54] > x[64]


@pytest.mark.parametrize("k", [0, 1])
def test_subsets_geometry(det, k):
    P = det[k][:, :2]
    oval = P[lmk.FACE_OVAL]
    # the oval is a simple closed loop that holds the inner face
    assert _inside(oval, P[lmk.LIPS]).all()
    assert _inside(oval, P[lmk.RIGHT_EYE]).all() and _inside(oval, P[lmk.LEFT_EYE]).all()
    assert _inside(oval, P[lmk.IRIS]).all()
    # lips: 20 points, below the nose tip; inner ring inside the outer ring's hull
    nose_tip = P[4]
    assert (P[lmk.LIPS, 1] > nose_tip[1]).all()
    outer = P[lmk.OUTER_LIPS]
    import cv2

    hull = cv2.convexHull(outer.astype(np.float32))[:, 0]
    assert _inside(hull, P[lmk.INNER_LIPS]).all()
    # jaw points: lower face, below the mouth corners' line on average, spanning the chin
    assert (P[lmk.JAW, 1] > nose_tip[1]).all() and P[lmk.JAW, 1].mean() > P[list(lmk.MOUTH_CORNERS), 1].mean()
    assert P[lmk.JAW, 0].min() < P[152, 0] < P[lmk.JAW, 0].max()
    # rigid subset spans the upper face: above the mouth, across both eyes, from forehead to nose
    eye_d = np.linalg.norm(P[263] - P[33])
    rig = P[lmk.RIGID]
    assert (rig[:, 1] < P[list(lmk.MOUTH_CORNERS), 1].min()).all()
    assert np.ptp(rig[:, 0]) > 1.2 * eye_d and np.ptp(rig[:, 1]) > 0.6 * eye_d
    assert rig[:, 0].min() < P[33, 0] and rig[:, 0].max() > P[263, 0]
    # eyes: contours on their sides holding their iris centre (468 right eye, 473 left eye)
    assert _inside(P[lmk.RIGHT_EYE], P[468:469]).all() and _inside(P[lmk.LEFT_EYE], P[473:474]).all()
    assert P[lmk.RIGHT_EYE, 0].max() < P[lmk.LEFT_EYE, 0].min()
    r, l = lmk.OUTER_EYE_CORNERS
    assert P[r, 0] < P[l, 0]
    for up, lo in lmk.EYELID_PAIRS:
        assert P[up, 1] < P[lo, 1]
    for outer_c, inner_c in lmk.EYE_WIDTH_PAIRS:
        assert abs(P[outer_c, 0] - P[4, 0]) > abs(P[inner_c, 0] - P[4, 0])
    a, b = lmk.MOUTH_CORNERS
    assert P[a, 0] < P[b, 0]
    up, lo = lmk.INNER_LIP_MID
    assert P[up, 1] <= P[lo, 1]


def test_measurements_on_real_detection(det):
    for d in det:
        r = lmk.eye_ratio(d)
        assert 0.1 < r < 0.5
        assert lmk.eye_ratio(lmk.to68(d)) == pytest.approx(r)
        assert 0 <= lmk.mouth_opening(d) < lmk.lip_width(d)
