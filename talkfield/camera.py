"""Camera and coordinate conventions: the one module that owns every conversion (CONTRACTS.md section 3).

- Images: pixel (u, v), u right, v down, pixel centres at +0.5. Intrinsics K [3,3] are stored at the dataset
  resolution (512 by default) and scaled for any render resolution by `scale_intrinsics`.
- Camera frame: OpenCV (x right, y down, z forward).
- Poses are camera-to-world matrices [4,4] in the head's canonical frame: the head stays still, the camera moves.
  World units are head units (the outer eye corners are 1.0 apart); the origin is the centroid of the rigid
  landmark subset. The canonical frame's axes are x towards the subject's left (image right when frontal),
  y down (towards the chin), z into the face (away from a frontal camera), so a frontal camera has R = I and
  sits at negative z.
- The NeRF box, near/far and ray generation derive from these; nothing else defines a convention.
- Rays and projections are computed in float32 also inside a bf16 autocast region (bf16-mixed training, bf16
  inference): a bf16 matmul rounds the rotation to 3 significant digits, about 1 px (up to 3 px) of ray error at a
  256 px render.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext

import numpy as np
import torch

HEAD_AABB = (-1.5, -2.0, -1.2, 1.5, 1.8, 1.5)
"""Default head box in head units (xmin, ymin, zmin, xmax, ymax, zmax): hair above, chin and neck top below."""


def scale_intrinsics(K, src_size: int | tuple[int, int], dst_size: int | tuple[int, int]):
    """Scale intrinsics from one image size to another. K: [..., 3, 3] (numpy or torch); sizes (W, H) or int.

    With pixel centres at +0.5 the pixel grid scales as a whole, so fx, fy, cx, cy all scale by dst/src.
    """
    sw, sh = (src_size, src_size) if isinstance(src_size, int) else src_size
    dw, dh = (dst_size, dst_size) if isinstance(dst_size, int) else dst_size
    out = K.clone() if isinstance(K, torch.Tensor) else np.array(K, dtype=np.float64, copy=True)
    out[..., 0, :] = out[..., 0, :] * (dw / sw)
    out[..., 1, :] = out[..., 1, :] * (dh / sh)
    return out


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """K [3,3] float64 from focal lengths and principal point (pixels)."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def pixel_centers(H: int, W: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates u [H,W], v [H,W] (u right, v down, centres at +0.5)."""
    v, u = torch.meshgrid(torch.arange(H, device=device, dtype=dtype) + 0.5,
                          torch.arange(W, device=device, dtype=dtype) + 0.5, indexing="ij")
    return u, v


@functools.lru_cache(maxsize=8)
def _pixel_rows(H: int, W: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`pixel_centers` flattened to [1, H*W] each, kept per (size, device): every training step asks for the same
    grid (read-only; callers must not write into it)."""
    u, v = pixel_centers(H, W, device=device)
    return u.reshape(1, -1), v.reshape(1, -1)


def full_precision(device: torch.device | str):
    """A context that turns autocast off on `device` (float32 geometry inside bf16/fp16 autocast regions)."""
    kind = torch.device(device).type
    return torch.autocast(kind, enabled=False) if kind in ("cuda", "cpu") else nullcontext()


def get_rays(c2w: torch.Tensor, K: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through every pixel centre.

    c2w: [B,4,4] or [4,4] camera-to-world; K: [3,3] or [B,3,3] at resolution (W, H).
    Returns rays_o [B, H*W, 3] and unit rays_d [B, H*W, 3] (row-major pixel order), float32 (also under autocast).
    """
    with full_precision(c2w.device):
        return _get_rays(c2w, K, H, W)


def _get_rays(c2w: torch.Tensor, K: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    squeeze = c2w.dim() == 2
    c2w = c2w.reshape(-1, 4, 4).float()
    K = K.float().to(c2w.device)
    if K.dim() == 2:
        K = K.expand(c2w.shape[0], 3, 3)
    u, v = _pixel_rows(int(H), int(W), c2w.device)
    x = (u - K[:, 0, 2:3]) / K[:, 0, 0:1]
    y = (v - K[:, 1, 2:3]) / K[:, 1, 1:2]
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [B, HW, 3]
    rays_d = dirs_cam @ c2w[:, :3, :3].transpose(1, 2)
    rays_d = rays_d / rays_d.norm(dim=-1, keepdim=True)
    rays_o = c2w[:, None, :3, 3].expand_as(rays_d)
    if squeeze:
        return rays_o[0], rays_d[0]
    return rays_o, rays_d


def invert_pose(T):
    """Invert rigid transforms [...,4,4] (numpy or torch): camera-to-world <-> world-to-camera."""
    if isinstance(T, torch.Tensor):
        R = T[..., :3, :3]
        t = T[..., :3, 3:]
        out = torch.zeros_like(T)
        out[..., :3, :3] = R.transpose(-1, -2)
        out[..., :3, 3:] = -R.transpose(-1, -2) @ t
        out[..., 3, 3] = 1.0
        return out
    T = np.asarray(T)
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    out = np.zeros_like(T)
    out[..., :3, :3] = np.swapaxes(R, -1, -2)
    out[..., :3, 3:] = -np.swapaxes(R, -1, -2) @ t
    out[..., 3, 3] = 1.0
    return out


def project(points, c2w, K):
    """Project world points into a camera. points [..., N, 3], c2w [..., 4, 4], K [3,3] (numpy, or torch
    tensors: differentiable, on their device).

    Returns uv [..., N, 2] in pixels (centres at +0.5 convention) and camera depth z [..., N]; torch: at least
    float32, also under autocast.
    """
    if isinstance(points, torch.Tensor):
        with full_precision(points.device):
            if points.dtype in (torch.bfloat16, torch.float16):
                points = points.float()
            w2c = invert_pose(c2w.to(points.dtype))
            K = torch.as_tensor(K, dtype=points.dtype, device=points.device)
            cam = points @ w2c[..., :3, :3].transpose(-1, -2) + w2c[..., None, :3, 3]
            z = cam[..., 2]
            uv = cam[..., :2] / z.clamp_min(1e-9)[..., None]
            return uv * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]]), z
    w2c = invert_pose(c2w)
    cam = points @ np.swapaxes(w2c[..., :3, :3], -1, -2) + w2c[..., None, :3, 3]
    z = cam[..., 2]
    uv = cam[..., :2] / np.maximum(z[..., None], 1e-9)
    uv = uv * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])
    return uv, z


def rotation_matrix(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Head rotation from angles in radians: yaw about y, pitch about x, roll about z; R = Ry @ Rx @ Rz.

    Shapes broadcast; returns [..., 3, 3]. Used by the sample generator and pose error metrics.
    """
    yaw, pitch, roll = np.broadcast_arrays(np.asarray(yaw, float), np.asarray(pitch, float), np.asarray(roll, float))
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    o, z = np.ones_like(cy), np.zeros_like(cy)
    Ry = np.stack([np.stack([cy, z, sy], -1), np.stack([z, o, z], -1), np.stack([-sy, z, cy], -1)], -2)
    Rx = np.stack([np.stack([o, z, z], -1), np.stack([z, cp, -sp], -1), np.stack([z, sp, cp], -1)], -2)
    Rz = np.stack([np.stack([cr, -sr, z], -1), np.stack([sr, cr, z], -1), np.stack([z, z, o], -1)], -2)
    return Ry @ Rx @ Rz


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotations in degrees. Ra, Rb: [..., 3, 3] -> [...]."""
    Rr = np.swapaxes(Ra, -1, -2) @ Rb
    cos = np.clip((np.trace(Rr, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def smooth_poses(c2w: np.ndarray, window: int = 7) -> np.ndarray:
    """Smooth a pose track [T,4,4]: moving-average translation, chordal-mean rotation (SVD), edge-replicated."""
    c2w = np.asarray(c2w, dtype=np.float64)
    T = c2w.shape[0]
    if window <= 1 or T == 1:
        return c2w.copy()
    h = window // 2
    idx = np.clip(np.arange(T)[:, None] + np.arange(-h, h + 1)[None, :], 0, T - 1)
    out = np.tile(np.eye(4), (T, 1, 1))
    out[:, :3, 3] = c2w[idx, :3, 3].mean(1)
    M = c2w[idx, :3, :3].sum(1)
    U, _, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(U @ Vt))
    U[:, :, -1] *= d[:, None]
    out[:, :3, :3] = U @ Vt
    return out
