"""The motion representation and eye openness (CONTRACTS.md section 4): the one module that defines them.

Canonical frame: each frame's 3D landmarks are similarity-aligned on `landmarks.RIGID` to the person's mean
shape. Head units: the outer eye corners (`landmarks.OUTER_EYE_CORNERS`) are 1.0 apart in the mean shape; the
origin is the centroid of the rigid subset; the axes follow `talkfield.camera` (x towards the subject's left,
y down towards the chin, z into the face), so a frontal camera has R = I.

Motion: canonical offsets of the 68-point layout from the mean shape, [T,68,3] in head units (204 numbers per
frame). Statistics: rows (mean, std, q03, q97) over the 204 numbers, [4,204]; the fields see `zscore(offsets)`.

Eye openness: `landmarks.eye_ratio` (mean eyelid gap over eye width, both eyes) mapped to [0,1] by the person's
3%/97% quantiles with `eye_openness`. Preprocessing, the field's eye condition, Audio2Motion's blink flag and
blink synthesis all call these functions. The functions accept numpy arrays; `zscore`, `unzscore` and
`eye_openness` also accept torch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from talkfield import landmarks as lmk

EPS = 1e-6
STAT_ROWS = ("mean", "std", "q03", "q97")
"""Row order of the [4,204] motion statistics."""
EYE_QUANTILES = (0.03, 0.97)


# --------------------------------------------------------------------------------------------------------------
# similarity alignment and the canonical frame
# --------------------------------------------------------------------------------------------------------------
def similarity_align(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None):
    """Least-squares similarity (Umeyama) taking src onto dst: dst ~ s * src @ R.T + t.

    src: [..., N, 3], dst: [N, 3] or [..., N, 3], weights: [N] or None.
    Returns s [...], R [..., 3, 3] (proper rotation), t [..., 3].
    """
    src = np.asarray(src, np.float64)
    dst = np.broadcast_to(np.asarray(dst, np.float64), src.shape)
    w = np.ones(src.shape[-2]) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s = np.einsum("n,...nd->...d", w, src)
    mu_d = np.einsum("n,...nd->...d", w, dst)
    a = src - mu_s[..., None, :]
    b = dst - mu_d[..., None, :]
    cov = np.einsum("n,...ni,...nj->...ij", w, b, a)  # [...,3,3] dst x src
    U, S, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.ones(S.shape)
    D[..., -1] = d
    R = U @ (D[..., :, None] * Vt)
    var_s = np.einsum("n,...nd->...", w, a * a)
    s = (S * D).sum(-1) / np.maximum(var_s, 1e-12)
    t = mu_d - s[..., None] * np.einsum("...ij,...j->...i", R, mu_s)
    return s, R, t


def apply_similarity(points: np.ndarray, s, R, t) -> np.ndarray:
    """s * points @ R.T + t. points [..., N, 3], s [...], R [..., 3, 3], t [..., 3]."""
    return np.asarray(s)[..., None, None] * np.einsum("...nj,...ij->...ni", points, R) + np.asarray(t)[..., None, :]


def normalize_shape(shape: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Put a 478-point shape into the canonical frame: head units, rigid-centroid origin, camera.py axes.

    shape: [478,3] in a frame whose axes roughly follow camera.py (e.g. MediaPipe's x right, y down, z away).
    Returns (canonical shape [478,3], scale s, rotation R [3,3], translation t [3]) with
    canonical = s * shape @ R.T + t. x points from the subject's right to left outer eye corner, y is the
    forehead-to-chin direction made orthogonal to x, z = x cross y (into the face).
    """
    shape = np.asarray(shape, np.float64)
    r, l = lmk.OUTER_EYE_CORNERS
    x = shape[l] - shape[r]
    s = 1.0 / np.linalg.norm(x)
    x = x * s
    down = shape[152] - shape[10]  # forehead top -> chin
    y = down - x * (down @ x)
    y /= np.linalg.norm(y)
    z = np.cross(x, y)
    R = np.stack([x, y, z])  # rows: new axes in old coordinates
    c = shape[lmk.RIGID].mean(0)
    t = -s * (R @ c)
    return s * shape @ R.T + t, s, R, t


@dataclass
class CanonicalFit:
    """Result of `canonicalize`: mean_shape [478,3], per-frame similarity (s [T], R [T,3,3], t [T,3]) taking
    each frame's points into the canonical frame, and the aligned points canonical [T,478,3] (head units)."""

    mean_shape: np.ndarray
    s: np.ndarray
    R: np.ndarray
    t: np.ndarray
    canonical: np.ndarray


def canonicalize(points: np.ndarray, iters: int = 4, mean_shape: np.ndarray | None = None) -> CanonicalFit:
    """Generalised Procrustes on the rigid subset: align every frame to the person's mean shape.

    points: [T,478,3] per-frame 3D landmarks (any consistent units whose axes roughly follow camera.py,
    e.g. MediaPipe pixel x, y and z scaled by the image width). mean_shape: align to this fixed shape instead
    of estimating one. Returns a CanonicalFit in head units.
    """
    P = np.asarray(points, np.float64)
    rig = lmk.RIGID
    if mean_shape is None:
        ref = normalize_shape(np.median(P, axis=0))[0]
        for _ in range(iters):
            s, R, t = similarity_align(P[:, rig], ref[rig])
            ref = normalize_shape(apply_similarity(P, s, R, t).mean(0))[0]
    else:
        ref = np.asarray(mean_shape, np.float64)
    s, R, t = similarity_align(P[:, rig], ref[rig])
    return CanonicalFit(ref, s, R, t, apply_similarity(P, s, R, t))


# --------------------------------------------------------------------------------------------------------------
# offsets and their statistics
# --------------------------------------------------------------------------------------------------------------
def offsets(canonical: np.ndarray, mean_shape: np.ndarray) -> np.ndarray:
    """Motion: canonical 68-point offsets from the mean shape. canonical [...,478,3], mean_shape [478,3] ->
    [...,68,3] head units."""
    return lmk.to68(np.asarray(canonical)) - lmk.to68(np.asarray(mean_shape))


def from_offsets(off: np.ndarray, mean_shape: np.ndarray) -> np.ndarray:
    """Canonical 68 points from offsets: [...,68,3] + mean shape [478,3] -> [...,68,3] head units."""
    return np.asarray(off) + lmk.to68(np.asarray(mean_shape))


def motion_stats(off: np.ndarray) -> np.ndarray:
    """Statistics of offsets [T,68,3] -> [4,204] float32: rows mean, std, q03, q97 (STAT_ROWS)."""
    x = np.asarray(off, np.float64).reshape(len(off), -1)
    q = np.quantile(x, [0.03, 0.97], axis=0)
    return np.stack([x.mean(0), x.std(0), q[0], q[1]]).astype(np.float32)


def zscore(off, stats):
    """Normalise offsets [...,68,3] (or [...,204]) with stats [4,204]: (x - mean) / max(std, 1e-6).

    Returns the same leading shape as flattened [...,204]. numpy or torch (stats converted to match; torch stats
    are used where they are, so statistics already on the offsets' device cost no host round trip)."""
    mean, std = stats[0], stats[1]
    try:
        import torch

        if isinstance(off, torch.Tensor):
            if not isinstance(stats, torch.Tensor):
                mean, std = np.asarray(mean), np.asarray(std)
            mean = torch.as_tensor(mean, dtype=off.dtype, device=off.device)
            std = torch.as_tensor(std, dtype=off.dtype, device=off.device).clamp_min(EPS)
            if off.dim() >= 2 and tuple(off.shape[-2:]) == (68, 3):
                off = off.reshape(*off.shape[:-2], 204)
            return (off - mean) / std
    except ImportError:  # pragma: no cover
        pass
    x = np.asarray(off, np.float64)
    if x.shape[-2:] == (68, 3):
        x = x.reshape(*x.shape[:-2], 204)
    return ((x - mean) / np.maximum(std, EPS)).astype(np.float32)


def unzscore(z, stats):
    """Inverse of `zscore`: [...,204] -> offsets [...,68,3] head units (numpy or torch)."""
    mean, std = stats[0], stats[1]
    try:
        import torch

        if isinstance(z, torch.Tensor):
            mean = torch.as_tensor(np.asarray(mean), dtype=z.dtype, device=z.device)
            std = torch.as_tensor(np.asarray(std), dtype=z.dtype, device=z.device).clamp_min(EPS)
            return (z * std + mean).reshape(*z.shape[:-1], 68, 3)
    except ImportError:  # pragma: no cover
        pass
    x = np.asarray(z, np.float64) * np.maximum(stats[1], EPS) + stats[0]
    return x.reshape(*x.shape[:-1], 68, 3).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# eye openness
# --------------------------------------------------------------------------------------------------------------
def eye_quantiles(ratio: np.ndarray) -> tuple[float, float]:
    """The person's 3% and 97% quantiles of the raw eye ratio [T] (stored in the dataset manifest)."""
    q03, q97 = np.quantile(np.asarray(ratio, np.float64), EYE_QUANTILES)
    return float(q03), float(q97)


def eye_openness(ratio, q03: float, q97: float):
    """THE eye openness: raw ratio (`landmarks.eye_ratio`, [...]) mapped to [0,1] by the person's quantiles.

    0 = as closed as the person's 3% quantile (a blink), 1 = as open as their 97% quantile; clipped.
    numpy or torch in, same type out.
    """
    span = max(float(q97) - float(q03), EPS)
    try:
        import torch

        if isinstance(ratio, torch.Tensor):
            return ((ratio - q03) / span).clamp(0.0, 1.0)
    except ImportError:  # pragma: no cover
        pass
    return np.clip((np.asarray(ratio, np.float64) - q03) / span, 0.0, 1.0).astype(np.float32)


def eye_openness_from_offsets(off: np.ndarray, mean_shape: np.ndarray, q03: float, q97: float) -> np.ndarray:
    """Eye openness from canonical offsets [...,68,3] (how inference and Audio2Motion derive it): the raw ratio
    of `landmarks.eye_ratio` on the 68-point layout, then `eye_openness`. Returns [...] in [0,1]."""
    return eye_openness(lmk.eye_ratio(from_offsets(off, mean_shape)), q03, q97)
