"""Landmark index subsets of the MediaPipe face mesh (478 points: 468 mesh + 10 iris).

This module is the one place where landmark indices are authored (CONTRACTS.md section 4). Every stage
(preprocessing, the sample generator, the fields, Audio2Motion, evaluation) imports its subsets from here.
Indices refer to the 478-point mesh; "subject's right" is the image left for a frontal face.
`tests/test_landmarks.py` checks the geometry of every subset on a real detection.
"""

from __future__ import annotations

import numpy as np

NUM_MESH = 478
"""Number of MediaPipe face-mesh points with iris refinement."""

LM68_FROM_478 = np.array([
    # jaw 0-16, subject's right ear -> chin -> subject's left ear
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    # right brow 17-21, left brow 22-26
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge 27-30, nostrils 31-35
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # right eye 36-41, left eye 42-47 (outer corner, upper lid x2, inner corner, lower lid x2)
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lips 48-59, inner lips 60-67
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    78, 82, 13, 312, 308, 317, 14, 87,
], dtype=np.int64)
"""[68] indices into the 478-point mesh giving the 68-point layout the field uses."""

JAW68 = np.arange(0, 17)
BROWS68 = np.arange(17, 27)
NOSE68 = np.arange(27, 36)
EYES68 = np.arange(36, 48)
LIPS68 = np.arange(48, 68)
"""Index ranges inside the 68-point layout."""

LIPS = LM68_FROM_478[LIPS68]
"""[20] lip points (outer 12 + inner 8), the field's mouth points for LMD."""

JAW = LM68_FROM_478[5:12]
"""[7] jaw points (68-layout 5..11) that condition the torso field."""

RIGID = np.array([
    10, 151, 9, 109, 67, 103, 338, 297, 332, 108, 337, 69, 299,  # forehead
    168, 6, 197, 195,                                             # nose bridge
    127, 356, 162, 389, 21, 251,                                  # temples
    33, 263, 133, 362,                                            # eye corners (outer, inner)
], dtype=np.int64)
"""Points that expression barely moves: forehead, nose bridge, temples, eye corners."""

OUTER_EYE_CORNERS = (33, 263)
"""(subject's right, subject's left) outer eye corners; their distance is 1.0 head unit."""

RIGHT_EYE = np.array([33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246])
LEFT_EYE = np.array([263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466])
"""Eye contours (closed loops starting at the outer corner, lower lid first)."""

EYELID_PAIRS = np.array([
    # (upper, lower) vertical pairs of the subject's right eye, then the left eye. Only pairs that are also in
    # the 68-point layout, so eye openness can be computed from canonical 68-point offsets at inference.
    (160, 144), (158, 153),
    (387, 373), (385, 380),
], dtype=np.int64)
"""[4,2] upper/lower eyelid pairs used by eye openness (all in LM68_FROM_478)."""

EYE_WIDTH_PAIRS = np.array([(33, 133), (263, 362)], dtype=np.int64)
"""[2,2] (outer, inner) corners of the right and left eye."""

IRIS = np.arange(468, 478)
"""[10] iris points (centre + 4 rim points per eye)."""

OUTER_LIPS = LM68_FROM_478[48:60]
INNER_LIPS = LM68_FROM_478[60:68]
MOUTH_CORNERS = (61, 291)
INNER_LIP_MID = (13, 14)
"""Upper and lower inner-lip midpoints: their gap is the mouth opening."""

FACE_OVAL = np.array([
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
    176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
], dtype=np.int64)
"""[36] face outline as a closed loop (forehead -> subject's left -> chin -> right)."""


def to68(points: np.ndarray) -> np.ndarray:
    """Select the 68-point layout. points: [..., 478, D] -> [..., 68, D]."""
    if points.shape[-2] != NUM_MESH:
        raise ValueError(f"expected {NUM_MESH} landmarks on axis -2, got shape {points.shape}")
    return points[..., LM68_FROM_478, :]


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip gap (lower minus upper midpoint distance). points: [..., 478, D] -> [...]."""
    up, lo = INNER_LIP_MID
    return np.linalg.norm(points[..., lo, :] - points[..., up, :], axis=-1)


def lip_width(points: np.ndarray) -> np.ndarray:
    """Distance between the mouth corners. points: [..., 478, D] -> [...]."""
    a, b = MOUTH_CORNERS
    return np.linalg.norm(points[..., b, :] - points[..., a, :], axis=-1)


def _index_in(points: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Map 478-mesh indices to the layout of `points` (478 or 68 points on axis -2)."""
    n = points.shape[-2]
    if n == NUM_MESH:
        return idx
    if n == len(LM68_FROM_478):
        lookup = {int(v): i for i, v in enumerate(LM68_FROM_478)}
        return np.vectorize(lookup.__getitem__)(idx)
    raise ValueError(f"expected {NUM_MESH} or 68 landmarks on axis -2, got shape {points.shape}")


def eye_ratio(points: np.ndarray) -> np.ndarray:
    """Raw eye openness: mean eyelid gap over eye width, both eyes. points: [..., 478 or 68, D] -> [...].

    This is the un-normalised quantity; `talkfield.motion.eye_openness` maps it to [0, 1] with the
    person's 3%/97% quantiles (the single definition of eye openness, CONTRACTS.md section 4). It gives the
    same value on the full mesh and on its 68-point layout (every point it uses is in both).
    """
    points = np.asarray(points)
    lids = _index_in(points, EYELID_PAIRS)
    wide = _index_in(points, EYE_WIDTH_PAIRS)
    gaps = np.linalg.norm(points[..., lids[:, 0], :] - points[..., lids[:, 1], :], axis=-1)
    widths = np.linalg.norm(points[..., wide[:, 0], :] - points[..., wide[:, 1], :], axis=-1)
    half = len(EYELID_PAIRS) // 2
    right = gaps[..., :half].mean(-1) / np.maximum(widths[..., 0], 1e-8)
    left = gaps[..., half:].mean(-1) / np.maximum(widths[..., 1], 1e-8)
    return 0.5 * (right + left)
