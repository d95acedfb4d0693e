"""Stage 5: the per-frame label map (talkfield.dataset.LABELS) from MediaPipe selfie segmentation + landmarks.

person = selfie-segmentation probability > threshold. With the tracked landmarks [478] of the frame:
- face = the filled face oval (FACE_OVAL polygon); lips = filled outer-lip polygon; eyes = filled eye contours;
- the head/body boundary is the jaw line (lower half of the face oval) continued sideways from the ear points
  (the oval's widest points) as horizontal lines: person pixels above it and outside the face are hair;
- below it, person pixels in the neck band (between the jaw corners, down to 0.6 face heights under the chin)
  are neck, the rest torso.
"""

from __future__ import annotations

import numpy as np

from talkfield import landmarks as lmk
from talkfield.dataset import LABELS

_OVAL = lmk.FACE_OVAL
_LIP_OUTER = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146])


def head_boundary(pts: np.ndarray, W: int) -> np.ndarray:
    """y of the head/body boundary for every image column: [W] float (jaw line, flat beyond the ears)."""
    oval = pts[_OVAL, :2]
    left_i, right_i = int(np.argmin(oval[:, 0])), int(np.argmax(oval[:, 0]))
    # the lower chain of the oval between its leftmost and rightmost points (passing the chin, max y)
    n = len(oval)
    chain_a = [oval[(left_i + k) % n] for k in range((right_i - left_i) % n + 1)]
    chain_b = [oval[(right_i + k) % n] for k in range((left_i - right_i) % n + 1)]
    lower = np.asarray(chain_a if np.mean([p[1] for p in chain_a]) > np.mean([p[1] for p in chain_b]) else chain_b)
    lower = lower[np.argsort(lower[:, 0])]
    xs = np.arange(W) + 0.5
    return np.interp(xs, lower[:, 0], lower[:, 1])  # held flat beyond the ear points


def label_map(person: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Label map [H,W] uint8 from a person mask [H,W] bool and the frame's landmarks [478,2+] (px)."""
    import cv2

    H, W = person.shape
    lab = np.zeros((H, W), np.uint8)
    p2 = pts[:, :2]
    ys = np.arange(H)[:, None] + 0.5
    bound = head_boundary(pts, W)[None, :]
    above = ys < bound
    face_h = float(p2[:, 1].max() - p2[:, 1].min())
    chin_y = float(p2[152, 1])
    jaw = lmk.to68(pts)[:, :2]
    nx0, nx1 = float(jaw[4, 0]), float(jaw[12, 0])
    xs = np.arange(W)[None, :] + 0.5
    neck_band = (xs > nx0) & (xs < nx1) & (ys < chin_y + 0.6 * face_h)
    lab[person & ~above] = LABELS["torso"]
    lab[person & ~above & neck_band] = LABELS["neck"]
    lab[person & above] = LABELS["hair"]
    face = np.zeros((H, W), np.uint8)
    cv2.fillPoly(face, [np.round(p2[_OVAL] * 4).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=2)
    lab[face > 0] = LABELS["face"]
    eyes = np.zeros((H, W), np.uint8)
    for ring in (lmk.RIGHT_EYE, lmk.LEFT_EYE):
        cv2.fillPoly(eyes, [np.round(p2[ring] * 4).astype(np.int32)], 1, shift=2)
    lab[eyes > 0] = LABELS["eyes"]
    lips = np.zeros((H, W), np.uint8)
    cv2.fillPoly(lips, [np.round(p2[_LIP_OUTER] * 4).astype(np.int32)], 1, shift=2)
    lab[lips > 0] = LABELS["lips"]
    return lab


class PersonSegmenter:
    """MediaPipe selfie segmentation (general 256x256 model): image [H,W,3] RGB -> probability [H,W] float32."""

    def __init__(self):
        import mediapipe as mp

        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return self._seg.process(img).segmentation_mask

    def close(self):
        self._seg.close()
