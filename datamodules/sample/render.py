"""Rendering the sample head: deform, pose, project, rasterise triangle ids, then one texture remap.

A general piecewise-affine warp (~0.7 s per 512x512 frame) is too slow for a 60 s sample. Here each frame:
1. deforms the canonical mesh (a few precomputed displacement fields + a weighted jaw rotation) and poses it;
2. rasterises a triangle-id image by painter's order (layer, then depth) with `cv2.fillConvexPoly` (fixed point,
   pixel centres at +0.5), back-facing face triangles culled;
3. evaluates, per covered pixel, its triangle's affine map (pixel -> texture coords and Lambertian shade ratio),
   which is exactly the barycentric interpolation of the vertex attributes;
4. samples the RGBA texture atlas once with `cv2.remap` and composites over the static background plate.
About 20-30 ms per 512x512 frame on one core.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from talkfield.camera import invert_pose, scale_intrinsics

from .face_model import JAW_MAX_DEG, LAYER_FACE, LAYER_PERSON, REF_SIZE, FaceModel

LIGHT = np.array([-0.35, -0.45, -0.82]) / np.linalg.norm([-0.35, -0.45, -0.82])
"""Direction towards the key light in camera coordinates (upper left, in front)."""
AMBIENT = 0.45


@dataclass
class FrameState:
    """Everything that varies per frame. Rotations are [3,3] head/torso-to-camera; offsets [3] in head units
    (camera frame); mouth/eye parameters as in `visemes.ARTICULATORS` and blink closure in [0, 1]."""

    head_R: np.ndarray
    head_t: np.ndarray
    torso_R: np.ndarray
    torso_t: np.ndarray
    jaw: float = 0.0
    close: float = 0.0
    wide: float = 0.0
    round: float = 0.0
    blink: float = 0.0


def _lambert(n: np.ndarray) -> np.ndarray:
    return AMBIENT + (1 - AMBIENT) * np.clip(n @ LIGHT, 0.0, None)


def _rot_x(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


class Renderer:
    """Renders `FaceModel` frames at `size` x `size`. `render(state)` -> (rgb [S,S,3] uint8, uv [478,2] px,
    canonical landmarks [478,3])."""

    def __init__(self, model: FaceModel, size: int):
        self.m = model
        self.size = int(size)
        self.K = scale_intrinsics(model.K_ref, REF_SIZE, self.size)
        s = self.size / REF_SIZE
        th, tw = model.texture.shape[:2]
        dw, dh = max(1, int(round(tw * s))), max(1, int(round(th * s)))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        self.atlas = cv2.resize(model.texture, (dw, dh), interpolation=interp)
        tex_scale = np.array([dw / tw, dh / th])
        self.plate = cv2.resize(model.plate, (self.size, self.size), interpolation=interp)

        n_face, n_extra = len(model.rest), len(model.extra_pos)
        self.n_face, self.n_extra = n_face, n_extra
        self.off_extra, self.off_grid = n_face, n_face + n_extra
        uv = np.concatenate([model.uv_rest, model.extra_uv, model.grid_uv]) * tex_scale
        self.tex_idx = (uv - 0.5).astype(np.float64)  # cv2.remap samples pixel index coordinates
        self.tris = np.concatenate([model.triangles, model.extra_tris + self.off_extra,
                                    model.grid_tris + self.off_grid]).astype(np.int64)
        self.layer = np.concatenate([np.full(len(model.triangles), LAYER_FACE), model.extra_layer,
                                     np.full(len(model.grid_tris), LAYER_PERSON)])
        self.cull = self.layer == LAYER_FACE
        # reference shading (the photo's own lighting is divided out, the new pose's lighting multiplied in)
        self.face_ref_shade = _lambert(model.normals_rest @ model.R_ref.T)
        self.grid_ref_shade = _lambert(model.grid_normals)
        self.grid_can = (model.grid_pos - model.c_ref) @ model.R_ref  # grid in the canonical frame (for the head)
        self._jj, self._ii = np.meshgrid(np.arange(self.size, dtype=np.float32),
                                         np.arange(self.size, dtype=np.float32))
        self.fields = np.stack([model.fields[k] for k in ("close", "wide", "round", "blink")])  # [4,478,3]

    # ------------------------------------------------------------------ geometry
    def deform(self, st: FrameState) -> tuple[np.ndarray, np.ndarray]:
        """Deformed canonical face points [478,3] and extra geometry [N,3] (head units)."""
        m = self.m
        coef = np.array([st.close, st.wide, st.round, st.blink])
        X = m.rest + np.tensordot(coef, self.fields, axes=1)
        R = _rot_x(np.radians(JAW_MAX_DEG) * st.jaw)
        X = X + m.jaw_weight[:, None] * ((X - m.hinge) @ R.T + m.hinge - X)
        E = m.extra_pos + m.extra_jaw[:, None] * ((m.extra_pos - m.hinge) @ R.T + m.hinge - m.extra_pos)
        return X, E

    def head_to_camera(self, st: FrameState) -> np.ndarray:
        """[4,4] world(head canonical)-to-camera transform of this frame: X_cam = R X + t."""
        p = self.m.pivot
        T = np.eye(4)
        T[:3, :3] = st.head_R
        T[:3, 3] = p + self.m.c_ref + st.head_t - st.head_R @ p
        return T

    def c2w(self, st: FrameState) -> np.ndarray:
        """[4,4] camera-to-world pose in the head's canonical frame (talkfield.camera convention)."""
        return invert_pose(self.head_to_camera(st))

    def _project(self, Xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = Xc[:, 2]
        uv = Xc[:, :2] / np.maximum(z[:, None], 1e-6) * self.K[[0, 1], [0, 1]] + self.K[[0, 1], [2, 2]]
        return uv, z

    # ------------------------------------------------------------------ frame
    def render(self, st: FrameState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.m
        X, E = self.deform(st)
        T = self.head_to_camera(st)
        R, t = T[:3, :3], T[:3, 3]
        head_pts = np.concatenate([X, E]) @ R.T + t
        # person grid: blend of the head motion and the torso motion
        g_head = self.grid_can @ R.T + t
        q = m.torso_pivot
        g_torso = (m.grid_pos - q) @ st.torso_R.T + q + st.torso_t
        w = m.grid_head[:, None]
        grid_pts = w * g_head + (1 - w) * g_torso
        pts = np.concatenate([head_pts, grid_pts])
        uv, z = self._project(pts)

        # shading ratio per vertex
        shade = np.ones(len(pts))
        shade[:self.n_face] = _lambert(m.normals_rest @ R.T) / self.face_ref_shade
        Rg = R @ m.R_ref.T  # photo camera frame -> this frame, for the head part of the grid
        gn = w * (m.grid_normals @ Rg.T) + (1 - w) * (m.grid_normals @ st.torso_R.T)
        gn /= np.maximum(np.linalg.norm(gn, axis=1, keepdims=True), 1e-9)
        shade[self.off_grid:] = _lambert(gn) / self.grid_ref_shade
        shade = np.clip(shade, 0.5, 1.6)

        rgb = self.rasterize(uv, z, shade)
        return rgb, uv[:self.n_face].copy(), X

    def rasterize(self, uv: np.ndarray, z: np.ndarray, shade: np.ndarray) -> np.ndarray:
        S = self.size
        xy = uv - 0.5  # pixel index coordinates (OpenCV draws and samples pixel centres at integers)
        tri = self.tris
        a, b, c = xy[tri[:, 0]], xy[tri[:, 1]], xy[tri[:, 2]]
        det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        lo, hi = xy[tri].min(1), xy[tri].max(1)
        keep = (np.abs(det) > 1e-6) & (hi[:, 0] >= -1) & (hi[:, 1] >= -1) & (lo[:, 0] <= S) & (lo[:, 1] <= S)
        keep &= ~(self.cull & (det > 0))  # back-facing face triangles
        keep &= z[tri].min(1) > 1e-3
        idx = np.nonzero(keep)[0]
        depth = z[tri[idx]].mean(1)
        order = idx[np.lexsort((-depth, self.layer[idx]))]  # layer first, far to near within a layer

        attrs = np.concatenate([self.tex_idx, shade[:, None]], axis=1)  # [V,3]
        A0, A1, A2 = attrs[tri[:, 0]], attrs[tri[:, 1]], attrs[tri[:, 2]]
        dx1, dy1 = (b - a)[:, 0:1], (b - a)[:, 1:2]
        dx2, dy2 = (c - a)[:, 0:1], (c - a)[:, 1:2]
        inv = 1.0 / np.where(det == 0, 1.0, det)[:, None]
        ca = ((A1 - A0) * dy2 - (A2 - A0) * dy1) * inv
        cb = ((A2 - A0) * dx1 - (A1 - A0) * dx2) * inv
        cc = A0 - ca * a[:, 0:1] - cb * a[:, 1:2]
        coefs = np.stack([ca, cb, cc], axis=-1).reshape(len(tri), 9).astype(np.float32)  # attr-major

        # the extra last row is "no triangle": maps outside the atlas (transparent), shade 1
        coefs = np.concatenate([coefs, np.array([[0, 0, -10, 0, 0, -10, 0, 0, 1]], np.float32)])
        coefs_t = np.ascontiguousarray(coefs.T)  # [9, F+1]: contiguous gathers per coefficient
        ids = np.full((S, S), len(tri), np.int32)
        fixed = np.round(xy * 16.0).astype(np.int32)
        fill = cv2.fillConvexPoly
        for f in order.tolist():
            fill(ids, fixed[tri[f]], f, lineType=cv2.LINE_8, shift=4)

        maps = []
        for k in range(3):  # texture x, texture y, shade: a * j + b * i + c
            out = np.take(coefs_t[3 * k], ids)
            out *= self._jj
            tmp = np.take(coefs_t[3 * k + 1], ids)
            tmp *= self._ii
            out += tmp
            out += np.take(coefs_t[3 * k + 2], ids)
            maps.append(out)
        tex = cv2.remap(self.atlas, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=(0, 0, 0, 0))
        rgb = cv2.multiply(tex[..., :3], cv2.merge([maps[2]] * 3), dtype=cv2.CV_8U)  # Lambertian shade ratio
        alpha = tex[..., 3].astype(np.float32)
        alpha *= 1.0 / 255.0
        # blendLinear normalises by the weight sum, which is 1 here: alpha * rgb + (1 - alpha) * plate
        return cv2.blendLinear(rgb, self.plate, alpha, 1.0 - alpha)
